"""The FLM decoder: pre-LN GPT-3-style blocks, xPos attention, GeLU MLP, scanned layers.

Layers are stacked along a leading `layers` axis (one `nn.scan`), so depth growth is a concat and
an 80-layer model compiles as fast as a 1-layer one.  Optional growth `masks` (see `flmjax.growth`)
gate new hidden units, heads, FFN units and layers so a grown model computes exactly the old
function when the masks are 0; `masks=None` is the plain, unmasked compute.

The logits of the padded vocabulary rows (ids >= vocab_size) are set to NEG_INF here, once, so
training, validation, evaluation and sampling all normalise over the real vocabulary.

xPos scales keys by up to ζ^(-n/γ) (×5e8 at position 8191): with a float16 compute dtype the
rotated queries / keys, the attention scores and the key cache stay float32 (`score_dtype`), so
long contexts do not overflow; float32 and bfloat16 compute are unchanged.

Shape suffixes: B batch, L query length, S key length, D d_model, H heads, K head_dim, F d_ff,
V padded vocabulary, N layers.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flmjax import mup
from flmjax.attention import blocked_attention, query_blocks
from flmjax.config import ModelConfig

Array = jax.Array
Masks = dict[str, Array]  # {'hidden': D, 'heads': NxH, 'mlp': NxF, 'layers': N}; all optional
NEG_INF = -1e30
DENSE_OUT = 'dense_out'  # the checkpoint name of every weight matmul's output (`dense`)
CAUSAL_BLOCK = 128  # query block of the causal-skipping attention (training, no cache); 128
# measured 0.96-0.97x the step time of 256 at 10M and 50M on CPU (BUILD.md › Performance, issue 42)


def _param(module: nn.Module, name: str, axes: tuple[str, ...], shape: tuple[int, ...], init,
           dtype) -> Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def score_dtype(cfg: ModelConfig):
  """dtype of the xPos-scaled queries / keys, the attention scores and the key cache: float32
  under float16 compute (xPos key scales exceed float16's range beyond ~4.5k positions)."""
  return jnp.dtype(jnp.float32) if cfg.dtype == jnp.float16 else cfg.dtype


def layer_norm(x_BxLxD: Array, scale_D: Array, bias_D: Array, eps: float,
               hidden_D: Optional[Array] = None) -> Array:
  """LayerNorm in float32; with a hidden mask, statistics use only the active units (MSG)."""
  x32_BxLxD = x_BxLxD.astype(jnp.float32)
  if hidden_D is None:
    mean_BxLx1 = x32_BxLxD.mean(-1, keepdims=True)
    var_BxLx1 = jnp.square(x32_BxLxD - mean_BxLx1).mean(-1, keepdims=True)
  else:
    active_D = hidden_D.astype(jnp.float32)
    n_active = active_D.sum()
    mean_BxLx1 = (x32_BxLxD * active_D).sum(-1, keepdims=True) / n_active
    var_BxLx1 = (jnp.square(x32_BxLxD - mean_BxLx1) * active_D).sum(-1, keepdims=True) / n_active
  y_BxLxD = (x32_BxLxD - mean_BxLx1) * jax.lax.rsqrt(var_BxLx1 + eps) * scale_D + bias_D
  return y_BxLxD if hidden_D is None else y_BxLxD * hidden_D


def xpos_rotate(x_BxLxHxK: Array, positions_BxL: Array, cfg: ModelConfig, is_key: bool) -> Array:
  """Rotary embedding with xPos decay (Sun et al. 2022): q scaled by ζ^(n/γ), k by ζ^(-n/γ).

  The product q·k then carries ζ^((n-m)/γ): a relative, length-extrapolatable decay.  Computed
  in float32, returned in `score_dtype(cfg)`.
  """
  K = x_BxLxHxK.shape[-1]
  half = K // 2
  pair_index = jnp.arange(half, dtype=jnp.float32)
  inv_freq_Kh = cfg.rope_theta ** (-2.0 * pair_index / K)  # Kh = K/2 rotation pairs
  pos_BxLx1 = positions_BxL.astype(jnp.float32)[..., None]
  angle_BxLxKh = pos_BxLx1 * inv_freq_Kh
  sin_BxLx1xKh = jnp.sin(angle_BxLxKh)[:, :, None, :]
  cos_BxLx1xKh = jnp.cos(angle_BxLxKh)[:, :, None, :]
  x32_BxLxHxK = x_BxLxHxK.astype(jnp.float32)
  first_BxLxHxKh, second_BxLxHxKh = x32_BxLxHxK[..., :half], x32_BxLxHxK[..., half:]
  rotated_BxLxHxK = jnp.concatenate(
      [first_BxLxHxKh * cos_BxLx1xKh - second_BxLxHxKh * sin_BxLx1xKh,
       second_BxLxHxKh * cos_BxLx1xKh + first_BxLxHxKh * sin_BxLx1xKh], axis=-1)
  if cfg.use_xpos:
    zeta_Kh = (2.0 * pair_index + 0.4 * K) / (1.4 * K)  # K/2 decay rates in (0, 1)
    power_BxLx1 = pos_BxLx1 / cfg.xpos_scale_base * (-1.0 if is_key else 1.0)
    scale_BxLxKh = zeta_Kh ** power_BxLx1
    scale_BxLx1xK = jnp.concatenate([scale_BxLxKh, scale_BxLxKh], axis=-1)[:, :, None, :]
    rotated_BxLxHxK = rotated_BxLxHxK * scale_BxLx1xK
  return rotated_BxLxHxK.astype(score_dtype(cfg))


def attention_mask(q_segment_BxL: Array, k_segment_BxS: Array, q_index_BxL: Array,
                   k_index_BxS: Array) -> Array:
  """Causal by slot index, and only within the same packed segment (0 = padding)."""
  causal_BxLxS = q_index_BxL[:, :, None] >= k_index_BxS[:, None, :]
  same_segment_BxLxS = q_segment_BxL[:, :, None] == k_segment_BxS[:, None, :]
  return (causal_BxLxS & same_segment_BxLxS)[:, None]  # Bx1xLxS


class Block(nn.Module):
  """One pre-LN transformer layer; scanned over the `layers` axis."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, layer: dict[str, Any], shared: dict[str, Any]):
    cfg = self.cfg
    D, H, K, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
    param_dt, dt = cfg.pdtype, cfg.dtype
    std = mup.init_std(cfg, 'wq')  # µP: hidden fan-in scaling (init_std under SP)
    out_std = mup.init_std(cfg, 'wo')  # … and GPT-2 style 1/√(2·n_layers) on residual outputs
    normal, zeros, ones = (nn.initializers.normal(std), nn.initializers.zeros,
                           nn.initializers.ones)
    param = lambda name, axes, shape, init: _param(self, name, axes, shape, init, param_dt)

    ln1_scale_D = param('ln1_scale', ('embed',), (D,), ones)
    ln1_bias_D = param('ln1_bias', ('embed',), (D,), zeros)
    wq_DxHxK = param('wq', ('embed', 'heads', 'kv'), (D, H, K), normal)
    wk_DxHxK = param('wk', ('embed', 'heads', 'kv'), (D, H, K), normal)
    wv_DxHxK = param('wv', ('embed', 'heads', 'kv'), (D, H, K), normal)
    bq_HxK = param('bq', ('heads', 'kv'), (H, K), zeros)
    bk_HxK = param('bk', ('heads', 'kv'), (H, K), zeros)
    bv_HxK = param('bv', ('heads', 'kv'), (H, K), zeros)
    wo_HxKxD = param('wo', ('heads', 'kv', 'embed'), (H, K, D), nn.initializers.normal(out_std))
    bo_D = param('bo', ('embed',), (D,), zeros)
    ln2_scale_D = param('ln2_scale', ('embed',), (D,), ones)
    ln2_bias_D = param('ln2_bias', ('embed',), (D,), zeros)
    wi_DxF = param('wi', ('embed', 'mlp'), (D, F), normal)
    bi_F = param('bi', ('mlp',), (F,), zeros)
    wo_mlp_FxD = param('wo_mlp', ('mlp', 'embed'), (F, D), nn.initializers.normal(out_std))
    bo_mlp_D = param('bo_mlp', ('embed',), (D,), zeros)

    hidden_D = shared.get('hidden')
    head_H, mlp_F, layer_gate = layer.get('heads'), layer.get('mlp'), layer.get('layers')
    gate = (lambda y: y) if hidden_D is None else (lambda y: y * hidden_D.astype(y.dtype))

    # --- attention ---
    h_BxLxD = layer_norm(x_BxLxD, ln1_scale_D, ln1_bias_D, cfg.ln_eps, hidden_D).astype(dt)
    heads = lambda w_DxHxK: dense(h_BxLxD, w_DxHxK.astype(dt).reshape(D, H * K)).reshape(
        h_BxLxD.shape[:2] + (H, K))
    q_BxLxHxK = heads(wq_DxHxK) + bq_HxK.astype(dt)
    k_BxLxHxK = heads(wk_DxHxK) + bk_HxK.astype(dt)
    v_BxLxHxK = heads(wv_DxHxK) + bv_HxK.astype(dt)
    q_BxLxHxK = xpos_rotate(q_BxLxHxK, shared['positions'], cfg, is_key=False)
    k_BxSxHxK = xpos_rotate(k_BxLxHxK, shared['positions'], cfg, is_key=True)
    v_BxSxHxK = v_BxLxHxK
    new_cache = {}
    if 'cache_k' in layer:  # decoding: write this chunk into the cache, attend over all of it
      index = shared['cache_index']
      k_BxSxHxK = jax.lax.dynamic_update_slice(
          layer['cache_k'], k_BxSxHxK.astype(layer['cache_k'].dtype), (0, index, 0, 0))
      v_BxSxHxK = jax.lax.dynamic_update_slice(
          layer['cache_v'], v_BxSxHxK.astype(layer['cache_v'].dtype), (0, index, 0, 0))
      new_cache = {'cache_k': k_BxSxHxK, 'cache_v': v_BxSxHxK}
      k_BxSxHxK, v_BxSxHxK = k_BxSxHxK.astype(score_dtype(cfg)), v_BxSxHxK.astype(dt)
    out_BxLxHxK = self._attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, shared)
    if head_H is not None:
      out_BxLxHxK = out_BxLxHxK * head_H.astype(dt)[:, None]
    attn_BxLxD = dense(out_BxLxHxK.reshape(out_BxLxHxK.shape[:2] + (H * K,)),
                       wo_HxKxD.astype(dt).reshape(H * K, D)) + bo_D.astype(dt)
    attn_BxLxD = gate(attn_BxLxD).astype(x_BxLxD.dtype)

    # --- MLP ---
    y_BxLxD = x_BxLxD + attn_BxLxD
    h_BxLxD = layer_norm(y_BxLxD, ln2_scale_D, ln2_bias_D, cfg.ln_eps, hidden_D).astype(dt)
    pre_BxLxF = dense(h_BxLxD, wi_DxF.astype(dt)) + bi_F.astype(dt)
    act_BxLxF = gelu(pre_BxLxF)  # its own line: op_profile names the GeLU ops by their source
    if mlp_F is not None:
      act_BxLxF = act_BxLxF * mlp_F.astype(dt)
    mlp_BxLxD = dense(act_BxLxF, wo_mlp_FxD.astype(dt)) + bo_mlp_D.astype(dt)
    mlp_BxLxD = gate(mlp_BxLxD).astype(x_BxLxD.dtype)

    if layer_gate is None:
      out_BxLxD = y_BxLxD + mlp_BxLxD
    else:  # MSG layer gate: y·m + x·(1−m)
      out_BxLxD = x_BxLxD + layer_gate.astype(x_BxLxD.dtype) * (attn_BxLxD + mlp_BxLxD)
    out_BxLxD = nn.with_logical_constraint(out_BxLxD, ('act_batch', 'act_length', 'act_embed'))
    if self.is_mutable_collection('intermediates'):  # coordinate check (flmjax.scaling.coord_check)
      self.sow('intermediates', 'attn_out', _mean_abs(attn_BxLxD))
      self.sow('intermediates', 'mlp_out', _mean_abs(mlp_BxLxD))
      self.sow('intermediates', 'residual', _mean_abs(out_BxLxD))
    return out_BxLxD, new_cache

  def _attend(self, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, shared) -> Array:
    cfg = self.cfg
    mask_Bx1xLxS = shared['mask']  # built once per call, outside the layer scan
    if cfg.attention_impl == 'cudnn':  # cuDNN takes one dtype: float16 keys may overflow there
      dt = cfg.dtype
      return jax.nn.dot_product_attention(q_BxLxHxK.astype(dt), k_BxSxHxK.astype(dt), v_BxSxHxK,
                                          mask=mask_Bx1xLxS, scale=cfg.attention_scale,
                                          implementation='cudnn')
    if self.is_mutable_collection('intermediates'):  # mean |scaled q·k| over attended pairs
      s_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK).astype(jnp.float32)
      attended_BxHxLxS = jnp.broadcast_to(mask_Bx1xLxS, s_BxHxLxS.shape).astype(jnp.float32)
      self.sow('intermediates', 'attn_logits',
               (jnp.abs(s_BxHxLxS) * attended_BxHxLxS).sum() * cfg.attention_scale
               / jnp.maximum(attended_BxHxLxS.sum(), 1.0))
    # Training / scoring: queries in blocks see only keys up to their block's end (the mask is
    # causal by slot).  Decoding with a cache attends over all of it in one block.
    spans = query_blocks(q_BxLxHxK.shape[1], k_BxSxHxK.shape[1], CAUSAL_BLOCK,
                         causal='cache_index' not in shared)
    return blocked_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, shared['mask_bias'],
                             cfg.attention_scale, spans)


def dense(x_BxLxI: Array, w_IxO: Array) -> Array:
  """x @ w over the last axis (`_dense`), its output named for remat's 'dots' policy, which no
  longer sees a dot_general inside the custom VJP."""
  return checkpoint_name(_dense(x_BxLxI, w_IxO), DENSE_OUT)


@jax.custom_vjp
def _dense(x_BxLxI: Array, w_IxO: Array) -> Array:
  """x @ w over the last axis, with the weight gradient written as one GEMM over the tokens.

  Autodiff's transpose of the einsum left the layout to XLA, which on CPU transposed the output
  gradient and ran the weight gradient of the MLP's two matrices as (xᵀ)(gᵀ)ᵀ on Eigen, 2-3× the
  time of the same FLOPs as a plain GEMM (50M: 81 vs 30 ms a layer); contracting the tokens of
  x (T×I) and g (T×O) directly keeps both operands as they are (BUILD.md › Performance)."""
  return jnp.einsum('bli,io->blo', x_BxLxI, w_IxO)


def _dense_fwd(x_BxLxI: Array, w_IxO: Array) -> tuple[Array, tuple[Array, Array]]:
  return _dense(x_BxLxI, w_IxO), (x_BxLxI, w_IxO)


def _dense_bwd(res: tuple[Array, Array], g_BxLxO: Array) -> tuple[Array, Array]:
  x_BxLxI, w_IxO = res
  dx_BxLxI = jnp.einsum('blo,io->bli', g_BxLxO, w_IxO)
  x_TxI = x_BxLxI.reshape(-1, x_BxLxI.shape[-1])
  g_TxO = g_BxLxO.reshape(-1, g_BxLxO.shape[-1])
  dw_IxO = jax.lax.dot_general(x_TxI, g_TxO, (((0,), (0,)), ((), ())))
  return dx_BxLxI.astype(x_BxLxI.dtype), dw_IxO.astype(w_IxO.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def gelu(x: Array) -> Array:
  """Exact (erf) GeLU whose backward keeps only its input: autodiff of `jax.nn.gelu` saved
  erf's and exp's intermediates too, two more FFN-sized buffers per layer written in the
  forward and read in the backward; the derivative Φ(x) + x·φ(x) is recomputed instead."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x: Array) -> tuple[Array, Array]:
  return gelu(x), x


def _gelu_bwd(x: Array, g: Array) -> tuple[Array]:
  x32 = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(x32 * (2.0 ** -0.5)))
  pdf = jnp.exp(-0.5 * jnp.square(x32)) * (2.0 * jnp.pi) ** -0.5
  return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _mean_abs(x: Array) -> Array:
  return jnp.abs(x.astype(jnp.float32)).mean()


