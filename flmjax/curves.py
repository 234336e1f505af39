"""Validation-loss curves against training FLOPs, and the statistics a growth comparison needs.

A curve is a list of (cumulative training FLOPs, validation loss) at a run's eval points, FLOPs
increasing.  Between eval points the loss is interpolated linearly: the curves are dense enough
(an eval every few percent of the run) that the choice of interpolation moves FLOPs-to-target by
less than the seed spread.  Everything here is plain Python + numpy, so the analysis is tested
on hand-made curves without training anything.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional, Sequence

import numpy as np

from flmjax.storage import paths
from flmjax.storage.metrics import read_metrics

Curve = list[tuple[float, float]]  # (cumulative FLOPs, validation loss), FLOPs increasing

# Two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30): a 95% interval of a
# mean over a handful of seeds; beyond 30 the normal quantile is close enough.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def run_records(workdir: str) -> list[dict[str, Any]]:
  """A run's metrics records merged per step (a resumed run re-logs steps; the last wins).

  The evaluation of a freshly grown model (`after_growth` records, logged at the growth step
  beside the old stage's own record) is left out: see `after_growth_records`."""
  by_step: dict[int, dict[str, Any]] = {}
  for r in read_metrics(paths.join(workdir, 'metrics.jsonl')):
    if 'step' in r and not r.get('after_growth'):
      by_step.setdefault(int(r['step']), {}).update(r)
  return [by_step[s] for s in sorted(by_step)]


def after_growth_records(workdir: str) -> dict[int, dict[str, Any]]:
  """{growth step: the grown model's evaluation before its first update} (the last per step)."""
  return {int(r['step']): r for r in read_metrics(paths.join(workdir, 'metrics.jsonl'))
          if r.get('after_growth') and 'step' in r}


def mean_val(record: dict[str, Any]) -> Optional[float]:
  """The mean of a record's `val_loss_<lang>` values (None without any)."""
  vals = [float(v) for k, v in record.items() if k.startswith('val_loss_') and v is not None]
  return sum(vals) / len(vals) if vals else None


def val_curve(records: Sequence[dict[str, Any]]) -> Curve:
  """(FLOPs, mean of the `val_loss_<lang>` values) at every record that has them."""
  out: Curve = []
  for r in records:
    v = mean_val(r)
    if v is not None:
      out.append((float(r['flops']), v))
  return out


def growth_points(records: Sequence[dict[str, Any]]) -> list[tuple[int, int, float]]:
  """(new stage, last step of the old stage, FLOPs then) wherever the logged `stage` changes."""
  out, last, last_step, last_flops = [], None, 0, 0.0
  for r in records:
    s = r.get('stage')
    if s is None:
      continue
    if last is not None and s != last:
      out.append((int(s), last_step, last_flops))
    last, last_step, last_flops = s, int(r['step']), float(r.get('flops', last_flops))
  return out


def at_flops(curve: Curve, flops: float) -> Optional[float]:
  """The curve's loss at `flops` (linear between eval points); None outside its range."""
  if not curve:
    return None
  lo, hi = curve[0][0], curve[-1][0]
  tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
  if flops < lo - tol or flops > hi + tol:
    return None
  xs = [f for f, _ in curve]
  return float(np.interp(flops, xs, [l for _, l in curve]))


def flops_to_reach(curve: Curve, loss: float) -> Optional[float]:
  """The first FLOPs at which the curve gets down to `loss` (linear between eval points);
  None if it never does."""
  prev = None
  for f, l in curve:
    if l <= loss:
      if prev is None or prev[1] == l:
        return f
      f0, l0 = prev
      return f0 + (f - f0) * (l0 - loss) / (l0 - l)
    prev = (f, l)
  return None


def mean_curve(curves: Sequence[Curve], points: int = 0) -> tuple[list[float], list[float],
                                                                    list[float]]:
  """(FLOPs grid, mean loss, std over curves) on the FLOPs range all curves cover.

  The grid is the union of the curves' eval points inside the common range (or `points` evenly
  spaced ones); each curve is interpolated onto it.  Seeds of one arm log at the same FLOPs, so
  the union is normally just their shared eval points.
  """
  if not curves or any(not c for c in curves):
    raise ValueError('mean_curve needs at least one non-empty curve')
  lo = max(c[0][0] for c in curves)
  hi = min(c[-1][0] for c in curves)
  if points:
    grid = list(np.linspace(lo, hi, points))
  else:
    grid = sorted({f for c in curves for f, _ in c if lo <= f <= hi})
  ys = np.array([[at_flops(c, f) for f in grid] for c in curves], dtype=float)
  std = ys.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(grid))
  return [float(f) for f in grid], [float(v) for v in ys.mean(axis=0)], [float(s) for s in std]


def t_quantile(dof: int) -> float:
  """Student-t 0.975 quantile for `dof` degrees of freedom (1.96 beyond the table)."""
  if dof < 1:
    raise ValueError(f'need at least one degree of freedom, got {dof}')
  return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_interval(xs: Sequence[float]) -> tuple[float, float, float]:
  """(mean, low, high): the mean and its two-sided 95% t-interval over independent samples.

  An infinite sample (a seed that never reached the target) makes the mean and the upper end
  infinite; one sample gives an interval of zero width is *not* claimed: (x, -inf, inf).
  """
  xs = [float(x) for x in xs]
  if not xs:
    raise ValueError('mean_interval needs at least one value')
  if any(math.isinf(x) for x in xs):
    finite = [x for x in xs if not math.isinf(x)]
    low = min(finite) if finite else math.inf
    return math.inf, low, math.inf
  m = statistics.fmean(xs)
  if len(xs) == 1:
    return m, -math.inf, math.inf
  half = t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
  return m, m - half, m + half


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std); std 0 for a single value."""
  xs = [float(x) for x in xs]
  return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def jump_at_growth(records: Sequence[dict[str, Any]], last_old_step: int,
                   window: int = 10) -> Optional[tuple[float, float]]:
  """(jump, noise): training loss of the first step after a growth minus that of the last step
  before it, and the median |step-to-step change| over the `window` steps before the growth.

  The first step after a growth computes its loss with the freshly grown model, so function
  preservation shows as a jump of the size of the noise (another batch, one update later); an
  operator that changes the function shows as a jump well above it.  Needs `log_every` 1 around
  the growth; None when the steps were not logged.
  """
  by_step = {int(r['step']): float(r['loss']) for r in records if 'loss' in r}
  before, after = by_step.get(last_old_step), by_step.get(last_old_step + 1)
  if before is None or after is None:
    return None
  steps = range(last_old_step - window, last_old_step + 1)
  diffs = [abs(by_step[s] - by_step[s - 1]) for s in steps if s in by_step and s - 1 in by_step]
  return after - before, (statistics.median(diffs) if diffs else math.nan)
