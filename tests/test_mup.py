"""µP: LR multipliers and init rules, the coordinate check, growth under µP, the scaling-law fit
and tiny end-to-end sweep / predict-loss runs on the synthetic data."""

from __future__ import annotations

import argparse
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from flmjax import experiment, mup, optimizer, plan
from flmjax.commands import mup_tools
from flmjax.scaling import coord_check, loss_prediction, sweep
from flmjax.training import runtime
from flmjax.config import ModelConfig
from flmjax.model import Transformer

MUP = dict(use_mup=True, mup_base_width=32, attn_scale='1/d_head', output_mult=2.0)


def _cfg(**kw) -> ModelConfig:
  base = dict(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=128, n_layers=2,
              max_len=32)
  return ModelConfig(**{**base, **kw})


def _init(cfg: ModelConfig, seed: int = 0):
  return nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(seed),
                                             jnp.zeros((1, 8), jnp.int32))['params'])


def test_lr_multipliers_by_group():
  cfg = mup.at_width(_cfg(**MUP), 128)  # width_mult 4
  assert cfg.width_mult == 4.0 and cfg.n_heads == 8 and cfg.d_ff == 512
  for name in mup.HIDDEN:
    assert mup.lr_multiplier(cfg, name) == 0.25
  for name in ('embed', 'unembed', 'bq', 'bo_mlp', 'ln1_scale', 'final_ln_bias'):
    assert mup.lr_multiplier(cfg, name) == 1.0
  assert mup.lr_scales(_cfg()) is None  # standard parametrisation: no multipliers at all
  assert mup.lr_multiplier(mup.at_width(_cfg(), 128), 'wq') == 1.0


@pytest.mark.parametrize('tie', [True, False])
def test_mup_optimizer_scales_hidden_updates(tie):
  """One Adam step on unit gradients moves every entry by lr × its µP multiplier."""
  cfg = mup.at_width(_cfg(tie_embeddings=tie, **MUP), 64)  # width_mult 2
  params = _init(cfg)
  optim = dict(clip=0.0, b1=0.9, b2=0.95, eps=1e-12, weight_decay=0.0)
  lr = 1e-2
  tx = optimizer.model_optimizer(optim, lambda step: lr, cfg)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  seen = set()
  for path, u in flat:
    name = path[-1].key
    want = -lr * (0.5 if name in mup.HIDDEN else 1.0)
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-5, err_msg=name)
    seen.add(name)
  assert set(mup.HIDDEN) <= seen and ('unembed' in seen) == (not tie)


@pytest.mark.parametrize('mode', ['width_invariant', 'lr_scaled'])
def test_mup_weight_decay_per_step_across_widths(mode):
  """Zero gradients: each step shrinks a weight by lr·wd under 'width_invariant' (the default,
  mup's MuAdam and Mu-scaling) at every width; 'lr_scaled' shrinks hidden matrices by
  lr·wd/width_mult.  LayerNorm and biases never decay."""
  lr, wd = 1e-2, 0.5
  optim = dict(clip=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd, mup_weight_decay=mode)
  for width in (32, 128):
    cfg = mup.at_width(_cfg(**MUP), width)
    params = _init(cfg)
    tx = optimizer.model_optimizer(optim, lambda step: lr, cfg)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    for name, rate in (('wq', mup.lr_multiplier(cfg, 'wq')), ('embed', 1.0)):
      p = params['layers'][name] if name == 'wq' else params[name]
      u = updates['layers'][name] if name == 'wq' else updates[name]
      want = lr * wd * (rate if mode == 'lr_scaled' else 1.0)
      np.testing.assert_allclose(np.asarray(-u / p), want, rtol=1e-4, err_msg=f'{name}@{width}')
    assert float(jnp.abs(updates['layers']['ln1_scale']).max()) == 0.0


