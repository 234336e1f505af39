"""Loss prediction with a data term (issue 29): L(N, D) fits recover known laws, the law is chosen
on development targets only, and intervals include the data-order noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flmjax.scaling import heldout, loss_prediction as lp

WIDTHS = (4, 8, 12, 16)
BUDGETS = (1.2e6, 2.4e6, 4.8e6)  # 300 / 600 / 1200 steps × 4096 tokens


def _hoffmann(n, d):
  return 3.0 + 40.0 * np.asarray(n, np.float64) ** -0.4 + 300.0 * np.asarray(d, np.float64) ** -0.35


def _record(width, tokens, rng, seeds=2, sd=0.0, data_seed=0, law=_hoffmann):
  n = 24 * width * width
  losses = law(n, tokens) + rng.normal(0.0, sd, seeds)
  return dict(width=width, tokens=tokens, loss=float(losses.mean()), data_seed=data_seed,
              seed_losses=list(map(float, losses)), loss_std=float(np.std(losses, ddof=1)),
              non_embedding_params=n, params=n + 2048 * width, flops=6.0 * n * tokens)


def test_hoffmann_law_by_hand_and_recovered():
  # by hand: 40 / 500^0.4 = 40 / 12.011 = 3.330; 300 / (1.2e6)^0.35 = 300 / 134.2 = 2.235
  assert _hoffmann(500, 1.2e6) == pytest.approx(3.0 + 3.330 + 2.235, abs=2e-3)
  n = np.array([24 * w * w for w in WIDTHS] * 3, np.float64)
  d = np.repeat(BUDGETS, len(WIDTHS))
  fit = lp.fit_data_law(n, d, _hoffmann(n, d))
  e, log_a, alpha, log_b, beta = fit.params
  # the fit works in N / n_scale and D / d_scale: undo the scaling to compare
  a = math.exp(log_a) * fit.n_scale ** alpha
  b = math.exp(log_b) * fit.d_scale ** beta
  np.testing.assert_allclose([math.exp(e), a, alpha, b, beta], [3.0, 40.0, 0.4, 300.0, 0.35],
                             rtol=1e-3)
  # 12× wider and 3× more tokens than any proxy: still the law
  assert fit(24 * 192 ** 2, 1.44e7) == pytest.approx(_hoffmann(24 * 192 ** 2, 1.44e7), rel=1e-5)
  # a law in N alone, fitted at one budget, cannot follow the data term
  at_600 = lp.fit_power_law(n[4:8], _hoffmann(n[4:8], 2.4e6))
  assert abs(at_600(24 * 192 ** 2) - _hoffmann(24 * 192 ** 2, 1.44e7)) > 0.1
  with pytest.raises(ValueError, match='two or more token budgets'):
    lp.fit_data_law(np.r_[n[:4], 2 * n[:2]], np.full(6, 2.4e6), np.full(6, 4.0))


def test_hoffmann_fit_is_robust_to_one_bad_run_and_kaplan_recovers_its_own_form():
  n = np.array([24 * w * w for w in WIDTHS] * 3, np.float64)
  d = np.repeat(BUDGETS, len(WIDTHS))
  y = _hoffmann(n, d)
  bad = y.copy()
  bad[5] += 0.3  # one diverged run
  true = _hoffmann(24 * 128 ** 2, 9.6e6)
  robust = lp.fit_data_law(n, d, bad)(24 * 128 ** 2, 9.6e6)
  plain = lp.fit_data_law(n, d, bad, huber_delta=None)(24 * 128 ** 2, 9.6e6)
  assert abs(robust / true - 1) < 0.01 < 0.02 < abs(plain / true - 1)  # Huber: 0.5%, plain: 11%
  kaplan = lambda n, d: ((8.8e6 / n) ** (0.076 / 0.095) + 5.4e6 / d) ** 0.095
  fit = lp.fit_data_law(n, d, kaplan(n, d), form='kaplan')
  assert fit(1e6, 1e8) == pytest.approx(kaplan(1e6, 1e8), rel=1e-4)


def test_data_order_sd_by_hand():
  # paired by seed: differences 0.5, 0.5 (first width) and 0.3, 0.3 (second); the seeds' own
  # 0.2 spread is in both orders and cancels.  σ² = mean(0.25, 0.25, 0.09, 0.09) / 2 = 0.085
  pairs = [([1.0, 1.2], [1.5, 1.7]), ([1.9, 2.1], [2.2, 2.4])]
  assert lp.data_order_sd(pairs) == pytest.approx(math.sqrt(0.085))
  assert lp.data_order_sd([([1.0, 1.2], [1.0, 1.2])]) == 0.0  # the same order: no data noise
  with pytest.raises(ValueError, match='seed by seed'):
    lp.data_order_sd([([1.0, 1.2], [1.0])])
  assert lp.data_order_sd([]) == 0.0


def test_intervals_include_the_data_order_term():
  rng = np.random.default_rng(0)
  proxies = [_record(w, b, rng) for w in WIDTHS for b in BUDGETS]
  same = _record(64, 2.4e6, rng, data_seed=0)
  other = _record(64, 2.4e6, rng, data_seed=3)
  sd = heldout.target_sd(proxies, [same, other], 0.01, 0.02)
  np.testing.assert_allclose(sd, [0.01 / math.sqrt(2), math.sqrt(0.01 ** 2 / 2 + 2 * 0.02 ** 2)])
  cand = heldout.Candidate('L(N, D) Hoffmann', form='hoffmann')
  without = heldout.evaluate(cand, proxies, [other], samples=400, data_sd=0.0)[0]
  with_it = heldout.evaluate(cand, proxies, [other], samples=400, data_sd=0.02)[0]
  assert without['half_width'] < 1e-6  # noise-free proxies and target: nothing to spread
  # ± 1.96 · √2 · 0.02 around the prediction
  assert with_it['half_width'] * with_it['predicted'] == pytest.approx(1.96 * math.sqrt(2) * 0.02,
                                                                       rel=0.15)


def test_law_with_data_term_is_chosen_on_development_only():
  """Targets whose token budget grows with size: only a law with a data term follows them; the
  choice and the calibration are the same whatever the held-out targets measure."""
  rng = np.random.default_rng(1)
  proxies = [_record(w, b, rng, sd=0.002) for w in WIDTHS for b in BUDGETS]
  grow = lambda w: 2.4e6 * w / 32  # tokens ∝ width
  dev = [_record(w, grow(w), rng, sd=0.002, data_seed=1) for w in (32, 64, 128)]
  dev += [_record(w, 2.4e6, rng, sd=0.002, data_seed=1) for w in (32, 64)]
  held = [_record(w, grow(w), rng, sd=0.002, data_seed=3) for w in (96, 192)]
  cands = [heldout.CANDIDATES[0], heldout.Candidate('L(N, D) Hoffmann', form='hoffmann')]
  a = heldout.run_protocol(proxies, dev, proxies, held, cands, samples=40, data_sd=0.001)
  assert a['residual_dof'] == {'L(N) free c': 1, 'L(N, D) Hoffmann': 7}
  assert a['chosen'] == 'L(N, D) Hoffmann'
  assert a['dev']['L(N) free c']['max_error'] > 0.02 > 0.002 > a['dev']['L(N, D) Hoffmann'][
      'max_error']
  wrong = [dict(t, loss=t['loss'] + 0.5) for t in held]
  b = heldout.run_protocol(proxies, dev, proxies, wrong, cands, samples=40, data_sd=0.001)
  assert b['chosen'] == a['chosen'] and b['model_error'] == a['model_error']
  assert b['held_out'][b['chosen']]['coverage'] == 0.0
  rows = a['held_out'][a['chosen']]['rows']
  assert [r['tokens'] for r in rows] == [grow(96), grow(192)] and all(r['inside'] for r in rows)


def test_one_budget_laws_use_the_budget_nearest_each_target():
  rng = np.random.default_rng(2)
  proxies = [_record(w, b, rng) for w in WIDTHS for b in BUDGETS]
  targets = [_record(64, 1.1e6, rng), _record(64, 5e6, rng)]
  groups = heldout.budget_groups(heldout.proxy_order(proxies), targets)
  assert [len(p) for p, _ in groups] == [4, 4]
  ordered = heldout.proxy_order(proxies)
  assert [{ordered[i]['tokens'] for i in p} for p, _ in groups] == [{1.2e6}, {4.8e6}]
  got = heldout.make_predictor(heldout.CANDIDATES[0], proxies, targets)(np.zeros(12))
  at = lambda b: lp.fit_power_law([24 * w * w for w in WIDTHS],
                                  [_hoffmann(24 * w * w, b) for w in WIDTHS])(24 * 64 ** 2)
  np.testing.assert_allclose(got, [at(1.2e6), at(4.8e6)], rtol=1e-6)


def test_half_width_terms_name_what_makes_an_interval_wide():
  """Each term alone, by hand where it is a Gaussian: the target's own seeds 1.96·sd/√runs, the
  data order 1.96·√2·σ_data (another order only), the model error 1.96·model_error; the proxies'
  bootstrap is zero for noise-free proxies and grows with their seed spread."""
  rng = np.random.default_rng(3)
  quiet = [_record(w, b, rng) for w in WIDTHS for b in BUDGETS]
  same = _record(64, 2.4e6, rng, data_seed=0)
  other = _record(64, 2.4e6, rng, data_seed=3)
  cand = heldout.Candidate('L(N, D) Hoffmann', form='hoffmann')
  t_same, t_other = heldout.half_width_terms(cand, quiet, [same, other], model_error=0.01,
                                             samples=50, model_error_form='constant',
                                             data_sd=0.02)
  pred = _hoffmann(24 * 64 * 64, 2.4e6)
  assert t_same['proxy seeds'] < 1e-6 and t_same['target seeds'] == 0.0  # no seed spread at all
  assert t_same['data order'] == 0.0  # the proxies' own order
  assert t_other['data order'] == pytest.approx(1.96 * math.sqrt(2) * 0.02 / pred, rel=1e-3)
  assert t_same['model error'] == pytest.approx(1.96 * 0.01, rel=1e-3)
  noisy = [_record(w, b, rng, seeds=3, sd=0.02) for w in WIDTHS for b in BUDGETS]
  (t,) = heldout.half_width_terms(cand, noisy, [other], samples=200)
  _, pooled = lp.seed_spread([r['seed_losses'] for r in noisy])
  assert t['proxy seeds'] > 0.002 and t['model error'] == 0.0
  assert t['target seeds'] == pytest.approx(1.96 * pooled / math.sqrt(2) / pred, rel=0.05)
  # run_protocol puts them on the chosen law's held-out rows; the total is no narrower than any
  res = heldout.run_protocol(noisy, [same], noisy, [other], [cand], samples=100, data_sd=0.02)
  (row,) = res['held_out'][cand.name]['rows']
  assert set(row['terms']) == set(heldout.HALF_WIDTH_TERMS)
  assert row['half_width'] >= 0.9 * max(row['terms'].values())
