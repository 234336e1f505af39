"""Symbolic-mapping and knowledge readers on tiny fixture files in the public formats."""

import json

import pytest

from flmjax.evaluation import iq_symbolic, knowledge
from flmjax.evaluation.tasks import EvalDataError
from test_eval_fixtures import write_all


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_all(tmp_path_factory.mktemp('data'))


@pytest.mark.parametrize('name', iq_symbolic.TASKS)
def test_symbolic_tasks_replace_every_label_with_symbols(data_dir, name):
  sym, orig = iq_symbolic.make_tasks(name, data_dir, seed=3)
  spec = iq_symbolic.SPECS[name]
  assert sym.name == f'{name}.symbolic' and orig.name == f'{name}.original'
  assert sym.category == orig.category == 'symbolic_mapping'
  assert len(sym.items) == len(orig.items) == 4  # OCNLI's '-' (no gold) lines are skipped
  symbols = iq_symbolic.symbol_mapping(spec, 3)
  assert all(s.startswith('<') and s.endswith('>') and len(s) == 10 for s in symbols)
  assert len(set(symbols)) == len(symbols)
  for s, o in zip(sym.items, orig.items):
    assert s.label == o.label and s.answer == s.choices[s.label]
    assert [c.strip() for c in s.choices] == list(symbols)
    assert [c.strip() for c in o.choices] == list(spec.verbalizer)
    # Demonstrations: one per label by default, each shown with its symbol, no original words.
    shots = s.prompt.split('\n\n')[:-1]
    assert len(shots) == len(spec.labels)
    assert sorted(sh[-10:] for sh in shots) == sorted(symbols)
    # Same items and demonstrations: mapping the symbols back gives the original-label prompt.
    back = s.prompt
    for sym_label, word in zip(symbols, spec.verbalizer):
      back = back.replace(sym_label, word)
    assert back == o.prompt and s.prompt != o.prompt


def test_symbols_are_fixed_per_task_and_seed(data_dir):
  a, _ = iq_symbolic.make_tasks('rte', data_dir, seed=1)
  b, _ = iq_symbolic.make_tasks('rte', data_dir, seed=1)
  c, _ = iq_symbolic.make_tasks('rte', data_dir, seed=2)
  assert a == b and a.items[0].choices != c.items[0].choices
  assert iq_symbolic.symbol_mapping(iq_symbolic.SPECS['rte'], 1) != iq_symbolic.symbol_mapping(
      iq_symbolic.SPECS['wic'], 1)
  k6, _ = iq_symbolic.make_tasks('boolq', data_dir, k_shot=6, limit=2)
  assert len(k6.items) == 2 and all(it.prompt.count('\n\n') == 6 for it in k6.items)


def test_symbolic_missing_data_names_task_and_files(tmp_path):
  with pytest.raises(EvalDataError, match=r"symbolic_mapping/boolq.*BoolQ/train\.jsonl.*BoolQ/val"):
    iq_symbolic.make_tasks('boolq', str(tmp_path))
  with pytest.raises(EvalDataError, match=r'cluewsc2020.*--data_dir'):
    iq_symbolic.make_tasks('cluewsc2020', None)


@pytest.mark.parametrize('line,why', [('{"question": "q", "passage": ', 'invalid JSON'),
                                      ('{"question": "q", "label": true}', 'passage'),
                                      ('{"question": "q", "passage": "p", "label": "maybe"}',
                                       'label')])
def test_symbolic_malformed_line_names_file_and_line(tmp_path, line, why):
  root = tmp_path / 'BoolQ'
  root.mkdir()
  good = json.dumps({'question': 'q', 'passage': 'p', 'label': True})
  (root / 'train.jsonl').write_text(good + '\n')
  (root / 'val.jsonl').write_text(good + '\n\n' + line + '\n')
  with pytest.raises(EvalDataError, match=rf'val\.jsonl:3: symbolic_mapping/boolq: .*{why}'):
    iq_symbolic.make_tasks('boolq', str(tmp_path))


def test_mmlu_five_shot_prompt_and_subject_breakdown(data_dir):
  t = knowledge.make_task('mmlu', data_dir)
  assert t.k_shot == 5 and len(t.items) == 6  # 3 test questions x 2 subjects
  it = t.items[0]
  assert it.prompt.startswith('The following are multiple choice questions (with answers) about '
                              'abstract algebra.\n\n')
  assert it.prompt.count('\nAnswer:') == 6 and it.prompt.endswith('\nD. four\nAnswer:')
  assert 'question 0, with a comma?' in it.prompt  # csv quoting handled
  assert it.choices == (' A', ' B', ' C', ' D') and it.label == 0
  assert {i.subject for i in t.items} == {'STEM/abstract_algebra', 'humanities/world_religions'}
  assert len(knowledge.make_task('mmlu', data_dir, k_shot=0, limit=1).items) == 2


