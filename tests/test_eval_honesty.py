"""No number that silently measured something else: unlearnable symbols are refused, prompts cut
to fit the context are counted, --limit samples, filler never names what is asked, C-Eval without
its mapping says so, and release re-packagings are read or named precisely."""

import os
import re

import pytest

from flmjax.evaluation import iq_interference, iq_symbolic, knowledge, report, runner
from flmjax.evaluation.tasks import EvalDataError, Item, Task, sample_limit
from test_eval_conventions import CostBackend
from test_eval_fixtures import _csv, _jsonl, write_all


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_all(tmp_path_factory.mktemp('data'))


# ---- symbolic mapping ---------------------------------------------------------------------------
def _wsc(root, train_labels):
  recs = lambda labels: [
      {'text': f'Ann thanked Bea because she {i} helped.', 'idx': i, 'label': y,
       'target': {'span1_text': 'Bea', 'span2_text': 'she'}} for i, y in enumerate(labels)]
  _jsonl(os.path.join(root, 'WSC', 'train.jsonl'), recs(train_labels))
  _jsonl(os.path.join(root, 'WSC', 'val.jsonl'), recs([True, False, True]))


def test_symbolic_refuses_when_a_label_is_never_demonstrated(tmp_path):
  _wsc(str(tmp_path), [True] * 8)  # like FewGLUE's WSC train file: True examples only
  with pytest.raises(EvalDataError, match=r"symbolic_mapping/wsc: .*train\.jsonl has no example "
                                          r"of label False \(no\)"):
    iq_symbolic.make_tasks('wsc', str(tmp_path))


def test_symbolic_demonstrations_show_every_label_or_refuse(tmp_path, data_dir):
  with pytest.raises(EvalDataError, match=r'ocnli: 2 demonstration\(s\) cannot show all 3 label'):
    iq_symbolic.make_tasks('ocnli', data_dir, k_shot=2)
  for seed in range(20):
    sym, _ = iq_symbolic.make_tasks('ocnli', data_dir, seed=seed, k_shot=4)
    symbols = {c.strip() for c in sym.items[0].choices}
    for it in sym.items:
      shown = set(re.findall(r'<[^>\n]{8}>', it.prompt))
      assert shown == symbols, (seed, shown)


# ---- over-length prompts ------------------------------------------------------------------------
def test_prompts_longer_than_the_context_are_counted_and_reported():
  long_prompt = 'x' * 100 + '\nQ:'
  items = (Item(long_prompt, ' a', choices=(' a', ' b'), label=0),
           Item('short\nQ:', ' a', choices=(' a', ' b'), label=0))
  gen = (Item('y' * 60 + '\nOut:', ' ab'), Item('ok\nOut:', ' ab'))
  backend = CostBackend(max_len=64)
  r1 = runner.evaluate(backend, Task('boolq.symbolic', 'symbolic_mapping', items))
  r2 = runner.evaluate(backend, Task('counting', 'rule_understanding', gen))
  assert (r1.over_length, r2.over_length) == (1, 1)
  assert runner.evaluate(CostBackend(), Task('t', 'k', items)).over_length == 0
  table = report.format_table([r1, r2])
  assert 'over' in table.splitlines()[0]
  assert ('not comparable: boolq.symbolic: 1/2 prompts lost their beginning' in table
          and 'not comparable: counting: 1/2 prompts lost their beginning' in table)
  assert table.count('prompts lost their beginning') == 2  # once per row, not again in 'over:'
  rep = report.to_json([r1, r2], {}, categories=('symbolic_mapping', 'rule_understanding'))
  assert rep['over_length'] == {'boolq.symbolic': 1, 'counting': 1}
  assert rep['categories']['rule_understanding']['tasks']['counting']['over_length'] == 1


def test_exact_fit_is_not_over_length():
  # 63 prompt tokens + 2 continuation tokens = 65 = max_len + 1: the model reads all 64 inputs.
  backend = CostBackend(max_len=64)
  assert not backend.scoring_overflows('p' * 63, 2) and backend.scoring_overflows('p' * 64, 2)
  assert not backend.generation_overflows('p' * 60, 4) and backend.generation_overflows('p' * 61, 4)


# ---- --limit ------------------------------------------------------------------------------------
def test_limit_is_a_seeded_random_sample_in_file_order():
  rows = list(range(100))
  a = sample_limit(rows, 10, seed=0, key='t')
  assert a == sample_limit(rows, 10, seed=0, key='t') and a == sorted(a) and len(set(a)) == 10
  assert a != rows[:10] and a != sample_limit(rows, 10, seed=1, key='t')
  assert sample_limit(rows, 200, 0, 't') == rows and sample_limit(rows, None, 0, 't') == rows


