"""Anti-interference (FLM-101B: multiple key retrieval, single / two supporting facts; 300 each).

The needed facts are buried among distractors.  Multiple key retrieval is generated: key/value
pairs in filler text.  The supporting-fact tasks come from one of two sources, named in the report:

  * bAbI itself (Weston et al. 2015, tasks qa1 and qa2), read from the standard text files with
    `babi_dir` (`flmjax eval --babi_dir D`): each question becomes an item whose context is the
    story so far, exactly as released (its irrelevant statements are the interference);
    demonstrations come from the train file;
  * by default, our reconstruction of those tasks, generated here: stories in bAbI's style (its
    verbs: moved / went / went back / travelled / journeyed to, got / grabbed / picked up / took
    the X there, dropped / put down / discarded / left; questions after 2-10 statements for qa1
    and after longer stories for qa2), plus filler sentences that never mention a person, place
    or object.  The gold answer comes from simulating the story while it is generated.

Difficulty knobs of the generated stories: number of keys / agents / events, and number of
distractor sentences (which sets the context length).
"""

from __future__ import annotations

import dataclasses
import glob
import random
import string
from typing import Optional

from flmjax.evaluation import words
from flmjax.evaluation.tasks import (EvalDataError, Item, Task, format_shots, sample_limit,
                                     text_lines)
from flmjax.storage import paths

CATEGORY = 'anti_interference'
TASKS = ('multiple_key_retrieval', 'single_supporting_fact', 'two_supporting_facts')
BABI_TASKS = {'single_supporting_fact': 'qa1', 'two_supporting_facts': 'qa2'}
BABI_FILES = {'qa1': 'qa1_single-supporting-fact_{split}.txt',
              'qa2': 'qa2_two-supporting-facts_{split}.txt'}
_MOVE = ('moved to', 'went to', 'went back to', 'travelled to', 'journeyed to')
_TAKE = ('picked up', 'got', 'grabbed', 'took')
_DROP = ('dropped', 'put down', 'discarded', 'left')
# Statements before a question: bAbI's qa1 asks after every second statement of a 10-statement
# story; qa2's stories run longer.  Used when Difficulty.n_events is None.
STORY_LENGTHS = {'single_supporting_fact': (2, 4, 6, 8, 10),
                 'two_supporting_facts': tuple(range(4, 21, 2))}
# Filler draws only on words that are never a person, place or object of a story.
_FILLER_NOUNS = tuple(n for n in words.NOUNS if n not in words.OBJECTS + words.PLACES)


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Knobs: distractor sentences, keys (retrieval) or agents, and story events (None: drawn per
  story from bAbI's lengths)."""

  n_distractors: int = 12
  n_keys: int = 6
  n_agents: int = 4
  n_events: Optional[int] = None


def _filler(rng: random.Random) -> str:
  """A distractor sentence that mentions no agent, place, object or key."""
  a, n1, v, n2 = (rng.choice(words.ADJECTIVES), rng.choice(_FILLER_NOUNS), rng.choice(words.VERBS),
                  rng.choice(_FILLER_NOUNS))
  return rng.choice((f'The {a} {n1} {v} the {n2}.', f'One {n1} is {a} in winter.',
                     f'Nobody {v} the {a} {n2} today.'))


def _bury(rng: random.Random, facts: list[str], n_distractors: int) -> str:
  """Inserts distractors at random places while keeping the facts in order."""
  out = list(facts)
  for _ in range(n_distractors):
    out.insert(rng.randint(0, len(out)), _filler(rng))
  return ' '.join(out)


def _n_events(rng: random.Random, d: Difficulty, task: str) -> int:
  return max(1, d.n_events) if d.n_events is not None else rng.choice(STORY_LENGTHS[task])


def _key(rng: random.Random) -> str:
  return ''.join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(5))


def _retrieval(rng: random.Random, d: Difficulty) -> tuple[str, str]:
  keys = []
  while len(keys) < max(1, d.n_keys):
    k = _key(rng)
    if k not in keys:
      keys.append(k)
  values = [str(rng.randint(1000, 99999)) for _ in keys]
  facts = [f'The value of key {k} is {v}.' for k, v in zip(keys, values)]
  rng.shuffle(facts)
  i = rng.randrange(len(keys))
  question = f'Question: What is the value of key {keys[i]}?\nAnswer:'
  prompt = f'{_bury(rng, facts, d.n_distractors)}\n{question}'
  return prompt, ' ' + values[i]


def _single_fact(rng: random.Random, d: Difficulty) -> tuple[str, str]:
  agents = rng.sample(words.NAMES, max(1, d.n_agents))
  where: dict[str, str] = {}
  moves: dict[str, int] = {}
  facts = []
  for _ in range(_n_events(rng, d, 'single_supporting_fact')):
    a = rng.choice(agents)
    p = rng.choice([p for p in words.PLACES if p != where.get(a)])
    verb = rng.choice(_MOVE if a in where else [m for m in _MOVE if m != 'went back to'])
    where[a] = p
    moves[a] = moves.get(a, 0) + 1
    facts.append(f'{a} {verb} the {p}.')
  # Prefer an agent who moved more than once: the earlier move is then itself a distractor.
  most = max(moves.values())
  a = rng.choice(sorted(x for x in moves if moves[x] == most))
  prompt = f'{_bury(rng, facts, d.n_distractors)}\nQuestion: Where is {a}?\nAnswer:'
  return prompt, ' ' + where[a]


