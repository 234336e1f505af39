"""Growth operators: function preservation (real logits), Adam-state growth, training across a
growth, re-warm-up, and clear refusals.  Single device; see test_growth_sharded.py for meshes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flmjax.config import ModelConfig
from flmjax.growth import (GrowthError, GrowthSpec, grow_state, growth_units, is_exact,
                           logical_axes, ramp_alpha, ramp_masks, rewarmup_updates)
from flmjax.growth import _abstract
from flmjax.model import Transformer

TOL = 1e-5  # max |Δlogit| for methods that claim exactness (f32)
BASE = ModelConfig(vocab_size=40, d_model=16, n_heads=2, head_dim=8, d_ff=24, n_layers=2,
                   max_len=16)


def random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.2):
  """Every entry non-trivial (LN scales ≠ 1, biases ≠ 0) so exactness is a real check."""
  rng = np.random.default_rng(seed)
  want = _abstract(cfg)[0]
  def leaf(path, a):
    name = path[-1].key
    z = rng.normal(size=a.shape).astype(np.float32) * scale
    return jnp.asarray(1.0 + z if name.endswith('_scale') else z)
  return jax.tree_util.tree_map_with_path(leaf, want)


@functools.lru_cache(maxsize=None)
def _apply(cfg: ModelConfig):
  return jax.jit(lambda p, t, m: Transformer(cfg).apply({'params': p}, t, masks=m))


def logits(cfg, params, tokens, masks=None):
  return _apply(cfg)(params, tokens, masks)


def tokens_for(cfg, seed=1, B=2, L=7):
  return jax.random.randint(jax.random.PRNGKey(seed), (B, L), 0, cfg.vocab_size)


def mup(cfg: ModelConfig) -> ModelConfig:
  return cfg.replace(use_mup=True, mup_base_width=8, output_mult=2.0, attn_scale='1/d_head')


def _grown(src, dst, spec, seed=0):
  params = random_params(src, seed)
  new, _, base = grow_state(params, None, src, dst, spec, jax.random.PRNGKey(seed + 7))
  return params, new, base


@st.composite
def exact_growths(draw):
  """Random small source config and a larger target, any subset of dims growing."""
  width = draw(st.sampled_from(['msg', 'tile']))
  depth = draw(st.sampled_from(['msg', 'identity']))
  H, K = draw(st.integers(1, 3)), draw(st.sampled_from([4, 8]))
  F, N = draw(st.sampled_from([8, 12])), draw(st.integers(1, 2))
  if width == 'tile':
    H2, F2 = H * draw(st.integers(1, 3)), F * draw(st.integers(1, 2))
  else:
    H2, F2 = H + draw(st.integers(0, 2)), F + draw(st.integers(0, 5))
  N2 = N + draw(st.integers(0, 2))
  src = ModelConfig(vocab_size=40, d_model=H * K, n_heads=H, head_dim=K, d_ff=F, n_layers=N,
                    max_len=16, tie_embeddings=draw(st.booleans()))
  if draw(st.booleans()):
    src = mup(src)
  dst = src.replace(d_model=H2 * K, n_heads=H2, d_ff=F2, n_layers=N2)
  return src, dst, {'width': width, 'depth': depth, 'noise_std': 0.05}


def _all_dims(width, depth, **kw):
  src = BASE.replace(**kw)
  r = 2 if width == 'tile' else None
  dst = src.replace(d_model=src.d_model * 2 if r else 24, n_heads=4 if r else 3,
                    d_ff=src.d_ff * 2 if r else 30, n_layers=3)
  return src, dst, {'width': width, 'depth': depth, 'noise_std': 0.05}


@pytest.mark.slow
@settings(max_examples=5, deadline=None, derandomize=True)
@given(case=exact_growths())
@example(case=_all_dims('msg', 'msg'))
@example(case=_all_dims('msg', 'identity', tie_embeddings=False))
@example(case=_all_dims('tile', 'msg', use_mup=True, mup_base_width=8))
@example(case=_all_dims('tile', 'identity'))
def test_exact_methods_preserve_logits(case):
  src, dst, spec = case
  assert is_exact(src, dst, spec)
  params, new, base = _grown(src, dst, spec)
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, _abstract(dst)[0])
  tok = tokens_for(src)
  ref = logits(src, params, tok)
  out = logits(dst, new, tok, ramp_masks(base, 0.0))
  assert float(jnp.abs(out - ref).max()) <= TOL
  if base is not None:  # the masks really gate something: fully on, the function changes
    on = logits(dst, new, tok, ramp_masks(base, 1.0))
    assert float(jnp.abs(on - ref).max()) > TOL


def test_msg_flm101b_head_ratio_and_mask_format():
  """32 -> 56 heads (x1.75) is not an integer factor: msg grows it, masks mark old units."""
  src = BASE.replace(d_model=32, n_heads=4, head_dim=8, d_ff=128)  # 4 -> 7 heads as 32 -> 56
  dst = src.replace(d_model=56, n_heads=7, d_ff=224)
  params = random_params(src)
  opt = optax.adamw(1e-3)
  new, state, base = grow_state(params, None, src, dst, {}, jax.random.PRNGKey(0), optimizer=opt)
  assert int(state[0].count) == 0  # optimizer= without a state: a fresh one for the target
  assert state[0].mu['layers']['wi'].shape == (2, 56, 224)
  assert sorted(base) == ['heads', 'hidden', 'mlp']
  np.testing.assert_array_equal(base['hidden'], np.r_[np.ones(32), np.zeros(24)])
  np.testing.assert_array_equal(base['heads'], np.tile(np.r_[np.ones(4), np.zeros(3)], (2, 1)))
  np.testing.assert_array_equal(base['mlp'], np.tile(np.r_[np.ones(128), np.zeros(96)], (2, 1)))
  tok = tokens_for(src)
  diff = jnp.abs(logits(dst, new, tok, base) - logits(src, params, tok)).max()
  assert float(diff) <= TOL
  with pytest.raises(GrowthError, match=r"tile.*model.d_model: 56 / 32 = 1.75"):
    grow_state(params, None, src, dst, {'width': 'tile'}, jax.random.PRNGKey(0))


def test_ramp_masks_and_alpha():
  base = {'hidden': jnp.array([1.0, 1.0, 0.0]), 'layers': jnp.array([1.0, 0.0])}
  half = ramp_masks(base, 0.5)
  np.testing.assert_allclose(half['hidden'], [1, 1, 0.5])
  np.testing.assert_allclose(half['layers'], [1, 0.5])
  np.testing.assert_allclose(ramp_masks(base, 3.0)['hidden'], [1, 1, 1])  # clipped
  assert ramp_masks(None, 0.3) is None
  assert [float(ramp_alpha(t, 4)) for t in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
  assert float(ramp_alpha(0, 0)) == 1.0
  alphas = jax.jit(lambda t: ramp_alpha(t, 10))(jnp.arange(3))  # traced step works
  np.testing.assert_allclose(alphas, [0, 0.1, 0.2], rtol=1e-6)


@pytest.mark.parametrize('depth,order', [('stack', [0, 1, 0, 1, 0]),
                                         ('interleave', [0, 0, 1, 1, 2])])
def test_copy_depth_methods_copy_layers_and_state(depth, order):
  """stack / interleave copy layers (and their Adam moments); documented as not exact."""
  src = BASE.replace(n_layers=3) if depth == 'interleave' else BASE
  dst = src.replace(n_layers=5)
  params = random_params(src)
  opt = optax.adam(1e-3)
  state = opt.init(params)
  state = (state[0]._replace(mu=random_params(src, 1), nu=random_params(src, 2)),) + state[1:]
  new, new_state, base = grow_state(params, state, src, dst, {'depth': depth},
                                    jax.random.PRNGKey(0), optimizer=opt)
  assert base is None and not is_exact(src, dst, {'depth': depth})
  np.testing.assert_array_equal(new['layers']['wq'], params['layers']['wq'][np.array(order)])
  np.testing.assert_array_equal(new_state[0].mu['layers']['wi'],
                                state[0].mu['layers']['wi'][np.array(order)])
  out = logits(dst, new, tokens_for(src))
  assert bool(jnp.isfinite(out).all())


# ---- Adam state -----------------------------------------------------------------------------

def _lm_loss(cfg, params, tokens, masks=None):
  lg = Transformer(cfg).apply({'params': params}, tokens[:, :-1], masks=masks)
  return optax.softmax_cross_entropy_with_integer_labels(lg, tokens[:, 1:]).mean()


def _optimizer(lr=3e-3):
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1))


@functools.lru_cache(maxsize=None)
def _step_fn(cfg, opt_lr):
  opt = _optimizer(opt_lr)

  @jax.jit
  def step(params, state, tokens, masks):
    loss, grads = jax.value_and_grad(lambda p: _lm_loss(cfg, p, tokens, masks))(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss
  return step


def _train(cfg, params, state, tokens, n, lr=3e-3, masks_at=None):
  losses = []
  for t in range(n):
    masks = masks_at(t) if masks_at else None
    params, state, loss = _step_fn(cfg, lr)(params, state, tokens, masks)
    losses.append(float(loss))
  return params, state, losses


@pytest.mark.slow
def test_adam_state_grown_with_parameter_map():
  src = BASE
  tok = tokens_for(src, B=4, L=12)
  opt = _optimizer()
  params, state, _ = _train(src, random_params(src), opt.init(random_params(src)), tok, 3)
  adam = state[1][0]
  # msg: old entries keep their moments exactly, new entries start at zero, count is kept.
  dst = src.replace(d_model=24, n_heads=3, d_ff=30, n_layers=3)
  new, new_state, _ = grow_state(params, state, src, dst, {}, jax.random.PRNGKey(1),
                                 optimizer=opt)
  g = new_state[1][0]
  assert int(g.count) == int(adam.count) == 3
  for moment, old in ((g.mu, adam.mu), (g.nu, adam.nu)):
    w = moment['layers']['wq']
    np.testing.assert_array_equal(w[:2, :16, :2], old['layers']['wq'])
    assert float(jnp.abs(w[:2, 16:]).max()) == 0 and float(jnp.abs(w[2]).max()) == 0
    np.testing.assert_array_equal(moment['embed'][:, :16], old['embed'])
  # tile x2: mu follows the map (fan-in weights / r), nu its square (/ r^2).
  dst2 = src.replace(d_model=32, n_heads=4, d_ff=48)
  _, t_state, _ = grow_state(params, state, src, dst2, {'width': 'tile', 'noise_std': 0.0},
                             jax.random.PRNGKey(1))
  tm = t_state[1][0]
  mu_wq, nu_wq = adam.mu['layers']['wq'], adam.nu['layers']['wq']
  tiled = lambda x: jnp.concatenate([jnp.concatenate([x, x], 1)] * 2, 2)
  np.testing.assert_allclose(tm.mu['layers']['wq'], tiled(mu_wq) / 2, rtol=1e-6)
  np.testing.assert_allclose(tm.nu['layers']['wq'], tiled(nu_wq) / 4, rtol=1e-6)
  np.testing.assert_array_equal(tm.mu['layers']['bq'],
                                jnp.concatenate([adam.mu['layers']['bq']] * 2, 1))
  # The grown state is used: a step with it differs from a step with a fresh state.
  masks = lambda t: None
  p_grown, _, _ = _train(dst, new, new_state, tok, 1, masks_at=masks)
  p_fresh, _, _ = _train(dst, new, opt.init(new), tok, 1, masks_at=masks)
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), p_grown, p_fresh)
  assert max(jax.tree.leaves(diff)) > 1e-4


def test_adam_reset_at_growth_restarts_adam_and_keeps_the_lr_schedule():
  """growth.adam='reset' (a diagnosis control): zero moments and Adam count, so the first step
  after the growth is a fresh Adam step (bias correction from 1) at the schedule's current LR."""
  src, dst = BASE, BASE.replace(d_model=24, n_heads=3, d_ff=30, n_layers=3)
  opt = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(optax.linear_schedule(3e-3, 1e-3, 10), b1=0.9, b2=0.95))
  params = random_params(src)
  tok = tokens_for(src, B=4, L=12)
  loss = lambda cfg: jax.jit(jax.value_and_grad(lambda p, m: _lm_loss(cfg, p, tok, m)))
  state = opt.init(params)
  for _ in range(3):
    _, g = loss(src)(params, None)
    u, state = opt.update(g, state, params)
    params = optax.apply_updates(params, u)
  spec = {'ramp_steps': 0}
  mapped, m_state, _ = grow_state(params, state, src, dst, spec, jax.random.PRNGKey(1),
                                  optimizer=opt)
  new, r_state, _ = grow_state(params, state, src, dst, {**spec, 'adam': 'reset'},
                               jax.random.PRNGKey(1), optimizer=opt)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), new, mapped))
  adam, sched = r_state[1][0], r_state[1][2]
  assert int(adam.count) == 0 and int(sched.count) == 3 == int(m_state[1][2].count)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves((adam.mu, adam.nu)))
  assert int(m_state[1][0].count) == 3  # the default keeps Adam going
  # the next step is a fresh optimizer's first step, at the LR of step 3
  _, g = loss(dst)(new, None)
  fresh = opt.init(new)
  fresh = (fresh[0], (fresh[1][0], fresh[1][1], sched))
  want, _ = opt.update(g, fresh, new)
  got, _ = opt.update(g, r_state, new)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, want))
  with pytest.raises(GrowthError, match='growth.adam'):
    grow_state(params, state, src, dst, {'adam': 'zero'}, jax.random.PRNGKey(1))


