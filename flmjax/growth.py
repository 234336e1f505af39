"""Function-preserving growth of a model's parameters *and* optimizer state (FLM-101B / MSG).

`grow_state` maps (params, opt_state) of a source config to a larger target config in one jitted
call, any combination of d_model / n_heads / d_ff / n_layers at once.  With a mesh it runs with the
target's NamedShardings as out_shardings, so a 101B model is grown shard by shard: no host gather,
no unsharded copy.  Methods and their guarantees are in `flmjax.growth_ops` and BUILD.md.

Trainer side, after `params, opt_state, mask_base = grow_state(...)` at step g:
  masks = ramp_masks(mask_base, ramp_alpha(step - g, spec['ramp_steps']))  # until ramp done, then
  model.apply(..., masks=masks)                                             # masks=None
and optionally `rewarmup_updates(updates, growth_units(src, dst, spec), dst, step - g, n)`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flmjax import sharding
from flmjax.config import ModelConfig
from flmjax.growth_ops import (WIDTH_MASK_AXES, GrowthError, GrowthSpec, Plan,
                               grow_leaf, make_plan, mask_keys, unit_map)
from flmjax.model import Transformer, abstract_params
from flmjax.params import WEIGHTS, leaf_name, path_name

Array = jax.Array
PyTree = Any
Rules = Sequence[tuple[str, Any]]
# optax state fields holding second moments: grown with the squared scale of the parameter map.
SQUARED_FIELDS = ('nu', 'nu_max', 'sum_of_squares')
_UNIT_OF_AXIS = {**{axis: key for key, axis in WIDTH_MASK_AXES}, 'layers': 'layers'}

__all__ = ['GrowthError', 'GrowthSpec', 'grow_state', 'make_grow_fn', 'ramp_masks', 'ramp_alpha',
           'growth_units', 'entry_factors', 'rewarmup_updates', 'is_exact', 'logical_axes']


@functools.lru_cache(maxsize=32)
def _abstract(cfg: ModelConfig):
  boxed = abstract_params(cfg)
  axes = jax.tree.map(tuple, nn.get_partition_spec(boxed),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))
  return nn.unbox(boxed), axes


def logical_axes(cfg: ModelConfig) -> PyTree:
  """Params-shaped tree of logical axis-name tuples, e.g. ('layers', 'embed', 'heads', 'kv')."""
  return _abstract(cfg)[1]


def is_exact(src: ModelConfig, dst: ModelConfig, spec: Any) -> bool:
  """Whether this growth claims function preservation (logits equal with masks at 0)."""
  return make_plan(src, dst, spec).exact


def growth_units(src: ModelConfig, dst: ModelConfig, spec: Any) -> dict[str, Array]:
  """Old (1.0) / new (0.0) units of the target in mask format, all keys; for `rewarmup_updates`."""
  return unit_map(make_plan(src, dst, spec))


# ---- parameters -----------------------------------------------------------------------------

def _check_params(params: PyTree, cfg: ModelConfig, what: str) -> None:
  want, _ = _abstract(cfg)
  if jax.tree.structure(params) != jax.tree.structure(want):
    got = sorted(path_name(p) for p, _ in jax.tree.flatten_with_path(params)[0])
    exp = sorted(path_name(p) for p, _ in jax.tree.flatten_with_path(want)[0])
    raise GrowthError(f'{what}: parameter tree does not match the source config; missing '
                      f'{sorted(set(exp) - set(got))}, unexpected {sorted(set(got) - set(exp))}')
  for (path, x), w in zip(jax.tree.flatten_with_path(params)[0], jax.tree.leaves(want)):
    if tuple(x.shape) != tuple(w.shape):
      raise GrowthError(f'{what}: {path_name(path)} has shape {tuple(x.shape)} but the source '
                        f'config gives {tuple(w.shape)}')


def _fresh_params(dst: ModelConfig, rng: Array, new_init_std: Optional[float]) -> PyTree:
  """The target model's own initialisation (µP-aware), optionally with another weight std."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  plain = dst.replace(attention_impl='xla', remat='none')  # same params; init runs anywhere
  fresh = nn.unbox(Transformer(plain).init(rng, tokens)['params'])
  if new_init_std is None:
    return fresh
  flat, treedef = jax.tree.flatten_with_path(fresh)
  out = []
  for i, (path, x) in enumerate(flat):
    if leaf_name(path) in WEIGHTS:
      x = new_init_std * jax.random.normal(jax.random.fold_in(rng, 1000 + i), x.shape, x.dtype)
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def _grow_tree(tree: PyTree, plan: Plan, kind: str, fresh: Optional[PyTree] = None,
               key: Optional[Array] = None) -> PyTree:
  """Grow a params-shaped tree (leaves may be optax.MaskedNode, kept as they are)."""
  _, axes = _abstract(plan.src)
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  flat, treedef = jax.tree.flatten_with_path(tree, is_leaf=is_masked)
  axes_flat = treedef.flatten_up_to(axes)
  fresh_flat = treedef.flatten_up_to(fresh) if fresh is not None else [None] * len(flat)
  out = []
  for i, ((path, x), ax, f) in enumerate(zip(flat, axes_flat, fresh_flat)):
    if is_masked(x):
      out.append(x)
      continue
    k = jax.random.fold_in(key, i) if key is not None else None
    out.append(grow_leaf(x, f, name=leaf_name(path), axes=ax, plan=plan, kind=kind, key=k))
  return jax.tree.unflatten(treedef, out)


