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
from flmjax.storage import paths

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
  cut_choices: int = 0   # items with a choice longer than the whole context (only its end scored)
  source: str = ''
  notes: list[str] = dataclasses.field(default_factory=list)
  paper_k: Optional[int] = None   # the published protocol's shot count (None: no protocol)
  min_k: int = 0                  # fewest shots the task accepts
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> items left out
  score_name: str = ''   # what `accuracy` is, e.g. 'acc_norm' (ARC, HellaSwag); '' = `metric`
  also: dict[str, float] = dataclasses.field(default_factory=dict)  # other metrics, e.g. 'acc'

  @property
  def comparable(self) -> bool:
    """False when some prompt or choice was cut to fit the context: the row then measures a
    different task than the one published, so it is kept out of averages and comparisons."""
    return not self.over_length and not self.cut_choices

  @property
  def paper_protocol(self) -> bool:
    """Whether the run used the published shot count (reference numbers are shown only then)."""
    return self.paper_k is not None and self.k_shot == self.paper_k

  def comparison(self) -> Optional[str]:
    """Why this row may not be set beside the paper's numbers, or None when it may."""
    why = []
    if not self.comparable:
      why.append(f'not comparable: {self.cut_summary()}')
    if self.paper_k is not None and self.k_shot != self.paper_k:
      why.append(f'{self.k_shot}-shot, the paper used {self.paper_k}-shot')
    return '; '.join(why) or None

  def cut_summary(self) -> str:
    """What was actually cut, in words (demonstrations only exist when k_shot > 0)."""
    parts = []
    if self.over_length:
      what = ('the earliest demonstrations first' if self.k_shot
              else '0-shot, so the start of the prompt itself')
      parts.append(f'{self.over_length}/{self.n} prompts lost their beginning ({what})')
    if self.cut_choices:
      parts.append(f'{self.cut_choices}/{self.n} items have a choice longer than the context '
                   f'(only its last tokens were scored)')
    return '; '.join(parts)

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


def cut_warning(result: TaskResult, max_len: int) -> Optional[str]:
  """The warning for a row with cut prompts: what was cut, and only remedies the CLI accepts."""
  if result.comparable:
    return None
  fixes = ['a model with a longer context']
  if result.k_shot > result.min_k:
    base = result.name.split('.')[0]
    if result.k_shot - 1 == result.min_k:  # one value left: name it, not "k in 0"
      fixes.append(f'fewer shots (--shots {base}={result.min_k})')
    else:
      fixes.append(f'fewer shots (--shots {base}=k with k in {result.min_k}..{result.k_shot - 1})')
  return (f'{result.name}: context {max_len} tokens: {result.cut_summary()}; the row is marked '
          f'not comparable and left out of averages and the paper comparison. Use '
          f'{" or ".join(fixes)}.')


def shown_reference(result: TaskResult, ref: dict[str, Any]) -> dict[str, float]:
  """The paper's numbers for this row, or {} when the row is not comparable with them."""
  return {} if result.comparison() else task_reference(result.name, ref)[1]


def _group_rows(results: Sequence[TaskResult], ref: dict[str, Any]):
  """(group, category, our mean accuracy or None, reference averages, why None) per group.

  Our average needs every task of the group, each comparable with the paper (no cut prompts, the
  paper's shot count); otherwise it is None and `why` says which task kept it out.
  """
  by_name = {r.name: r for r in results}
  rows = []
  for g, spec in ref['groups'].items():
    present = [by_name[t] for t in spec['tasks'] if t in by_name]
    if not present:
      continue
    missing = [t for t in spec['tasks'] if t not in by_name]
    odd = [f'{r.name} ({r.comparison()})' for r in present if r.comparison()]
    why = '; '.join(([f'missing {", ".join(missing)}'] if missing else []) + odd) or None
    ours = None if why else sum(r.accuracy for r in present) / len(present)
    rows.append((g, spec['category'], ours, spec['average'], why))
  return rows


def _empty_category() -> dict[str, Any]:
  return {'tasks': {}, 'groups': {}, 'skipped': {}, 'failed': {}}


def to_json(results: Sequence[TaskResult], meta: dict[str, Any],
            skipped: Optional[dict[str, dict[str, str]]] = None,
            categories: Sequence[str] = IQ_CATEGORIES,
            failed: Optional[dict[str, dict[str, str]]] = None,
            pending: Sequence[str] = ()) -> dict[str, Any]:
  """The report: every requested category (even if empty or skipped), tasks, groups, reference.

  `failed` ({category: {task: error}}) and `pending` (tasks not yet run) make a partial report,
  written while the run goes on; `complete` says whether every requested task ran.
  """
  ref = load_reference()
  cats: dict[str, Any] = {c: _empty_category() for c in categories}
  for r in results:
    lo, hi = r.interval
    entry = {'n': r.n, 'k_shot': r.k_shot, 'paper_k_shot': r.paper_k, 'metric': r.metric,
             'score': r.score_name or r.metric, 'accuracy': r.accuracy, 'also': r.also, 'ci95': [lo, hi], 'comparable': r.comparable,
             'comparison': r.comparison(), 'reference': shown_reference(r, ref),
             'reference_source': task_reference(r.name, ref)[0],
             'over_length': r.over_length, 'cut_choices': r.cut_choices,
             'dropped': r.dropped, 'source': r.source, 'notes': r.notes, 'examples': r.examples}
    if any(r.subjects):
      entry.update(r.breakdown())
    cats.setdefault(r.category, _empty_category())['tasks'][r.name] = entry
  for g, cat, ours, avg, why in _group_rows(results, ref):
    cats[cat]['groups'][g] = {'accuracy': ours, 'reference': avg, 'not_averaged': why}
  for key, table in (('skipped', skipped), ('failed', failed)):
    for cat, reasons in (table or {}).items():
      cats.setdefault(cat, _empty_category())[key].update(reasons)
  over = {r.name: r.over_length for r in results if r.over_length}
  failed_names = {n: why for reasons in (failed or {}).values() for n, why in reasons.items()}
  return {**meta, 'complete': not failed_names and not pending, 'failed': failed_names,
          'pending': list(pending), 'categories': cats, 'over_length': over,
          'not_comparable': {r.name: r.cut_summary() for r in results if not r.comparable},
          'reference_source': ref['source'], 'reference_sources': reference_sources(ref)}


