"""Growth plans and the per-leaf operator behind `flmjax.growth`.

A growth is described per *logical axis* (the names every parameter already carries: `layers`,
`embed`, `heads`, `kv`, `mlp`, `vocab`), so one small operator grows any leaf — parameter or
optimizer moment — from its axis names alone.  Width methods: `msg` keeps old entries in the
leading block and takes new ones from a fresh init (masks gate them); `tile` concatenates r copies
and divides fan-in weights by r.  Depth methods map every target layer to a source layer (copies)
or to -1 (a new layer).  A new layer (msg / identity) starts from a fresh init
(`new_layers='fresh'`, the default) or as a copy of the old layer below it (`new_layers='copy'`,
MSG's own choice); its Adam moments start at zero either way, and under msg its layer mask is 0,
so the grown model computes the old function with both.  Everything here is static (numpy /
Python) except `grow_leaf`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flmjax.config import ConfigError, ModelConfig
from flmjax.params import FINAL_LN, RESIDUAL_OUT

Array = jax.Array

WIDTH_METHODS = ('msg', 'tile')
DEPTH_METHODS = ('msg', 'identity', 'stack', 'interleave')
NEW_LAYER_INITS = ('fresh', 'copy')
ADAM_AT_GROWTH = ('map', 'reset')
WIDTH_AXES = ('embed', 'heads', 'mlp')
# Mask key (the model's `masks` entries) of each width unit -> the logical axis it gates.
WIDTH_MASK_AXES = (('hidden', 'embed'), ('heads', 'heads'), ('mlp', 'mlp'))
# Weight -> the axis its inputs come in on: tiling replicates that input r times, so the weight
# is divided by r there (fan-in rescaling).  `embed` (VxD) is an input table: no fan-in.
FAN_IN = {'wq': 'embed', 'wk': 'embed', 'wv': 'embed', 'wo': 'heads', 'wi': 'embed',
          'wo_mlp': 'mlp', 'unembed': 'embed'}
# Config fields that change the function itself (not only shapes or new-weight init): must match.
MUST_MATCH = ('vocab_size', 'head_dim', 'tie_embeddings', 'ln_eps', 'rope_theta',
              'xpos_scale_base', 'use_xpos', 'attn_scale', 'input_mult')


class GrowthError(ConfigError):
  """A growth request is invalid; the message names the field and the values."""


@dataclasses.dataclass(frozen=True)
class GrowthSpec:
  """The `growth` section of a stage, as a hashable value (a static argument under jit)."""

  width: str = 'msg'          # 'msg' | 'tile'
  depth: str = 'msg'          # 'msg' | 'identity' | 'stack' | 'interleave'
  ramp_steps: int = 100       # msg masks go 0 -> 1 linearly over this many steps, then are dropped
  noise_std: float = 1e-3     # tile: std of the paired, cancelling symmetry-breaking noise
  new_init_std: Optional[float] = None  # None: the target model's own init for new weights
  rewarmup_steps: int = 0     # >0: updates of new entries ramp from 1/n to 1 over n steps
  new_layers: str = 'fresh'   # msg / identity depth: 'fresh' init or 'copy' of the layer below
  adam: str = 'map'           # 'map': moments follow the parameter map, Adam's count is kept;
                              # 'reset': zero moments and count (bias correction restarts)

  @classmethod
  def from_dict(cls, d: Optional[Mapping[str, Any]]) -> 'GrowthSpec':
    if isinstance(d, GrowthSpec):
      return d
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else (d or {}))
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
      raise GrowthError(f'growth: unknown key(s) {unknown}; known keys: {names}')
    spec = cls(**d)
    spec.validate()
    return spec

  def validate(self) -> None:
    if self.width not in WIDTH_METHODS:
      raise GrowthError(f'growth.width must be one of {WIDTH_METHODS}, got {self.width!r}')
    if self.depth not in DEPTH_METHODS:
      raise GrowthError(f'growth.depth must be one of {DEPTH_METHODS}, got {self.depth!r}')
    if self.new_layers not in NEW_LAYER_INITS:
      raise GrowthError(f'growth.new_layers must be one of {NEW_LAYER_INITS}, got '
                        f'{self.new_layers!r}')
    if self.adam not in ADAM_AT_GROWTH:
      raise GrowthError(f'growth.adam must be one of {ADAM_AT_GROWTH}, got {self.adam!r}')
    for name in ('ramp_steps', 'rewarmup_steps'):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise GrowthError(f'growth.{name} must be an integer >= 0, got {v!r}')
    for name in ('noise_std', 'new_init_std'):
      v = getattr(self, name)
      if v is None and name == 'new_init_std':
        continue
      if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise GrowthError(f'growth.{name} must be a finite number >= 0, got {v!r}')


def layer_sources(n_src: int, n_dst: int, method: str) -> tuple[int, ...]:
  """For every target layer, the source layer it copies, or -1 for a new layer.

  msg / identity: old layers first, new layers on top.  stack (G_stack): the whole stack again
  on top, truncated to n_dst.  interleave: each layer repeated in place (0,0,1,1,... for 2x).
  """
  if method in ('msg', 'identity'):
    return tuple(i if i < n_src else -1 for i in range(n_dst))
  if method == 'stack':
    return tuple(i % n_src for i in range(n_dst))
  if method == 'interleave':
    return tuple(i * n_src // n_dst for i in range(n_dst))
  raise GrowthError(f'growth.depth must be one of {DEPTH_METHODS}, got {method!r}')


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about one growth: sizes per axis, factors, layer map, scale factors."""

  src: ModelConfig
  dst: ModelConfig
  spec: GrowthSpec

  @property
  def src_size(self) -> dict[str, int]:
    return self.src.axis_sizes()

  @property
  def dst_size(self) -> dict[str, int]:
    return self.dst.axis_sizes()

  def factor(self, axis: str) -> int:
    """Tile factor of a width axis (1 for any other axis or when it does not grow)."""
    if self.spec.width != 'tile' or axis not in WIDTH_AXES:
      return 1
    return self.dst_size[axis] // self.src_size[axis]

  def grows(self, axis: str) -> bool:
    return self.dst_size[axis] > self.src_size[axis]

  @property
  def layer_src(self) -> tuple[int, ...]:
    return layer_sources(self.src.n_layers, self.dst.n_layers, self.spec.depth)

  @property
  def new_layers(self) -> np.ndarray:
    return np.asarray(self.layer_src) < 0

  @property
  def copies_new_layers(self) -> bool:
    return self.spec.new_layers == 'copy' and bool(self.new_layers.any())

  @property
  def take_layers(self) -> np.ndarray:
    """Source layer gathered for every target layer: a new layer gathers the old layer below it
    (used under new_layers='copy'; overwritten otherwise)."""
    src = np.asarray(self.layer_src)
    below = np.maximum.accumulate(np.where(src >= 0, src, 0))
    return np.where(src >= 0, src, below)

  @property
  def final_ln_factor(self) -> float:
    """Scale on the final LayerNorm that keeps logits unchanged.

    logits = LN(x)·U·logit_scale.  Under µP logit_scale = output_mult·base/d_model shrinks as
    the width grows, so the factor is src.logit_scale / dst.logit_scale.  With tied embeddings,
    tiling makes U = Eᵀ r-fold longer (r copies of each row, not divided by r because E is also
    the input table), so the factor also divides by r.  Untied U is divided by r like any fan-in
    weight.
    """
    c = self.src.logit_scale / self.dst.logit_scale
    if self.dst.tie_embeddings:
      c /= self.factor('embed')
    return c

  def leaf_scale(self, name: str) -> float:
    """Linear scale of the parameter map for a leaf (Adam nu takes its square)."""
    if name in FAN_IN:
      s = 1.0 / self.factor(FAN_IN[name])
    else:
      s = 1.0
    if name in FINAL_LN:
      s *= self.final_ln_factor
    return s

  @property
  def exact(self) -> bool:
    """True when the grown model (masks at 0) computes exactly the source function."""
    return self.spec.depth in ('msg', 'identity') or not self.grows('layers')

  @property
  def needs_fresh(self) -> bool:
    """Whether any entry is new (taken from a fresh init) rather than copied."""
    width_new = self.spec.width == 'msg' and any(self.grows(a) for a in WIDTH_AXES)
    return width_new or (bool(self.new_layers.any()) and self.spec.new_layers == 'fresh')


