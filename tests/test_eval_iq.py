"""Generated IQ tasks: deterministic per seed, k-shot as asked, and solvable.

Each solver below reads only the prompt text (never the gold answer) and works out the answer the
way the stated or demonstrated rule defines it; reaching 100% shows the gold answers are right and
the rules are identifiable from the prompt.
"""

import re

import pytest

from flmjax.evaluation import iq_interference, iq_patterns, iq_rules
from flmjax.evaluation.iq_interference import Difficulty


def _query(prompt):
  """The last block of a k-shot prompt (demonstrations are separated by blank lines)."""
  return prompt.split('\n\n')[-1]


# ---- rule understanding -----------------------------------------------------------------------
def solve_counting(prompt):
  m = re.search(r'count (up|down) from (\d+) in steps of (\d+), and stop before passing (\d+)',
                _query(prompt))
  down, start, step, stop = m.group(1) == 'down', *map(int, m.groups()[1:])
  out, v = [], start
  while (v >= stop) if down else (v <= stop):
    out.append(v)
    v = v - step if down else v + step
  return ' ' + ', '.join(map(str, out))


def solve_replace_lowercase(prompt):
  q = _query(prompt)
  text = re.search(r'\nInput: (.*)\n', q).group(1)
  one = re.search(r"replace every lowercase letter '(.)' with '(.)'", q)
  if one:
    return ' ' + text.replace(one.group(1), one.group(2))
  sym = re.search(r"replace every lowercase letter with '(.)'", q).group(1)
  return ' ' + ''.join(sym if 'a' <= c <= 'z' else c for c in text)


def solve_replace_word(prompt):
  q = _query(prompt)
  old, new = re.search(r"replace the word '(\w+)' with '(\w+)'", q).groups()
  text = re.search(r'\nInput: (.*)\n', q).group(1)
  return ' ' + re.sub(rf'\b{old}\b', new, text)


# ---- pattern mining ---------------------------------------------------------------------------
def _examples(prompt):
  pairs = re.findall(r'Input: (.*)\nOutput: (.*)', prompt)
  query = re.search(r'Input: (.*)\nOutput:$', prompt).group(1)
  return [(x.split(), y.split()) for x, y in pairs], query.split()


def solve_head_tail(prompt):
  ex, q = _examples(prompt)
  x0, y0 = ex[0]
  for h in range(len(y0) - len(x0) + 1):
    head, tail = y0[:h], y0[h + len(x0):]
    if all(y == head + x + tail for x, y in ex):
      return ' ' + ' '.join(head + q + tail)
  raise AssertionError('no head/tail rule fits the examples')