_REMAT_POLICIES = {
    'full': None,
    'dots': jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        jax.checkpoint_policies.save_only_these_names(DENSE_OUT)),
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
    positions_BxL, segment_ids_BxL = positions, segment_ids
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((B, L), jnp.int32)
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

    q_index_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    k_segment_BxS, k_index_BxS = segment_ids_BxL, q_index_BxL
    shared = {'positions': positions_BxL}
    if hidden_D is not None:
      shared['hidden'] = hidden_D
    layer_xs = {k: masks[k] for k in ('heads', 'mlp', 'layers') if masks.get(k) is not None}
    if cache is not None:
      index = cache['index']
      S = cache['segment_ids'].shape[1]
      k_segment_BxS = jax.lax.dynamic_update_slice(cache['segment_ids'], segment_ids_BxL,
                                                   (0, index))
      q_index_BxL = q_index_BxL + index
      k_index_BxS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
      shared['cache_index'] = index
      layer_xs['cache_k'], layer_xs['cache_v'] = cache['k'], cache['v']
    # One mask for all layers: built inside the scanned block it was recomputed (and its
    # backward re-derived) per layer, ~10% of a small model's CPU step.
    shared['mask'] = attention_mask(segment_ids_BxL, k_segment_BxS, q_index_BxL, k_index_BxS)
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
    logits_BxLxV = dense(h_BxLxD, unembed_DxV.astype(cfg.dtype))
    logits_BxLxV = logits_BxLxV.astype(jnp.float32) * cfg.logit_scale
    if self.is_mutable_collection('intermediates'):  # coordinate check (flmjax.scaling.coord_check)
      self.sow('intermediates', 'logits', _mean_abs(logits_BxLxV[..., :cfg.vocab_size]))
    logits_BxLxV = mask_padded_vocab(logits_BxLxV, cfg.vocab_size)
    if cache is None:
      return logits_BxLxV
    new_cache = {'k': new_layer_cache['cache_k'], 'v': new_layer_cache['cache_v'],
                 'segment_ids': k_segment_BxS, 'index': cache['index'] + L}
    return logits_BxLxV, new_cache


