"""Rule understanding (FLM-101B: Counting 0-shot, Replace-Lowercase 4-shot, Replace-Word 4-shot).

Each prompt states a rule in words and the model must execute it: produce a counted sequence
(start, step, stop, up or down), or apply a replacement to lowercase letters or to a named word.
The rule is different for every item, so a memorised answer cannot help.  Items are generated
from a seed; demonstrations are other, independently drawn instances of the same task.
"""

from __future__ import annotations

import random
import string

from flmjax.evaluation import words
from flmjax.evaluation.tasks import Item, Task, format_shots

CATEGORY = 'rule_understanding'
_SYMBOLS = '#*@%&$!?+='


def _counting_instance(rng: random.Random) -> tuple[str, str]:
  step = rng.randint(1, 9)
  n = rng.randint(3, 12)
  down = rng.random() < 0.4
  start = rng.randint(0, 60) + (step * n if down else 0)
  seq = [start - i * step if down else start + i * step for i in range(n)]
  # Half the items stop exactly on a member, the others at a bound that is not reached exactly.
  slack = rng.randint(1, step - 1) if step > 1 and rng.random() < 0.5 else 0
  stop = seq[-1] - slack if down else seq[-1] + slack
  direction = 'down' if down else 'up'
  prompt = (f'Rule: count {direction} from {start} in steps of {step}, and stop before passing '
            f'{stop}.\nSequence:')
  return prompt, ' ' + ', '.join(str(v) for v in seq)


def _mixed_string(rng: random.Random, letter: str, length: int) -> str:
  pool = string.ascii_letters + string.digits
  chars = [rng.choice(pool) for _ in range(length)]
  # Make the named letter appear in both cases so the case distinction matters.
  for c in (letter, letter.upper()):
    for _ in range(rng.randint(1, 2)):
      chars[rng.randrange(length)] = c
  if letter not in chars:
    chars[0] = letter
  return ''.join(chars)


def _replace_lowercase_instance(rng: random.Random) -> tuple[str, str]:
  letter = rng.choice(string.ascii_lowercase)
  symbol = rng.choice(_SYMBOLS)
  text = _mixed_string(rng, letter, rng.randint(8, 16))
  if rng.random() < 0.5:
    rule = f"replace every lowercase letter '{letter}' with '{symbol}'"
    out = text.replace(letter, symbol)
  else:
    rule = f"replace every lowercase letter with '{symbol}'"
    out = ''.join(symbol if c.islower() else c for c in text)
  prompt = f'Rule: {rule}; leave all other characters unchanged.\nInput: {text}\nOutput:'
  return prompt, ' ' + out


def _replace_word_instance(rng: random.Random) -> tuple[str, str]:
  vocab = words.NOUNS + words.ADJECTIVES + words.VERBS
  target, new = rng.sample(words.NOUNS, 2)
  n = rng.randint(6, 12)
  sent = [rng.choice([w for w in vocab if w != target]) for _ in range(n)]
  for _ in range(rng.randint(1, 2)):
    sent[rng.randrange(n)] = target
  if rng.random() < 0.3:  # a longer word containing the target must be left alone
    sent.insert(rng.randrange(n), target + 's')
  prompt = (f"Rule: replace the word '{target}' with '{new}'; change nothing else.\n"
            f"Input: {' '.join(sent)}\nOutput:")
  out = ' '.join(new if w == target else w for w in sent)
  return prompt, ' ' + out


_MAKERS = {
    'counting': (_counting_instance, 0),
    'replace_lowercase': (_replace_lowercase_instance, 4),
    'replace_word': (_replace_word_instance, 4),
}
TASKS = tuple(_MAKERS)


def make_task(name: str, n_items: int = 100, seed: int = 0, k_shot: int | None = None) -> Task:
  """`n_items` generated items of task `name`; k_shot defaults to the paper's setting."""
  if name not in _MAKERS:
    raise ValueError(f'rule understanding: unknown task {name!r}; known: {list(_MAKERS)}')
  make, default_k = _MAKERS[name]
  k = default_k if k_shot is None else k_shot
  rng = random.Random(f'{name}:{seed}')
  items = []
  for _ in range(n_items):
    shots = [make(rng) for _ in range(k)]
    prompt, answer = make(rng)
    items.append(Item(prompt=format_shots(shots) + prompt, answer=answer))
  return Task(name=name, category=CATEGORY, items=tuple(items), k_shot=k, paper_k=default_k)