def make_plan(src: ModelConfig, dst: ModelConfig, spec: Any) -> Plan:
  """Validate a growth request; every refusal names the field and both values."""
  spec = GrowthSpec.from_dict(spec)
  if not isinstance(src, ModelConfig) or not isinstance(dst, ModelConfig):
    raise GrowthError(f'src and dst must be ModelConfig, got {type(src).__name__} and '
                      f'{type(dst).__name__}')
  src.validate()
  dst.validate()
  for name in MUST_MATCH:
    a, b = getattr(src, name), getattr(dst, name)
    if a != b:
      raise GrowthError(f'growth cannot change model.{name}: source {a!r}, target {b!r}')
  for name in ('d_model', 'n_heads', 'd_ff', 'n_layers'):
    a, b = getattr(src, name), getattr(dst, name)
    if b < a:
      raise GrowthError(f'growth cannot shrink model.{name}: source {a}, target {b}')
  if spec.width == 'tile':
    for name in ('d_model', 'd_ff'):
      a, b = getattr(src, name), getattr(dst, name)
      if b % a:
        raise GrowthError(
            f"growth.width='tile' needs an integer factor for model.{name}: {b} / {a} = "
            f"{b / a:.4g}; use growth.width='msg' for arbitrary sizes")
  return Plan(src, dst, spec)


def unit_map(plan: Plan) -> dict[str, Array]:
  """Which units are old (1.0) or new (0.0), in the model's mask format, all four keys.

  Copies (tile, stack, interleave) count as old.  A new layer is marked new in `layers` only:
  its heads and FFN units are gated as a whole by the layer (msg) or start silent (identity).
  """
  s, d = plan.src_size, plan.dst_size
  msg = plan.spec.width == 'msg'
  old_layer = jnp.asarray(~plan.new_layers)
  units = {}
  for key, axis in WIDTH_MASK_AXES:
    n_old = s[axis] if msg else d[axis]
    units[key] = (jnp.arange(d[axis]) < n_old).astype(jnp.float32)
  for key in ('heads', 'mlp'):
    units[key] = jnp.where(old_layer[:, None], units[key][None, :], 1.0)
  units['layers'] = old_layer.astype(jnp.float32)
  return units


