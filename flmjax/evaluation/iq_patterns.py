"""Pattern mining (FLM-101B: Head & Tail, Full Repeating, Head Slicing; 5-shot, 100 items each).

Every item has its own hidden transformation, shown only through k solved examples over random
symbol or word sequences; the model must induce it and apply it to a new input.  Generation keeps
the rule identifiable: head/tail markers come from an alphabet disjoint from the content, and
example inputs differ in length.
"""

from __future__ import annotations

import random
import string

from flmjax.evaluation import words
from flmjax.evaluation.tasks import Item, Task

CATEGORY = 'pattern_mining'
TASKS = ('head_tail', 'full_repeating', 'head_slicing')
_MARKER_CHARS = '#@$%&*+=~^'


def _vocab(rng: random.Random):
  """(content token sampler, marker token sampler) from disjoint alphabets."""
  if rng.random() < 0.5:
    alnum = string.ascii_letters + string.digits
    content = lambda: ''.join(rng.choice(alnum) for _ in range(rng.randint(1, 3)))
    marker = lambda: ''.join(rng.choice(_MARKER_CHARS) for _ in range(rng.randint(1, 2)))
  else:
    pool = words.NOUNS + words.ADJECTIVES
    content = lambda: rng.choice(pool)
    marker = lambda: rng.choice(pool).upper()
  return content, marker


def _lengths(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
  """n lengths in [lo, hi] with at least two distinct values (when n > 1)."""
  while True:
    out = [rng.randint(lo, hi) for _ in range(n)]
    if n < 2 or len(set(out)) > 1:
      return out


def _make_item(name: str, rng: random.Random, k: int) -> Item:
  content, marker = _vocab(rng)
  if name == 'head_tail':
    head = [marker() for _ in range(rng.randint(1, 2))]
    tail = [marker() for _ in range(rng.randint(1, 2))]
    rule = lambda x: head + x + tail
    lengths = _lengths(rng, k + 1, 2, 6)
  elif name == 'full_repeating':
    times = rng.randint(2, 3)
    rule = lambda x: x * times
    lengths = _lengths(rng, k + 1, 2, 5)
  elif name == 'head_slicing':
    keep = rng.randint(1, 3)
    rule = lambda x: x[:keep]
    lengths = _lengths(rng, k, keep + 1, keep + 5) + [rng.randint(keep + 1, keep + 5)]
  else:
    raise ValueError(f'pattern mining: unknown task {name!r}; known: {list(TASKS)}')
  seqs = [[content() for _ in range(n)] for n in lengths]
  lines = [f"Input: {' '.join(x)}\nOutput: {' '.join(rule(x))}\n\n" for x in seqs[:-1]]
  prompt = ''.join(lines) + f"Input: {' '.join(seqs[-1])}\nOutput:"
  return Item(prompt=prompt, answer=' ' + ' '.join(rule(seqs[-1])))


def make_task(name: str, n_items: int = 100, seed: int = 0, k_shot: int | None = None) -> Task:
  """`n_items` items of pattern task `name`, each with k_shot (default 5) examples of its rule."""
  if name not in TASKS:
    raise ValueError(f'pattern mining: unknown task {name!r}; known: {list(TASKS)}')
  k = 5 if k_shot is None else k_shot
  if k < 1:
    raise ValueError(f'pattern mining {name}: k_shot must be >= 1 (the rule is shown only by '
                     f'examples), got {k}')
  rng = random.Random(f'{name}:{seed}')
  items = tuple(_make_item(name, rng, k) for _ in range(n_items))
  return Task(name=name, category=CATEGORY, items=items, k_shot=k, paper_k=5, min_k=1)