def _two_facts(rng: random.Random, d: Difficulty) -> tuple[str, str]:
  """Story with objects; the asked object's place needs who holds it and where they went."""
  while True:
    agents = rng.sample(words.NAMES, max(1, d.n_agents))
    where: dict[str, str] = {}
    holder: dict[str, str] = {}     # object -> agent carrying it
    dropped: dict[str, str] = {}    # object -> place where it was left
    moved_since_pick: dict[str, bool] = {}
    facts = []
    n_events = max(3, _n_events(rng, d, 'two_supporting_facts'))  # move, pick up, move
    for _ in range(n_events):
      a = rng.choice(agents)
      held = [o for o, h in holder.items() if h == a]
      free = [o for o in words.OBJECTS if o not in holder and dropped.get(o, where.get(a)) ==
              where.get(a)] if a in where else []
      r = rng.random()
      if r < 0.35 and free:
        o = rng.choice(free)
        holder[o] = a
        dropped.pop(o, None)
        moved_since_pick[o] = False
        facts.append(f'{a} {rng.choice(_TAKE)} the {o} there.')
      elif r < 0.5 and held:
        o = rng.choice(held)
        del holder[o]
        dropped[o] = where[a]
        facts.append(f'{a} {rng.choice(_DROP)} the {o}.')
      else:
        verb = rng.choice(_MOVE if a in where else [m for m in _MOVE if m != 'went back to'])
        where[a] = rng.choice([p for p in words.PLACES if p != where.get(a)])
        for o in held:
          moved_since_pick[o] = True
        facts.append(f'{a} {verb} the {where[a]}.')
    asked = sorted(o for o, m in moved_since_pick.items() if m)
    if asked:
      o = rng.choice(asked)
      place = where[holder[o]] if o in holder else dropped[o]
      prompt = f'{_bury(rng, facts, d.n_distractors)}\nQuestion: Where is the {o}?\nAnswer:'
      return prompt, ' ' + place


_MAKERS = {'multiple_key_retrieval': _retrieval, 'single_supporting_fact': _single_fact,
           'two_supporting_facts': _two_facts}


# ---- bAbI release files ------------------------------------------------------------------------
def parse_babi(path: str) -> list[tuple[str, str]]:
  """(prompt, answer) per question of a bAbI text file; the context is the story so far."""
  return [(p, a) for _, p, a in parse_babi_stories(path)]


def parse_babi_stories(path: str) -> list[tuple[int, str, str]]:
  """(story number, prompt, answer) per question of a bAbI text file (see `parse_babi`).

  Format: numbered lines, numbering restarting at 1 for each story; a question line holds
  'question<TAB>answer<TAB>supporting ids' ('|' is accepted instead of the tab).  Questions asked
  earlier in the story are not part of a later question's context.
  """
  out: list[tuple[int, str, str]] = []
  story: list[str] = []
  last, n_story = 0, -1
  for lineno, line in enumerate(text_lines(path, f'{CATEGORY} (bAbI)'), start=1):
    if not line.strip():
      continue
    where = f'{path}:{lineno}: {CATEGORY} (bAbI)'
    num, _, text = line.strip().partition(' ')
    if not num.isdigit():
      raise EvalDataError(f'{where}: expected a line number, got {line.strip()[:40]!r}')
    if int(num) == 1:
      story, n_story = [], n_story + 1
    elif int(num) != last + 1:
      raise EvalDataError(f'{where}: line number {num} does not follow {last}')
    last = int(num)
    sep = '\t' if '\t' in text else '|' if '|' in text else None
    if sep is None and '?' in text:  # bAbI's story lines are statements, never questions
      raise EvalDataError(f'{where}: a question without its answer (expected '
                          f'"question<TAB>answer<TAB>supporting ids"); it would become story '
                          f'text and leak into later questions')
    if sep is None:
      story.append(text.strip())
      continue
    fields = [x.strip() for x in text.split(sep)]
    if len(fields) < 2 or not fields[0] or not fields[1]:
      raise EvalDataError(f'{where}: a question line needs "question{sep!r}answer"')
    question, answer = fields[0], fields[1]
    out.append((n_story, f"{' '.join(story)}\nQuestion: {question}\nAnswer:", ' ' + answer))
  if not out:
    raise EvalDataError(f'{path}: {CATEGORY} (bAbI): no question in the file')
  return out


_BABI_SUBDIRS = ('', 'en', 'tasks_1-20_v1-2/en', 'en-10k', 'tasks_1-20_v1-2/en-10k')


