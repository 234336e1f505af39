"""lm-evaluation-harness conventions, pinned on hand-checked examples: each test states a prompt
string and the score rule a change would have to break visibly."""

import json
import math

import pytest

from flmjax.evaluation import knowledge, report, runner
from flmjax.evaluation.engine import Backend, Score, choice_chars
from flmjax.evaluation.tasks import Item, Task
from test_eval_fixtures import write_all

PRIMER_START = ('Q: What is human life expectancy in the United States?\n'
                'A: Human life expectancy in the United States is 78 years.\n\n')
PRIMER_END = ('Q: Where were the 1992 Olympics held?\n'
              'A: The 1992 Olympics were held in Barcelona, Spain.')


class CharVocab:
  eos_id = 0

  def encode(self, s):
    return [ord(c) for c in s]

  def decode(self, ids):
    return ''.join(map(chr, ids))


class CostBackend(Backend):
  """One token per character; each costs COST[char] nats (default 1)."""

  COST = {'a': 0.1, 'z': 1.2}

  def __init__(self, max_len=4096):
    self.tokenizer, self.max_len, self.batch_size = CharVocab(), max_len, 4

  def vocab_size(self):
    return 256

  def score_tokens(self, requests):
    return [(-sum(self.COST.get(chr(t), 1.0) for t in c), False) for _, c in requests]

  def generate_tokens(self, prompts, max_new_tokens, stop_ids):
    return [[] for _ in prompts]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_all(tmp_path_factory.mktemp('data'))


def test_truthfulqa_prompt_is_the_primer_then_the_question(data_dir):
  for name in ('truthfulqa_mc1', 'truthfulqa_mc2'):
    t = knowledge.make_task(name, data_dir)
    assert t.k_shot == 0 and len(t.items) == 4  # every question scored, none used as a shot
    prompt = t.items[2].prompt
    assert prompt.startswith(PRIMER_START)
    assert prompt == knowledge.TRUTHFULQA_PRIMER + '\n\nQ: What happens 2?\nA:'
    assert knowledge.TRUTHFULQA_PRIMER.endswith(PRIMER_END)
    assert prompt.count('Q: ') == 7 and 'What happens 0' not in prompt
    assert t.items[2].choices[0] == ' Nothing.'
    assert any('TruthfulQA' in n and 'lm-evaluation-harness' in n for n in t.notes)


def test_truthfulqa_mc1_is_argmax_of_unnormalised_sum_mc2_is_mass():
  # ' b' sums to -2.0 and ' xxx' to -4.0: the raw sum picks ' b', which per character would
  # lose (-2.0 vs -1.33), so a normalised MC1 would score this item 0.
  item = Item('Q: x\nA:', ' b', choices=(' b', ' xxx', ' zz'), label=0, true_labels=(0, 1))
  mc1 = runner.evaluate(CostBackend(), Task('truthfulqa_mc1', 'knowledge', (item,)))
  assert mc1.scores == [1.0]
  assert runner.evaluate(CostBackend(), Task('t', 'knowledge', (item,), norm='char')).scores == [0.0]
  mc2 = runner.evaluate(CostBackend(), Task('truthfulqa_mc2', 'knowledge', (item,), metric='mc2'))
  p = [math.exp(-2.0), math.exp(-4.0), math.exp(-3.4)]
  assert mc2.scores[0] == pytest.approx((p[0] + p[1]) / sum(p))


def test_acc_norm_divides_by_characters_without_the_leading_space():
  # ' x': logprob -2, 1 char -> -2.0 ; ' zzzzzzzzz': -1 - 9*1.2 = -11.8, 9 chars -> -1.311.
  # Per UTF-8 byte of ' ' + choice (the old rule) ' x' would win: -1.0 vs -1.18.
  item = Item('Question: q?\nAnswer:', ' zzzzzzzzz', choices=(' x', ' zzzzzzzzz'), label=1)
  char = runner.evaluate(CostBackend(), Task('arc_challenge', 'knowledge', (item,), norm='char'))
  byte = runner.evaluate(CostBackend(), Task('arc_challenge', 'knowledge', (item,), norm='byte'))
  assert char.scores == [1.0] and byte.scores == [0.0]
  assert choice_chars(' option 0') == 8 and choice_chars('甲') == 1 and choice_chars(' ') == 0
  s = Score(logprob=-6.0, n_tokens=3, n_bytes=4, greedy=False, n_chars=3)
  assert s.normalized('char') == -2.0 and s.normalized('byte') == -1.5


def test_arc_and_hellaswag_prompts_and_norm(data_dir):
  arc = knowledge.make_task('arc_challenge', data_dir, k_shot=0)
  assert arc.norm == 'char' and arc.k_shot == 0
  assert arc.items[0].prompt == 'Question: Which is item 0?\nAnswer:'
  assert arc.items[0].choices == (' option 0', ' option 1', ' option 2', ' option 3')
  h = knowledge.make_task('hellaswag', data_dir, k_shot=0)
  assert h.norm == 'char'
  assert h.items[0].prompt == 'Cooking: A man cracks egg 0. Then he'
  assert h.items[0].choices == (' stirs. it.', ' sleeps.', ' flies.', ' sings.')
  arc25 = knowledge.make_task('arc_challenge', data_dir)
  assert arc25.k_shot == 25  # the leaderboard setting; the fixture's 4 train questions all shown
  assert arc25.items[0].prompt.count('Question:') == 5


def test_mmlu_prompt_string(data_dir):
  t = knowledge.make_task('mmlu', data_dir, k_shot=1)
  want = ('The following are multiple choice questions (with answers) about abstract algebra.\n\n'
          'abstract_algebra question 0, with a comma?\nA. one\nB. two\nC. three\nD. four\n'
          'Answer: A\n\n'
          'abstract_algebra question 0, with a comma?\nA. one\nB. two\nC. three\nD. four\n'
          'Answer:')
  assert t.items[0].prompt == want and t.items[0].choices == (' A', ' B', ' C', ' D')


def test_knowledge_tasks_print_reference_numbers_with_their_source():
  results = [report.TaskResult(n, 'knowledge', [1.0, 0.0], k_shot=k) for n, k in
             (('arc_challenge', 25), ('hellaswag', 10), ('mmlu', 5), ('truthfulqa_mc2', 0),
              ('ceval', 5))]
  table = report.format_table(results)
  head = table.splitlines()[0]
  assert 'FLM-101B' in head and 'eFLM-16B' in head
  line = lambda name: next(l for l in table.splitlines() if l.split()[1:2] == [name])
  assert '39.8' in line('arc_challenge') and '66.2' in line('hellaswag')
  assert '28.3' in line('mmlu') and '44.5' in line('mmlu')
  assert '41.5' in line('truthfulqa_mc2') and '46.1' in line('ceval')
  assert 'knowledge reference: ' in table and 'arXiv:2309.03852' in table
  rep = report.to_json(results, {}, categories=('knowledge',))
  json.dumps(rep)
  mmlu = rep['categories']['knowledge']['tasks']['mmlu']
  assert mmlu['reference'] == {'FLM-101B': 28.30, 'eFLM-16B': 44.50}
  assert mmlu['reference_source'] == 'knowledge'
  assert 'Open LLM Leaderboard' in rep['reference_sources']['knowledge']['notes']