@pytest.mark.slow
def test_training_continues_across_msg_growth_without_loss_jump():
  """AdamW on a fixed batch; grow width+heads+FFN+depth by msg at step 8 and keep training.

  Tolerances: the first post-growth loss equals the un-grown model's loss to 1e-5 (same
  function, same Adam update on old entries because new units get zero gradient at mask 0); the
  next 5 steps (masks ramping over 6 steps) never exceed the un-grown run's continued losses by
  more than 2% (no jump; the wider model may learn faster, so lower is fine) and keep falling.
  """
  src = BASE
  dst = src.replace(d_model=24, n_heads=3, d_ff=36, n_layers=3)
  tok = tokens_for(src, seed=3, B=4, L=16)
  opt = _optimizer()
  params0 = random_params(src, scale=0.05)
  params, state, pre = _train(src, params0, opt.init(params0), tok, 8)
  _, _, cont = _train(src, params, state, tok, 6)
  spec = {'width': 'msg', 'depth': 'msg', 'ramp_steps': 6}
  gp, gs, base = grow_state(params, state, src, dst, spec, jax.random.PRNGKey(5), optimizer=opt)
  _, _, grown = _train(dst, gp, gs, tok, 6, masks_at=lambda t: ramp_masks(base, ramp_alpha(t, 6)))
  assert pre[-1] > cont[0] > cont[-1]  # the un-grown run is still learning
  assert abs(grown[0] - cont[0]) <= 1e-5
  assert all(g <= c * 1.02 for g, c in zip(grown, cont)), (grown, cont)
  assert all(b < a for a, b in zip(grown, grown[1:])), grown


