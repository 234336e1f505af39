"""Scoring rules of the runner, the intervals, the table and the JSON report."""

import json
import math

import pytest

from flmjax.evaluation import report, runner
from flmjax.evaluation.engine import Backend, cut_at, cut_tokens
from flmjax.evaluation.tasks import Item, Task


class CharVocab:
  eos_id = 0

  def encode(self, s):
    return [ord(c) for c in s]

  def decode(self, ids):
    return ''.join(chr(i) for i in ids)


class ScriptedBackend(Backend):
  """Each token scores -1 except 'a' (-0.1); generation echoes the prompt's last line reversed."""

  def __init__(self):
    self.tokenizer, self.max_len, self.batch_size = CharVocab(), 512, 4

  def vocab_size(self):
    return 128

  def score_tokens(self, requests):
    return [(sum(-0.1 if t == ord('a') else -1.0 for t in c), False) for _, c in requests]

  def generate_tokens(self, prompts, max_new_tokens, stop_ids):
    out = []
    for p in prompts:
      last = ''.join(map(chr, p)).split('\n')[-1][::-1] + '\nrest'
      out.append(cut_tokens([ord(c) for c in last][:max_new_tokens], stop_ids, 0))
    return out


def test_choice_scoring_uses_the_task_normalisation():
  # ' a'*32: sum -4.2 loses to ' bb' (-3.0) but wins per token/byte (-0.13 vs -1.0).
  item2 = Item('Q:', ' bb', choices=(' aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', ' bb'), label=1)
  assert runner.evaluate(ScriptedBackend(), Task('t', 'k', (item2,), norm='sum')).scores == [1.0]
  assert runner.evaluate(ScriptedBackend(), Task('t', 'k', (item2,), norm='byte')).scores == [0.0]
  assert runner.evaluate(ScriptedBackend(), Task('t', 'k', (item2,), norm='token')).scores == [0.0]


def test_mc2_is_probability_mass_on_true_answers():
  item = Item('Q:', ' a', choices=(' a', ' b', ' ab'), label=0, true_labels=(0, 2))
  r = runner.evaluate(ScriptedBackend(), Task('t', 'knowledge', (item,), metric='mc2'))
  p = [math.exp(-1.1), math.exp(-2.0), math.exp(-2.1)]
  assert r.scores[0] == pytest.approx((p[0] + p[2]) / sum(p))


def test_generation_is_exact_match_cut_at_newline():
  items = (Item('x\ncba', ' abc'), Item('x\nxyz', ' abc'))
  r = runner.evaluate(ScriptedBackend(), Task('gen', 'pattern_mining', items))
  assert r.scores == [1.0, 0.0] and r.examples[1]['prediction'] == 'zyx'


def test_wilson_interval_known_values():
  lo, hi = report.wilson_interval(5, 10)
  assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
  lo, hi = report.wilson_interval(0, 10)
  assert lo == 0.0 and round(hi, 4) == 0.2775
  assert report.wilson_interval(0, 0) == (0.0, 1.0)
  lo, hi = report.mean_interval([0.2, 0.4, 0.6, 0.8])
  assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.0666667 / 4), rel=1e-3)


def test_reference_file_cites_the_paper_and_averages_match_rows():
  ref = report.load_reference()
  assert 'arXiv:2309.03852' in ref['source']['citation']
  for g in ref['groups'].values():
    for model, avg in g['average'].items():
      row = [ref['tasks'][t][model] for t in g['tasks']]
      assert sum(row) / len(row) == pytest.approx(avg, abs=0.006)


def test_table_and_json_show_scores_beside_reference():
  results = [report.TaskResult('counting', 'rule_understanding', [1, 0, 1, 1], k_shot=0),
             report.TaskResult('mmlu', 'knowledge', [1, 0, 0, 1],
                               subjects=['STEM/a', 'STEM/b', 'other/c', 'other/c'], k_shot=5)]
  table = report.format_table(results, {'symbolic_mapping': {'boolq': 'no data'}})
  line = next(l for l in table.splitlines() if l.startswith('rule_understanding  counting'))
  assert '75.0' in line and '69.6' in line and '82.4' in line and '60.8' in line
  assert 'mmlu:STEM' in table and 'skipped' in table and 'arXiv:2309.03852' in table
  rep = report.to_json(results, {'model': 'm'}, {'symbolic_mapping': {'boolq': 'no data'}},
                       categories=('symbolic_mapping', 'rule_understanding', 'pattern_mining',
                                   'anti_interference'))
  json.dumps(rep)
  cats = rep['categories']
  assert set(cats) >= {'symbolic_mapping', 'rule_understanding', 'pattern_mining',
                       'anti_interference', 'knowledge'}
  assert cats['symbolic_mapping']['skipped'] == {'boolq': 'no data'}
  assert cats['knowledge']['tasks']['mmlu']['groups'] == {
      'STEM': {'n': 2, 'accuracy': 0.5}, 'other': {'n': 2, 'accuracy': 0.5}}
  # A group average is reported only when all of its tasks ran.
  assert cats['rule_understanding']['groups']['rule_understanding']['accuracy'] is None


