"""`flmjax predict-loss`: predict a wide model's loss from narrow µP proxies (Yao et al. 2023,
"Research without Re-search", the Mu-scaling recipe FLM-101B follows).

With µP the transferred hyperparameters are (near) optimal at every width, so the loss at a fixed
token budget is a smooth function of size: fit L(N) = a·N^b + c over the proxies (N = non-embedding
parameters, b < 0, c the irreducible loss) and evaluate it at the target's N.  The same fit over
compute, L(C), uses each proxy's training FLOPs.

The interval has to mean what it says on a target the fit never saw.  Its main source of error is
not the fit's least-squares covariance but the seeds: a narrow proxy's loss moves with its init by
as much as neighbouring widths differ, and the target's own loss moves with its init too.  So
with several init seeds per proxy the interval is a parametric bootstrap over that seed noise
(refit per draw, plus the target's own seed noise, plus an optional model-error term calibrated on
development targets, see `flmjax.scaling.heldout`).  With one seed per proxy there is no spread to
measure; the interval then falls back to the fit covariance widened to the leave-one-out fits, and
the report says it does not include seed noise.

With proxies at several token budgets (`predict.proxy_tokens`, issue 29) the laws include the
data term, L(N, D) (Hoffmann et al. 2022; Kaplan et al. 2020), and the target may have its own
budget (`predict.target_tokens`): at a fixed budget the loss stops falling with width once the
data term binds, which a law in N alone cannot see.  Which law is used, and why, is chosen by
`flmjax.scaling.heldout.choose_for_target` (passed in as `choose_law`: this module is the fits'
home and imports no protocol).

A prediction file defines `get_config()` with sections `experiment` (µP, transferred
hyperparameters) and `predict` (proxy_widths, proxy_seeds, proxy_tokens, target_width,
target_tokens, train_target, samples, seed).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning

from flmjax import experiment, mup, plan
from flmjax.config import ConfigError
from flmjax.storage import paths
from flmjax.storage.metrics import read_metrics
from flmjax.scaling import sweep


def default_predict_config() -> dict[str, Any]:
  # proxy_seeds: init seeds averaged per proxy width ([] = the experiment's train.seed only);
  # target_seeds likewise for the measured target.  samples: bootstrap draws of the interval.
  # model_error: relative sd of the law's own error per unit of ln(N_target / N_widest proxy),
  # calibrated on development targets (benchmarks/loss_prediction.py measures it); 0 = seeds only.
  # proxy_tokens: token budgets of the proxies (each a multiple of global_batch_size · seq_len;
  # [] = the experiment's train.steps only; two or more fit laws with a data term).
  # target_tokens: the target's budget (0 = the experiment's).  data_order_sd: a run's loss sd
  # from its data order (benchmarks/loss_prediction.py measures it), for a target trained on
  # another data order than the proxies; 0 = the same order.
  return dict(proxy_widths=[64, 128, 256], target_width=2048, train_target=False, samples=1000,
              seed=0, proxy_seeds=[], target_seeds=[], model_error=0.0, proxy_tokens=[],
              target_tokens=0, data_order_sd=0.0)


# ---- the fit -------------------------------------------------------------------------------------

def power_law(x: Any, a: float, b: float, c: float) -> Any:
  return a * np.power(x, b) + c


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """L(x) = a·x^b + c, fitted in x / x_scale (for conditioning); cov of (a, b, c) or None."""
  a: float
  b: float
  c: float
  x_scale: float
  cov: Optional[np.ndarray]
  loo: tuple[tuple[float, float, float], ...] = ()  # leave-one-out (a, b, c), for the interval

  def __call__(self, x: Any) -> Any:
    return power_law(np.asarray(x, np.float64) / self.x_scale, self.a, self.b, self.c)

  def to_dict(self) -> dict[str, Any]:
    return {'a': self.a, 'b': self.b, 'c': self.c, 'x_scale': self.x_scale,
            'cov': None if self.cov is None else self.cov.tolist()}


def _curve_fit(xs: np.ndarray, ys: np.ndarray, fix_c: Optional[float] = None):
  with warnings.catch_warnings():  # an exact fit (3 points) has no covariance: expected
    warnings.simplefilter('ignore', OptimizeWarning)
    return _curve_fit_inner(xs, ys, fix_c)


def _curve_fit_inner(xs: np.ndarray, ys: np.ndarray, fix_c: Optional[float]):
  from scipy.optimize import curve_fit
  lo = float(ys.min())
  if fix_c is not None:
    f = lambda x, a, b: power_law(x, a, b, fix_c)
    gap = np.maximum(ys - fix_c, 1e-6)  # start from the log-log line through the two ends
    b0 = min(math.log(gap[-1] / gap[0]) / math.log(xs[-1] / xs[0]), -1e-3) if len(xs) > 1 else -0.5
    p0 = (float(gap[0] / xs[0] ** b0), max(b0, -4.9))
    popt, pcov = curve_fit(f, xs, ys, p0=p0, bounds=([0, -5], [np.inf, 0]), maxfev=20000)
    return (*popt, fix_c), pcov
  # Start from a c a bit below the smallest loss, with (a, b) from the log-log line through the
  # two ends: curve_fit then only refines.
  c0 = lo - 0.5 * (float(ys.max()) - lo)
  b0 = math.log((ys[-1] - c0) / (ys[0] - c0)) / math.log(xs[-1] / xs[0]) if len(xs) > 1 else -0.5
  b0 = min(b0, -1e-3)
  a0 = (ys[0] - c0) / xs[0] ** b0
  popt, pcov = curve_fit(power_law, xs, ys, p0=(a0, b0, c0),
                         bounds=([0, -5, 0], [np.inf, 0, lo]), maxfev=20000)
  return tuple(popt), pcov


def fit_power_law(x: Sequence[float], y: Sequence[float], fix_c: Optional[float] = None,
                  leave_one_out: bool = True) -> PowerLawFit:
  """Least-squares fit of L = a·x^b + c (a ≥ 0, b ≤ 0, 0 ≤ c ≤ min L), scipy's curve_fit;
  `fix_c` pins the asymptote (0: a pure power law, two parameters)."""
  xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
  order = np.argsort(xs)
  xs, ys = xs[order], ys[order]
  n_params = 3 if fix_c is None else 2
  if len(xs) < n_params:
    raise ValueError(f'fit_power_law needs at least {n_params} points, got {len(xs)}')
  scale = float(xs[0])
  (a, b, c), pcov = _curve_fit(xs / scale, ys, fix_c)
  cov = None
  if fix_c is None and len(xs) > 3 and np.all(np.isfinite(pcov)):
    cov = pcov
  loo = []
  if leave_one_out and len(xs) > n_params:  # an exact fit has no spread to measure
    for i in range(len(xs)):
      keep = np.arange(len(xs)) != i
      try:
        p, _ = _curve_fit(xs[keep] / scale, ys[keep], fix_c)
        loo.append(tuple(float(v) for v in p))
      except (RuntimeError, ValueError):
        continue
  return PowerLawFit(float(a), float(b), float(c), scale, cov, tuple(loo))


def predict(fit: PowerLawFit, x: float, samples: int = 4000, seed: int = 0
            ) -> tuple[float, float, float]:
  """(prediction, low, high): a 95% interval from the fit covariance (Monte Carlo), widened to
  cover the leave-one-out fits; [pred, pred] for an exact (three-point) fit."""
  mean = float(fit(x))
  bounds = [mean]
  if fit.cov is not None:
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal([fit.a, fit.b, fit.c], fit.cov, size=samples,
                                    check_valid='ignore')
    vals = power_law(x / fit.x_scale, draws[:, 0], draws[:, 1], draws[:, 2])
    vals = vals[np.isfinite(vals)]
    if len(vals):
      bounds += list(np.percentile(vals, [2.5, 97.5]))
  bounds += [float(power_law(x / fit.x_scale, *p)) for p in fit.loo]
  return mean, max(0.0, float(min(bounds))), float(max(bounds))  # a loss is never negative


# ---- laws with a data term --------------------------------------------------------------------

DATA_LAW_FORMS = ('hoffmann', 'kaplan')


def data_law(form: str, n: Any, d: Any, params: Sequence[float]) -> Any:
  """L(N, D) in log-parametrised form (n, d already scaled).

  'hoffmann' (Hoffmann et al. 2022): E + A/N^α + B/D^β with params (ln E, ln A, α, ln B, β).
  'kaplan' (Kaplan et al. 2020): ((N_c/N)^(α_N/α_D) + D_c/D)^α_D with params
  (ln N_c, α_N, ln D_c, α_D): no irreducible term, one parameter fewer."""
  n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
  if form == 'hoffmann':
    e, a, alpha, b, beta = params
    return np.exp(e) + np.exp(a - alpha * np.log(n)) + np.exp(b - beta * np.log(d))
  if form == 'kaplan':
    nc, alpha_n, dc, alpha_d = params
    return np.power(np.exp(alpha_n / alpha_d * (nc - np.log(n))) + np.exp(dc - np.log(d)),
                    alpha_d)
  raise ValueError(f'data law form must be one of {DATA_LAW_FORMS}, got {form!r}')


def data_law_params(form: str) -> int:
  return 5 if form == 'hoffmann' else 4


@dataclasses.dataclass(frozen=True)
class DataLawFit:
  """L(N, D) fitted in N / n_scale and D / d_scale (for conditioning)."""
  form: str
  params: tuple[float, ...]
  n_scale: float
  d_scale: float
  cost: float = 0.0

  def __call__(self, n: Any, d: Any) -> Any:
    return data_law(self.form, np.asarray(n, np.float64) / self.n_scale,
                    np.asarray(d, np.float64) / self.d_scale, self.params)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def describe(self) -> str:
    p = self.params
    if self.form == 'hoffmann':
      return (f'L(N, D) = {math.exp(p[0]):.4g} + {math.exp(p[1]):.4g}/(N/{self.n_scale:.4g})^'
              f'{p[2]:.3g} + {math.exp(p[3]):.4g}/(D/{self.d_scale:.4g})^{p[4]:.3g}')
    return (f'L(N, D) = ({math.exp(p[0]):.4g}/(N/{self.n_scale:.4g}))^({p[1]:.3g}/{p[3]:.3g}) + '
            f'{math.exp(p[2]):.4g}/(D/{self.d_scale:.4g}))^{p[3]:.3g}')


def _data_law_starts(form: str, ys: np.ndarray) -> list[np.ndarray]:
  """A small grid of starting points (as Hoffmann et al. do): the log-space objective has
  several local minima where E and the power terms trade off."""
  lo = float(ys.min())
  if form == 'hoffmann':
    return [np.array([math.log(lo * f), math.log(max(ys.max() - lo * f, 1e-3)), al,
                      math.log(max(ys.max() - lo * f, 1e-3) * s), be])
            for f in (0.5, 0.9) for al in (0.3, 1.0) for be in (0.3, 1.0) for s in (0.2, 1.0)]
  return [np.array([nc, an, dc, ad]) for nc in (0.0, 3.0) for an in (0.1, 0.5)
          for dc in (-2.0, 1.0) for ad in (0.1, 0.5)]


def _data_law_bounds(form: str) -> tuple[list[float], list[float]]:
  if form == 'hoffmann':  # exponents in (0, 3]: a law that rises with N or D is not a loss law
    return [-20, -20, 1e-3, -20, 1e-3], [20, 20, 3.0, 20, 3.0]
  return [-20, 1e-3, -20, 1e-3], [40, 3.0, 20, 3.0]


def fit_data_law(n: Sequence[float], d: Sequence[float], y: Sequence[float],
                 form: str = 'hoffmann', huber_delta: Optional[float] = 1e-3,
                 start: Optional[DataLawFit] = None) -> DataLawFit:
  """Fit L(N, D) by robust least squares on log L (scipy's least_squares with a Huber loss,
  as Hoffmann et al. fit theirs), from several starts; the lowest cost wins.  Log space weighs
  every run by its relative error; the Huber loss keeps one bad run from steering the fit.
  `start`: refine from an earlier fit only (a bootstrap draw moves the data a little);
  `huber_delta` None: plain least squares."""
  from scipy.optimize import least_squares
  ns, ds, ys = (np.asarray(v, np.float64) for v in (n, d, y))
  k = data_law_params(form)
  if len(ys) < k:
    raise ValueError(f'fit_data_law({form}) needs at least {k} runs, got {len(ys)}')
  if len(set(ds.tolist())) < 2:
    raise ValueError('fit_data_law needs proxies at two or more token budgets')
  n_scale, d_scale = float(ns.min()), float(ds.min())
  xn, xd, log_y = ns / n_scale, ds / d_scale, np.log(ys)
  lower, upper = _data_law_bounds(form)

  def residuals(p):
    with np.errstate(all='ignore'):
      r = np.log(data_law(form, xn, xd, p)) - log_y
    return np.where(np.isfinite(r), r, 1e3)

  best = None
  starts = [np.asarray(start.params)] if start is not None else _data_law_starts(form, ys)
  for p0 in starts:
    p0 = np.clip(p0, np.array(lower) + 1e-6, np.array(upper) - 1e-6)
    res = least_squares(residuals, p0, bounds=(lower, upper),
                        loss='linear' if huber_delta is None else 'huber',
                        f_scale=huber_delta or 1.0, x_scale='jac', max_nfev=2000)
    if best is None or res.cost < best.cost:
      best = res
  return DataLawFit(form, tuple(float(v) for v in best.x), n_scale, d_scale, float(best.cost))


def data_order_sd(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float:
  """The sd a run's final loss gets from its data order alone, from widths trained on two data
  orders with the same init seeds (in the same order).  Paired by seed: the init seed's own
  effect is in both runs of a pair and cancels, so each difference Δ_s = L(order a, seed s) −
  L(order b, seed s) has E[Δ_s²] = 2σ_data², and σ_data² is the mean of Δ_s²/2 over widths and
  seeds.  (Subtracting an init-seed variance from unpaired means would remove a term that the
  shared seeds already cancelled, and shrink σ_data towards 0.)"""
  diffs = []
  for a, b in pairs:
    if len(a) != len(b):
      raise ValueError(f'data_order_sd pairs runs seed by seed: got {len(a)} and {len(b)} seeds')
    diffs += [x - y for x, y in zip(a, b)]
  if not diffs:
    return 0.0
  return float(math.sqrt(np.mean(np.square(diffs)) / 2))


def seed_spread(seed_losses: Sequence[Sequence[float]]) -> tuple[np.ndarray, float]:
  """(standard error of each width's mean loss, pooled single-run seed sd).

  Two seeds estimate one width's sd badly, so each width gets at least the pooled sd (the root
  mean square over widths with two or more seeds); one seed everywhere gives zeros."""
  sds = [float(np.std(l, ddof=1)) for l in seed_losses if len(l) > 1]
  pooled = float(np.sqrt(np.mean(np.square(sds)))) if sds else 0.0
  se = [max(float(np.std(l, ddof=1)) if len(l) > 1 else 0.0, pooled) / math.sqrt(max(len(l), 1))
        for l in seed_losses]
  return np.asarray(se, np.float64), pooled


def bootstrap_interval(predict_fn: Callable[[np.ndarray], np.ndarray], shift_sd: np.ndarray,
                       target_sd: Any = 0.0, rel_model_sd: Any = 0.0, samples: int = 1000,
                       seed: int = 0, level: float = 0.95
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prediction, low, high) per target from a parametric bootstrap over seed noise.

  `predict_fn(shifts)` refits with each proxy width's mean loss moved by `shifts` and returns the
  predicted target losses; the shifts are drawn from N(0, shift_sd) (the proxies' seed noise).
  Each draw then gets the target's own seed noise N(0, target_sd) and a model error
  N(0, rel_model_sd · prediction) — both per target."""
  shift_sd = np.asarray(shift_sd, np.float64)
  center = np.atleast_1d(np.asarray(predict_fn(np.zeros_like(shift_sd)), np.float64))
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(samples):
    try:
      draws.append(np.atleast_1d(predict_fn(rng.normal(0.0, 1.0, shift_sd.shape) * shift_sd)))
    except (RuntimeError, ValueError):  # a draw the fit cannot follow: leave it out
      continue
  if not draws:
    return center, center.copy(), center.copy()
  d = np.asarray(draws, np.float64)
  d = d + rng.normal(0.0, 1.0, d.shape) * np.asarray(target_sd, np.float64)
  d = d + rng.normal(0.0, 1.0, d.shape) * np.asarray(rel_model_sd, np.float64) * center
  tail = 100 * (1 - level) / 2
  low, high = np.nanpercentile(d, [tail, 100 - tail], axis=0)
  return center, np.maximum(low, 0.0), high  # a loss is never negative