# ---- optimizer state ------------------------------------------------------------------------

def _params_like(node: Any, plan: Plan) -> bool:
  want, _ = _abstract(plan.src)
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  if node is None or jax.tree.structure(node, is_leaf=is_masked) != jax.tree.structure(want):
    return False
  leaves = jax.tree.leaves(node, is_leaf=is_masked)
  return all(is_masked(x) or tuple(x.shape) == tuple(w.shape)
             for x, w in zip(leaves, jax.tree.leaves(want)))


def _map_opt_state(node: Any, plan: Plan, on_params: Callable[[Any, str], Any],
                   on_leaf: Callable[[Any], Any], path: str = 'opt_state',
                   field: str = '') -> Any:
  """Rebuild an optax state, growing every params-shaped subtree (mu-like or nu-like by field)."""
  if _params_like(node, plan):
    return on_params(node, 'nu' if field in SQUARED_FIELDS else 'mu')
  if isinstance(node, optax.MaskedNode) or node is None:
    return node
  if isinstance(node, tuple) and hasattr(node, '_fields'):  # NamedTuple: optax states
    return type(node)(*[_map_opt_state(getattr(node, f), plan, on_params, on_leaf,
                                       f'{path}.{f}', f) for f in node._fields])
  if isinstance(node, (tuple, list)):
    return type(node)(_map_opt_state(v, plan, on_params, on_leaf, f'{path}[{i}]', field)
                      for i, v in enumerate(node))
  if isinstance(node, dict):
    return {k: _map_opt_state(v, plan, on_params, on_leaf, f'{path}.{k}', str(k))
            for k, v in node.items()}
  if hasattr(node, 'shape') and len(node.shape) > 0:
    raise GrowthError(f'{path}: array of shape {tuple(node.shape)} is not part of a '
                      f'params-shaped subtree, so it cannot be grown (factored optimizer state '
                      f'is not supported; use an Adam-family optimizer)')
  return on_leaf(node)


# ---- the jitted growth ----------------------------------------------------------------------