def solve_full_repeating(prompt):
  ex, q = _examples(prompt)
  times = {len(y) // len(x) for x, y in ex}
  assert len(times) == 1
  t = times.pop()
  assert all(y == x * t for x, y in ex)
  return ' ' + ' '.join(q * t)


def solve_head_slicing(prompt):
  ex, q = _examples(prompt)
  keep = {len(y) for _, y in ex}
  assert len(keep) == 1 and all(y == x[:len(y)] for x, y in ex)
  return ' ' + ' '.join(q[:keep.pop()])


# ---- anti-interference ------------------------------------------------------------------------
def solve_key_retrieval(prompt):
  q = _query(prompt)
  key = re.search(r'What is the value of key (\w+)\?', q).group(1)
  return ' ' + dict(re.findall(r'The value of key (\w+) is (\d+)\.', q))[key]


_MOVE = r'(?:moved|went|went back|travelled|journeyed) to'
_TAKE = r'(?:picked up|got|grabbed|took)'
_DROP = r'(?:dropped|put down|discarded|left)'


def _simulate(story):
  where, holder, dropped = {}, {}, {}
  for sent in re.findall(r'[^.]*\.', story):
    sent = sent.strip()
    if m := re.fullmatch(rf'([A-Z]\w+) {_MOVE} the (\w+)\.', sent):
      where[m.group(1)] = m.group(2)
    elif m := re.fullmatch(rf'([A-Z]\w+) {_TAKE} the (\w+)(?: there)?\.', sent):
      holder[m.group(2)] = m.group(1)
      dropped.pop(m.group(2), None)
    elif m := re.fullmatch(rf'([A-Z]\w+) {_DROP} the (\w+)\.', sent):
      holder.pop(m.group(2), None)
      dropped[m.group(2)] = where[m.group(1)]
  return where, holder, dropped


def solve_story(prompt):
  q = _query(prompt)
  story, question = q.split('\nQuestion: ')
  where, holder, dropped = _simulate(story)
  if m := re.match(r'Where is the (\w+)\?', question):
    o = m.group(1)
    return ' ' + (where[holder[o]] if o in holder else dropped[o])
  return ' ' + where[re.match(r'Where is (\w+)\?', question).group(1)]


CASES = [
    (iq_rules, 'counting', solve_counting, 0),
    (iq_rules, 'replace_lowercase', solve_replace_lowercase, 4),
    (iq_rules, 'replace_word', solve_replace_word, 4),
    (iq_patterns, 'head_tail', solve_head_tail, 5),
    (iq_patterns, 'full_repeating', solve_full_repeating, 5),
    (iq_patterns, 'head_slicing', solve_head_slicing, 5),
    (iq_interference, 'multiple_key_retrieval', solve_key_retrieval, 1),
    (iq_interference, 'single_supporting_fact', solve_story, 1),
    (iq_interference, 'two_supporting_facts', solve_story, 1),
]


@pytest.mark.parametrize('mod,name,solve,default_k', CASES, ids=[c[1] for c in CASES])
def test_solver_answers_every_generated_item(mod, name, solve, default_k):
  task = mod.make_task(name, n_items=300, seed=7)
  assert task.name == name and task.category == mod.CATEGORY and len(task.items) == 300
  assert task.k_shot == default_k
  wrong = [it for it in task.items if solve(it.prompt) != it.answer]
  assert not wrong, f'{len(wrong)} unsolved, e.g. {wrong[0]}'
  assert len({it.prompt for it in task.items}) > 290  # items really differ


@pytest.mark.parametrize('mod,name,solve,default_k', CASES, ids=[c[1] for c in CASES])
def test_generation_is_deterministic_and_k_shot_configurable(mod, name, solve, default_k):
  a = mod.make_task(name, n_items=20, seed=3)
  assert a == mod.make_task(name, n_items=20, seed=3)
  assert a.items != mod.make_task(name, n_items=20, seed=4).items
  k = 2
  b = mod.make_task(name, n_items=20, seed=3, k_shot=k)
  assert b.k_shot == k
  for it in b.items:
    assert it.prompt.count('\n\n') == k
    assert solve(it.prompt) == it.answer


def test_pattern_tasks_need_at_least_one_example():
  with pytest.raises(ValueError, match='k_shot must be >= 1'):
    iq_patterns.make_task('head_slicing', n_items=2, k_shot=0)


def test_difficulty_knobs_lengthen_the_context():
  easy = iq_interference.make_task('single_supporting_fact', 50, seed=1, k_shot=0,
                                   difficulty=Difficulty(n_distractors=0, n_events=3))
  hard = iq_interference.make_task('single_supporting_fact', 50, seed=1, k_shot=0,
                                   difficulty=Difficulty(n_distractors=30, n_agents=6,
                                                         n_events=20))
  mean = lambda t: sum(len(it.prompt) for it in t.items) / len(t.items)
  assert mean(hard) > 3 * mean(easy)
  keys = iq_interference.make_task('multiple_key_retrieval', 10, seed=1, k_shot=0,
                                   difficulty=Difficulty(n_keys=20))
  assert all(it.prompt.count('The value of key') == 20 for it in keys.items)
  for t in (easy, hard, keys):
    assert all(solve_story(it.prompt) == it.answer for it in t.items
               if 'value of key' not in it.prompt)


def test_unknown_task_names_are_rejected():
  for mod in (iq_rules, iq_patterns, iq_interference):
    with pytest.raises(ValueError, match='unknown task'):
      mod.make_task('nope')