def prediction_warnings(pred: float, low: float, high: float, asymptote: float,
                        seed_sd: Optional[float]) -> list[str]:
  """Why an interval should not be trusted, in words (empty when it looks sound).

  `seed_sd` is the proxies' pooled single-run seed sd (None: one seed per proxy, unknown)."""
  out = []
  if asymptote > 0 and (low < asymptote or (seed_sd and pred - asymptote < seed_sd)):
    out.append(f'the prediction {pred:.4f} [{low:.4f}, {high:.4f}] lies at or below its own fitted '
               f'asymptote c = {asymptote:.4f}: the fit has flattened onto c, and a target whose '
               f'loss is below c (the law\'s form, not noise) cannot be predicted; try wider '
               f'proxies or a fit with c fixed')
  if seed_sd is None:
    out.append('one init seed per proxy: the interval covers the fit only, not the seed-to-seed '
               'spread of the proxies and the target; set predict.proxy_seeds to two or more seeds')
  elif (high - low) / 2 < seed_sd:
    out.append(f'the interval [{low:.4f}, {high:.4f}] is narrower than the proxies\' seed spread '
               f'(sd {seed_sd:.4f} per run): it cannot cover a single run of the target')
  return out


def fit_warnings(xs: Sequence[float], ys: Sequence[float], fit: PowerLawFit) -> list[str]:
  """Why a fit should not be trusted, in words (empty when it looks sound).

  The usual failure is proxies trained too briefly: their losses do not yet depend on width, the
  fit comes out flat (b ≈ 0) and a, c trade off freely, so the interval is meaningless."""
  order = np.argsort(xs)
  ys = np.asarray(ys, np.float64)[order]
  out = []
  if np.any(np.diff(ys) >= 0):
    out.append('the proxies\' losses do not fall with size (%s): the differences are noise, not '
               'a scaling law; train the proxies on more tokens or average more seeds'
               % ', '.join(f'{y:.4f}' for y in ys))
  if fit.b > -0.01:
    out.append(f'the fitted exponent b = {fit.b:.3g} is ≈ 0 (a flat law): the prediction is the '
               f'proxies\' mean and its interval is not informative')
  return out