def test_readers_apply_the_seeded_limit(tmp_path):
  root = str(tmp_path)
  for split, n in (('train', 4), ('val', 40)):
    _jsonl(os.path.join(root, 'hellaswag', f'hellaswag_{split}.jsonl'), [
        {'activity_label': 'Cooking', 'ctx_a': f'Step {i}.', 'ctx_b': 'then', 'label': 0,
         'endings': ['a.', 'b.']} for i in range(n)])
  first = [knowledge.make_task('hellaswag', root, k_shot=0, limit=5, seed=s) for s in (0, 0, 1)]
  ctx = [[it.prompt for it in t.items] for t in first]
  assert ctx[0] == ctx[1] and ctx[0] != ctx[2] and len(ctx[0]) == 5
  assert ctx[0] != [f'Cooking: Step {i}. Then' for i in range(5)]
  table = report.format_table([report.TaskResult('hellaswag', 'knowledge', [1.0])], limit=5,
                              seed=7)
  assert 'random sample of at most 5 items' in table and 'seed 7' in table


# ---- anti-interference filler -------------------------------------------------------------------
_FACT = re.compile(r'[A-Z]\w+ (?:moved to|went to|went back to|travelled to|journeyed to|'
                   r'picked up|got|grabbed|took|dropped|put down|discarded|left) the \w+'
                   r'(?: there)?\.|The value of key \w+ is \d+\.')


def _asked(question):
  m = re.search(r'Where is (?:the )?(\w+)\?|value of key (\w+)\?', question)
  return m.group(1) or m.group(2)


@pytest.mark.parametrize('name', iq_interference.TASKS)
def test_filler_never_mentions_what_is_asked(name):
  for seed in range(40):
    task = iq_interference.make_task(name, n_items=25, seed=seed)
    for it in task.items:
      for block in it.prompt.split('\n\n'):  # the shots' stories too
        story, question = block.split('\nQuestion: ')
        target = _asked(question)
        filler = [s for s in re.findall(r'[^.]*\.', story) if not _FACT.fullmatch(s.strip())]
        assert filler or seed or name == 'multiple_key_retrieval'
        for sent in filler:
          words = set(re.findall(r'\w+', sent))
          assert target not in words, (seed, sent, question)
          assert not words & set(iq_interference.words.OBJECTS + iq_interference.words.PLACES)


# ---- C-Eval without its mapping file -------------------------------------------------------------
def test_ceval_without_mapping_reads_in_chinese_and_says_categories_are_unavailable(tmp_path):
  for split, n in (('dev', 5), ('val', 3)):
    _csv(os.path.join(tmp_path, 'ceval', split, f'high_school_physics_{split}.csv'),
         [[i, f'问题{i}', '甲', '乙', '丙', '丁', 'ABCD'[i % 4]] for i in range(n)],
         header=['id', 'question', 'A', 'B', 'C', 'D', 'answer'])
  t = knowledge.make_task('ceval', str(tmp_path))
  assert t.items[0].prompt.startswith('以下是中国关于高中物理的单项选择题，请选出其中的正确答案。\n\n')
  assert 'high_school_physics' not in t.items[0].prompt
  assert {it.subject for it in t.items} == {'uncategorised/high_school_physics'}
  assert any('categories unavailable' in n and 'subject_mapping.json' in n for n in t.notes)
  r = runner.evaluate(CostBackend(), t)
  assert 'ceval: note: C-Eval categories unavailable' in report.format_table([r])
  entry = report.to_json([r], {}, categories=('knowledge',))['categories']['knowledge']
  assert 'categories unavailable' in entry['tasks']['ceval']['notes'][0]


