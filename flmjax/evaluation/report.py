"""Results: accuracy with a 95% interval per task, the paper's reference numbers, table and JSON.

Intervals are Wilson score intervals for 0/1 scores (well behaved at small n and near 0 or 1) and
normal-approximation intervals for continuous scores (TruthfulQA MC2).  The reference numbers are
read from `reference_scores.json`, one data file that cites its source.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
from typing import Any, Optional, Sequence

from flmjax.evaluation.tasks import IQ_CATEGORIES

Z95 = 1.959963984540054
REFERENCE_PATH = os.path.join(os.path.dirname(__file__), 'reference_scores.json')


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
  if n == 0:
    return 0.0, 1.0
  p = correct / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(scores: Sequence[float], z: float = Z95) -> tuple[float, float]:
  """Normal-approximation interval of a mean of scores in [0, 1], clipped to [0, 1]."""
  n = len(scores)
  if n < 2:
    return 0.0, 1.0
  m = sum(scores) / n
  var = sum((s - m) ** 2 for s in scores) / (n - 1)
  half = z * math.sqrt(var / n)
  return max(0.0, m - half), min(1.0, m + half)


@dataclasses.dataclass
class TaskResult:
  """Per-item scores of one task (1/0 for accuracy; a probability mass for 'mc2')."""

  name: str
  category: str
  scores: list[float]
  subjects: list[str] = dataclasses.field(default_factory=list)
  k_shot: int = 0
  metric: str = 'acc'
  examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  over_length: int = 0   # items whose prompt was longer than the model's context (left-cut)
  source: str = ''
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def n(self) -> int:
    return len(self.scores)

  @property
  def accuracy(self) -> float:
    return sum(self.scores) / self.n if self.n else float('nan')

  @property
  def interval(self) -> tuple[float, float]:
    if self.metric == 'acc':
      return wilson_interval(sum(self.scores), self.n)
    return mean_interval(self.scores)

  def breakdown(self) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy per subject key 'group/subject', and per group."""
    out: dict[str, dict[str, list[float]]] = {'subjects': collections.defaultdict(list),
                                               'groups': collections.defaultdict(list)}
    for s, subj in zip(self.scores, self.subjects):
      if subj:
        out['subjects'][subj].append(s)
        out['groups'][subj.split('/')[0]].append(s)
    return {k: {name: {'n': len(v), 'accuracy': sum(v) / len(v)} for name, v in sorted(d.items())}
            for k, d in out.items()}


@functools.lru_cache(maxsize=1)
def load_reference(path: str = REFERENCE_PATH) -> dict[str, Any]:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def task_reference(name: str, ref: dict[str, Any]) -> tuple[str, dict[str, float]]:
  """('iq' | 'knowledge' | '', {model: score}): which published table a task's numbers are from."""
  if name in ref['tasks']:
    return 'iq', ref['tasks'][name]
  if name in ref['knowledge']['tasks']:
    return 'knowledge', ref['knowledge']['tasks'][name]
  return '', {}


def reference_sources(ref: dict[str, Any]) -> dict[str, Any]:
  return {'iq': ref['source'], 'knowledge': ref['knowledge']['source']}


def _group_rows(results: Sequence[TaskResult], ref: dict[str, Any]):
  """(group, category, our mean accuracy or None, reference averages) for each reference group."""
  by_name = {r.name: r for r in results}
  rows = []
  for g, spec in ref['groups'].items():
    present = [by_name[t] for t in spec['tasks'] if t in by_name]
    if not present:
      continue
    ours = (sum(r.accuracy for r in present) / len(present)
            if len(present) == len(spec['tasks']) else None)
    rows.append((g, spec['category'], ours, spec['average']))
  return rows


def to_json(results: Sequence[TaskResult], meta: dict[str, Any],
            skipped: Optional[dict[str, dict[str, str]]] = None,
            categories: Sequence[str] = IQ_CATEGORIES) -> dict[str, Any]:
  """The report: every requested category (even if empty or skipped), tasks, groups, reference."""
  ref = load_reference()
  cats: dict[str, Any] = {c: {'tasks': {}, 'groups': {}, 'skipped': {}} for c in categories}
  for r in results:
    lo, hi = r.interval
    which, numbers = task_reference(r.name, ref)
    entry = {'n': r.n, 'k_shot': r.k_shot, 'metric': r.metric, 'accuracy': r.accuracy,
             'ci95': [lo, hi], 'reference': numbers, 'reference_source': which,
             'over_length': r.over_length, 'source': r.source, 'notes': r.notes,
             'examples': r.examples}
    if any(r.subjects):
      entry.update(r.breakdown())
    cats.setdefault(r.category, {'tasks': {}, 'groups': {}, 'skipped': {}})['tasks'][r.name] = entry
  for g, cat, ours, avg in _group_rows(results, ref):
    cats[cat]['groups'][g] = {'accuracy': ours, 'reference': avg}
  for cat, reasons in (skipped or {}).items():
    cats.setdefault(cat, {'tasks': {}, 'groups': {}, 'skipped': {}})['skipped'].update(reasons)
  over = {r.name: r.over_length for r in results if r.over_length}
  return {**meta, 'categories': cats, 'over_length': over, 'reference_source': ref['source'],
          'reference_sources': reference_sources(ref)}