# ---- runs --------------------------------------------------------------------------------------

def load_predict_config(path: str, overrides: Sequence[str] = ()) -> Any:
  cfg = experiment.load_tool_config(path, overrides, 'predict', default_predict_config(),
                                   'a prediction file')
  widths = [int(w) for w in cfg.predict.proxy_widths]
  if len(widths) < 3:
    raise ConfigError(f'predict.proxy_widths needs at least 3 widths for a 3-parameter fit, '
                      f'got {widths}')
  proxy_steps(cfg)
  target_steps(cfg)  # both raise a ConfigError for a budget that is not whole steps
  return cfg


def tokens_per_step(experiment_cfg: Any) -> int:
  return int(experiment_cfg.train.global_batch_size) * int(experiment_cfg.train.seq_len)


def steps_for_tokens(cfg: Any, tokens: int, field: str) -> int:
  """Training steps for a token budget; a budget that is not whole steps is a ConfigError."""
  per = tokens_per_step(cfg.experiment)
  if tokens <= 0 or tokens % per:
    raise ConfigError(f'{field}: {tokens} tokens is not a positive multiple of '
                      f'global_batch_size · seq_len = {per}')
  return tokens // per


def proxy_steps(cfg: Any) -> list[int]:
  """The proxies' budgets in steps, ascending ([the experiment's] without proxy_tokens)."""
  tokens = [int(t) for t in cfg.predict.get('proxy_tokens', ())]
  steps = sorted({steps_for_tokens(cfg, t, 'predict.proxy_tokens') for t in tokens})
  return steps or [int(cfg.experiment.train.steps)]


