"""Behaviour of the FLM decoder: shapes, xPos, packing, KV cache, masks, paper-scale sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flmjax.config import ConfigError, ModelConfig
from flmjax.model import Transformer, abstract_params, dense, gelu, init_cache, xpos_rotate

CFG = ModelConfig(vocab_size=300, d_model=64, n_heads=4, head_dim=16, d_ff=256, n_layers=2,
                  max_len=64)


def _init(cfg=CFG, B=2, L=12, seed=0):
  tokens = jax.random.randint(jax.random.PRNGKey(seed + 1), (B, L), 0, cfg.vocab_size)
  params = nn.unbox(Transformer(cfg).init(jax.random.PRNGKey(seed), tokens)['params'])
  return params, tokens


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_shapes_padding_and_param_count():
  params, tokens = _init()
  logits = Transformer(CFG).apply({'params': params}, tokens)
  assert logits.shape == (2, 12, 384) and logits.dtype == jnp.float32
  assert CFG.padded_vocab == 384
  assert _count(params) == CFG.param_count()
  untied = CFG.replace(tie_embeddings=False)
  params_u, _ = _init(untied)
  assert 'unembed' in params_u and _count(params_u) == untied.param_count()


def test_params_carry_logical_axis_names():
  boxed = abstract_params(CFG)
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs['embed']) == ('vocab', 'embed')
  assert tuple(specs['layers']['wq']) == ('layers', 'embed', 'heads', 'kv')
  assert tuple(specs['layers']['wi']) == ('layers', 'embed', 'mlp')
  assert tuple(specs['layers']['wo_mlp']) == ('layers', 'mlp', 'embed')


def test_causal():
  """Changing a later token never changes earlier logits."""
  params, tokens = _init()
  model = Transformer(CFG)
  a = model.apply({'params': params}, tokens)
  b = model.apply({'params': params}, tokens.at[:, 7].set((tokens[:, 7] + 1) % CFG.vocab_size))
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert float(jnp.abs(a[:, 7:] - b[:, 7:]).max()) > 1e-4


def test_xpos_scores_depend_only_on_relative_position():
  cfg = CFG
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, cfg.head_dim))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, cfg.head_dim))

  def score(m, n):
    qr = xpos_rotate(q, jnp.array([[m]]), cfg, is_key=False)
    kr = xpos_rotate(k, jnp.array([[n]]), cfg, is_key=True)
    return float((qr * kr).sum())

  np.testing.assert_allclose(score(10, 3), score(110, 103), rtol=1e-4)
  np.testing.assert_allclose(score(5, 5), score(300, 300), rtol=1e-4)
  # xPos decays with distance relative to plain rotary; with use_xpos=False the two agree at n=m.
  rope = cfg.replace(use_xpos=False)
  qr = xpos_rotate(q, jnp.array([[40]]), rope, is_key=False)
  kr = xpos_rotate(k, jnp.array([[40]]), rope, is_key=True)
  np.testing.assert_allclose(float((qr * kr).sum()), float((q * k).sum()), rtol=1e-4)


def test_packed_row_equals_documents_run_alone():
  params, tokens = _init(L=12)
  model = Transformer(CFG)
  seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 3] * 2)
  pos = jnp.array([list(range(5)) + list(range(4)) + [0] * 3] * 2)
  packed = model.apply({'params': params}, tokens, positions=pos, segment_ids=seg)
  first = model.apply({'params': params}, tokens[:, :5])
  second = model.apply({'params': params}, tokens[:, 5:9])
  np.testing.assert_allclose(packed[:, :5], first, atol=1e-5)
  np.testing.assert_allclose(packed[:, 5:9], second, atol=1e-5)


def test_causal_blocks_equal_the_full_attention_with_packing(monkeypatch):
  """Training attention over query blocks (each sees only keys up to its block's end) computes
  what the full masked softmax does: logits and gradients, packed documents included."""
  from flmjax import model as model_lib
  cfg = CFG.replace(max_len=4 * model_lib.CAUSAL_BLOCK)
  L = 4 * model_lib.CAUSAL_BLOCK
  params, tokens = _init(cfg, L=L)
  cut = L // 2 + 5  # a document boundary inside a block
  seg = jnp.array([[1] * cut + [2] * (L - cut - 7) + [0] * 7] * 2)
  pos = jnp.array([list(range(cut)) + list(range(L - cut - 7)) + [0] * 7] * 2)

  def run(block):
    monkeypatch.setattr(model_lib, 'CAUSAL_BLOCK', block)
    f = lambda p: Transformer(cfg).apply({'params': p}, tokens, positions=pos, segment_ids=seg)
    loss = lambda p: (f(p)[:, :, :cfg.vocab_size] * seg[..., None]).std()
    return f(params), jax.grad(loss)(params)

  blocked_logits, blocked_grads = run(model_lib.CAUSAL_BLOCK)
  full_logits, full_grads = run(L)  # one block: the plain masked softmax over every key
  np.testing.assert_allclose(blocked_logits[:, :L - 7], full_logits[:, :L - 7], atol=2e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), blocked_grads,
                         full_grads)


def test_kv_cache_matches_full_forward():
  params, tokens = _init(L=10)
  model = Transformer(CFG)
  full = model.apply({'params': params}, tokens)
  cache = init_cache(CFG, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  out, cache = model.apply({'params': params}, tokens[:, :6], positions=pos[:, :6], cache=cache)
  pieces = [out]
  for t in range(6, 10):
    out, cache = model.apply({'params': params}, tokens[:, t:t + 1], positions=pos[:, t:t + 1],
                             cache=cache)
    pieces.append(out)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
  assert int(cache['index']) == 10


def test_unit_masks_reproduce_plain_compute_and_zero_layer_mask_is_identity():
  params, tokens = _init()
  model = Transformer(CFG)
  plain = model.apply({'params': params}, tokens)
  ones = {'hidden': jnp.ones(64), 'heads': jnp.ones((2, 4)), 'mlp': jnp.ones((2, 256)),
          'layers': jnp.ones(2)}
  np.testing.assert_allclose(model.apply({'params': params}, tokens, masks=ones), plain,
                             atol=1e-5)
  # With every layer gated off, the model is embed -> final LN -> unembed.
  off = dict(ones, layers=jnp.zeros(2))
  no_layers = model.apply({'params': params}, tokens, masks=off)
  one_layer = CFG.replace(n_layers=1)
  p1 = jax.tree_util.tree_map(lambda x: x, params)
  p1['layers'] = jax.tree_util.tree_map(lambda x: x[:1] * 0, params['layers'])
  p1['layers']['ln1_scale'] = params['layers']['ln1_scale'][:1]
  p1['layers']['ln2_scale'] = params['layers']['ln2_scale'][:1]
  zero_block = Transformer(one_layer).apply({'params': p1}, tokens)
  np.testing.assert_allclose(no_layers, zero_block, atol=1e-5)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_gives_same_gradients(remat):
  params, tokens = _init()
  loss = lambda cfg: lambda p: Transformer(cfg).apply({'params': p}, tokens).std()
  g0 = jax.grad(loss(CFG))(params)
  g1 = jax.grad(loss(CFG.replace(remat=remat)))(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g0, g1)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_gelu_equals_exact_gelu_and_its_autodiff_gradient(dtype):
  # The MLP's GeLU saves only its input for the backward (fewer residual buffers per layer):
  # the same values as jax.nn.gelu(approximate=False), and the float32 autodiff gradient to
  # the dtype's rounding (its derivative is computed in float32 whatever the dtype).
  x = jnp.linspace(-9.0, 9.0, 20001).astype(dtype)
  exact = lambda v: jax.nn.gelu(v, approximate=False)
  np.testing.assert_array_equal(np.asarray(gelu(x), np.float32), np.asarray(exact(x), np.float32))
  grad = lambda f, v: jax.grad(lambda u: f(u).astype(jnp.float32).sum())(v)
  g, g_ref = grad(gelu, x), grad(exact, x.astype(jnp.float32))
  assert g.dtype == x.dtype
  np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref),
                             rtol=2.0 ** -7 if dtype == 'bfloat16' else 1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_dense_equals_the_einsum_and_its_autodiff_gradients(dtype):
  # Every weight matmul goes through `dense`, whose custom VJP writes the weight gradient as one
  # GEMM over the tokens: the same values, and both gradients of autodiff's einsum.
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 5, 24)).astype(dtype)
  w = jax.random.normal(kw, (24, 40)).astype(dtype)
  cot = jax.random.normal(kg, (3, 5, 40)).astype(dtype)
  einsum = lambda a, b: jnp.einsum('bli,io->blo', a, b)
  np.testing.assert_array_equal(np.asarray(dense(x, w), np.float32),
                                np.asarray(einsum(x, w), np.float32))
  grads = lambda f: jax.vjp(f, x, w)[1](cot)
  (dx, dw), (dx_ref, dw_ref) = grads(dense), grads(einsum)
  assert dx.dtype == dw.dtype == jnp.dtype(dtype) and dx.shape == x.shape and dw.shape == w.shape
  tol = dict(rtol=2.0 ** -7, atol=0.05) if dtype == 'bfloat16' else dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32), **tol)
  np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(dw_ref, np.float32), **tol)
  # a wrong contraction (say, over the features) could not pass: the weight gradient is x^T g
  np.testing.assert_allclose(np.asarray(dw, np.float32),
                             np.asarray(x, np.float32).reshape(15, 24).T
                             @ np.asarray(cot, np.float32).reshape(15, 40), rtol=2e-2, atol=0.1)


def test_bfloat16_compute_runs_and_stays_close():
  params, tokens = _init()
  f32 = Transformer(CFG).apply({'params': params}, tokens)
  bf16 = Transformer(CFG.replace(compute_dtype='bfloat16')).apply({'params': params}, tokens)
  assert bf16.dtype == jnp.float32
  assert float(jnp.abs(f32 - bf16).max()) < 0.1


def test_flm101b_final_shape_parameter_count_from_abstract_shapes():
  cfg = ModelConfig(vocab_size=100256, d_model=10240, n_heads=80, head_dim=128, d_ff=40960,
                    n_layers=80, max_len=2048)
  assert cfg.padded_vocab == 100352
  n = _count(abstract_params(cfg))
  assert n == cfg.param_count()
  assert 100e9 < n < 103e9  # "101B"


@pytest.mark.parametrize('field,value,fragment', [
    ('n_heads', 3, 'n_heads * model.head_dim'),
    ('head_dim', 15, 'head_dim'),
    ('compute_dtype', 'float8', 'compute_dtype'),
    ('d_model', -4, 'model.d_model'),
    ('remat', 'sometimes', 'model.remat'),
])
def test_validation_names_field_and_value(field, value, fragment):
  with pytest.raises(ConfigError, match=fragment.replace('*', r'\*')) as e:
    CFG.replace(**{field: value})
  assert str(value) in str(e.value)


def test_unknown_field_is_refused():
  with pytest.raises(ConfigError, match='d_modle'):
    ModelConfig.from_dict({'d_modle': 3})
