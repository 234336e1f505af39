"""The held-out loss-prediction analysis (issue 19): seed-bootstrap intervals that cover at their
nominal rate, the warnings of `predict-loss`, training-curve interpolation and the envelope, and
a protocol that chooses on development targets only."""

from __future__ import annotations

import numpy as np
import pytest

from flmjax.scaling import heldout, loss_prediction as lp


def _law(n):
  return 30.0 * np.asarray(n, np.float64) ** -0.3 + 3.0


def _record(width, rng, seeds=2, sd=0.01, law=_law):
  n = 24 * width * width
  losses = law(n) + rng.normal(0.0, sd, seeds)
  flops = np.geomspace(1e6, 1e9, 12) * width
  curve = law(n) + 0.4 * (flops[-1] / flops) ** 0.3 - 0.05  # train loss, ends 0.35 above val
  return dict(width=width, loss=float(losses.mean()), seed_losses=list(map(float, losses)),
              loss_std=float(np.std(losses, ddof=1)), non_embedding_params=n,
              params=n + 2048 * width, flops=float(flops[-1]), curve_flops=list(flops),
              curve_loss=list(curve))


def test_seed_spread_pools_and_floors():
  se, pooled = lp.seed_spread([[1.0, 1.2], [2.0, 2.0], [3.0, 3.1, 3.2]])
  sds = [np.std([1.0, 1.2], ddof=1), 0.0, 0.1]
  assert pooled == pytest.approx(np.sqrt(np.mean(np.square(sds))))
  # a width whose two seeds happen to agree still gets the pooled sd, not zero
  assert se[1] == pytest.approx(pooled / np.sqrt(2))
  assert se[0] == pytest.approx(sds[0] / np.sqrt(2))
  assert se[2] == pytest.approx(max(0.1, pooled) / np.sqrt(3))
  se1, pooled1 = lp.seed_spread([[1.0], [2.0]])
  assert pooled1 == 0.0 and np.all(se1 == 0.0)


def test_bootstrap_interval_covers_at_nominal_rate():
  """Simulate the whole experiment many times (proxy seeds, target seeds): the 95% interval
  must hold the measured target mean about 95% of the time, and a fit-only interval must not."""
  rng = np.random.default_rng(0)
  widths, sd = [4, 8, 12, 16], 0.02
  ns = np.array([24 * w * w for w in widths], np.float64)
  nt = 24 * 128 * 128.0
  hits, narrow_hits, trials = 0, 0, 80
  for trial in range(trials):
    seed_losses = [list(_law(n) + rng.normal(0, sd, 2)) for n in ns]
    ys = np.array([np.mean(l) for l in seed_losses])
    measured = _law(nt) + rng.normal(0, sd, 2).mean()
    shift_sd, seed_sd = lp.seed_spread(seed_losses)
    fn = lambda d: lp.fit_power_law(ns, ys + d, leave_one_out=False)(np.array([nt]))
    pred, low, high = lp.bootstrap_interval(fn, shift_sd, seed_sd / np.sqrt(2), 0.0, 120, trial)
    hits += bool(low[0] <= measured <= high[0])
    fit = lp.fit_power_law(ns, ys, leave_one_out=False)
    if fit.cov is not None:
      p, lo, hi = lp.predict(fit, nt, 500, trial)
      narrow_hits += bool(lo <= measured <= hi)
  assert 0.85 <= hits / trials <= 1.0
  assert narrow_hits / trials < hits / trials  # the fit covariance alone under-covers


def test_bootstrap_interval_adds_target_noise_and_model_error():
  fn = lambda d: np.array([5.0, 6.0]) + d.sum()
  pred, low, high = lp.bootstrap_interval(fn, np.zeros(3), 0.0, 0.0, 200, 0)
  np.testing.assert_allclose(pred, [5.0, 6.0])
  np.testing.assert_allclose(high - low, 0.0)
  _, low, high = lp.bootstrap_interval(fn, np.zeros(3), [0.1, 0.0], [0.0, 0.01], 2000, 0)
  assert (high[0] - low[0]) == pytest.approx(2 * 1.96 * 0.1, rel=0.15)
  assert (high[1] - low[1]) == pytest.approx(2 * 1.96 * 0.06, rel=0.15)


def test_fit_with_fixed_asymptote():
  n = np.geomspace(1e3, 1e6, 5)
  y = 7.0 * n ** -0.1
  fit = lp.fit_power_law(n, y, fix_c=0.0)
  assert fit.c == 0.0 and fit.cov is None
  np.testing.assert_allclose(fit(1e8), 7.0 * 1e8 ** -0.1, rtol=1e-4)
  free = lp.fit_power_law(n, y + 2.0)
  assert free.c > 0.5  # a free asymptote is fitted, not pinned