def target_steps(cfg: Any) -> int:
  tokens = int(cfg.predict.get('target_tokens', 0))
  if not tokens:
    return int(cfg.experiment.train.steps)
  return steps_for_tokens(cfg, tokens, 'predict.target_tokens')


def run_width(cfg: Any, width: int, workdir: str, seeds: Sequence[int] = (),
              steps: Optional[int] = None) -> dict[str, Any]:
  """Train `width` once per init seed (same tokens: `data.seed` is untouched) and average.

  A narrow proxy's final loss moves with its random init by about as much as neighbouring widths
  differ; the mean over a few seeds is what the fit should see.  The spread is kept
  (`seed_losses`, `loss_std`) for the report.  `steps` (None: the experiment's) sets the token
  budget, with its own LR schedule: a run at another budget is named by its steps too."""
  seeds = [int(s) for s in seeds] or [int(cfg.experiment.train.seed)]
  base = int(cfg.experiment.train.steps)
  steps = base if steps is None else int(steps)
  runs = []
  for seed in seeds:
    c = mup.with_hparams(cfg.experiment, width=width)
    c.train.seed = seed
    # the seed is always in the name: a run is read back by it; the steps when not the default
    sub = f'w{width}_s{seed}' if steps == base else f'w{width}_steps{steps}_s{seed}'
    if steps != base:
      c.train.steps = steps
      c.optim.warmup_steps = min(int(c.optim.warmup_steps), steps)
    runs.append(sweep.run_point(c, paths.join(workdir, sub)))
  losses = [r['loss'] for r in runs]
  return {'width': width, **runs[0], 'steps': steps, 'loss': float(np.mean(losses)),
          'loss_std': float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
          'seed_losses': losses, 'seeds': seeds, 'workdirs': [r['workdir'] for r in runs]}