def test_weight_decay_effect_transfers_across_widths():
  """30 AdamW steps at widths 32 and 128 (width_mult 1 and 4), with a strong and no decay: the
  hidden matrices' norm lost to decay is the same at both widths under 'width_invariant', so a
  weight decay tuned on a proxy transfers; under 'lr_scaled' the wide model loses ~4x less."""
  def decay_loss(mode, width):
    cfg = mup.at_width(_cfg(**MUP), width)
    norms = {}
    for wd in (0.0, 3.0):
      optim = dict(clip=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd, mup_weight_decay=mode)
      tx = optimizer.model_optimizer(optim, lambda step: 1e-2, cfg)
      params = _init(cfg)
      grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
      update = jax.jit(tx.update)
      state = tx.init(params)
      for _ in range(30):
        updates, state = update(grads, state, params)
        params = jax.tree.map(jnp.add, params, updates)
      norms[wd] = float(jnp.linalg.norm(params['layers']['wi']))
    return 1.0 - norms[3.0] / norms[0.0]
  assert decay_loss('width_invariant', 128) == pytest.approx(decay_loss('width_invariant', 32),
                                                             rel=0.02)
  ratio = decay_loss('lr_scaled', 128) / decay_loss('lr_scaled', 32)
  assert 0.2 < ratio < 0.35


def test_init_std_rules():
  cfg = mup.at_width(_cfg(n_layers=2, init_std=0.04, **MUP), 256)  # width_mult 8
  p = _init(cfg)
  layers = p['layers']
  np.testing.assert_allclose(np.std(layers['wq']), 0.04 / 8 ** 0.5, rtol=0.03)
  np.testing.assert_allclose(np.std(layers['wi']), 0.04 / 8 ** 0.5, rtol=0.03)
  np.testing.assert_allclose(np.std(layers['wo_mlp']), 0.04 / 8 ** 0.5 / 2, rtol=0.03)
  np.testing.assert_allclose(np.std(p['embed']), 0.04, rtol=0.03)
  assert cfg.logit_scale == 2.0 / 8
  # Standard parametrisation: the same stds as before µP existed.
  sp = mup.at_width(_cfg(init_std=0.04), 256)
  assert mup.init_std(sp, 'wq') == 0.04 and mup.init_std(sp, 'wo') == 0.04 / 2


def test_activation_stats_leave_plain_forward_unchanged():
  cfg = _cfg(**MUP)
  params = _init(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 128)
  plain = Transformer(cfg).apply({'params': params}, tokens)
  sown, state = Transformer(cfg).apply({'params': params}, tokens, mutable=['intermediates'])
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(sown))
  inter = state['intermediates']
  assert inter['layers']['residual'][0].shape == (cfg.n_layers,)
  np.testing.assert_allclose(float(inter['logits'][0]), float(jnp.abs(plain).mean()), rtol=1e-5)


# Coordinate check.  Tolerance: under µP the log-log slope of every activation's mean |x| against
# width stays within ±0.3 (flat up to finite-width noise); under SP, after the same 3 steps at
# the same lr, the attention logits and residual stream grow with slope ≥ 0.5 (≈ ∝ width).
FLAT_TOL = 0.3
SP_MIN_SLOPE = 0.5


@pytest.mark.slow
def test_coord_check_flat_under_mup_grows_under_sp(tmp_path):
  c = tiny_config(3)
  c.model.update(d_model=64, n_heads=4, head_dim=16, d_ff=256, use_mup=True, mup_base_width=64,
                 attn_scale='1/d_head')
  c.optim.update(lr=1e-2, warmup_steps=0, schedule='constant', end_lr=0.0, weight_decay=0.0)
  widths = (64, 128, 256)
  res_mup = coord_check.coord_check(c, widths, steps=3)
  sp = c.copy_and_resolve_references()
  sp.model.update(use_mup=False, attn_scale='1/sqrt(d_head)')
  res_sp = coord_check.coord_check(sp, widths, steps=3)
  s_mup, s_sp = coord_check.width_slopes(res_mup), coord_check.width_slopes(res_sp)
  assert set(s_mup) == set(coord_check.STATS)
  for name, slope in s_mup.items():
    assert abs(slope) <= FLAT_TOL, (name, s_mup, coord_check.format_table(res_mup))
  for name in ('attn_logits', 'residual'):
    assert s_sp[name] >= SP_MIN_SLOPE, (name, s_sp, coord_check.format_table(res_sp))
  # At init the µP residual stream is flat too (its logits start ∝ 1/√width, by design), while
  # SP's width-independent init std already grows Wx ∝ √width.
  init = coord_check.width_slopes(res_mup, step=0)
  assert max(abs(init[k]) for k in ('embed_out', 'attn_logits', 'residual')) <= FLAT_TOL, init
  assert coord_check.width_slopes(res_sp, step=0)['residual'] >= 0.25
  png = coord_check.plot([res_mup, res_sp], str(tmp_path / 'cc.png'))
  assert os.path.getsize(png) > 10_000


