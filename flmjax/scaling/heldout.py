"""Loss prediction judged on targets it was not tuned on (issue 19).

A prediction protocol is only as good as its error on a target nobody looked at while choosing
it.  So the choices — which law (L(N) with a free or a fixed asymptote, L(C) over final FLOPs or
over the envelope of training curves), which proxies — are *candidates*, each scored on
development targets; the protocol keeps the one with the smallest worst-case development error
among those whose fit has residual degrees of freedom (a law with as many parameters as proxies
interpolates them exactly: its fit cannot show that its form is wrong, and such a law was chosen
once by a hair on near targets and then extrapolated worst), calibrates its model-error term on
the same development targets, and only then looks at the held-out targets (wider, other init
seeds, another data order).  Every candidate's held-out error
is reported too, so a reader sees what the choice cost or bought.

Proxies and targets are plain dicts as `loss_prediction.run_width` returns them: `width`, `loss`
(mean over seeds), `seed_losses`, `non_embedding_params`, `params`, `flops`; the envelope also
needs `curve_flops` / `curve_loss` (the seed-mean training curve, see `mean_curve`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from flmjax.scaling import loss_prediction as lp

Record = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One way to turn proxies into a prediction.

  x: what the law is a function of — 'non_embedding_params', 'params' (with the embedding),
  'flops' (final training FLOPs) or 'envelope' (L(C) over the lower envelope of the proxies'
  training curves, shifted by their validation-minus-training gap)."""
  name: str
  x: str = 'non_embedding_params'
  fix_c: Optional[float] = None
  drop_narrowest: bool = False

  def residual_dof(self, n_proxies: int) -> int:
    """Fitted points minus fitted parameters; the envelope's grid points are interpolated
    from the same proxies, so it counts the proxies, not the grid."""
    return n_proxies - int(self.drop_narrowest) - (2 if self.fix_c is not None else 3)


CANDIDATES = (
    Candidate('L(N) free c'),
    Candidate('L(N) c=0', fix_c=0.0),
    Candidate('L(N) free c, no narrowest', drop_narrowest=True),
    Candidate('L(N with embedding)', x='params'),
    Candidate('L(C) final', x='flops'),
    Candidate('L(C) envelope', x='envelope'),
)


# ---- training curves -----------------------------------------------------------------------------

def interpolate_at(flops: Sequence[float], losses: Sequence[float], at: Sequence[float]
                   ) -> np.ndarray:
  """A training curve's loss at the FLOPs `at`, linear in log FLOPs; NaN outside the curve."""
  fl = np.log(np.asarray(flops, np.float64))
  at_log = np.log(np.asarray(at, np.float64))
  out = np.interp(at_log, fl, np.asarray(losses, np.float64))
  outside = (at_log < fl.min() - 1e-9) | (at_log > fl.max() + 1e-9)
  return np.where(outside, np.nan, out)


def envelope(curves: Sequence[tuple[Sequence[float], Sequence[float]]], grid: Sequence[float]
             ) -> np.ndarray:
  """The lowest loss any curve reaches at each FLOPs of `grid` (NaN where none covers it)."""
  stacked = np.stack([interpolate_at(f, l, grid) for f, l in curves])
  with np.errstate(all='ignore'):
    return np.where(np.all(np.isnan(stacked), axis=0), np.nan,
                    np.nanmin(np.where(np.isnan(stacked), np.inf, stacked), axis=0))


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]
               ) -> tuple[list[float], list[float]]:
  """Seed-mean training curve of runs logged at the same steps (FLOPs from the first)."""
  n = min(len(f) for f, _ in curves)
  return (list(curves[0][0][:n]), list(np.mean([l[:n] for _, l in curves], axis=0)))


# ---- predictors ----------------------------------------------------------------------------------

def make_predictor(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record]
                   ) -> Callable[[np.ndarray], np.ndarray]:
  """f(shifts) → predicted losses of `targets`, where shifts[i] moves proxy i's loss (and its
  whole training curve) — what an init seed does; zeros give the candidate's prediction."""
  proxies = sorted(proxies, key=lambda r: r['width'])
  used = np.arange(len(proxies))[1:] if cand.drop_narrowest else np.arange(len(proxies))
  ys = np.asarray([r['loss'] for r in proxies], np.float64)
  if cand.x == 'envelope':
    return _envelope_predictor(cand, [proxies[i] for i in used], targets, ys[used], used)
  xs = np.asarray([proxies[i][cand.x] for i in used], np.float64)
  xt = np.asarray([t[cand.x] for t in targets], np.float64)

  def f(shifts: np.ndarray) -> np.ndarray:
    fit = lp.fit_power_law(xs, ys[used] + shifts[used], fix_c=cand.fix_c, leave_one_out=False)
    return np.asarray(fit(xt), np.float64)
  return f