def curve(workdir: str) -> tuple[list[float], list[float]]:
  """(flops, loss) of a run's logged training steps."""
  recs = [r for r in read_metrics(paths.join(workdir, 'metrics.jsonl')) if 'loss' in r]
  return [r['flops'] for r in recs], [r['loss'] for r in recs]


ChooseLaw = Callable[..., dict[str, Any]]


def predict_loss(cfg: Any, workdir: str, train_target: Optional[bool] = None,
                 choose_law: Optional[ChooseLaw] = None) -> dict[str, Any]:
  """Train the proxies, fit L(N) and L(C) at the budget nearest the target's, predict the
  target (and measure it if asked).  With proxies at several budgets, `choose_law` (e.g.
  `heldout.choose_for_target`) picks the law used — one with a data term among them — and says
  why (`out['law']`)."""
  p = cfg.predict
  budgets, t_steps = proxy_steps(cfg), target_steps(cfg)
  if len(budgets) > 1 and choose_law is None:
    raise ValueError('proxies at several token budgets need a choose_law')
  by_budget = {b: [run_width(cfg, int(w), workdir, p.get('proxy_seeds', ()), b)
                   for w in sorted(int(w) for w in p.proxy_widths)] for b in budgets}
  nearest = min(budgets, key=lambda b: abs(math.log(t_steps / b)))
  proxies = by_budget[nearest]
  target_cfg = mup.with_hparams(cfg.experiment, width=int(p.target_width))
  target_cfg.train.steps = t_steps
  stages = plan.stage_plan(target_cfg)
  target = {'width': int(p.target_width), 'steps': t_steps,
            'tokens': t_steps * tokens_per_step(cfg.experiment),
            'non_embedding_params': stages[-1].model.param_count(include_embedding=False),
            'flops': plan.flops_summary(stages)['growth_flops']}
  ys = np.asarray([r['loss'] for r in proxies], np.float64)
  seed_losses = [r['seed_losses'] for r in proxies]
  shift_sd, seed_sd = seed_spread(seed_losses)
  with_seeds = all(len(l) > 1 for l in seed_losses)
  target_seeds = [int(s) for s in p.get('target_seeds', ())]
  ns = [r['non_embedding_params'] for r in proxies]
  distance = math.log(target['non_embedding_params'] / max(ns))  # extrapolation, in ln N
  out = {'proxies': proxies, 'target': target, 'seed_sd': seed_sd if with_seeds else None,
         'interval': ('bootstrap over init seeds (proxies and target)' if with_seeds else
                      'fit covariance and leave-one-out fits (one seed: no seed noise)')}
  if len(budgets) > 1:
    out['budget_proxies'] = [r for b in budgets for r in by_budget[b]]
    out['law'] = choose_law(out['budget_proxies'], target, samples=int(p.samples),
                            seed=int(p.seed), model_error=float(p.get('model_error', 0.0)),
                            data_sd=float(p.get('data_order_sd', 0.0)))

  fits = {}
  for key, xs, xt in (('N', ns, target['non_embedding_params']),
                      ('C', [r['flops'] for r in proxies], target['flops'])):
    fit = fits[key] = fit_power_law(xs, ys)
    if with_seeds:
      pred = bootstrap_interval(
          lambda d, xs=xs, xt=xt: fit_power_law(xs, ys + d, leave_one_out=False)(xt), shift_sd,
          seed_sd / math.sqrt(max(len(target_seeds), 1)),
          float(p.get('model_error', 0.0)) * distance, int(p.samples), int(p.seed))
      pred = tuple(float(v[0]) for v in pred)
    else:
      pred = predict(fit, xt, int(p.samples), int(p.seed))
    out[f'fit_{key}'] = fit.to_dict()
    out[f'predicted_{key}'] = dict(zip(('loss', 'low', 'high'), pred))
  n_pred, c_pred = out['predicted_N'], out['predicted_C']
  if 'law' not in out:
    out['law'] = {'law': 'L(N)', 'why': 'one token budget: the law at fixed tokens (set '
                  'predict.proxy_tokens to two or more budgets to fit the data term)', **n_pred}
  out['warnings'] = (fit_warnings(ns, ys, fits['N'])
                     + prediction_warnings(n_pred['loss'], n_pred['low'], n_pred['high'],
                                           out['fit_N']['c'], out['seed_sd']))
  if p.train_target if train_target is None else train_target:
    res = run_width(cfg, int(p.target_width), workdir, target_seeds, t_steps)
    target.update(measured=res['loss'], measured_std=res['loss_std'],
                  seed_losses=res['seed_losses'], workdir=res['workdir'])
    for key, pr in (('N', n_pred), ('C', c_pred)):
      out[f'relative_error_{key}'] = abs(pr['loss'] - res['loss']) / res['loss']
      out[f'inside_{key}'] = bool(pr['low'] <= res['loss'] <= pr['high'])
    law = out['law']
    law.update(relative_error=abs(law['loss'] - res['loss']) / res['loss'],
               inside=bool(law['low'] <= res['loss'] <= law['high']))
    if res['loss'] < out['fit_N']['c']:
      out['warnings'].append(f"the measured loss {res['loss']:.4f} is below the fitted asymptote "
                             f"c = {out['fit_N']['c']:.4f}: the law's form is wrong at this scale")
  return out


