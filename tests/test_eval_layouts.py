"""The knowledge benchmarks read from their files laid out exactly as released (made-up items in
the released shapes; no benchmark text): MMLU CSV with a header, C-Eval's ceval-exam/ folder,
TruthfulQA's repository layout, AI2's ARC zip, HellaSwag's own jsonl."""

import json
import os

import pytest

from flmjax.evaluation import knowledge, runner
from flmjax.evaluation.tasks import EvalDataError
from test_eval_conventions import CostBackend
from test_eval_fixtures import _csv, _jsonl


def write_released(root):
  root = str(root)
  # MMLU as exported with a header: an index column, question, subject, choice0..3, answer 0-3.
  for split, n in (('dev', 5), ('test', 4)):
    _csv(os.path.join(root, 'mmlu', split, f'astronomy_{split}.csv'),
         [[i, f'Which moon {i}?', 'astronomy', 'red', 'green', 'blue', 'grey', str(i % 4)]
          for i in range(n)],
         header=['', 'question', 'subject', 'choice0', 'choice1', 'choice2', 'choice3', 'answer'])
  # C-Eval's release zip unpacks to ceval-exam/{dev,val,test}/ (test without answers).
  for split, n in (('dev', 5), ('val', 3)):
    _csv(os.path.join(root, 'ceval-exam', split, f'logic_{split}.csv'),
         [[i, f'甲说{i}。', '对', '错', '不知', '都对', 'ABCD'[i % 4], '解析'] for i in range(n)],
         header=['id', 'question', 'A', 'B', 'C', 'D', 'answer', 'explanation'])
  _csv(os.path.join(root, 'ceval-exam', 'test', 'logic_test.csv'),
       [[0, '乙说。', '对', '错', '不知', '都对']], header=['id', 'question', 'A', 'B', 'C', 'D'])
  # TruthfulQA's repository: TruthfulQA/data/mc_task.json.
  os.makedirs(os.path.join(root, 'TruthfulQA', 'data'))
  with open(os.path.join(root, 'TruthfulQA', 'data', 'mc_task.json'), 'w') as f:
    json.dump([{'question': f'Can stones sing {i}?',
                'mc1_targets': {'No.': 1, 'Yes.': 0},
                'mc2_targets': {'No.': 1, 'Never.': 1, 'Yes.': 0}} for i in range(3)], f)
  # AI2's zip: ARC-V1-Feb2018-2/ARC-{Challenge,Easy}/ARC-*-{Train,Dev,Test}.jsonl, numeric
  # labels on some questions, stems and choices kept with their spacing.
  for part in ('Challenge', 'Easy'):
    for split, n in (('Train', 3), ('Dev', 2), ('Test', 4)):
      _jsonl(os.path.join(root, 'ARC-V1-Feb2018-2', f'ARC-{part}', f'ARC-{part}-{split}.jsonl'), [
          {'id': f'Mercury_{i}', 'answerKey': '1234'[i % 4] if i % 2 else 'ABCD'[i % 4],
           'question': {'stem': f'What glows  {i}? ', 'choices': [
               {'text': t, 'label': ('1234' if i % 2 else 'ABCD')[j]}
               for j, t in enumerate(('a lamp', 'a rock ', 'water', 'sand'))]}}
          for i in range(n)])
  # HellaSwag's own data/ folder: ind, activity_label, ctx_a, ctx_b, ctx, endings, label, ...
  for split, n in (('train', 3), ('val', 4)):
    _jsonl(os.path.join(root, 'hellaswag', 'data', f'hellaswag_{split}.jsonl'), [
        {'ind': i, 'activity_label': 'Gardening', 'ctx_a': f'A woman digs hole {i}.',
         'ctx_b': 'she', 'ctx': f'A woman digs hole {i}. she', 'split': split,
         'split_type': 'zeroshot', 'source_id': 'activitynet~v_y',
         'endings': ['plants a tree.', 'eats soup.', 'swims.', 'reads.'], 'label': i % 4}
        for i in range(n)])
  return root


@pytest.fixture(scope='module')
def released(tmp_path_factory):
  return write_released(tmp_path_factory.mktemp('released'))


def test_mmlu_csv_with_header_choice_columns_and_numeric_answers(released):
  t = knowledge.make_task('mmlu', released, k_shot=1)
  assert [it.label for it in t.items] == [0, 1, 2, 3]
  assert t.items[1].prompt.endswith('Which moon 1?\nA. red\nB. green\nC. blue\nD. grey\nAnswer:')
  assert 'Which moon 0?\nA. red\nB. green\nC. blue\nD. grey\nAnswer: A\n\n' in t.items[1].prompt
  assert t.items[0].subject == 'STEM/astronomy'


def test_ceval_exam_folder(released):
  t = knowledge.make_task('ceval', released, k_shot=2)
  assert len(t.items) == 3 and t.source.endswith('ceval-exam')
  assert t.items[0].prompt.startswith('以下是中国关于逻辑学的单项选择题，请选出其中的正确答案。\n\n甲说0。')


def test_truthfulqa_repository_layout(released):
  t = knowledge.make_task('truthfulqa_mc2', released)
  assert len(t.items) == 3 and t.source.endswith(os.path.join('TruthfulQA', 'data', 'mc_task.json'))
  assert t.items[0].true_labels == (0, 1)


def test_arc_as_ai2_releases_it_keeps_whitespace_and_reports_acc_and_acc_norm(released):
  t = knowledge.make_task('arc_challenge', released, k_shot=0)
  assert [it.label for it in t.items] == [0, 1, 2, 3]  # letters and digits both index the option
  assert t.items[0].prompt == 'Question: What glows  0? \nAnswer:'  # as the harness renders it
  assert t.items[0].choices == (' a lamp', ' a rock ', ' water', ' sand')
  r = runner.evaluate(CostBackend(), t)
  assert r.score_name == 'acc_norm' and set(r.also) == {'acc'}
  # CostBackend: 1 nat per character, 0.1 for 'a'.  By sum ' sand' (4.1) wins, the gold of item
  # 3 only; per character ' a lamp' (5.2 / 6) wins, the gold of item 0 only.
  assert r.scores == [1.0, 0.0, 0.0, 0.0] and r.also == {'acc': 0.25}


def test_hellaswag_as_its_authors_release_it(released):
  t = knowledge.make_task('hellaswag', released, k_shot=1)
  assert len(t.items) == 4 and t.items[2].label == 2
  assert t.items[0].prompt.endswith('Gardening: A woman digs hole 0. She')


def test_missing_knowledge_file_names_every_place_searched(tmp_path):
  with pytest.raises(EvalDataError) as e:
    knowledge.make_task('truthfulqa_mc1', str(tmp_path))
  for sub in ('truthfulqa', 'TruthfulQA', os.path.join('TruthfulQA', 'data')):
    assert os.path.join(str(tmp_path), sub, 'mc_task.json') in str(e.value)