def test_prediction_warnings():
  assert lp.prediction_warnings(4.2, 4.1, 4.3, 3.0, 0.01) == []
  below = lp.prediction_warnings(4.06, 4.04, 4.08, 4.05, 0.02)
  assert len(below) == 1 and 'asymptote' in below[0]
  assert any('asymptote' in w for w in lp.prediction_warnings(4.06, 4.00, 4.12, 4.02, 0.01))
  narrow = lp.prediction_warnings(4.2, 4.19, 4.21, 3.0, 0.03)
  assert len(narrow) == 1 and 'narrower than the proxies' in narrow[0]
  single = lp.prediction_warnings(4.2, 4.1, 4.3, 3.0, None)
  assert len(single) == 1 and 'one init seed' in single[0]


def test_interpolate_at_and_envelope():
  flops, losses = [1e3, 1e4, 1e5], [5.0, 4.0, 3.0]
  got = heldout.interpolate_at(flops, losses, [1e3, np.sqrt(1e3 * 1e4), 1e5, 1e2, 1e6])
  np.testing.assert_allclose(got[:3], [5.0, 4.5, 3.0])
  assert np.isnan(got[3]) and np.isnan(got[4])  # no extrapolation of a curve
  small = ([1e3, 1e4], [4.0, 3.5])
  big = ([2e3, 1e5], [6.0, 3.0])
  env = heldout.envelope([small, big], [1e3, 1e4, 1e5, 1e6])
  np.testing.assert_allclose(env[:3], [4.0, 3.5, 3.0])
  assert np.isnan(env[3])
  fl, mean = heldout.mean_curve([([1, 2, 3], [3.0, 2.0, 1.0]), ([1, 2], [5.0, 4.0])])
  assert fl == [1, 2] and mean == [4.0, 3.0]


def test_predictors_recover_a_known_law():
  rng = np.random.default_rng(1)
  proxies = [_record(w, rng, sd=0.0) for w in (4, 8, 12, 16)]
  targets = [_record(w, rng, sd=0.0) for w in (64, 128)]
  zeros = np.zeros(4)
  for cand in heldout.CANDIDATES[:1] + heldout.CANDIDATES[2:3]:
    got = heldout.make_predictor(cand, proxies, targets)(zeros)
    np.testing.assert_allclose(got, [t['loss'] for t in targets], rtol=2e-3)
  # a law without an asymptote cannot follow one that has it
  c0 = heldout.make_predictor(heldout.Candidate('c0', fix_c=0.0), proxies, targets)(zeros)
  assert np.all(c0 < np.array([t['loss'] for t in targets]) - 0.05)
  env = heldout.make_predictor(heldout.Candidate('env', x='envelope'), proxies, targets)(zeros)
  assert np.all(np.isfinite(env))
  # a shift of one proxy moves the prediction (the bootstrap has something to vary)
  moved = heldout.make_predictor(heldout.CANDIDATES[0], proxies, targets)(
      np.array([0.0, 0.0, 0.0, 0.05]))
  assert np.all(np.abs(moved - [t['loss'] for t in targets]) > 1e-3)


def test_protocol_chooses_on_development_only():
  """Held-out targets from a different law change no choice and no calibration."""
  rng = np.random.default_rng(2)
  dev_p = [_record(w, rng) for w in (4, 8, 12, 16)]
  dev_t = [_record(w, rng) for w in (32, 48)]
  held_p = [_record(w, rng) for w in (4, 8, 12, 16)]
  held_t = [_record(w, rng) for w in (64, 128, 192)]
  cands = heldout.CANDIDATES[:3]
  a = heldout.run_protocol(dev_p, dev_t, held_p, held_t, cands, samples=60)
  shifted = [dict(t, loss=t['loss'] - 0.3) for t in held_t]
  b = heldout.run_protocol(dev_p, dev_t, held_p, shifted, cands, samples=60)
  assert a['chosen'] == b['chosen'] and a['model_error'] == b['model_error']
  assert a['chosen'] != 'L(N) c=0'  # the data follow a law with an asymptote
  assert b['held_out'][b['chosen']]['coverage'] < a['held_out'][a['chosen']]['coverage'] or \
      b['held_out'][b['chosen']]['max_error'] > 0.05
  rows = a['held_out'][a['chosen']]['rows']
  assert [r['width'] for r in rows] == [64, 128, 192]
  assert all(r['low'] <= r['predicted'] <= r['high'] for r in rows)
  # the model error widens the interval with the distance extrapolated
  widths = [r['high'] - r['low'] for r in rows]
  if a['model_error'][a['chosen']] > 0:
    assert widths[0] < widths[2]


def test_summary_and_calibration():
  rows = [dict(relative_error=0.01, inside=True, distance=1.0, half_width=0.02),
          dict(relative_error=0.03, inside=False, distance=3.0, half_width=0.01)]
  s = heldout.summary(rows)
  assert s == {'max_error': 0.03, 'mean_error': pytest.approx(0.02), 'coverage': 0.5,
               'max_half_width': 0.02}
  assert heldout.calibrate_model_error(rows) == pytest.approx(0.01)
  # an error that does not grow with the distance: the RMS of the relative errors themselves
  assert heldout.calibrate_model_error(rows, 'constant') == pytest.approx(np.sqrt(0.0005))
  with pytest.raises(ValueError, match='model_error_form'):
    heldout.calibrate_model_error(rows, 'quadratic')
  scores = {'a': {'max_error': 0.02}, 'b': {'max_error': 0.01}, 'c': {'max_error': 0.01}}
  assert heldout.choose(scores, ['a', 'b', 'c']) == 'b'
  assert heldout.choose(scores, ['a', 'b', 'c'], eligible=['a', 'c']) == 'c'
  assert heldout.choose(scores, ['a', 'b', 'c'], eligible=[]) == 'b'  # none eligible: best