def format_report(out: Mapping[str, Any]) -> str:
  lines = [f"{'width':>6} {'N (non-emb)':>12} {'FLOPs':>10} {'loss':>9} {'± seeds':>8} "
           f"{'fit L(N)':>9}"]
  fit_n = PowerLawFit(**{**{k: out['fit_N'][k] for k in ('a', 'b', 'c', 'x_scale')},
                         'cov': None})
  for r in out['proxies']:
    spread = f"{r['loss_std']:.4f}" if len(r.get('seed_losses', ())) > 1 else '-'
    lines.append(f"{r['width']:>6} {r['non_embedding_params']:>12,} {r['flops']:>10.3g} "
                 f"{r['loss']:>9.4f} {spread:>8} {float(fit_n(r['non_embedding_params'])):>9.4f}")
  f = out['fit_N']
  lines.append(f"L(N) = {f['a']:.4g}·(N/{f['x_scale']:.4g})^{f['b']:.4g} + {f['c']:.4g}")
  t = out['target']
  for key in ('N', 'C'):
    pr = out[f'predicted_{key}']
    lines.append(f"target width {t['width']} ({t['non_embedding_params']:,} non-emb params): "
                 f"L({key}) predicts {pr['loss']:.4f} [{pr['low']:.4f}, {pr['high']:.4f}]")
  if out.get('interval'):
    lines.append(f"95% interval: {out['interval']}")
  law = out.get('law')
  if law:
    half = 100 * (law['high'] - law['low']) / 2 / law['loss'] if law['loss'] else 0.0
    lines.append(f"law used: {law['law']}, because {law['why']}")
    lines.append(f"target width {t['width']} at {t.get('tokens', 0):,} tokens: {law['law']} "
                 f"predicts {law['loss']:.4f} [{law['low']:.4f}, {law['high']:.4f}] "
                 f"(±{half:.2f}%)")
  if 'measured' in t:
    spread = f" ± {t['measured_std']:.4f} (seeds)" if len(t.get('seed_losses', ())) > 1 else ''
    inside = lambda k: 'inside' if out.get(f'inside_{k}') else 'OUTSIDE'
    lines.append(f"measured {t['measured']:.4f}{spread}: relative error L(N) "
                 f"{100 * out['relative_error_N']:.2f}% ({inside('N')} its interval), L(C) "
                 f"{100 * out['relative_error_C']:.2f}% ({inside('C')})")
    if law and 'relative_error' in law:
      lines.append(f"law used, {law['law']}: relative error {100 * law['relative_error']:.2f}% "
                   f"({'inside' if law['inside'] else 'OUTSIDE'} its interval)")
  lines += [f'warning: {w}' for w in out.get('warnings', ())]
  return '\n'.join(lines)


