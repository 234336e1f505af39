"""Softmax attention in query blocks with its own backward: flash attention's, for the CPU.

Training attention is causal, so query block i needs only the keys up to its block's end: over 8
blocks that skips ~44% of the scores.  Written as plain einsums per block, autodiff's backward
paid for that layout (50M, one CPU thread, 139 ms a layer forward + backward):
- each block's key / value slice was transposed again, per block, inside fused copies;
- dK and dV were summed from zero-padded per-block pieces, transposed as they were added;
- dSᵀq ran as a batched dot with a transposed operand on Eigen at ~40 GFLOP/s.
Here q, k, v are put in B×H×L×K once (a prefix of the keys is then contiguous per head), the
softmax is normalised after P·V (the B×L×H×K output is divided, not every probability), the
backward reuses the saved unnormalised probabilities, and dKᵀ / dVᵀ are accumulated as
B×H×K×S, the layout their dots produce at full speed (80 ms a layer; BUILD.md › Performance,
issue 42).

Values agree with the masked softmax's to float rounding (`tests/test_attention.py`); a row whose
keys are all masked averages them, as `jax.nn.softmax` over a finite bias does.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array
Spans = tuple[tuple[int, int, int], ...]  # (query start, query end, key end) per block


def query_blocks(L: int, S: int, block: int, causal: bool) -> Spans:
  """Block i's queries [i·block, (i+1)·block) and its keys [0, (i+1)·block) when the attention
  is causal by slot and L = S divides into blocks; otherwise one block of every query and key."""
  if causal and L == S and L % block == 0 and L > block:
    return tuple((i * block, (i + 1) * block, (i + 1) * block) for i in range(L // block))
  return ((0, L, S),)


def blocked_attention(q_BxLxHxK: Array, k_BxSxHxK: Array, v_BxSxHxK: Array,
                      bias_Bx1xLxS: Array, scale: float, spans: Spans) -> Array:
  """softmax(q·kᵀ·scale + bias)·v over the keys each query block's span names (B×L×H×K,
  in v's dtype).  Scores and the softmax are float32; `bias` is 0 where attended, a large negative
  number elsewhere (no -inf: a fully masked row would be NaN), and gets no gradient."""
  return _attention(spans, float(scale), q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xLxS)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attention(spans: Spans, scale: float, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xLxS):
  return _forward(spans, scale, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xLxS)[0]


def _heads_first(x_BxLxHxK: Array) -> Array:
  return x_BxLxHxK.transpose(0, 2, 1, 3)


def _forward(spans, scale, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xLxS):
  q_BxHxLxK, k_BxHxSxK, v_BxHxSxK = map(_heads_first, (q_BxLxHxK, k_BxSxHxK, v_BxSxHxK))
  outs, probs, sums = [], [], []
  for start, end, key_end in spans:
    s_BxHxlxs = jnp.einsum('bhlk,bhsk->bhls', q_BxHxLxK[:, :, start:end],
                           k_BxHxSxK[:, :, :key_end]).astype(jnp.float32)
    s_BxHxlxs = s_BxHxlxs * scale + bias_Bx1xLxS[:, :, start:end, :key_end]
    e_BxHxlxs = jnp.exp(s_BxHxlxs - jnp.max(s_BxHxlxs, axis=-1, keepdims=True))  # ≤ 1
    sum_BxHxl = jnp.sum(e_BxHxlxs, axis=-1)
    o_BxHxlxK = jnp.einsum('bhls,bhsk->bhlk', e_BxHxlxs.astype(v_BxSxHxK.dtype),
                           v_BxHxSxK[:, :, :key_end], preferred_element_type=jnp.float32)
    outs.append((o_BxHxlxK / sum_BxHxl[..., None]).astype(v_BxSxHxK.dtype))
    probs.append(e_BxHxlxs)
    sums.append(sum_BxHxl)
  out_BxLxHxK = _heads_first(jnp.concatenate(outs, axis=2))
  residuals = (q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xLxS, out_BxLxHxK, probs, sums)
  return out_BxLxHxK, residuals


def _backward(spans, scale, residuals, g_BxLxHxK):
  q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xLxS, out_BxLxHxK, probs, sums = residuals
  B, H, _, K = q_BxHxLxK.shape
  S = k_BxHxSxK.shape[2]
  f32 = jnp.float32
  g_BxHxLxK = _heads_first(g_BxLxHxK)
  # rowsum(P ∘ dP) = rowsum(dO ∘ O): softmax's backward without a pass over the scores
  delta_BxHxL = jnp.einsum('blhk,blhk->bhl', g_BxLxHxK.astype(f32), out_BxLxHxK.astype(f32))
  dk_BxHxKxS = jnp.zeros((B, H, K, S), f32)
  dv_BxHxKxS = jnp.zeros((B, H, K, S), f32)
  dqs = []
  for (start, end, key_end), e_BxHxlxs, sum_BxHxl in zip(spans, probs, sums):
    g_BxHxlxK = g_BxHxLxK[:, :, start:end]
    inv_sum_BxHxl = 1.0 / sum_BxHxl
    dp_BxHxlxs = jnp.einsum('bhlk,bhsk->bhls', g_BxHxlxK, v_BxHxSxK[:, :, :key_end],
                            preferred_element_type=f32)
    ds_BxHxlxs = e_BxHxlxs * ((dp_BxHxlxs - delta_BxHxL[:, :, start:end, None])
                              * (inv_sum_BxHxl * scale)[..., None])
    dqs.append(jnp.einsum('bhls,bhsk->bhlk', ds_BxHxlxs.astype(k_BxHxSxK.dtype),
                          k_BxHxSxK[:, :, :key_end], preferred_element_type=f32))
    # dKᵀ, dVᵀ (B×H×K×S): this layout runs as a plain GEMM; B×H×S×K ran at 1/4 the speed
    dk_BxHxKxS = dk_BxHxKxS.at[..., :key_end].add(jnp.einsum(
        'bhls,bhlk->bhks', ds_BxHxlxs.astype(q_BxHxLxK.dtype), q_BxHxLxK[:, :, start:end],
        preferred_element_type=f32))
    p_g_BxHxlxK = (g_BxHxlxK * inv_sum_BxHxl[..., None]).astype(v_BxHxSxK.dtype)
    dv_BxHxKxS = dv_BxHxKxS.at[..., :key_end].add(jnp.einsum(
        'bhls,bhlk->bhks', e_BxHxlxs.astype(v_BxHxSxK.dtype), p_g_BxHxlxK,
        preferred_element_type=f32))
  keys_last = lambda x_BxHxKxS, dtype: x_BxHxKxS.transpose(0, 3, 1, 2).astype(dtype)
  dq_BxLxHxK = _heads_first(jnp.concatenate(dqs, axis=2)).astype(q_BxHxLxK.dtype)
  return (dq_BxLxHxK, keys_last(dk_BxHxKxS, k_BxHxSxK.dtype),
          keys_last(dv_BxHxKxS, v_BxHxSxK.dtype), jnp.zeros_like(bias_Bx1xLxS))


_attention.defvjp(_forward, _backward)