def _pct(x: Optional[float]) -> str:
  return '-' if x is None or x != x else f'{100 * x:.1f}'


def _models(results: Sequence[TaskResult], ref: dict[str, Any]) -> list[str]:
  """Reference columns: the IQ tables' models, plus knowledge-only models when those tasks ran."""
  models = list(ref['models'])
  if any(task_reference(r.name, ref)[0] == 'knowledge' for r in results):
    models += [m for m in ref['knowledge']['models'] if m not in models]
  return models


def format_table(results: Sequence[TaskResult], skipped: Optional[dict[str, dict[str, str]]] = None,
                 limit: Optional[int] = None, seed: int = 0) -> str:
  """Plain-text table: our accuracy and 95% interval beside the paper's numbers.

  'over' counts prompts longer than the model's context (their start was cut off); notes and
  data sources follow the table, so a number is never read without its caveats.
  """
  ref = load_reference()
  models = _models(results, ref)
  head = ['category', 'task', 'n', 'k', 'over', 'acc%', '95% CI'] + models
  rows = []
  for r in results:
    lo, hi = r.interval
    refs = task_reference(r.name, ref)[1]
    rows.append([r.category, r.name, str(r.n), str(r.k_shot), str(r.over_length),
                 _pct(r.accuracy), f'[{_pct(lo)}, {_pct(hi)}]']
                + [_fmt_ref(refs.get(m)) for m in models])
    groups = r.breakdown()['groups'] if any(r.subjects) else {}
    if len(groups) > 1:  # e.g. MMLU's STEM / humanities / social sciences / other
      for g, v in groups.items():
        rows.append(['', f'  {r.name}:{g}', str(v['n']), '', '', _pct(v['accuracy']), '']
                    + [''] * len(models))
  for g, cat, ours, avg in _group_rows(results, ref):
    rows.append([cat, f'avg {g}', '', '', '', _pct(ours), '']
                + [_fmt_ref(avg.get(m)) for m in models])
  for cat, reasons in (skipped or {}).items():
    for name in reasons:
      rows.append([cat, name, '0', '', '', 'skipped', ''] + [''] * len(models))
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  fmt = lambda row: '  '.join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
  lines = [fmt(head), fmt(['-' * w for w in widths])] + [fmt(r) for r in rows]
  lines += _skip_lines(skipped or {}) + _footer(results, ref, limit, seed)
  return '\n'.join(lines)


def _skip_lines(skipped: dict[str, dict[str, str]]) -> list[str]:
  """One line per distinct reason, naming the tasks it skipped (reasons can be long)."""
  by_reason: dict[str, list[str]] = collections.defaultdict(list)
  for reasons in skipped.values():
    for name, why in reasons.items():
      by_reason[why].append(name)
  return [f"skipped {', '.join(names)}: {why}" for why, names in by_reason.items()]


def _footer(results: Sequence[TaskResult], ref: dict[str, Any], limit: Optional[int],
            seed: int) -> list[str]:
  lines = []
  over = [f'{r.name} {r.over_length}/{r.n}' for r in results if r.over_length]
  if over:
    lines.append('over: prompts longer than the model context, their beginning cut off: '
                 + ', '.join(over))
  if limit is not None:
    lines.append(f'--limit {limit}: each task is a random sample of at most {limit} items '
                 f'(per subject for MMLU/C-Eval), drawn with seed {seed}')
  for r in results:
    if r.source:
      lines.append(f'{r.name}: data {r.source}')
    lines += [f'{r.name}: note: {n}' for n in r.notes]
  used = {task_reference(r.name, ref)[0] for r in results}
  if 'iq' in used or not used - {''}:
    lines.append(f"reference: {ref['source']['citation']} ({ref['source']['section']})")
  if 'knowledge' in used:
    src = ref['knowledge']['source']
    lines.append(f"knowledge reference: {src['citation']} ({src['section']}; {src['notes']})")
  return lines


def _fmt_ref(v: Optional[float]) -> str:
  return '-' if v is None else f'{v:.1f}'