def test_answers_end_at_newline_or_at_the_next_field_label():
  prompt = 'Rule: count up.\nSequence: 1, 2\n\nRule: count down.\nSequence:'
  stops = runner.stop_strings(prompt)
  assert stops == ('\n', ' Rule:', ' Sequence:')
  # A tokenizer that turns newlines into spaces makes the model run on into the next example.
  assert cut_at(' 3, 2, 1 Rule: count up.', stops).strip() == '3, 2, 1'
  assert cut_at(' 3, 2\n1', stops) == ' 3, 2' and cut_at(' 3', stops) == ' 3'
  assert runner.stop_strings('问题：他是谁？\n答案：') == ('\n', ' 问题：', ' 答案：')


def _row(name, category, k, paper_k, over=0, min_k=0):
  return report.TaskResult(name, category, [1, 0, 1, 1], k_shot=k, over_length=over,
                           paper_k=paper_k, min_k=min_k)


def test_rows_with_cut_prompts_are_not_compared_or_averaged():
  ok = [_row(t, 'pattern_mining', 5, 5) for t in ('head_tail', 'full_repeating')]
  cut = _row('head_slicing', 'pattern_mining', 5, 5, over=2, min_k=1)
  table = report.format_table(ok + [cut])
  line = next(l for l in table.splitlines() if ' head_slicing ' in l)
  assert 'not comparable' in line and '63.0' not in line  # the paper's 63.0 is not beside it
  assert '52.0' in next(l for l in table.splitlines() if ' head_tail ' in l)
  avg = next(l for l in table.splitlines() if 'avg pattern_mining' in l)
  assert 'not averaged' in avg and '75.0' not in avg
  rep = report.to_json(ok + [cut], {}, categories=('pattern_mining',))
  cat = rep['categories']['pattern_mining']
  assert cat['tasks']['head_slicing']['comparable'] is False
  assert cat['tasks']['head_slicing']['reference'] == {}
  assert cat['groups']['pattern_mining']['accuracy'] is None
  assert 'head_slicing' in cat['groups']['pattern_mining']['not_averaged']
  assert rep['not_comparable'] == {'head_slicing': cut.cut_summary()}
  fine = report.to_json(ok + [_row('head_slicing', 'pattern_mining', 5, 5)], {},
                        categories=('pattern_mining',))
  assert fine['categories']['pattern_mining']['groups']['pattern_mining']['accuracy'] == 0.75


def test_reference_numbers_only_beside_the_papers_shot_count():
  five = _row('mmlu', 'knowledge', 5, 5)
  zero = _row('mmlu', 'knowledge', 0, 5)
  assert report.to_json([five], {})['categories']['knowledge']['tasks']['mmlu']['reference']
  entry = report.to_json([zero], {})['categories']['knowledge']['tasks']['mmlu']
  assert entry['reference'] == {} and entry['comparison'] == '0-shot, the paper used 5-shot'
  line = next(l for l in report.format_table([zero]).splitlines() if ' mmlu ' in l)
  assert '28.3' not in line and 'k=0, paper 5' in line


def test_cut_warnings_say_what_was_cut_and_suggest_only_accepted_shots():
  tqa = report.cut_warning(_row('truthfulqa_mc2', 'knowledge', 0, 0, over=3), 128)
  assert 'demonstration' not in tqa and '0-shot' in tqa and '--shots' not in tqa
  sym = report.cut_warning(_row('ocnli.symbolic', 'symbolic_mapping', 3, 3, over=1, min_k=3), 128)
  assert 'earliest demonstrations' in sym and '--shots' not in sym  # 3 labels need 3 shots
  sym5 = report.cut_warning(_row('ocnli.symbolic', 'symbolic_mapping', 5, 3, over=1, min_k=3), 128)
  assert '--shots ocnli=k with k in 3..4' in sym5
  assert report.cut_warning(_row('counting', 'rule_understanding', 3, 3), 128) is None