def test_growth_preserves_function_under_mup():
  from flmjax import growth
  src = _cfg(**MUP)
  dst = src.replace(d_model=64, n_heads=4, d_ff=256, n_layers=3)
  assert src.logit_scale != dst.logit_scale  # µP's readout multiplier changes with the width
  params = _init(src)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, 128)
  want = Transformer(src).apply({'params': params}, tokens)
  grown, _, mask_base = growth.grow_state(params, None, src, dst, {'width': 'msg', 'depth': 'msg'},
                                          jax.random.PRNGKey(3))
  got = Transformer(dst).apply({'params': grown}, tokens,
                               masks=growth.ramp_masks(mask_base, 0.0))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


# ---- scaling-law fit ---------------------------------------------------------------------------

def test_fit_recovers_known_power_law():
  a, b, c = 40.0, -0.3, 1.7
  n = np.geomspace(1e4, 1e6, 6)
  rng = np.random.default_rng(0)
  y = a * n ** b + c + rng.normal(0, 1e-4, n.shape)
  fit = loss_prediction.fit_power_law(n, y)
  scaled_a = fit.a / fit.x_scale ** fit.b  # the fit works in n / x_scale
  np.testing.assert_allclose([scaled_a, fit.b, fit.c], [a, b, c], rtol=0.02)
  pred, lo, hi = loss_prediction.predict(fit, 1e8)
  true = a * 1e8 ** b + c
  assert lo <= true <= hi and abs(pred - true) / true < 1e-3 and hi - lo < 0.05
  # A wrong law is not recovered: the fit must actually depend on the data.
  bad = loss_prediction.fit_power_law(n, 2 * y)
  assert abs(bad.c - c) > 0.1


def test_fit_interval_from_four_points_and_exact_with_three():
  n = np.array([1e4, 4e4, 1.6e5, 6.4e5])
  y = 10.0 * n ** -0.25 + 2.0
  exact = loss_prediction.fit_power_law(n[:3], y[:3])  # 3 parameters, 3 points: no spread
  assert exact.cov is None and exact.loo == ()
  pred, lo, hi = loss_prediction.predict(exact, 1.3e6)
  np.testing.assert_allclose(pred, 10.0 * 1.3e6 ** -0.25 + 2.0, rtol=2e-3)
  assert lo == pred == hi
  noisy = loss_prediction.fit_power_law(n, y + np.array([0.01, -0.01, 0.01, -0.01]))
  assert noisy.cov is not None and len(noisy.loo) == 4
  pred, lo, hi = loss_prediction.predict(noisy, 1.3e6)
  assert lo < pred < hi and hi - lo > 0.01


def test_fit_warns_when_losses_do_not_fall_with_size():
  n = np.array([1e4, 4e4, 1.6e5, 6.4e5])
  good = 10.0 * n ** -0.25 + 2.0
  assert loss_prediction.fit_warnings(n, good, loss_prediction.fit_power_law(n, good)) == []
  noise = np.array([6.19, 6.27, 6.18, 6.25])  # the old benchmark's proxies: no law at all
  msgs = loss_prediction.fit_warnings(n, noise, loss_prediction.fit_power_law(n, noise))
  assert any('do not fall with size' in m for m in msgs)
  pred, lo, hi = loss_prediction.predict(loss_prediction.fit_power_law(n, noise), 1e9)
  assert lo >= 0.0


