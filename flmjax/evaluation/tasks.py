"""What a task is: a list of items, each a prompt with a gold answer, scored one of two ways.

Multiple-choice items (`choices` non-empty) are scored by comparing the log-likelihood of each
choice as a continuation of the prompt; generation items are answered by greedy decoding up to a
newline and compared to `answer` exactly (after stripping spaces).  Keeping items as plain data
lets the generators, readers and solvers be tested without any model.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Iterator, Sequence, TypeVar

from flmjax.storage import paths

IQ_CATEGORIES = ('symbolic_mapping', 'rule_understanding', 'pattern_mining', 'anti_interference')
NORMALIZATIONS = ('sum', 'token', 'byte', 'char')
T = TypeVar('T')


class EvalDataError(ValueError):
  """Missing or malformed evaluation data; the message names the task and the file (and line)."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One test question. `answer` is the gold text (for choices: the gold choice's text)."""

  prompt: str
  answer: str
  choices: tuple[str, ...] = ()
  label: int = -1            # index of the gold choice (multiple choice only)
  subject: str = ''          # breakdown key (knowledge subjects/categories)
  true_labels: tuple[int, ...] = ()   # metric 'mc2' (TruthfulQA): every correct choice

  @property
  def is_choice(self) -> bool:
    return bool(self.choices)


@dataclasses.dataclass(frozen=True)
class Task:
  """A named list of items in one category.  `norm` picks the choice-score normalisation."""

  name: str
  category: str
  items: tuple[Item, ...]
  norm: str = 'sum'
  max_new_tokens: int = 128  # cap; the runner budgets from the gold answer lengths
  k_shot: int = 0
  metric: str = 'acc'   # 'acc' (0/1 per item) | 'mc2' (probability mass on true choices)
  source: str = ''      # where the items came from (release file, generator), for the report
  notes: tuple[str, ...] = ()   # caveats a reader of the report must see
  paper_k: int | None = None    # the shot count of the published protocol (None: no protocol)
  min_k: int = 0                # fewest shots the task accepts (for a 'use fewer shots' hint)
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> items left out

  def __post_init__(self):
    if self.metric not in ('acc', 'mc2'):
      raise ValueError(f"task {self.name}: metric must be 'acc' or 'mc2', got {self.metric!r}")
    if self.norm not in NORMALIZATIONS:
      raise ValueError(f'task {self.name}: norm must be one of {NORMALIZATIONS}, got {self.norm!r}')
    for i, it in enumerate(self.items):
      if it.choices and not 0 <= it.label < len(it.choices):
        raise ValueError(f'task {self.name}: item {i} has label {it.label} outside its '
                         f'{len(it.choices)} choices')


def sample_limit(records: Sequence[T], limit: int | None, seed: int, key: str) -> list[T]:
  """A seeded random sample of `limit` records, kept in file order; all of them without a limit.

  The first N items of a release file are often one topic or one label (sorted files), so a
  capped run must sample; the seed makes the sample reproducible and is part of the report.
  """
  if limit is None or limit >= len(records):
    return list(records)
  if limit < 1:
    raise ValueError(f'{key}: limit must be >= 1, got {limit}')
  keep = sorted(random.Random(f'limit:{key}:{seed}').sample(range(len(records)), limit))
  return [records[i] for i in keep]


def format_shots(shots: Sequence[tuple[str, str]], sep: str = '\n\n') -> str:
  """Joins solved (prompt, answer) demonstrations into an in-context prefix."""
  return ''.join(p + a + sep for p, a in shots)


def text_lines(path: str, label: str) -> list[str]:
  """The lines of a UTF-8 text file (line ends kept, a leading BOM dropped), for every reader of
  release files: bytes that are not UTF-8 (a Latin-1 CSV, a gzip saved as .jsonl), a directory or
  a special file are an EvalDataError naming file, line and task — skippable with --skip_missing
  — instead of a bare decode error or an OSError naming neither."""
  if paths.isdir(path):
    raise EvalDataError(f'{path}: {label}: is a directory, expected a data file')
  if paths.exists(path) and not paths.isfile(path):
    raise EvalDataError(f'{path}: {label}: not a regular file (a FIFO or device?)')
  lines = []
  with paths.open_file(path, 'rb') as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        lines.append(raw.decode('utf-8-sig' if lineno == 1 else 'utf-8'))
      except UnicodeDecodeError as e:
        raise EvalDataError(f'{path}:{lineno}: {label}: not UTF-8 text (byte '
                            f'{raw[e.start:e.start + 1].hex()} at column {e.start + 1}); '
                            f'release files are UTF-8') from None
  return lines


def read_json_lines(path: str, label: str, fields: Sequence[str]
                    ) -> Iterator[tuple[str, dict]]:
  """(where, record) for each non-blank line of a JSON-lines file, `where` = 'file:line: label'.

  A line that is not a JSON object, or lacks one of `fields`, is an error naming file and line.
  """
  for lineno, line in enumerate(text_lines(path, label), start=1):
    if not line.strip():
      continue
    where = f'{path}:{lineno}: {label}'
    try:
      rec = json.loads(line)
    except ValueError as e:
      raise EvalDataError(f'{where}: invalid JSON ({e})') from None
    if not isinstance(rec, dict):
      raise EvalDataError(f'{where}: expected a JSON object, got {type(rec).__name__}')
    missing = [k for k in fields if k not in rec]
    if missing:
      raise EvalDataError(f'{where}: missing field(s) {missing} (has {sorted(rec)})')
    yield where, rec