# ---- re-warm-up -----------------------------------------------------------------------------

def test_rewarmup_scales_only_new_entries():
  src = BASE
  dst = src.replace(d_model=24, n_heads=3, d_ff=30, n_layers=3)
  units = growth_units(src, dst, {})
  ones = jax.tree.map(jnp.ones_like, _abstract(dst)[0])
  u0 = rewarmup_updates(ones, units, dst, 0, 4)
  wq = u0['layers']['wq']
  np.testing.assert_array_equal(wq[:2, :16, :2], 1.0)
  np.testing.assert_array_equal(wq[:2, 16:], 0.25)
  np.testing.assert_array_equal(wq[:2, :, 2:], 0.25)
  np.testing.assert_array_equal(wq[2], 0.25)
  np.testing.assert_array_equal(u0['embed'][:, :16], 1.0)
  np.testing.assert_array_equal(u0['embed'][:, 16:], 0.25)
  np.testing.assert_array_equal(u0['layers']['bi'][:2, 24:], 0.25)
  u3 = rewarmup_updates(ones, units, dst, 3, 4)
  assert all(bool((x == 1).all()) for x in jax.tree.leaves(u3))
  assert rewarmup_updates(ones, units, dst, 0, 0) is ones
  # tile copies are not new: nothing is re-warmed.
  t_units = growth_units(src, src.replace(d_model=32, n_heads=4), {'width': 'tile'})
  assert all(bool((x == 1).all()) for x in jax.tree.leaves(t_units))


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize('change,spec,match', [
    ({'d_model': 8, 'n_heads': 1}, {}, r'shrink model.d_model: source 16, target 8'),
    ({'n_layers': 1}, {}, r'shrink model.n_layers: source 2, target 1'),
    ({'head_dim': 4, 'n_heads': 4}, {}, r'model.head_dim: source 8, target 4'),
    ({'vocab_size': 41}, {}, r'model.vocab_size: source 40, target 41'),
    ({'tie_embeddings': False}, {}, r'model.tie_embeddings'),
    ({'d_ff': 36}, {'width': 'tile'}, r'model.d_ff: 36 / 24 = 1.5'),
    ({}, {'width': 'hyper'}, r"growth.width must be one of .*'hyper'"),
    ({}, {'depth': 'copy'}, r"growth.depth must be one of .*'copy'"),
    ({}, {'ramp': 3}, r"unknown key\(s\) \['ramp'\]"),
    ({}, {'ramp_steps': -1}, r'growth.ramp_steps must be an integer >= 0, got -1'),
])
def test_bad_growth_is_refused_with_a_clear_error(change, spec, match):
  dst = BASE.replace(**change) if change else BASE
  with pytest.raises(GrowthError, match=match):
    is_exact(BASE, dst, spec)


