"""The blocked attention computes the masked softmax attention, and its backward is autodiff's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flmjax.attention import blocked_attention, query_blocks
from flmjax.model import NEG_INF


def _reference(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xLxS, scale):
  """The plain masked softmax over every key, differentiated by autodiff."""
  s_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK).astype(jnp.float32)
  p_BxHxLxS = jax.nn.softmax(s_BxHxLxS * scale + bias_Bx1xLxS, axis=-1)
  return jnp.einsum('bhls,bshk->blhk', p_BxHxLxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


def _inputs(L=64, H=3, K=8, B=2, dtype=jnp.float32, seed=0):
  q, k, v, g = (jax.random.normal(key, (B, L, H, K), dtype)
                for key in jax.random.split(jax.random.PRNGKey(seed), 4))
  # two packed documents and padding: causal by slot, attended only within a segment
  cut = L // 2 + 3
  seg_BxL = jnp.array([[1] * cut + [2] * (L - cut - 5) + [0] * 5, [1] * L])
  causal_LxL = jnp.arange(L)[:, None] >= jnp.arange(L)[None, :]
  mask_Bx1xLxL = (causal_LxL & (seg_BxL[:, :, None] == seg_BxL[:, None, :]))[:, None]
  bias = jnp.where(mask_Bx1xLxL, 0.0, NEG_INF).astype(jnp.float32)
  return q, k, v, g, bias


def _value_and_grads(fn, q, k, v, g, bias):
  out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, bias), q, k, v)
  return out, vjp(g)


def test_query_blocks_see_keys_up_to_their_end():
  assert query_blocks(64, 64, 16, causal=True) == (
      (0, 16, 16), (16, 32, 32), (32, 48, 48), (48, 64, 64))
  assert query_blocks(64, 64, 64, causal=True) == ((0, 64, 64),)  # one block: no skipping
  assert query_blocks(60, 60, 16, causal=True) == ((0, 60, 60),)  # not a multiple of the block
  assert query_blocks(4, 64, 16, causal=False) == ((0, 4, 64),)  # decoding: every cached key


@pytest.mark.parametrize('block', [16, 64])
def test_blocked_attention_equals_the_masked_softmax_and_its_gradients(block):
  q, k, v, g, bias = _inputs()
  scale = 8 ** -0.5
  spans = query_blocks(64, 64, block, causal=True)
  out, grads = _value_and_grads(
      lambda q, k, v, b: blocked_attention(q, k, v, b, scale, spans), q, k, v, g, bias)
  ref_out, ref_grads = _value_and_grads(
      lambda q, k, v, b: _reference(q, k, v, b, scale), q, k, v, g, bias)
  np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=1e-5)
  for name, got, want in zip('qkv', grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f'd{name}')


def test_a_block_that_misses_its_own_keys_is_wrong():
  """The spans matter: a block whose keys stop one block early (its diagonal block dropped) no
  longer computes the causal attention, so the comparison above can fail."""
  q, k, v, g, bias = _inputs()
  spans = tuple((s, e, e - 16) if s else (s, e, e) for s, e, _ in query_blocks(64, 64, 16, True))
  out = blocked_attention(q, k, v, bias, 0.3, spans)
  assert not np.allclose(out, _reference(q, k, v, bias, 0.3), atol=1e-3)


def test_decoding_spans_and_a_fully_masked_row_match_the_softmax():
  """Queries that are not the keys (a cache) use one block; a row with every key masked
  averages the values, as softmax over a finite bias does."""
  q, k, v, g, bias = _inputs(L=16)
  q4, bias4 = q[:, -4:], bias[:, :, -4:].at[0, :, 1].set(NEG_INF)
  spans = query_blocks(4, 16, 8, causal=False)
  out, grads = _value_and_grads(
      lambda q, k, v, b: blocked_attention(q, k, v, b, 0.5, spans), q4, k, v, g[:, -4:], bias4)
  ref_out, ref_grads = _value_and_grads(
      lambda q, k, v, b: _reference(q, k, v, b, 0.5), q4, k, v, g[:, -4:], bias4)
  np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=1e-5)
  np.testing.assert_allclose(out[0, 1], v[0].mean(0), atol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bfloat16_values_keep_their_dtype_and_track_float32():
  q, k, v, g, bias = _inputs()
  spans = query_blocks(64, 64, 16, causal=True)
  bf = lambda x: x.astype(jnp.bfloat16)
  out, grads = _value_and_grads(
      lambda q, k, v, b: blocked_attention(q, k, v, b, 0.35, spans), *map(bf, (q, k, v, g)), bias)
  ref_out, ref_grads = _value_and_grads(
      lambda q, k, v, b: _reference(q, k, v, b, 0.35), q, k, v, g, bias)
  assert out.dtype == jnp.bfloat16 and all(x.dtype == jnp.bfloat16 for x in grads)
  np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=0.05)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.1, rtol=0.05)