def test_proxy_losses_are_averaged_over_init_seeds(monkeypatch, tmp_path):
  seen = []

  def fake_run_point(config, workdir):
    seen.append((config.model.d_model, config.train.seed, config.data.seed,
                 os.path.basename(workdir)))
    return {'loss': 5.0 + config.train.seed, 'flops': 1.0, 'tokens': 1, 'params': 1,
            'non_embedding_params': 1, 'workdir': workdir}

  monkeypatch.setattr(sweep, 'run_point', fake_run_point)
  cfg = experiment.load_config(os.path.join(ROOT, 'experiments', 'mup_proxy.py:tiny'))
  r = loss_prediction.run_width(cfg, 32, str(tmp_path), seeds=[0, 2])
  assert r['loss'] == 6.0 and r['seed_losses'] == [5.0, 7.0] and r['loss_std'] > 0
  data_seed = cfg.experiment.data.seed
  assert seen == [(32, 0, data_seed, 'w32_s0'), (32, 2, data_seed, 'w32_s2')]  # same tokens
  one = loss_prediction.run_width(cfg, 32, str(tmp_path))
  seed = cfg.experiment.train.seed
  assert one['seed_losses'] == [5.0 + seed] and seen[-1][-1] == f'w32_s{seed}'
  # one seed at a time still names the run by its seed: seed 5 alone never reads seed 4's run
  loss_prediction.run_width(cfg, 32, str(tmp_path), seeds=[5])
  assert seen[-1][-1] == 'w32_s5'


def test_sweep_points_grid_and_random():
  grid = sweep.sweep_points(dict(mode='grid', lr=[1, 2], init_std=[3], output_mult=[4, 5],
                                 num_samples=0, seed=0))
  assert [(p.lr, p.output_mult) for p in grid] == [(1, 4), (1, 5), (2, 4), (2, 5)]
  rnd = sweep.sweep_points(dict(mode='random', lr=[1e-4, 1e-2], init_std=[1e-2], output_mult=[1, 4],
                                num_samples=16, seed=3))
  lrs = [p.lr for p in rnd]
  assert len(rnd) == 16 and min(lrs) >= 1e-4 and max(lrs) <= 1e-2 and len(set(lrs)) == 16
  assert all(p.init_std == pytest.approx(1e-2) for p in rnd)


def test_trainer_applies_mup_lr_scales():
  """The trainer's optimizer must carry the µP multipliers: one Adam step on unit gradients
  moves a hidden matrix 1/width_mult as far as the embedding."""
  c = tiny_config(2, model=dict(use_mup=True, mup_base_width=16, attn_scale='1/d_head'),
                  optim=dict(weight_decay=0.0))  # decay is width-invariant, not LR-scaled
  stages = plan.stage_plan(c)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], c.optim.schedule)
  stage = stages[0]
  assert stage.model.width_mult != 1.0
  tx = runtime.stage_optimizer(c, stage, schedule)
  params = {'embed': jnp.ones((2, 2)), 'wq': jnp.ones((2, 2))}
  updates, _ = tx.update(params, tx.init(params), params)
  got = float(updates['wq'][0, 0] / updates['embed'][0, 0])
  assert got == pytest.approx(mup.lr_multiplier(stage.model, 'wq'), rel=1e-3)
  assert got == pytest.approx(1.0 / stage.model.width_mult, rel=1e-3)


# ---- end to end (synthetic data) -----------------------------------------------------------------

def _args(**kw) -> argparse.Namespace:
  return argparse.Namespace(**{'config_overrides': [], **kw})


@pytest.mark.slow
def test_sweep_cli_tiny(tmp_path, capsys):
  wd = str(tmp_path / 'sweep')
  rc = mup_tools.sweep_main(_args(
      config=os.path.join(ROOT, 'experiments', 'mup_sweep.py:tiny'), workdir=wd, shard='',
      merge_only=False, config_overrides=['sweep.widths=[32]', 'experiment.train.steps=6']))
  assert rc == 0
  out = json.load(open(os.path.join(wd, 'sweep.json')))
  losses = [r['loss'] for r in out['rows']]
  assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] != losses[1]
  best = min(out['rows'], key=lambda r: r['loss'])
  assert out['transfer']['hparams']['lr'] == best['lr']
  assert out['transfer']['target_model']['d_model'] == 128
  assert out['transfer']['target_model']['n_heads'] == 8
  assert 'best at width 32' in capsys.readouterr().out


