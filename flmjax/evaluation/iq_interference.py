"""Anti-interference (FLM-101B: multiple key retrieval, single / two supporting facts; 300 each).

The needed facts are buried among distractors: key/value pairs in filler text, or bAbI-style
stories (Weston et al. 2015) of agents moving between places and carrying objects, interleaved with
irrelevant sentences.  Difficulty knobs: number of keys / agents / events, and number of
distractor sentences (which sets the context length).  The gold answer comes from simulating the
story while it is generated.
"""

from __future__ import annotations

import dataclasses
import random
import string

from flmjax.evaluation import words
from flmjax.evaluation.tasks import Item, Task, format_shots

CATEGORY = 'anti_interference'
TASKS = ('multiple_key_retrieval', 'single_supporting_fact', 'two_supporting_facts')
_MOVE = ('moved to', 'went to', 'travelled to', 'journeyed to')
_TAKE = ('picked up', 'grabbed', 'took')
_DROP = ('dropped', 'put down', 'left')


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Knobs: distractor sentences, keys (retrieval) or agents, and story events."""

  n_distractors: int = 12
  n_keys: int = 6
  n_agents: int = 3
  n_events: int = 8


def _filler(rng: random.Random) -> str:
  """A distractor sentence that mentions no agent, place, object or key."""
  a, n1, v, n2 = (rng.choice(words.ADJECTIVES), rng.choice(words.NOUNS), rng.choice(words.VERBS),
                  rng.choice(words.NOUNS))
  return rng.choice((f'The {a} {n1} {v} the {n2}.', f'One {n1} is {a} in winter.',
                     f'Nobody {v} the {a} {n2} today.'))


def _bury(rng: random.Random, facts: list[str], n_distractors: int) -> str:
  """Inserts distractors at random places while keeping the facts in order."""
  out = list(facts)
  for _ in range(n_distractors):
    out.insert(rng.randint(0, len(out)), _filler(rng))
  return ' '.join(out)


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
  for _ in range(max(1, d.n_events)):
    a = rng.choice(agents)
    p = rng.choice([p for p in words.PLACES if p != where.get(a)])
    where[a] = p
    moves[a] = moves.get(a, 0) + 1
    facts.append(f'{a} {rng.choice(_MOVE)} the {p}.')
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
    for a in agents:  # every agent is somewhere before anything else happens
      where[a] = rng.choice(words.PLACES)
      facts.append(f'{a} {rng.choice(_MOVE)} the {where[a]}.')
    for _ in range(max(1, d.n_events)):
      a = rng.choice(agents)
      held = [o for o, h in holder.items() if h == a]
      free = [o for o in words.OBJECTS if o not in holder and dropped.get(o, where[a]) == where[a]]
      r = rng.random()
      if r < 0.35 and free:
        o = rng.choice(free)
        holder[o] = a
        dropped.pop(o, None)
        moved_since_pick[o] = False
        facts.append(f'{a} {rng.choice(_TAKE)} the {o}.')
      elif r < 0.5 and held:
        o = rng.choice(held)
        del holder[o]
        dropped[o] = where[a]
        facts.append(f'{a} {rng.choice(_DROP)} the {o}.')
      else:
        where[a] = rng.choice([p for p in words.PLACES if p != where[a]])
        for o in held:
          moved_since_pick[o] = True
        facts.append(f'{a} {rng.choice(_MOVE)} the {where[a]}.')
    asked = sorted(o for o, m in moved_since_pick.items() if m)
    if asked:
      o = rng.choice(asked)
      place = where[holder[o]] if o in holder else dropped[o]
      prompt = f'{_bury(rng, facts, d.n_distractors)}\nQuestion: Where is the {o}?\nAnswer:'
      return prompt, ' ' + place


_MAKERS = {'multiple_key_retrieval': _retrieval, 'single_supporting_fact': _single_fact,
           'two_supporting_facts': _two_facts}


def make_task(name: str, n_items: int = 300, seed: int = 0, k_shot: int | None = None,
              difficulty: Difficulty = Difficulty()) -> Task:
  """`n_items` generated items; k_shot (default 1) solved stories precede each question."""
  if name not in _MAKERS:
    raise ValueError(f'anti-interference: unknown task {name!r}; known: {list(_MAKERS)}')
  k = 1 if k_shot is None else k_shot
  make = _MAKERS[name]
  rng = random.Random(f'{name}:{seed}')
  items = []
  for _ in range(n_items):
    shots = [make(rng, difficulty) for _ in range(k)]
    prompt, answer = make(rng, difficulty)
    items.append(Item(prompt=format_shots(shots) + prompt, answer=answer))
  return Task(name=name, category=CATEGORY, items=tuple(items), k_shot=k)