def _envelope_predictor(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
                        ys: np.ndarray, used: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
  finals = [float(r['curve_flops'][-1]) for r in proxies]
  grid = np.geomspace(min(finals), max(finals), 12)  # from the narrowest run's end: all trained
  gap = float(np.mean([y - r['curve_loss'][-1] for y, r in zip(ys, proxies)]))
  xt = np.asarray([t['flops'] for t in targets], np.float64)

  def f(shifts: np.ndarray) -> np.ndarray:
    curves = [(r['curve_flops'], np.asarray(r['curve_loss']) + s)
              for r, s in zip(proxies, shifts[used])]
    env = envelope(curves, grid)
    ok = np.isfinite(env)
    fit = lp.fit_power_law(grid[ok], env[ok], fix_c=cand.fix_c, leave_one_out=False)
    return np.asarray(fit(xt), np.float64) + gap
  return f


# ---- scoring -------------------------------------------------------------------------------------

def distances(proxies: Sequence[Record], targets: Sequence[Record]) -> np.ndarray:
  """How far each target is extrapolated: ln(N_target / N_widest proxy), non-embedding N."""
  widest = max(r['non_embedding_params'] for r in proxies)
  return np.log(np.asarray([t['non_embedding_params'] for t in targets], np.float64) / widest)


def evaluate(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
             model_error: float = 0.0, samples: int = 1000, seed: int = 0,
             model_error_form: str = 'per_ln_n') -> list[dict[str, Any]]:
  """Per target: prediction, 95% interval (proxies' and target's seed noise, plus a relative
  model error: `model_error` × extrapolation distance, or `model_error` itself when
  `model_error_form` is 'constant'), measured mean ± seed sd, relative error, inside."""
  predict_fn = make_predictor(cand, proxies, targets)
  order = sorted(proxies, key=lambda r: r['width'])
  shift_sd, seed_sd = lp.seed_spread([r['seed_losses'] for r in order])
  runs = np.asarray([max(len(t.get('seed_losses', ())), 1) for t in targets], np.float64)
  dist = distances(proxies, targets)
  pred, low, high = lp.bootstrap_interval(predict_fn, shift_sd, seed_sd / np.sqrt(runs),
                                          model_error * _error_scale(dist, model_error_form),
                                          samples, seed)
  rows = []
  for i, t in enumerate(targets):
    measured = float(t['loss'])
    rows.append({'width': t['width'], 'data_seed': t.get('data_seed'),
                 'distance': float(dist[i]), 'predicted': float(pred[i]),
                 'low': float(low[i]), 'high': float(high[i]), 'measured': measured,
                 'measured_std': float(t.get('loss_std', 0.0)),
                 'seed_losses': list(t.get('seed_losses', ())),
                 'relative_error': abs(float(pred[i]) - measured) / measured,
                 'signed_error': (float(pred[i]) - measured) / measured,
                 'inside': bool(low[i] <= measured <= high[i])})
  return rows


def summary(rows: Sequence[Record]) -> dict[str, float]:
  errs = [r['relative_error'] for r in rows]
  return {'max_error': float(max(errs)), 'mean_error': float(np.mean(errs)),
          'coverage': float(np.mean([r['inside'] for r in rows]))}


MODEL_ERROR_FORMS = ('per_ln_n', 'constant')


def _error_scale(distance: np.ndarray, form: str) -> np.ndarray:
  if form not in MODEL_ERROR_FORMS:
    raise ValueError(f'model_error_form must be one of {MODEL_ERROR_FORMS}, got {form!r}')
  return distance if form == 'per_ln_n' else np.ones_like(distance)


def calibrate_model_error(rows: Sequence[Record], form: str = 'per_ln_n') -> float:
  """The law's relative error, from development rows: the root mean square of relative error
  per unit of ln N extrapolated ('per_ln_n': an error that grows with the distance) or of the
  relative error itself ('constant': one that does not).  Seed noise is included, so it errs on
  the wide side."""
  rows = [r for r in rows if r['distance'] > 0]
  dist = np.asarray([r['distance'] for r in rows], np.float64)
  ratios = np.asarray([r['relative_error'] for r in rows], np.float64) / _error_scale(dist, form)
  return float(math.sqrt(np.mean(np.square(ratios)))) if rows else 0.0


def choose(dev_scores: Mapping[str, Mapping[str, float]], order: Sequence[str],
           eligible: Optional[Sequence[str]] = None) -> str:
  """The eligible candidate (default: all) with the smallest worst-case development error (the
  first on ties); with none eligible, the best of all."""
  pool = [n for n in order if eligible is None or n in eligible] or list(order)
  return min(pool, key=lambda n: (dev_scores[n]['max_error'], order.index(n)))


def run_protocol(dev_proxies: Sequence[Record], dev_targets: Sequence[Record],
                 held_proxies: Sequence[Record], held_targets: Sequence[Record],
                 candidates: Sequence[Candidate] = CANDIDATES, samples: int = 1000,
                 seed: int = 0, model_error_form: str = 'per_ln_n') -> dict[str, Any]:
  """Score every candidate on the development split (no model error: that is what it measures),
  choose one among those with residual degrees of freedom, calibrate each candidate's model
  error on its own development rows, then predict the held-out split.  Nothing about the
  held-out targets feeds back into any choice."""
  names = [c.name for c in candidates]
  dof = {c.name: c.residual_dof(len(dev_proxies)) for c in candidates}
  dev, model_errors, failed = {}, {}, {}
  for c in candidates:
    try:
      rows = evaluate(c, dev_proxies, dev_targets, 0.0, samples, seed)
    except (RuntimeError, ValueError) as e:  # a law the data cannot fit loses, it does not crash
      failed[c.name] = f'development: {e}'
      dev[c.name] = {'rows': [], **_FAILED}
      continue
    model_errors[c.name] = calibrate_model_error(rows, model_error_form)
    dev[c.name] = {'rows': rows, **summary(rows)}
  chosen = choose(dev, names, [n for n in names if dof[n] >= 1])
  held = predict_held_out(candidates, held_proxies, held_targets, model_errors, failed,
                          samples, seed + 1, model_error_form)
  return {'chosen': chosen, 'candidates': names, 'residual_dof': dof,
          'model_error_form': model_error_form,
          'model_error': model_errors, 'dev': dev, 'held_out': held, 'failed': failed}


def predict_held_out(candidates: Sequence[Candidate], proxies: Sequence[Record],
                     targets: Sequence[Record], model_errors: dict[str, float],
                     failed: dict[str, str], samples: int, seed: int,
                     model_error_form: str) -> dict[str, Any]:
  """Every candidate's held-out rows with its calibrated model error.  A candidate already in
  `failed`, or one that fails here (recorded in `failed`), gets no rows and a NaN model error."""
  held = {}
  for c in candidates:
    if c.name in failed:
      held[c.name] = {'rows': [], **_FAILED}
      model_errors[c.name] = float('nan')
      continue
    try:
      rows = evaluate(c, proxies, targets, model_errors[c.name], samples, seed,
                      model_error_form)
    except (RuntimeError, ValueError) as e:
      failed[c.name] = f'held-out: {e}'
      held[c.name] = {'rows': [], **_FAILED}
      continue
    held[c.name] = {'rows': rows, **summary(rows)}
  return held


def reuse_protocol(earlier: Mapping[str, Any], held_proxies: Sequence[Record],
                   held_targets: Sequence[Record], candidates: Sequence[Candidate] = CANDIDATES,
                   samples: int = 1000, seed: int = 0) -> dict[str, Any]:
  """An earlier protocol's choices (chosen law, every candidate's calibrated model error and its
  form) applied to new proxies and held-out targets, nothing re-chosen: the way to judge a run
  that changes one thing in training (e.g. the objective) by the same predictor.  `earlier` is
  `run_protocol`'s result; its development scores are carried over as they were measured."""
  names = [c.name for c in candidates]
  missing = [n for n in names if n not in earlier['model_error']]
  if missing:
    raise ValueError(f'the earlier protocol has no model error for {missing}')
  failed = {n: why for n, why in earlier.get('failed', {}).items() if why.startswith('development')}
  model_errors = {n: float(earlier['model_error'][n]) for n in names}
  held = predict_held_out(candidates, held_proxies, held_targets, model_errors, failed, samples,
                          seed + 1, earlier['model_error_form'])
  return {'chosen': earlier['chosen'], 'candidates': names,
          'residual_dof': {c.name: c.residual_dof(len(held_proxies)) for c in candidates},
          'model_error_form': earlier['model_error_form'], 'model_error': model_errors,
          'dev': earlier['dev'], 'held_out': held, 'failed': failed, 'reused': True}


_FAILED = {'max_error': float('inf'), 'mean_error': float('inf'), 'coverage': 0.0}
