"""The FLM decoder: pre-LN GPT-3-style blocks, xPos attention, GeLU MLP, scanned layers.

Layers are stacked along a leading `layers` axis (one `nn.scan`), so depth growth is a concat and
an 80-layer model compiles as fast as a 1-layer one.  Optional growth `masks` (see `flmjax.growth`)
gate new hidden units, heads, FFN units and layers so a grown model computes exactly the old
function when the masks are 0; `masks=None` is the plain, unmasked compute.

Shape suffixes: B batch, L query length, S key length, D d_model, H heads, K head_dim, F d_ff,
V padded vocabulary, N layers.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from flmjax import mup
from flmjax.config import ModelConfig

Array = jax.Array
Masks = dict[str, Array]  # {'hidden': D, 'heads': NxH, 'mlp': NxF, 'layers': N}; all optional
NEG_INF = -1e30
CAUSAL_BLOCK = 256  # query block of the causal-skipping attention (training, no cache)


def _param(module: nn.Module, name: str, axes: tuple[str, ...], shape: tuple[int, ...], init,
           dtype) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def layer_norm(x_BxLxD: Array, scale_D: Array, bias_D: Array, eps: float,
               hidden_D: Optional[Array] = None) -> Array:
  """LayerNorm in float32; with a hidden mask, statistics use only the active units (MSG)."""
  x = x_BxLxD.astype(jnp.float32)
  if hidden_D is None:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
  else:
    m = hidden_D.astype(jnp.float32)
    n = m.sum()
    mean = (x * m).sum(-1, keepdims=True) / n
    var = (jnp.square(x - mean) * m).sum(-1, keepdims=True) / n
  y = (x - mean) * jax.lax.rsqrt(var + eps) * scale_D + bias_D
  return y if hidden_D is None else y * hidden_D


def xpos_rotate(x_BxLxHxK: Array, positions_BxL: Array, cfg: ModelConfig, is_key: bool) -> Array:
  """Rotary embedding with xPos decay (Sun et al. 2022): q scaled by ζ^(n/γ), k by ζ^(-n/γ).

  The product q·k then carries ζ^((n-m)/γ): a relative, length-extrapolatable decay.
  """
  K = x_BxLxHxK.shape[-1]
  half = K // 2
  i_half = jnp.arange(half, dtype=jnp.float32)
  inv_freq = cfg.rope_theta ** (-2.0 * i_half / K)
  pos = positions_BxL.astype(jnp.float32)[..., None]  # BxLx1
  angle = pos * inv_freq  # BxLx(K/2)
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  if cfg.use_xpos:
    zeta = (2.0 * i_half + 0.4 * K) / (1.4 * K)  # K/2 decay rates in (0, 1)
    power = pos / cfg.xpos_scale_base * (-1.0 if is_key else 1.0)
    scale = zeta ** power  # BxLx(K/2)
    scale = jnp.concatenate([scale, scale], axis=-1)[:, :, None, :]
    rotated = rotated * scale
  return rotated.astype(x_BxLxHxK.dtype)


def attention_mask(q_segment_BxL: Array, k_segment_BxS: Array, q_index_BxL: Array,
                   k_index_BxS: Array) -> Array:
  """Causal by slot index, and only within the same packed segment (0 = padding)."""
  causal = q_index_BxL[:, :, None] >= k_index_BxS[:, None, :]
  same = q_segment_BxL[:, :, None] == k_segment_BxS[:, None, :]
  return (causal & same)[:, None]  # Bx1xLxS


class Block(nn.Module):
  """One pre-LN transformer layer; scanned over the `layers` axis."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, layer: dict[str, Any], shared: dict[str, Any]):
    cfg = self.cfg
    D, H, K, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
    pdt, dt = cfg.pdtype, cfg.dtype
    std = mup.init_std(cfg, 'wq')  # µP: hidden fan-in scaling (init_std under SP)
    out_std = mup.init_std(cfg, 'wo')  # … and GPT-2 style 1/√(2·n_layers) on residual outputs
    normal, zeros, ones = (nn.initializers.normal(std), nn.initializers.zeros,
                           nn.initializers.ones)
    p = lambda name, axes, shape, init: _param(self, name, axes, shape, init, pdt)

    ln1_s = p('ln1_scale', ('embed',), (D,), ones)
    ln1_b = p('ln1_bias', ('embed',), (D,), zeros)
    wq = p('wq', ('embed', 'heads', 'kv'), (D, H, K), normal)
    wk = p('wk', ('embed', 'heads', 'kv'), (D, H, K), normal)
    wv = p('wv', ('embed', 'heads', 'kv'), (D, H, K), normal)
    bq = p('bq', ('heads', 'kv'), (H, K), zeros)
    bk = p('bk', ('heads', 'kv'), (H, K), zeros)
    bv = p('bv', ('heads', 'kv'), (H, K), zeros)
    wo = p('wo', ('heads', 'kv', 'embed'), (H, K, D), nn.initializers.normal(out_std))
    bo = p('bo', ('embed',), (D,), zeros)
    ln2_s = p('ln2_scale', ('embed',), (D,), ones)
    ln2_b = p('ln2_bias', ('embed',), (D,), zeros)
    wi = p('wi', ('embed', 'mlp'), (D, F), normal)
    bi = p('bi', ('mlp',), (F,), zeros)
    wo_mlp = p('wo_mlp', ('mlp', 'embed'), (F, D), nn.initializers.normal(out_std))
    bo_mlp = p('bo_mlp', ('embed',), (D,), zeros)

    hidden_D = shared.get('hidden')
    head_H, mlp_F, layer_m = layer.get('heads'), layer.get('mlp'), layer.get('layers')
    gate = (lambda y: y) if hidden_D is None else (lambda y: y * hidden_D.astype(y.dtype))

    # --- attention ---
    h_BxLxD = layer_norm(x_BxLxD, ln1_s, ln1_b, cfg.ln_eps, hidden_D).astype(dt)
    q = jnp.einsum('bld,dhk->blhk', h_BxLxD, wq.astype(dt)) + bq.astype(dt)
    k = jnp.einsum('bld,dhk->blhk', h_BxLxD, wk.astype(dt)) + bk.astype(dt)
    v = jnp.einsum('bld,dhk->blhk', h_BxLxD, wv.astype(dt)) + bv.astype(dt)
    q = xpos_rotate(q, shared['positions'], cfg, is_key=False)
    k = xpos_rotate(k, shared['positions'], cfg, is_key=True)
    new_cache = {}
    if 'cache_k' in layer:  # decoding: write this chunk into the cache, attend over all of it
      idx = shared['cache_index']
      k = jax.lax.dynamic_update_slice(layer['cache_k'], k.astype(layer['cache_k'].dtype),
                                       (0, idx, 0, 0))
      v = jax.lax.dynamic_update_slice(layer['cache_v'], v.astype(layer['cache_v'].dtype),
                                       (0, idx, 0, 0))
      new_cache = {'cache_k': k, 'cache_v': v}
      k, v = k.astype(dt), v.astype(dt)
    out_BxLxHxK = self._attend(q, k, v, shared)
    if head_H is not None:
      out_BxLxHxK = out_BxLxHxK * head_H.astype(dt)[:, None]
    attn_BxLxD = jnp.einsum('blhk,hkd->bld', out_BxLxHxK, wo.astype(dt)) + bo.astype(dt)
    attn_BxLxD = gate(attn_BxLxD).astype(x_BxLxD.dtype)

    # --- MLP ---
    y_BxLxD = x_BxLxD + attn_BxLxD
    h_BxLxD = layer_norm(y_BxLxD, ln2_s, ln2_b, cfg.ln_eps, hidden_D).astype(dt)
    a_BxLxF = jax.nn.gelu(jnp.einsum('bld,df->blf', h_BxLxD, wi.astype(dt)) + bi.astype(dt),
                          approximate=False)
    if mlp_F is not None:
      a_BxLxF = a_BxLxF * mlp_F.astype(dt)
    mlp_BxLxD = jnp.einsum('blf,fd->bld', a_BxLxF, wo_mlp.astype(dt)) + bo_mlp.astype(dt)
    mlp_BxLxD = gate(mlp_BxLxD).astype(x_BxLxD.dtype)

    if layer_m is None:
      out = y_BxLxD + mlp_BxLxD
    else:  # MSG layer gate: y·m + x·(1−m)
      out = x_BxLxD + layer_m.astype(x_BxLxD.dtype) * (attn_BxLxD + mlp_BxLxD)
    out = nn.with_logical_constraint(out, ('act_batch', 'act_length', 'act_embed'))
    if self.is_mutable_collection('intermediates'):  # coordinate check (flmjax.scaling.coord_check)
      self.sow('intermediates', 'attn_out', _mean_abs(attn_BxLxD))
      self.sow('intermediates', 'mlp_out', _mean_abs(mlp_BxLxD))
      self.sow('intermediates', 'residual', _mean_abs(out))
    return out, new_cache

  def _attend(self, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, shared) -> Array:
    cfg = self.cfg
    mask_Bx1xLxS = shared['mask']  # built once per call, outside the layer scan
    if cfg.attention_impl == 'cudnn':
      return jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask_Bx1xLxS,
                                          scale=cfg.attention_scale, implementation='cudnn')
    L = q_BxLxHxK.shape[1]
    blk = CAUSAL_BLOCK
    if ('cache_index' not in shared and L % blk == 0 and L > blk
        and not self.is_mutable_collection('intermediates')):
      # Training / scoring: queries in blocks see only keys up to their block's end (the mask
      # is causal by slot), skipping ~half of the scores and softmax (~40% at 8 blocks).
      outs = []
      for i in range(L // blk):
        a, e = i * blk, (i + 1) * blk
        outs.append(_softmax_attend(q_BxLxHxK[:, a:e], k_BxSxHxK[:, :e], v_BxSxHxK[:, :e],
                                    shared['mask_bias'][:, :, a:e, :e], cfg.attention_scale))
      return jnp.concatenate(outs, axis=1)
    s_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK).astype(jnp.float32)
    if self.is_mutable_collection('intermediates'):  # mean |scaled q·k| over attended pairs
      m = jnp.broadcast_to(mask_Bx1xLxS, s_BxHxLxS.shape).astype(jnp.float32)
      self.sow('intermediates', 'attn_logits',
               (jnp.abs(s_BxHxLxS) * m).sum() * cfg.attention_scale / jnp.maximum(m.sum(), 1.0))
    # An additive bias, not a select: the same forward values, and its backward needs no
    # select over BxHxLxS (softmax already gives masked entries a zero gradient).
    s_BxHxLxS = s_BxHxLxS * cfg.attention_scale + shared['mask_bias']
    p_BxHxLxS = jax.nn.softmax(s_BxHxLxS, axis=-1).astype(v_BxSxHxK.dtype)
    return jnp.einsum('bhls,bshk->blhk', p_BxHxLxS, v_BxSxHxK)