def plot(out: Mapping[str, Any], path: str) -> str:
  """PNG: left, loss vs non-embedding params with the L(N) fit, interval and target; right,
  training curves vs FLOPs with the L(C) fit."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from flmjax.plot import save_figure  # matplotlib too: only when a figure is drawn
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  ns = [r['non_embedding_params'] for r in out['proxies']]
  ys = [r['loss'] for r in out['proxies']]
  t = out['target']
  for ax, key, xs, xt, xlabel in ((ax1, 'N', ns, t['non_embedding_params'],
                                   'non-embedding parameters N'),
                                  (ax2, 'C', [r['flops'] for r in out['proxies']], t['flops'],
                                   'training FLOPs C')):
    f = out[f'fit_{key}']
    fit = PowerLawFit(f['a'], f['b'], f['c'], f['x_scale'], None)
    grid = np.geomspace(min(xs) * 0.8, xt * 1.3, 200)
    ax.plot(grid, fit(grid), 'k-', lw=1, label=f"fit: {f['a']:.3g}·x^{f['b']:.3g} + {f['c']:.3g}")
    ax.plot(xs, ys, 'o', color='tab:blue', label='proxies')
    pr = out[f'predicted_{key}']
    ax.errorbar([xt], [pr['loss']], yerr=[[pr['loss'] - pr['low']], [pr['high'] - pr['loss']]],
                fmt='s', color='tab:orange', capsize=4, label='predicted target')
    if 'measured' in t:
      ax.plot([xt], [t['measured']], '*', ms=12, color='tab:red', label='measured target')
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('validation loss')
    ax.legend(fontsize=7)
  for r in out['proxies']:
    fl, ls = curve(r['workdir'])
    if fl:
      ax2.plot(fl, ls, lw=0.7, alpha=0.6)
  if 'workdir' in t:
    fl, ls = curve(t['workdir'])
    ax2.plot(fl, ls, lw=0.7, color='tab:red', alpha=0.6)
  ax1.set_title('L(N) at fixed tokens')
  ax2.set_title('L(C): final losses (markers), training curves (lines)')
  fig.tight_layout()
  paths.makedirs(paths.dirname(paths.absolute(path)))
  save_figure(fig, path)
  return path