def make_grow_fn(src: ModelConfig, dst: ModelConfig, spec: Any, opt_state: Any = None, *,
                 mesh: Optional[Mesh] = None, rules: Optional[Rules] = None) -> Callable:
  """A jitted `(params, opt_state, rng) -> (params, opt_state, mask_base)` for this growth.

  `opt_state` (concrete or ShapeDtypeStructs) only fixes the state's structure for the output
  shardings.  With `mesh` and `rules`, out_shardings are the target's NamedShardings (scalars
  replicated), so `.lower()` on sharded ShapeDtypeStructs compiles without allocating.
  """
  plan = make_plan(src, dst, spec)
  if (mesh is None) != (rules is None):
    raise GrowthError(f'grow: mesh and rules go together, got mesh={mesh!r}, rules={rules!r}')
  rules_t = None if rules is None else tuple(
      (k, tuple(v) if isinstance(v, list) else v) for k, v in rules)
  leaves, opt_def = jax.tree.flatten(opt_state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  key = (plan, mesh, rules_t, opt_def, tuple(tuple(getattr(x, 'shape', ())) for x in leaves))
  if key not in _GROW_FNS:  # one jit per growth: repeated calls reuse its compiled executable
    if len(_GROW_FNS) >= 16:
      _GROW_FNS.pop(next(iter(_GROW_FNS)))
    _GROW_FNS[key] = _build_grow_fn(plan, opt_state, mesh, rules_t)
  return _GROW_FNS[key]


_GROW_FNS: dict[Any, Callable] = {}


def _build_grow_fn(plan: Plan, opt_state: Any, mesh: Optional[Mesh],
                   rules: Optional[Rules]) -> Callable:
  dst = plan.dst
  psh = None
  if mesh is not None:
    psh = sharding.param_shardings(dst, mesh, rules)

  def grow(params, opt_state, rng):
    k_init, k_noise = jax.random.split(rng)
    fresh = None
    if plan.needs_fresh:
      fresh = _fresh_params(dst, k_init, plan.spec.new_init_std)
      if psh is not None:
        fresh = jax.lax.with_sharding_constraint(fresh, psh)
    new_params = _grow_tree(params, plan, 'param', fresh, k_noise)
    new_opt = _map_opt_state(opt_state, plan, lambda t, kind: _grow_tree(t, plan, kind),
                             lambda x: x)
    if plan.spec.adam == 'reset':
      new_opt = reset_adam(new_opt)
    units = unit_map(plan)
    keys = mask_keys(plan)
    mask_base = {k: units[k] for k in keys} if keys else None
    return new_params, new_opt, mask_base

  if mesh is None:
    return jax.jit(grow)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_sh = _map_opt_state(opt_state, plan, lambda t, kind: psh, lambda x: replicated)
  return jax.jit(grow, out_shardings=(psh, opt_sh, replicated))


def grow_state(params: PyTree, opt_state: Any, src: ModelConfig, dst: ModelConfig, spec: Any,
               rng: Array, *, mesh: Optional[Mesh] = None, rules: Optional[Rules] = None,
               optimizer: Optional[optax.GradientTransformation] = None
               ) -> tuple[PyTree, Any, Optional[dict[str, Array]]]:
  """Grow unboxed `params` and optax `opt_state` of `src` into `dst` (see module docstring).

  Params-shaped subtrees of the state (Adam mu, nu, …) follow the parameter map: mu linearly,
  nu (fields in SQUARED_FIELDS) with squared scales, zeros for new entries; scalars such as the
  step `count` are kept, so bias correction and the LR schedule continue (`spec.adam='reset'`
  restarts Adam instead: `reset_adam`).  With `optimizer`, the
  grown state is checked against `optimizer.init` of the target (or created by it when
  `opt_state` is None).  Returns (params, opt_state, mask_base); mask_base is None when no masks
  are needed.
  """
  plan = make_plan(src, dst, spec)
  _check_params(params, src, 'grow_state params')
  fn = make_grow_fn(src, dst, plan.spec, opt_state, mesh=mesh, rules=rules)
  new_params, new_opt, mask_base = fn(params, opt_state, rng)
  if optimizer is not None:
    if opt_state is None:
      new_opt = jax.jit(optimizer.init)(new_params)
    else:
      want = jax.eval_shape(optimizer.init, new_params)
      got_s, want_s = jax.tree.structure(new_opt), jax.tree.structure(want)
      shapes_ok = got_s == want_s and all(
          tuple(a.shape) == tuple(b.shape)
          for a, b in zip(jax.tree.leaves(new_opt), jax.tree.leaves(want)))
      if not shapes_ok:
        raise GrowthError('grow_state: the grown opt_state does not match optimizer.init of the '
                          f'target params: got {got_s}, expected {want_s}')
  return new_params, new_opt, mask_base


def reset_adam(opt_state: Any) -> Any:
  """Every Adam state in `opt_state` restarted: zero moments and count, so bias correction
  starts again (`growth.adam='reset'`, a diagnosis control: a fresh optimizer at the growth, as
  when a grown model is trained by a new job).  Other counts (the LR schedule's) are kept."""
  def reset(node):
    if isinstance(node, optax.ScaleByAdamState):
      return node._replace(count=jnp.zeros_like(node.count),
                           mu=jax.tree.map(jnp.zeros_like, node.mu),
                           nu=jax.tree.map(jnp.zeros_like, node.nu))
    return node
  return jax.tree.map(reset, opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))