def test_an_exact_interpolation_is_never_chosen():
  """Three parameters through three proxies leave no residual: however well such a law does on
  the development targets, the protocol does not choose it (it once won by a hair on near
  targets and then extrapolated worst)."""
  dof = {c.name: c.residual_dof(4) for c in heldout.CANDIDATES}
  assert dof == {'L(N) free c': 1, 'L(N) c=0': 2, 'L(N) free c, no narrowest': 0,
                 'L(N with embedding)': 1, 'L(C) final': 1, 'L(C) envelope': 1,
                 'L(N, D) Hoffmann': -1, 'L(N, D) Kaplan': 0, 'L(C) envelope, all budgets': 1}
  # at three budgets the laws with a data term fit 12 runs; one-budget laws still see 4
  dof3 = {c.name: c.residual_dof(4, 3) for c in heldout.CANDIDATES}
  assert dof3['L(N, D) Hoffmann'] == 7 and dof3['L(N, D) Kaplan'] == 8
  assert dof3['L(N) free c'] == 1 and dof3['L(C) envelope, all budgets'] == 9
  rng = np.random.default_rng(4)
  proxies = [_record(w, rng, sd=0.0) for w in (4, 8, 12, 16)]
  targets = [_record(w, rng, sd=0.0) for w in (32, 48)]
  exact = heldout.Candidate('exact', drop_narrowest=True)  # the true law through 8, 12, 16
  worse = heldout.Candidate('worse', fix_c=0.0)            # the wrong form, but with residual
  out = heldout.run_protocol(proxies, targets, proxies, targets, [exact, worse], samples=20)
  assert out['dev']['exact']['max_error'] < out['dev']['worse']['max_error']
  assert out['residual_dof'] == {'exact': 0, 'worse': 2} and out['chosen'] == 'worse'


def test_a_candidate_that_cannot_fit_loses_without_crashing(monkeypatch):
  rng = np.random.default_rng(3)
  dev_p = [_record(w, rng) for w in (4, 8, 12, 16)]
  dev_t = [_record(w, rng) for w in (32,)]
  held_t = [_record(w, rng) for w in (64,)]
  broken = heldout.Candidate('broken', x='no such field')
  with pytest.raises(KeyError):
    heldout.make_predictor(broken, dev_p, dev_t)

  def failing(*args, **kw):
    raise RuntimeError('no convergence')
  real = heldout.make_predictor
  monkeypatch.setattr(heldout, 'make_predictor', lambda c, p, t: failing if c.name == 'bad'
                      else real(c, p, t))
  out = heldout.run_protocol(dev_p, dev_t, dev_p, held_t,
                             [heldout.Candidate('bad'), heldout.CANDIDATES[0]], samples=20)
  assert out['chosen'] == heldout.CANDIDATES[0].name and 'bad' in out['failed']
  assert out['dev']['bad']['max_error'] == float('inf')


def test_reuse_protocol_judges_new_runs_by_the_earlier_predictor():
  """An arm that changes one thing in training (issue 14: the objective) is judged by the law
  and model errors chosen earlier on development: the same held-out runs give the same rows as
  the earlier protocol, other runs give other rows, and nothing is re-chosen."""
  rng = np.random.default_rng(5)
  dev_p = [_record(w, rng) for w in (4, 8, 12, 16)]
  dev_t = [_record(w, rng) for w in (32, 48)]
  held_t = [_record(w, rng) for w in (64, 128)]
  cands = heldout.CANDIDATES[:2]
  first = heldout.run_protocol(dev_p, dev_t, dev_p, held_t, cands, samples=40,
                               model_error_form='constant')
  again = heldout.reuse_protocol(first, dev_p, held_t, cands, samples=40)
  assert again['chosen'] == first['chosen'] and again['model_error'] == first['model_error']
  assert again['held_out'] == first['held_out'] and again['dev'] == first['dev']
  # other proxies and targets (a law 0.2 nats higher throughout): new rows, same choices
  up = lambda n: _law(n) + 0.2
  other_p = [_record(w, rng, law=up) for w in (4, 8, 12, 16)]
  other_t = [_record(w, rng, law=up) for w in (64, 128)]
  arm = heldout.reuse_protocol(first, other_p, other_t, cands, samples=40)
  assert arm['chosen'] == first['chosen'] and arm['model_error_form'] == 'constant'
  rows = arm['held_out'][arm['chosen']]['rows']
  assert [r['measured'] for r in rows] == [t['loss'] for t in other_t]
  assert all(r['predicted'] > f['predicted'] + 0.1
             for r, f in zip(rows, first['held_out'][first['chosen']]['rows']))
  with pytest.raises(ValueError, match='no model error'):
    heldout.reuse_protocol(first, other_p, other_t, heldout.CANDIDATES[:3], samples=10)