def _softmax_attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xLxS, scale: float) -> Array:
  s_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK).astype(jnp.float32)
  p_BxHxLxS = jax.nn.softmax(s_BxHxLxS * scale + bias_Bx1xLxS, axis=-1).astype(v_BxSxHxK.dtype)
  return jnp.einsum('bhls,bshk->blhk', p_BxHxLxS, v_BxSxHxK)


def _mean_abs(x: Array) -> Array:
  return jnp.abs(x.astype(jnp.float32)).mean()


_REMAT_POLICIES = {
    'full': None,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nn.Module):
  """Decoder-only LM.  `__call__` returns logits (BxLxV, float32), plus the new cache if given."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxL: Array, positions: Optional[Array] = None,
               segment_ids: Optional[Array] = None, masks: Optional[Masks] = None,
               cache: Optional[dict[str, Array]] = None):
    cfg = self.cfg
    B, L = tokens_BxL.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    if segment_ids is None:
      segment_ids = jnp.ones((B, L), jnp.int32)
    masks = masks or {}

    embed_VxD = _param(self, 'embed', ('vocab', 'embed'), (cfg.padded_vocab, cfg.d_model),
                       nn.initializers.normal(mup.init_std(cfg, 'embed')), cfg.pdtype)
    x_BxLxD = jnp.take(embed_VxD, tokens_BxL, axis=0).astype(jnp.float32) * cfg.input_mult
    hidden_D = masks.get('hidden')
    if hidden_D is not None:
      x_BxLxD = x_BxLxD * hidden_D
    if self.is_mutable_collection('intermediates'):
      self.sow('intermediates', 'embed_out', _mean_abs(x_BxLxD))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ('act_batch', 'act_length', 'act_embed'))

    q_index = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    k_segment, k_index = segment_ids, q_index
    shared = {'positions': positions}
    if hidden_D is not None:
      shared['hidden'] = hidden_D
    layer_xs = {k: masks[k] for k in ('heads', 'mlp', 'layers') if masks.get(k) is not None}
    if cache is not None:
      idx = cache['index']
      S = cache['segment_ids'].shape[1]
      k_segment = jax.lax.dynamic_update_slice(cache['segment_ids'], segment_ids, (0, idx))
      q_index = q_index + idx
      k_index = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
      shared['cache_index'] = idx
      layer_xs['cache_k'], layer_xs['cache_v'] = cache['k'], cache['v']
    # One mask for all layers: built inside the scanned block it was recomputed (and its
    # backward re-derived) per layer, ~10% of a small model's CPU step.
    shared['mask'] = attention_mask(segment_ids, k_segment, q_index, k_index)
    shared['mask_bias'] = jnp.where(shared['mask'], 0.0, NEG_INF).astype(jnp.float32)

    block = Block
    if cfg.remat != 'none':
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    layers = nn.scan(block, variable_axes={'params': 0, 'intermediates': 0},
                     split_rngs={'params': True},
                     in_axes=(0, nn.broadcast), length=cfg.n_layers,
                     metadata_params={nn.PARTITION_NAME: 'layers'})(cfg, name='layers')
    x_BxLxD, new_layer_cache = layers(x_BxLxD, layer_xs, shared)

    scale_D = _param(self, 'final_ln_scale', ('embed',), (cfg.d_model,), nn.initializers.ones,
                     cfg.pdtype)
    bias_D = _param(self, 'final_ln_bias', ('embed',), (cfg.d_model,), nn.initializers.zeros,
                    cfg.pdtype)
    h_BxLxD = layer_norm(x_BxLxD, scale_D, bias_D, cfg.ln_eps, hidden_D).astype(cfg.dtype)
    if cfg.tie_embeddings:
      unembed_DxV = embed_VxD.T
    else:
      unembed_DxV = _param(self, 'unembed', ('embed', 'vocab'), (cfg.d_model, cfg.padded_vocab),
                           nn.initializers.normal(mup.init_std(cfg, 'unembed')), cfg.pdtype)
    logits_BxLxV = jnp.einsum('bld,dv->blv', h_BxLxD, unembed_DxV.astype(cfg.dtype))
    logits_BxLxV = logits_BxLxV.astype(jnp.float32) * cfg.logit_scale
    if self.is_mutable_collection('intermediates'):  # coordinate check (flmjax.scaling.coord_check)
      self.sow('intermediates', 'logits', _mean_abs(logits_BxLxV))
    if cache is None:
      return logits_BxLxV
    new_cache = {'k': new_layer_cache['cache_k'], 'v': new_layer_cache['cache_v'],
                 'segment_ids': k_segment, 'index': cache['index'] + L}
    return logits_BxLxV, new_cache


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int,
               dtype: Optional[str] = None) -> dict[str, Array]:
  """An empty KV cache: keys/values NxBxSxHxK, key segment ids BxS (0 = empty), write index."""
  shape = (cfg.n_layers, batch_size, max_len, cfg.n_heads, cfg.head_dim)
  dt = jnp.dtype(dtype or cfg.compute_dtype)
  return {'k': jnp.zeros(shape, dt), 'v': jnp.zeros(shape, dt),
          'segment_ids': jnp.zeros((batch_size, max_len), jnp.int32),
          'index': jnp.zeros((), jnp.int32)}


def abstract_params(cfg: ModelConfig, seq_len: int = 8):
  """Parameter ShapeDtypeStructs (boxed with logical names) without allocating memory."""
  model = Transformer(cfg)
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  return jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)['params']