def babi_search_paths(babi_dir: str, qa: str, split: str) -> list[str]:
  """Every pattern searched for a split's qaN file, in order (the error lists them all)."""
  return [paths.join(babi_dir, sub, f'{qa}_*_{split}.txt') for sub in _BABI_SUBDIRS]


def find_babi_file(babi_dir: str, qa: str, split: str) -> Optional[str]:
  """The qaN file of a split under babi_dir, its en/ folder, or the release's folder layout."""
  for sub in _BABI_SUBDIRS:  # the folder escaped: a babi_dir named d2[1] is a name, not a glob
    found = sorted(paths.glob(paths.join(glob.escape(paths.join(babi_dir, sub)),
                                          f'{qa}_*_{split}.txt')))
    if found:
      return found[0]
  return None


def _babi_path(name: str, babi_dir: str, split: str) -> str:
  qa = BABI_TASKS[name]
  path = find_babi_file(babi_dir, qa, split)
  if path is None:
    searched = ', '.join(babi_search_paths(babi_dir, qa, split))
    raise EvalDataError(f'{CATEGORY}/{name}: no bAbI {qa} {split} file under {babi_dir!r} (as '
                        f'released: {BABI_FILES[qa].format(split=split)}); searched {searched}')
  return path


def babi_task(name: str, babi_dir: str, n_items: int = 300, seed: int = 0,
              k_shot: int | None = None) -> Task:
  """`n_items` questions sampled (with `seed`) from bAbI's test file, each after k_shot (default
  1) solved stories drawn from the train file, never from the test questions.

  With only the test file present, demonstrations come from *other stories* of the test file
  (never the question's own story, whose facts would give the answer away); the task's notes
  say so.  0-shot needs the test file alone.
  """
  if name not in BABI_TASKS:
    raise ValueError(f'{CATEGORY}: {name!r} has no bAbI source; bAbI tasks: {list(BABI_TASKS)}')
  k = 1 if k_shot is None else k_shot
  test_path = _babi_path(name, babi_dir, 'test')
  test = parse_babi_stories(test_path)
  questions = sample_limit(test, n_items, seed, f'babi:{name}')
  notes: tuple[str, ...] = ()
  train_path = find_babi_file(babi_dir, BABI_TASKS[name], 'train') if k else None
  rng = random.Random(f'babi-shots:{name}:{seed}')
  if not k:
    pick = lambda story: []
  elif train_path:
    train = parse_babi(train_path)
    pick = lambda story: rng.sample(train, min(k, len(train)))
  else:
    if len({s for s, _, _ in test}) < 2:
      raise EvalDataError(f'{CATEGORY}/{name}: {k}-shot needs a bAbI train file or a test '
                          f'file with several stories; {test_path} has one (use --shots '
                          f'{name}=0, or add {BABI_FILES[BABI_TASKS[name]].format(split="train")})')
    notes = (f'no bAbI {BABI_TASKS[name]} train file under {babi_dir}: the {k} demonstration(s) '
             f'of each question are drawn from other stories of the test file',)

    def pick(story):
      pool = [(p, a) for s, p, a in test if s != story]
      return rng.sample(pool, min(k, len(pool)))
  if len(questions) < len(test):
    notes += (f'a seeded random sample (seed {seed}) of {len(questions)} of the test file\'s '
              f'{len(test)} questions (--n_items, --limit)',)
  items = tuple(Item(prompt=format_shots(pick(story)) + p, answer=a) for story, p, a in questions)
  return Task(name=name, category=CATEGORY, items=items, k_shot=k,
              source=f'bAbI {BABI_TASKS[name]} release file {test_path}', paper_k=1,
              notes=notes)


def make_task(name: str, n_items: int = 300, seed: int = 0, k_shot: int | None = None,
              difficulty: Difficulty = Difficulty(), babi_dir: Optional[str] = None) -> Task:
  """`n_items` items; k_shot (default 1) solved stories precede each question.  With `babi_dir`
  the supporting-fact tasks read bAbI's files instead of generating stories."""
  if name not in _MAKERS:
    raise ValueError(f'anti-interference: unknown task {name!r}; known: {list(_MAKERS)}')
  if babi_dir and name in BABI_TASKS:
    return babi_task(name, babi_dir, n_items=n_items, seed=seed, k_shot=k_shot)
  k = 1 if k_shot is None else k_shot
  make = _MAKERS[name]
  rng = random.Random(f'{name}:{seed}')
  items = []
  for _ in range(n_items):
    shots = [make(rng, difficulty) for _ in range(k)]
    prompt, answer = make(rng, difficulty)
    items.append(Item(prompt=format_shots(shots) + prompt, answer=answer))
  source = ('generated (flmjax)' if name not in BABI_TASKS else
            f'generated bAbI-style {BABI_TASKS[name]} stories (flmjax reconstruction, not bAbI)')
  return Task(name=name, category=CATEGORY, items=tuple(items), k_shot=k,
              source=f'{source}, seed {seed}', paper_k=1)