def test_wrong_params_or_state_is_refused():
  dst = BASE.replace(n_layers=3)
  bad = random_params(BASE.replace(d_ff=32))
  with pytest.raises(GrowthError, match=r'layers/bi has shape \(2, 32\) but the source config'):
    grow_state(bad, None, BASE, dst, {}, jax.random.PRNGKey(0))
  params = random_params(BASE)
  factored = optax.adafactor(1e-3).init(params)
  with pytest.raises(GrowthError, match='not part of a params-shaped subtree'):
    grow_state(params, factored, BASE, dst, {}, jax.random.PRNGKey(0))


def test_spec_defaults_and_logical_axes():
  spec = GrowthSpec.from_dict({})
  assert (spec.width, spec.depth) == ('msg', 'msg')
  assert logical_axes(BASE)['layers']['wo'] == ('layers', 'heads', 'kv', 'embed')


@pytest.mark.parametrize('depth', ['msg', 'identity'])
def test_new_layers_copy_the_layer_below_and_stay_exact(depth):
  """new_layers='copy' (MSG's choice): new layers are copies of the top old layer, their Adam
  moments start at zero, and the grown model is still the old function (mask 0 / zero output)."""
  src = BASE
  dst = src.replace(d_model=24, n_heads=3, d_ff=30, n_layers=4)
  spec = {'width': 'msg', 'depth': depth, 'new_layers': 'copy'}
  params = random_params(src)
  opt = optax.adam(1e-3)
  state = opt.init(params)
  state = (state[0]._replace(mu=random_params(src, 1), nu=random_params(src, 2)),) + state[1:]
  new, new_state, base = grow_state(params, state, src, dst, spec, jax.random.PRNGKey(0),
                                    optimizer=opt)
  top = params['layers']['wi'][-1]
  for layer in (2, 3):  # both new layers copy the old top layer (old block of the grown width)
    np.testing.assert_array_equal(new['layers']['wi'][layer][:16, :24], top)
    assert float(jnp.abs(new_state[0].mu['layers']['wi'][layer]).max()) == 0.0
  if depth == 'identity':  # identity zeroes the residual outputs of a new layer
    assert float(jnp.abs(new['layers']['wo'][2:]).max()) == 0.0
  else:
    np.testing.assert_array_equal(new['layers']['wq'][3][:16, :2], params['layers']['wq'][-1])
  fresh, _, _ = grow_state(params, None, src, dst, dict(spec, new_layers='fresh'),
                           jax.random.PRNGKey(0))
  assert not np.array_equal(fresh['layers']['wi'][2][:16, :24], top)
  tok = tokens_for(src)
  out = logits(dst, new, tok, ramp_masks(base, 0.0))
  assert float(jnp.abs(out - logits(src, params, tok)).max()) <= TOL
  with pytest.raises(GrowthError, match='growth.new_layers'):
    GrowthSpec.from_dict({'new_layers': 'clone'})