def write_json(path: str, report: dict[str, Any]) -> None:
  """Writes the report atomically (temporary file + rename; on an object store one PUT): a
  crash mid-write never leaves a truncated report in place of the last good one."""
  paths.makedirs(paths.dirname(paths.absolute(path)))
  paths.write_atomic(path, json.dumps(report, indent=1, ensure_ascii=False))


def _pct(x: Optional[float]) -> str:
  return '-' if x is None or x != x else f'{100 * x:.1f}'


def _models(results: Sequence[TaskResult], ref: dict[str, Any]) -> list[str]:
  """Reference columns: the IQ tables' models, plus knowledge-only models when those tasks ran."""
  models = list(ref['models'])
  if any(task_reference(r.name, ref)[0] == 'knowledge' for r in results):
    models += [m for m in ref['knowledge']['models'] if m not in models]
  return models


def format_table(results: Sequence[TaskResult], skipped: Optional[dict[str, dict[str, str]]] = None,
                 limit: Optional[int] = None, seed: int = 0,
                 failed: Optional[dict[str, dict[str, str]]] = None) -> str:
  """Plain-text table: our accuracy and 95% interval beside the paper's numbers.

  'over' counts prompts longer than the model's context (their start was cut off); such a row is
  marked 'not comparable' in the 'vs paper' column and its reference columns stay empty, as they
  do for a run with another shot count than the paper's.  Notes and data sources follow the
  table, so a number is never read without its caveats.
  """
  ref = load_reference()
  models = _models(results, ref)
  head = ['category', 'task', 'n', 'k', 'over', 'acc%', '95% CI', 'vs paper'] + models
  rows = []
  for r in results:
    lo, hi = r.interval
    refs = shown_reference(r, ref)
    mark = ('not comparable' if not r.comparable
            else f'k={r.k_shot}, paper {r.paper_k}' if r.comparison() else '')
    rows.append([r.category, r.name, str(r.n), str(r.k_shot), str(r.over_length),
                 _pct(r.accuracy), f'[{_pct(lo)}, {_pct(hi)}]', mark]
                + [_fmt_ref(refs.get(m)) if refs else '' for m in models])
    for name, value in r.also.items():  # e.g. ARC's acc beside its acc_norm score
      rows.append(['', f'  {r.name}:{name}', str(r.n), '', '', _pct(value), '', '']
                  + [''] * len(models))
    groups = r.breakdown()['groups'] if any(r.subjects) else {}
    if len(groups) > 1:  # e.g. MMLU's STEM / humanities / social sciences / other
      for g, v in groups.items():
        rows.append(['', f'  {r.name}:{g}', str(v['n']), '', '', _pct(v['accuracy']), '', '']
                    + [''] * len(models))
  for g, cat, ours, avg, why in _group_rows(results, ref):
    rows.append([cat, f'avg {g}', '', '', '', _pct(ours), '', 'not averaged' if why else '']
                + [_fmt_ref(avg.get(m)) for m in models])
  for key, table in (('skipped', skipped), ('FAILED', failed)):
    for cat, reasons in (table or {}).items():
      for name in reasons:
        rows.append([cat, name, '0', '', '', key, '', ''] + [''] * len(models))
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  fmt = lambda row: '  '.join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
  lines = [fmt(head), fmt(['-' * w for w in widths])] + [fmt(r) for r in rows]
  lines += _skip_lines(skipped or {}) + _fail_lines(failed or {})
  lines += _footer(results, ref, limit, seed)
  return '\n'.join(lines)


def _fail_lines(failed: dict[str, dict[str, str]]) -> list[str]:
  return [f'FAILED {name}: {why}' for reasons in failed.values() for name, why in reasons.items()]


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
  # the `over` column counts cut prompts; what was cut is said once per row (and once on stderr
  # while the task ran), not again in an 'over:' line
  lines += [f'not comparable: {r.name}: {r.cut_summary()}' for r in results if not r.comparable]
  lines += [f'{r.name}: no reference numbers: {r.comparison()}' for r in results
            if r.comparable and r.comparison() and task_reference(r.name, ref)[1]]
  lines += [f'{r.name}: acc% is {r.score_name}; ' + ', '.join(r.also) + ' on the row below'
            for r in results if r.also]
  lines += [f'{r.name}: left out: {n} item(s) {why}' for r in results
            for why, n in r.dropped.items() if n]
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