def mask_keys(plan: Plan) -> tuple[str, ...]:
  """The mask entries the grown model needs so that it starts as the old function."""
  keys = []
  if plan.spec.width == 'msg':
    keys += [k for k, a in WIDTH_MASK_AXES if plan.grows(a)]
  if plan.spec.depth == 'msg' and plan.grows('layers'):
    keys.append('layers')
  return tuple(keys)


def _zero_mean_noise(key: Array, shape: tuple[int, ...], axis: int, r: int, std: float,
                     dtype) -> Array:
  """Noise whose r copies along `axis` (blocks of size n) sum to zero: z_c − mean_c z.

  The r blocks meet identical inputs (a tiled activation), so the noise cancels in the output.
  For r = 2 this is exactly a ±n pair.  Scaled so each entry has standard deviation `std`.
  """
  n = shape[axis] // r
  split = shape[:axis] + (r, n) + shape[axis + 1:]
  z = jax.random.normal(key, split, jnp.float32)
  z = (z - z.mean(axis=axis, keepdims=True)) * (std * math.sqrt(r / (r - 1)))
  return z.reshape(shape).astype(dtype)


def _leading_block(x: Array, shape: tuple[int, ...], base: Optional[Array]) -> Array:
  """msg: `x` in the leading block of `base` (zeros when None).

  Written as pad + select, not `.at[].set`: under SPMD a dynamic-update-slice into a differently
  sharded operand gets replicated, while pad + select partitions shard by shard.
  """
  xp = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, d - n, 0) for n, d in zip(x.shape, shape)])
  if base is None:
    return xp
  old = None
  for ax, (n, d) in enumerate(zip(x.shape, shape)):
    if d > n:
      m = jax.lax.broadcasted_iota(jnp.int32, shape, ax) < n
      old = m if old is None else old & m
  return xp if old is None else jnp.where(old, xp, base)


def grow_leaf(x: Array, fresh: Optional[Array], *, name: str, axes: tuple[str, ...], plan: Plan,
              kind: str, key: Optional[Array] = None) -> Array:
  """Grow one leaf from the source to the target shape.

  kind: 'param' (fresh init for new entries, tile noise), 'mu' (linear map, zeros for new
  entries) or 'nu' (squared scale, zeros for new entries).  `fresh` is the target-shaped fresh
  init for 'param' (None: zeros), ignored otherwise.
  """
  if kind not in ('param', 'mu', 'nu'):
    raise ValueError(f"kind must be 'param', 'mu' or 'nu', got {kind!r}")
  dst_shape = tuple(plan.dst_size[a] for a in axes)
  dtype = plan.dst.pdtype if kind == 'param' else x.dtype
  if kind == 'param' and fresh is not None:
    base = lambda: fresh.astype(dtype)
  else:
    base = lambda: jnp.zeros(dst_shape, dtype)
  x = x.astype(dtype)
  layer_src = np.asarray(plan.layer_src)
  has_layers = 'layers' in axes
  if has_layers and axes.index('layers') != 0:
    raise ValueError(f'{name}: the layers axis must come first, got axes {axes}')
  if has_layers and not np.array_equal(layer_src, np.arange(plan.src.n_layers)):
    x = jnp.take(x, jnp.asarray(plan.take_layers), axis=0)
  if plan.spec.width == 'tile':
    for ax, a in enumerate(axes):
      r = plan.factor(a)
      if r > 1:
        x = jnp.concatenate([x] * r, axis=ax)
  elif x.shape != dst_shape:  # msg: old entries in the leading block, new ones from `fresh`
    x = _leading_block(x, dst_shape, base() if kind == 'param' and fresh is not None else None)
  scale = plan.leaf_scale(name)
  if kind == 'nu':
    scale = scale * scale
  if scale != 1.0:
    x = x * jnp.asarray(scale, dtype)
  fan_in = FAN_IN.get(name)
  if (kind == 'param' and plan.spec.width == 'tile' and plan.spec.noise_std > 0
      and fan_in in axes and plan.factor(fan_in) > 1):
    if key is None:
      raise ValueError(f'{name}: tile noise needs a PRNG key')
    x = x + _zero_mean_noise(key, dst_shape, axes.index(fan_in), plan.factor(fan_in),
                             plan.spec.noise_std, dtype)
  if has_layers and plan.new_layers.any():
    copy = kind == 'param' and plan.copies_new_layers
    repl = x if copy else base()  # Adam moments of a copied layer still start at zero
    if plan.spec.depth == 'identity' and name in RESIDUAL_OUT:
      repl = jnp.zeros(dst_shape, dtype)
    new = jnp.asarray(plan.new_layers).reshape((-1,) + (1,) * (len(axes) - 1))
    x = jnp.where(new, repl, x)
  return x