def test_ceval_arc_hellaswag_truthfulqa(data_dir):
  c = knowledge.make_task('ceval', data_dir)
  # lm-evaluation-harness's ceval-valid: no 考试 in the header, ' ' between 答案： and the letter.
  assert c.items[0].prompt.startswith('以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n')
  assert '答案： A\n\n' in c.items[0].prompt and c.items[0].prompt.endswith('\n答案：')
  assert c.items[0].choices == (' A', ' B', ' C', ' D')
  assert c.items[0].subject == 'STEM/computer_network'
  for name in ('arc_easy', 'arc_challenge'):
    a = knowledge.make_task(name, data_dir, k_shot=2)
    assert a.norm == 'char' and len(a.items) == 3
    # answerKey may be a letter or a digit; both index the right option.
    assert [it.answer for it in a.items] == [' option 0', ' option 1', ' option 2']
    assert a.items[0].prompt.count('Question:') == 3
  h = knowledge.make_task('hellaswag', data_dir, k_shot=1)
  assert h.items[0].prompt.endswith('Cooking: A man cracks egg 0. Then he')
  assert h.items[0].choices[0] == ' stirs. it.' and h.items[1].label == 1
  assert {it.subject for it in h.items} == {'hellaswag/wikihow', 'hellaswag/activitynet'}
  m1 = knowledge.make_task('truthfulqa_mc1', data_dir)
  assert len(m1.items) == 4 and m1.k_shot == 0  # every question is evaluated, none is a shot
  assert m1.items[0].prompt.endswith('\n\nQ: What happens 0?\nA:')
  assert 'What happens' not in m1.items[1].prompt.replace('What happens 1?', '')
  with pytest.raises(EvalDataError, match='truthfulqa_mc1: 1-shot is not supported'):
    knowledge.make_task('truthfulqa_mc1', data_dir, k_shot=1)
  m2 = knowledge.make_task('truthfulqa_mc2', data_dir)
  assert m2.metric == 'mc2' and m2.items[0].true_labels == (0, 1)


def test_knowledge_missing_and_malformed_data(tmp_path, data_dir):
  with pytest.raises(EvalDataError, match=r'knowledge/mmlu.*mmlu/test/\*_test\.csv'):
    knowledge.make_task('mmlu', str(tmp_path))
  with pytest.raises(EvalDataError, match=r'knowledge/hellaswag.*hellaswag_val\.jsonl'):
    knowledge.make_task('hellaswag', str(tmp_path))
  bad = tmp_path / 'mmlu' / 'test'
  bad.mkdir(parents=True)
  (bad / 'anatomy_test.csv').write_text('q,a,b,c,d,A\nq2,a,b,c,d,E\n')
  with pytest.raises(EvalDataError, match=r'anatomy_test\.csv:2: knowledge/mmlu: answer'):
    knowledge.make_task('mmlu', str(tmp_path), k_shot=0)
  (bad / 'anatomy_test.csv').write_text('q,a,b,c,d,A\nonly,three,fields\n')
  with pytest.raises(EvalDataError, match=r'anatomy_test\.csv:2: .*expected 6 fields'):
    knowledge.make_task('mmlu', str(tmp_path), k_shot=0)
  (bad / 'anatomy_test.csv').write_text('q,a,b,c,d,A\n')
  with pytest.raises(EvalDataError, match=r'5-shot needs the dev file .*anatomy_dev\.csv'):
    knowledge.make_task('mmlu', str(tmp_path))
  arc = tmp_path / 'arc' / 'ARC-Easy'
  arc.mkdir(parents=True)
  (arc / 'ARC-Easy-Test.jsonl').write_text('{"question": {"stem": "s", "choices": []}, '
                                           '"answerKey": "A"}\n')
  with pytest.raises(EvalDataError, match=r'ARC-Easy-Test\.jsonl:1: knowledge/arc_easy'):
    knowledge.make_task('arc_easy', str(tmp_path), k_shot=0)


def test_tfds_source_is_superglue_only_and_never_downloads(tmp_path):
  with pytest.raises(EvalDataError, match='afqmc: TFDS has no clue data'):
    iq_symbolic.make_tasks('afqmc', str(tmp_path), source='tfds')


@pytest.mark.slow  # imports tensorflow_datasets (~15 s on 2 cores)
def test_tfds_source_missing_data_is_a_clear_error(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(EvalDataError, match=r"super_glue/boolq split 'train' is not prepared"):
    iq_symbolic.make_tasks('boolq', str(tmp_path), source='tfds')