# ---- after the growth: mask ramp and re-warm-up ----------------------------------------------

def ramp_alpha(steps_since_growth: Any, ramp_steps: Any) -> Array:
  """Linear ramp 0 -> 1 over `ramp_steps` (0 at the growth step itself; 1 when ramp_steps=0).

  Both arguments may be traced (the train step reads them from the state), so the ramp never
  recompiles."""
  ramp = jnp.asarray(ramp_steps, jnp.float32)
  since = jnp.asarray(steps_since_growth, jnp.float32)
  return jnp.where(ramp > 0, jnp.clip(since / jnp.maximum(ramp, 1.0), 0.0, 1.0), 1.0)


def ramp_masks(mask_base: Optional[dict[str, Array]], alpha: Any) -> Optional[dict[str, Array]]:
  """mask = base + alpha·(1 − base): old units stay 1, new units go 0 -> 1 with alpha."""
  if mask_base is None:
    return None
  a = jnp.clip(jnp.asarray(alpha, jnp.float32), 0.0, 1.0)
  return jax.tree.map(lambda b: b + a * (1.0 - b), mask_base)


def entry_factors(units: dict[str, Array], cfg: ModelConfig, new_value: Any) -> PyTree:
  """Params-shaped tree: 1 on old entries, `new_value` on new ones (broadcastable arrays).

  An entry is new when any of its units (hidden, head, FFN unit, layer) is new in `units`
  (`growth_units`); None for a parameter with no growing axis (all old)."""
  v = jnp.asarray(new_value, jnp.float32)

  def factor(axes):
    g = None
    for pos, a in enumerate(axes):
      key = _UNIT_OF_AXIS.get(a)
      if key is None or (key in ('heads', 'mlp') and 'layers' not in axes):
        continue
      m = units[key]
      shape = [1] * len(axes)
      if key in ('heads', 'mlp'):  # N x H / N x F: on (layers, that axis)
        shape[0], shape[pos] = m.shape
      else:
        shape[pos] = m.shape[0]
      f = (m + v * (1.0 - m)).reshape(shape)
      g = f if g is None else jnp.minimum(g, f)
    return g

  return jax.tree.map(factor, logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))


def rewarmup_updates(updates: PyTree, units: dict[str, Array], cfg: ModelConfig,
                     steps_since_growth: Any, rewarmup_steps: int) -> PyTree:
  """Scale optimizer updates of new entries by min(1, (t+1)/rewarmup_steps); old ones by 1.

  An entry is new when any of its units is new (`entry_factors`).  Applied to the updates after
  the optimizer, so Adam moments are untouched.
  """
  if rewarmup_steps <= 0:
    return updates
  s = jnp.clip((jnp.asarray(steps_since_growth, jnp.float32) + 1.0) / rewarmup_steps, 0.0, 1.0)
  factors = entry_factors(units, cfg, s)
  return jax.tree.map(lambda u, g: u if g is None else (u * g).astype(u.dtype), updates, factors,
                      is_leaf=lambda x: x is None)


# ---- verification ----------------------------------------------------------------------------

EXACT_TOL = 1e-5  # max |Δlogit| in float32 that an exact method may show (`flmjax grow --verify`)


def _f32(cfg: ModelConfig) -> ModelConfig:
  return cfg.replace(compute_dtype='float32', attention_impl='xla')


def max_abs_logit_diff(src: ModelConfig, src_params: Any, dst: ModelConfig, dst_params: Any,
                       mask_base: Any, *, batch: int = 2, length: int = 64, seed: int = 0) -> float:
  """max |logits_dst − logits_src| in float32 on a random token batch, new-unit masks at 0."""
  length = max(1, min(length, src.max_len, dst.max_len))
  tokens = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, src.vocab_size)
  apply = lambda cfg, p, m: Transformer(_f32(cfg)).apply({'params': p}, tokens, masks=m)
  with jax.default_matmul_precision('float32'):  # no TF32/bf16 passes on GPUs and TPUs
    a = jax.jit(lambda p: apply(src, p, None))(src_params)
    b = jax.jit(lambda p, m: apply(dst, p, m))(dst_params, ramp_masks(mask_base, 0.0))
  return float(jnp.abs(a - b).max())