def mask_padded_vocab(logits_BxLxV: Array, vocab_size: int) -> Array:
  """Padded vocabulary rows (ids >= vocab_size) are not tokens: NEG_INF, so every softmax,
  logsumexp and argmax is over the real vocabulary.  Finite, so logit differences (growth's
  exactness checks) stay finite."""
  V = logits_BxLxV.shape[-1]
  if V <= vocab_size:
    return logits_BxLxV
  # An additive bias, not a select: x + 0 = x, and x − 1e30 rounds to −1e30 for any |x| < 1e22,
  # so the values are the same; the backward is the identity, where a select cost another
  # BxLxV pass (11% of a 10M model's CPU step, benchmarks/step_conventions.py).
  bias_V = jnp.where(jnp.arange(V) < vocab_size, 0.0, NEG_INF).astype(logits_BxLxV.dtype)
  return logits_BxLxV + bias_V


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int,
               dtype: Optional[str] = None) -> dict[str, Array]:
  """An empty KV cache: keys/values NxBxSxHxK, key segment ids BxS (0 = empty), write index.
  Keys are kept in `score_dtype` (float32 under float16 compute: xPos-scaled keys)."""
  shape = (cfg.n_layers, batch_size, max_len, cfg.n_heads, cfg.head_dim)
  dt = jnp.dtype(dtype or cfg.compute_dtype)
  key_dt = jnp.float32 if dt == jnp.float16 else dt
  return {'k': jnp.zeros(shape, key_dt), 'v': jnp.zeros(shape, dt),
          'segment_ids': jnp.zeros((batch_size, max_len), jnp.int32),
          'index': jnp.zeros((), jnp.int32)}


def abstract_params(cfg: ModelConfig, seq_len: int = 8):
  """Parameter ShapeDtypeStructs (boxed with logical names) without allocating memory."""
  model = Transformer(cfg)
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  return jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)['params']