@pytest.mark.slow
def test_predict_loss_cli_tiny(tmp_path, capsys):
  wd = str(tmp_path / 'pred')
  rc = mup_tools.predict_loss_main(_args(
      config=os.path.join(ROOT, 'experiments', 'mup_proxy.py:tiny'), workdir=wd,
      train_target=True, plot='', config_overrides=['experiment.train.steps=6',
                                                    'predict.proxy_seeds=[0,1]']))
  assert rc == 0
  out = json.load(open(os.path.join(wd, 'prediction.json')))
  assert [r['width'] for r in out['proxies']] == [16, 32, 48]
  assert all(len(r['seed_losses']) == 2 for r in out['proxies'])
  assert os.path.isdir(os.path.join(wd, 'w16_s1'))
  assert [d for d in os.listdir(wd) if d.startswith('w64')] == ['w64_s0']  # the target, seed 0
  t = out['target']
  assert np.isfinite(t['measured']) and out['predicted_N']['low'] <= out['predicted_N']['loss']
  assert out['relative_error_N'] == pytest.approx(
      abs(out['predicted_N']['loss'] - t['measured']) / t['measured'])
  assert os.path.getsize(os.path.join(wd, 'loss_prediction.png')) > 10_000
  # two seeds per proxy: the interval is the seed bootstrap, and it says whether it held
  assert out['seed_sd'] > 0 and out['interval'].startswith('bootstrap')
  pn = out['predicted_N']
  assert out['inside_N'] == (pn['low'] <= t['measured'] <= pn['high'])
  text = capsys.readouterr().out
  assert 'relative error' in text and 'L(N) predicts' in text and '95% interval: bootstrap' in text


def test_predict_loss_cli_token_budgets(monkeypatch, tmp_path, capsys):
  """Issue 29: `predict.proxy_tokens` trains every proxy at each budget (runs named by their
  steps), the target has its own budget, and the report says which law it used and why.  The
  runs are faked with a known L(N, D), so a law with a data term must be chosen and be right."""
  from flmjax.config import ConfigError
  law = lambda n, d: 3.0 + 40.0 * n ** -0.4 + 300.0 * d ** -0.35
  seen = []

  def fake_run_point(config, workdir):
    n = plan.stage_plan(config)[-1].model.param_count(include_embedding=False)
    tokens = config.train.steps * config.train.global_batch_size * config.train.seq_len
    seen.append(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    return {'loss': float(law(n, tokens) + 1e-4 * config.train.seed), 'flops': 6.0 * n * tokens,
            'tokens': tokens, 'params': n, 'non_embedding_params': n, 'workdir': workdir}

  monkeypatch.setattr(sweep, 'run_point', fake_run_point)
  path = os.path.join(ROOT, 'experiments', 'mup_proxy.py:tiny')
  per = loss_prediction.tokens_per_step(experiment.load_config(path).experiment)
  steps = experiment.load_config(path).experiment.train.steps
  budgets = f'predict.proxy_tokens=[{per * steps // 2},{per * steps},{per * steps * 2}]'
  wd = str(tmp_path / 'pred')
  rc = mup_tools.predict_loss_main(_args(
      config=path, workdir=wd, train_target=True, plot='',
      config_overrides=[budgets, f'predict.target_tokens={per * steps * 8}',
                        'predict.proxy_seeds=[0,1]', 'predict.samples=30']))
  assert rc == 0
  assert f'w16_steps{steps // 2}_s1' in seen and 'w16_s1' in seen and f'w64_steps{steps * 8}_s0' in seen
  out = json.load(open(os.path.join(wd, 'prediction.json')))
  assert len(out['budget_proxies']) == 9 and out['target']['tokens'] == per * steps * 8
  used = out['law']
  assert used['law'].startswith('L(N, D)') and used['residual_dof']['L(N) free c'] == 0
  assert used['relative_error'] < 0.01 < out['relative_error_N']  # L(N) at 2× budget misses
  text = capsys.readouterr().out
  assert f"law used: {used['law']}, because smallest worst error predicting the widest" in text
  with pytest.raises(ConfigError, match='proxy_tokens'):
    loss_prediction.load_predict_config(path, [f'predict.proxy_tokens=[{per + 1}]'])
