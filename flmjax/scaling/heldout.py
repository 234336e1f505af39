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

Proxies may come at several token budgets (issue 29): with every run on the same tokens the loss
stops falling once the data term binds, and laws in N or C alone cannot see that.  The laws with
a data term, L(N, D) (Hoffmann et al.'s and Kaplan et al.'s forms), are fitted on every (width,
budget) proxy; a law in N or C alone is fitted on the proxies at the budget nearest each target's.

The interval includes data-order noise besides init-seed noise: the proxies share one data
order and a target on another order has its own, so each adds a measured data-order sd
(`loss_prediction.data_order_sd`, from the same widths on two orders) to the target's spread.

Proxies and targets are plain dicts as `loss_prediction.run_width` returns them: `width`, `loss`
(mean over seeds), `seed_losses`, `non_embedding_params`, `params`, `flops`, `tokens` (absent:
one budget), `data_seed` (absent: unknown, so a target counts as on another order); the envelope
also needs `curve_flops` / `curve_loss` (the seed-mean training curve, see `mean_curve`).
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
  training curves, shifted by their validation-minus-training gap).
  form: 'power' (a·x^b + c) or a data law of `loss_prediction.DATA_LAW_FORMS` (L(N, D) over
  non-embedding N and tokens D, fitted on every budget).
  budgets: 'target' (a power law on the proxies at the budget nearest each target's) or 'all'
  (the envelope over every budget's training curves: the compute frontier)."""
  name: str
  x: str = 'non_embedding_params'
  fix_c: Optional[float] = None
  drop_narrowest: bool = False
  form: str = 'power'
  budgets: str = 'target'

  def residual_dof(self, n_proxies: int, n_budgets: int = 1) -> int:
    """Fitted points minus fitted parameters (`n_proxies`: widths per budget).  The envelope's
    grid points are interpolated from the same runs, so it counts the runs, not the grid."""
    if self.form != 'power':
      return n_proxies * n_budgets - lp.data_law_params(self.form)
    runs = n_proxies * n_budgets if self.budgets == 'all' else n_proxies
    return runs - int(self.drop_narrowest) - (2 if self.fix_c is not None else 3)


CANDIDATES = (
    Candidate('L(N) free c'),
    Candidate('L(N) c=0', fix_c=0.0),
    Candidate('L(N) free c, no narrowest', drop_narrowest=True),
    Candidate('L(N with embedding)', x='params'),
    Candidate('L(C) final', x='flops'),
    Candidate('L(C) envelope', x='envelope'),
    Candidate('L(N, D) Hoffmann', form='hoffmann'),
    Candidate('L(N, D) Kaplan', form='kaplan'),
    Candidate('L(C) envelope, all budgets', x='envelope', budgets='all'),
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

def proxy_order(proxies: Sequence[Record]) -> list[Record]:
  """Proxies by (width, tokens): the order of the shifts every predictor takes."""
  return sorted(proxies, key=lambda r: (r['width'], r.get('tokens') or 0))


def budgets_of(records: Sequence[Record]) -> list[Any]:
  """The distinct token budgets of `records` (one None when they do not say)."""
  return sorted({r.get('tokens') for r in records}, key=lambda b: b or 0)


def budget_groups(proxies: Sequence[Record], targets: Sequence[Record]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """(proxy indices, target indices) per budget: each target goes to the proxies at the budget
  nearest its own token count (in log); a target that does not say goes to the largest."""
  budgets = budgets_of(proxies)
  pick = []
  for t in targets:
    if t.get('tokens') is None or budgets == [None]:
      pick.append(budgets[-1])
    else:
      pick.append(min(budgets, key=lambda b: abs(math.log(t['tokens'] / b))))
  groups = []
  for b in budgets:
    ti = np.asarray([j for j, p in enumerate(pick) if p == b], np.int64)
    if len(ti):
      pi = np.asarray([i for i, r in enumerate(proxies) if r.get('tokens') == b], np.int64)
      groups.append((pi, ti))
  return groups


def make_predictor(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record]
                   ) -> Callable[[np.ndarray], np.ndarray]:
  """f(shifts) → predicted losses of `targets`, where shifts[i] moves proxy i's loss (and its
  whole training curve; proxies in `proxy_order`) — what an init seed does; zeros give the
  candidate's prediction."""
  proxies = proxy_order(proxies)
  ys = np.asarray([r['loss'] for r in proxies], np.float64)
  if cand.form != 'power':
    return _data_law_predictor(cand, proxies, targets, ys)
  if cand.budgets == 'all':
    groups = [(np.arange(len(proxies)), np.arange(len(targets)))]
  else:
    groups = budget_groups(proxies, targets)
  parts = [(ti, _power_predictor(cand, proxies, ys, pi, [targets[j] for j in ti]))
           for pi, ti in groups]

  def f(shifts: np.ndarray) -> np.ndarray:
    out = np.empty(len(targets), np.float64)
    for ti, part in parts:
      out[ti] = part(shifts)
    return out
  return f


def _power_predictor(cand: Candidate, proxies: Sequence[Record], ys: np.ndarray,
                     idx: np.ndarray, targets: Sequence[Record]
                     ) -> Callable[[np.ndarray], np.ndarray]:
  """A power law over the proxies `idx` (ascending width within one budget)."""
  used = idx[1:] if cand.drop_narrowest else idx
  if cand.x == 'envelope':
    return _envelope_predictor(cand, [proxies[i] for i in used], targets, ys[used], used)
  xs = np.asarray([proxies[i][cand.x] for i in used], np.float64)
  xt = np.asarray([t[cand.x] for t in targets], np.float64)

  def f(shifts: np.ndarray) -> np.ndarray:
    fit = lp.fit_power_law(xs, ys[used] + shifts[used], fix_c=cand.fix_c, leave_one_out=False)
    return np.asarray(fit(xt), np.float64)
  return f


def _data_law_predictor(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
                        ys: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
  """L(N, D) over every proxy; each bootstrap draw refines the central fit (its multi-start
  search is done once)."""
  ns = np.asarray([r['non_embedding_params'] for r in proxies], np.float64)
  ds = np.asarray([r['tokens'] for r in proxies], np.float64)
  nt = np.asarray([t['non_embedding_params'] for t in targets], np.float64)
  dt = np.asarray([t['tokens'] for t in targets], np.float64)
  center = lp.fit_data_law(ns, ds, ys, cand.form)

  def f(shifts: np.ndarray) -> np.ndarray:
    if not np.any(shifts):
      return np.asarray(center(nt, dt), np.float64)
    fit = lp.fit_data_law(ns, ds, ys + shifts, cand.form, start=center)
    return np.asarray(fit(nt, dt), np.float64)
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


def target_sd(proxies: Sequence[Record], targets: Sequence[Record], seed_sd: float,
              data_sd: float) -> np.ndarray:
  """Per target, the sd its measured mean has about the law beyond the proxies' seed noise:
  its own init seeds (seed_sd/√runs) and, on a data order other than the proxies', the data
  order twice — the target's own order and the proxies' shared one (a common shift of every
  proxy moves the prediction by about as much)."""
  runs = np.asarray([max(len(t.get('seed_losses', ())), 1) for t in targets], np.float64)
  proxy_seeds = {r.get('data_seed') for r in proxies}
  other = np.asarray([not (t.get('data_seed') is not None and proxy_seeds == {t['data_seed']})
                      for t in targets], np.float64)
  return np.sqrt(seed_sd ** 2 / runs + 2 * data_sd ** 2 * other)


def _interval_terms(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
                    model_error: float, model_error_form: str, data_sd: float
                    ) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray,
                               np.ndarray, np.ndarray]:
  """What `interval` spreads: (predictor, the proxies' shift sds, each target's own seed sd, its
  sd with data order added, its relative model sd) — one place for `interval` and
  `half_width_terms`."""
  predict_fn = make_predictor(cand, proxies, targets)
  shift_sd, seed_sd = lp.seed_spread([r['seed_losses'] for r in proxy_order(proxies)])
  own = target_sd(proxies, targets, seed_sd, 0.0)
  full = target_sd(proxies, targets, seed_sd, data_sd)
  rel_model = model_error * _error_scale(distances(proxies, targets), model_error_form)
  return predict_fn, shift_sd, own, full, rel_model


def interval(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
             model_error: float = 0.0, samples: int = 1000, seed: int = 0,
             model_error_form: str = 'per_ln_n', data_sd: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prediction, low, high) per target: the seed bootstrap of `lp.bootstrap_interval` with the
  target's own spread (`target_sd`) and the relative model error; targets need no loss."""
  predict_fn, shift_sd, _, full, rel_model = _interval_terms(
      cand, proxies, targets, model_error, model_error_form, data_sd)
  return lp.bootstrap_interval(predict_fn, shift_sd, full, rel_model, samples, seed)


HALF_WIDTH_TERMS = ('proxy seeds', 'target seeds', 'data order', 'model error')


def half_width_terms(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
                     model_error: float = 0.0, samples: int = 1000, seed: int = 0,
                     model_error_form: str = 'per_ln_n', data_sd: float = 0.0
                     ) -> list[dict[str, float]]:
  """Per target, the relative 95% half-width each of `interval`'s terms gives alone (the
  proxies' seed bootstrap; the target's own seeds; data order; model error), so a reader sees
  which one makes an interval wide.  They add roughly in quadrature, not linearly."""
  predict_fn, shift_sd, own, full, rel_model = _interval_terms(
      cand, proxies, targets, model_error, model_error_form, data_sd)
  pred, low, high = lp.bootstrap_interval(predict_fn, shift_sd, 0.0, 0.0, samples, seed)
  order = np.sqrt(np.maximum(full ** 2 - own ** 2, 0.0))
  z = 1.959964
  return [{'proxy seeds': float(high[i] - low[i]) / 2 / float(pred[i]),
           'target seeds': z * float(own[i]) / float(pred[i]),
           'data order': z * float(order[i]) / float(pred[i]),
           'model error': z * float(rel_model[i])} for i in range(len(targets))]


def evaluate(cand: Candidate, proxies: Sequence[Record], targets: Sequence[Record],
             model_error: float = 0.0, samples: int = 1000, seed: int = 0,
             model_error_form: str = 'per_ln_n', data_sd: float = 0.0) -> list[dict[str, Any]]:
  """Per target: prediction, 95% interval (proxies' and target's seed noise, data-order noise
  `data_sd` for a target on another order (`target_sd`), plus a relative model error:
  `model_error` × extrapolation distance, or `model_error` itself when `model_error_form` is
  'constant'), measured mean ± seed sd, relative error, relative half-width, inside."""
  pred, low, high = interval(cand, proxies, targets, model_error, samples, seed,
                             model_error_form, data_sd)
  dist = distances(proxies, targets)
  rows = []
  for i, t in enumerate(targets):
    measured = float(t['loss'])
    rows.append({'width': t['width'], 'data_seed': t.get('data_seed'),
                 'tokens': t.get('tokens'), 'steps': t.get('steps'),
                 'distance': float(dist[i]), 'predicted': float(pred[i]),
                 'low': float(low[i]), 'high': float(high[i]), 'measured': measured,
                 'half_width': float(high[i] - low[i]) / 2 / float(pred[i]),
                 'measured_std': float(t.get('loss_std', 0.0)),
                 'seed_losses': list(t.get('seed_losses', ())),
                 'relative_error': abs(float(pred[i]) - measured) / measured,
                 'signed_error': (float(pred[i]) - measured) / measured,
                 'inside': bool(low[i] <= measured <= high[i])})
  return rows


def summary(rows: Sequence[Record]) -> dict[str, float]:
  errs = [r['relative_error'] for r in rows]
  return {'max_error': float(max(errs)), 'mean_error': float(np.mean(errs)),
          'coverage': float(np.mean([r['inside'] for r in rows])),
          'max_half_width': float(max(r.get('half_width', 0.0) for r in rows))}


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


def residual_dof(cand: Candidate, proxies: Sequence[Record]) -> int:
  """`Candidate.residual_dof` for these proxies (widths per budget, budgets)."""
  budgets = budgets_of(proxies)
  return cand.residual_dof(len(proxies) // len(budgets), len(budgets))


def choose(dev_scores: Mapping[str, Mapping[str, float]], order: Sequence[str],
           eligible: Optional[Sequence[str]] = None) -> str:
  """The eligible candidate (default: all) with the smallest worst-case development error (the
  first on ties); with none eligible, the best of all."""
  pool = [n for n in order if eligible is None or n in eligible] or list(order)
  return min(pool, key=lambda n: (dev_scores[n]['max_error'], order.index(n)))


def run_protocol(dev_proxies: Sequence[Record], dev_targets: Sequence[Record],
                 held_proxies: Sequence[Record], held_targets: Sequence[Record],
                 candidates: Sequence[Candidate] = CANDIDATES, samples: int = 1000,
                 seed: int = 0, model_error_form: str = 'per_ln_n', data_sd: float = 0.0
                 ) -> dict[str, Any]:
  """Score every candidate on the development split (no model error: that is what it measures),
  choose one among those with residual degrees of freedom, calibrate each candidate's model
  error on its own development rows, then predict the held-out split.  Nothing about the
  held-out targets feeds back into any choice.  `data_sd`: the measured data-order sd, in every
  interval (`target_sd`)."""
  names = [c.name for c in candidates]
  dof = {c.name: residual_dof(c, dev_proxies) for c in candidates}
  dev, model_errors, failed = {}, {}, {}
  for c in candidates:
    try:
      rows = evaluate(c, dev_proxies, dev_targets, 0.0, samples, seed, data_sd=data_sd)
    except (RuntimeError, ValueError) as e:  # a law the data cannot fit loses, it does not crash
      failed[c.name] = f'development: {e}'
      dev[c.name] = {'rows': [], **_FAILED}
      continue
    model_errors[c.name] = calibrate_model_error(rows, model_error_form)
    dev[c.name] = {'rows': rows, **summary(rows)}
  chosen = choose(dev, names, [n for n in names if dof[n] >= 1])
  held = predict_held_out(candidates, held_proxies, held_targets, model_errors, failed,
                          samples, seed + 1, model_error_form, data_sd)
  _add_half_width_terms(held, candidates[names.index(chosen)], held_proxies, held_targets,
                        model_errors, samples, seed + 1, model_error_form, data_sd)
  return {'chosen': chosen, 'candidates': names, 'residual_dof': dof,
          'model_error_form': model_error_form, 'data_order_sd': data_sd,
          'model_error': model_errors, 'dev': dev, 'held_out': held, 'failed': failed}


def predict_held_out(candidates: Sequence[Candidate], proxies: Sequence[Record],
                     targets: Sequence[Record], model_errors: dict[str, float],
                     failed: dict[str, str], samples: int, seed: int,
                     model_error_form: str, data_sd: float = 0.0) -> dict[str, Any]:
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
                      model_error_form, data_sd)
    except (RuntimeError, ValueError) as e:
      failed[c.name] = f'held-out: {e}'
      held[c.name] = {'rows': [], **_FAILED}
      continue
    held[c.name] = {'rows': rows, **summary(rows)}
  return held


def _add_half_width_terms(held: dict[str, Any], cand: Candidate, proxies: Sequence[Record],
                          targets: Sequence[Record], model_errors: Mapping[str, float],
                          samples: int, seed: int, model_error_form: str, data_sd: float) -> None:
  """The chosen law's held-out rows get `half_width_terms` under 'terms' (when it has rows)."""
  rows = held[cand.name]['rows']
  if rows:
    terms = half_width_terms(cand, proxies, targets, model_errors[cand.name], samples, seed,
                             model_error_form, data_sd)
    for row, t in zip(rows, terms):
      row['terms'] = t


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
  data_sd = float(earlier.get('data_order_sd', 0.0))
  held = predict_held_out(candidates, held_proxies, held_targets, model_errors, failed, samples,
                          seed + 1, earlier['model_error_form'], data_sd)
  if earlier['chosen'] in names:
    _add_half_width_terms(held, candidates[names.index(earlier['chosen'])], held_proxies,
                          held_targets, model_errors, samples, seed + 1,
                          earlier['model_error_form'], data_sd)
  return {'chosen': earlier['chosen'], 'candidates': names,
          'residual_dof': {c.name: residual_dof(c, held_proxies) for c in candidates},
          'model_error_form': earlier['model_error_form'], 'data_order_sd': data_sd,
          'model_error': model_errors,
          'dev': earlier['dev'], 'held_out': held, 'failed': failed, 'reused': True}


# ---- one target, no development runs (`flmjax predict-loss` with several token budgets) --------

PREDICT_CANDIDATES = tuple(c for c in CANDIDATES if c.x != 'envelope' and not c.drop_narrowest
                           and c.fix_c is None and c.x != 'params')


def choose_for_target(proxies: Sequence[Record], target: Record,
                      candidates: Sequence[Candidate] = PREDICT_CANDIDATES, samples: int = 1000,
                      seed: int = 0, model_error: float = 0.0, data_sd: float = 0.0
                      ) -> dict[str, Any]:
  """The law for one target, and why, when nothing but the proxies has been trained.

  The development check is the widest proxy width (at every budget) predicted from the
  narrower ones; the candidate with the smallest worst error there among those whose fit on all
  proxies keeps residual degrees of freedom is used (`choose`), then refitted on all proxies.
  `data_sd` > 0 counts the target as on another data order than the proxies."""
  widest = max(r['width'] for r in proxies)
  narrow = [r for r in proxies if r['width'] < widest]
  check = [r for r in proxies if r['width'] == widest]
  names = [c.name for c in candidates]
  dof = {c.name: residual_dof(c, proxies) for c in candidates}
  dev = {}
  for c in candidates:
    try:
      dev[c.name] = summary(evaluate(c, narrow, check, samples=1, seed=seed))
    except (RuntimeError, ValueError):
      dev[c.name] = dict(_FAILED)
  chosen = choose(dev, names, [n for n in names if dof[n] >= 1])
  cand = candidates[names.index(chosen)]
  tgt = dict(target, data_seed=None) if data_sd > 0 else target
  pred, low, high = (float(v[0]) for v in interval(
      cand, proxies, [tgt], model_error, samples, seed, 'per_ln_n', data_sd))
  ranked = sorted((n for n in names if n != chosen and dof[n] >= 1),
                  key=lambda n: dev[n]['max_error'])
  runner = (f"; next {ranked[0]} {100 * dev[ranked[0]]['max_error']:.2f}%" if ranked else '')
  why = (f"smallest worst error predicting the widest proxy (width {widest}, every budget) from "
         f"the narrower ones: {100 * dev[chosen]['max_error']:.2f}%{runner}; residual dof "
         f"{dof[chosen]} on all proxies (a law without residual freedom is never chosen)")
  return {'law': chosen, 'why': why, 'loss': pred, 'low': low, 'high': high,
          'check': {n: dev[n]['max_error'] for n in names}, 'residual_dof': dof}


_FAILED = {'max_error': float('inf'), 'mean_error': float('inf'), 'coverage': 0.0}