# ---- public release file names ------------------------------------------------------------------
def test_fewclue_and_ocnli_release_names_are_read(tmp_path):
  root = str(tmp_path)
  rec = lambda i, y: {'target': {'span1_text': '小明', 'span2_text': '他'}, 'label': y,
                      'text': f'小明说他第{i}个到。'}
  _jsonl(os.path.join(root, 'cluewsc', 'train_few_all.json'),
         [rec(i, 'true' if i % 2 else 'false') for i in range(4)])
  _jsonl(os.path.join(root, 'cluewsc', 'dev_few_all.json'), [rec(i, 'true') for i in range(3)])
  sym, _ = iq_symbolic.make_tasks('cluewsc2020', root)
  assert len(sym.items) == 3 and 'train_few_all.json' in sym.source
  for name in ('train.50k.json', 'train.3k.json'):
    d = os.path.join(root, f'o{name}', 'ocnli')
    _jsonl(os.path.join(d, name), [{'sentence1': f'他有{i}本书。', 'sentence2': '他有书',
                                    'label': ('entailment', 'neutral', 'contradiction')[i % 3]}
                                   for i in range(6)])
    _jsonl(os.path.join(d, 'dev.json'), [{'sentence1': '甲。', 'sentence2': '乙', 'label': 'neutral'}])
    sym, _ = iq_symbolic.make_tasks('ocnli', os.path.dirname(d))
    assert name in sym.source


def test_missing_release_file_error_names_the_file_to_use(tmp_path):
  _jsonl(os.path.join(tmp_path, 'csl_public', 'train.json'),
         [{'abst': 'a', 'keyword': ['k'], 'label': '1'}])
  with pytest.raises(EvalDataError) as e:
    iq_symbolic.make_tasks('csl', str(tmp_path))
  msg = str(e.value)
  assert 'evaluation file ' + os.path.join(str(tmp_path), 'csl_public', 'dev.json') in msg
  assert 'dev_few_all.json' in msg and 'train file' not in msg


def test_mmlu_csv_with_header_and_numeric_answers(tmp_path):
  for split, n in (('dev', 5), ('test', 4)):
    _csv(os.path.join(tmp_path, 'mmlu', split, f'anatomy_{split}.csv'),
         [[f'q{i}', 'w', 'x', 'y', 'z', str(i % 4)] for i in range(n)],
         header=['question', 'A', 'B', 'C', 'D', 'answer'])
  t = knowledge.make_task('mmlu', str(tmp_path), k_shot=1)
  assert [it.label for it in t.items] == [0, 1, 2, 3]
  assert t.items[0].prompt.count('Answer: A\n\n') == 1 and 'question,A' not in t.items[0].prompt
  _csv(os.path.join(tmp_path, 'mmlu', 'test', 'anatomy_test.csv'), [['q', 'w', 'x', 'y', 'z', '7']],
       header=['question', 'A', 'B', 'C', 'D', 'answer'])
  with pytest.raises(EvalDataError, match=r"anatomy_test\.csv:2: .*answer '7' is not one of A, B, "
                                          r"C, D \(or 0-3\)"):
    knowledge.make_task('mmlu', str(tmp_path), k_shot=0)


def test_clue_split_is_a_choice_and_dropped_items_are_counted(tmp_path, data_dir):
  root = str(tmp_path)
  rec = lambda i, y: {'target': {'span1_text': '小明', 'span2_text': '他'}, 'label': y,
                      'text': f'小明说他第{i}个到。'}
  _jsonl(os.path.join(root, 'cluewsc', 'train_few_all.json'),
         [rec(i, 'true' if i % 2 else 'false') for i in range(4)])
  _jsonl(os.path.join(root, 'cluewsc', 'dev_few_all.json'), [rec(i, 'true') for i in range(3)])
  _jsonl(os.path.join(root, 'cluewsc', 'test_public.json'), [rec(i, 'false') for i in range(5)])
  dev, _ = iq_symbolic.make_tasks('cluewsc2020', root)
  assert len(dev.items) == 3 and 'dev_few_all.json' in dev.source
  test, _ = iq_symbolic.make_tasks('cluewsc2020', root, clue_split='test_public')
  assert len(test.items) == 5 and 'test_public.json' in test.source
  with pytest.raises(EvalDataError, match=r'--clue_split test_public'):
    iq_symbolic.make_tasks('csl', data_dir, clue_split='test_public')
  # OCNLI's dev file has one item labelled '-' (no gold label): left out, and counted.
  sym, orig = iq_symbolic.make_tasks('ocnli', data_dir)
  assert len(sym.items) == 4 and sym.dropped == orig.dropped == {
      "of dev.json labelled '-' (no gold label)": 1}
  r = runner.evaluate(CostBackend(), sym)
  assert report.to_json([r], {})['categories']['symbolic_mapping']['tasks'][
      'ocnli.symbolic']['dropped'] == sym.dropped
  assert "ocnli.symbolic: left out: 1 item(s) of dev.json labelled '-'" in report.format_table([r])
