"""What the new units of a grown model are doing: gradients, updates and loss share of old vs new
entries, read from a checkpoint of the grown stage.

Why: a grown model that learns at the small model's pace (issue 25's "idle phase") is either a
defect in growth / optimizer state / multipliers / LR, or a property of the setting.  This
probe tells them apart from the trainer's own checkpoints, without touching the training step:
for one held-out batch it computes the gradient, takes the optimizer's real next update (one
`train_step` on a copy of the state: LR, µP multipliers, clipping, Adam moments, masks and
re-warm-up included) and splits both by entry — old, new units inside old layers, new layers —
per parameter kind.  It also evaluates the loss with the new units switched off through the MSG
masks (`growth_units`), so `loss_share_new` = L(new off) − L(full) says how much of the model's
loss the new units carry.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from flmjax import growth, optimizer, plan
from flmjax.model import Transformer
from flmjax.params import EMBEDDING, HIDDEN, LAYER_NORM, OUTPUT, flatten_paths, leaf_name
from flmjax.training import batches, runtime as runtime_lib, step as step_lib
from flmjax.training.state import TrainState

GROUPS = ('old', 'new_units', 'new_layers')


def param_kind(name: str) -> str:
  """embedding | attention | mlp | layer_norm, by the parameter's leaf name."""
  if name in EMBEDDING + OUTPUT:
    return 'embedding'
  if name in LAYER_NORM:
    return 'layer_norm'
  if name in ('wi', 'wo_mlp', 'bi', 'bo_mlp'):
    return 'mlp'
  if name in HIDDEN or name in ('bq', 'bk', 'bv', 'bo'):
    return 'attention'
  raise ValueError(f'unknown parameter {name!r}')


def group_masks(units: Mapping[str, jax.Array], cfg: Any) -> dict[str, Any]:
  """{group: params-shaped tree of 0/1 entry masks (None = no entry of the group)}."""
  new_any = growth.entry_factors(units, cfg, 0.0)
  layer_only = {k: (v if k == 'layers' else jnp.ones_like(v)) for k, v in units.items()}
  in_new_layer = growth.entry_factors(layer_only, cfg, 0.0)
  is_none = lambda x: x is None
  new_layers = jax.tree.map(lambda f: None if f is None else 1.0 - f, in_new_layer,
                            is_leaf=is_none)
  new_units = jax.tree.map(
      lambda a, b: None if a is None else (1.0 - a) * (b if b is not None else 1.0),
      new_any, in_new_layer, is_leaf=is_none)
  return {'old': new_any, 'new_units': new_units, 'new_layers': new_layers}


def _sums(tree: Any, masks: Mapping[str, Any]) -> dict[tuple[str, str], tuple[float, float]]:
  """{(kind, group): (Σ m·x², Σ m)} over the parameter tree."""
  out: dict[tuple[str, str], list[float]] = {}
  flat = flatten_paths(tree)
  for g, m_tree in masks.items():
    flat_m = flatten_paths(m_tree)  # None leaves drop out: the group default below
    for path, x in flat.items():
      x = np.asarray(x, np.float64)
      m = flat_m.get(path)
      if m is None:
        m = np.ones_like(x) if g == 'old' else np.zeros_like(x)
      m = np.broadcast_to(np.asarray(m, np.float64), x.shape)
      acc = out.setdefault((param_kind(path.split('/')[-1]), g), [0.0, 0.0])
      acc[0] += float((m * x * x).sum())
      acc[1] += float(m.sum())
  return {k: (v[0], v[1]) for k, v in out.items()}


def _rms(s: tuple[float, float]) -> float:
  return float(np.sqrt(s[0] / s[1])) if s[1] else float('nan')


def probe_checkpoint(step_dir: str, batch_rows: int = 0) -> dict[str, Any]:
  """Probe one checkpoint of a grown stage (stage k ≥ 1): see the module docstring.

  Returns {'step', 'since_growth', 'loss', 'loss_new_off', 'loss_share_new',
  'rms': {kind: {group: {'grad', 'update', 'param', 'rel_update'}}}}."""
  config, state_d, meta, _ = runtime_lib.load_state(step_dir)
  stages = plan.stage_plan(config)
  k = int(meta['stage'])
  if k < 1 or stages[k].growth is None:
    raise ValueError(f'{step_dir}: stage {k} was not grown (nothing to probe)')
  src, dst, spec = stages[k - 1].model, stages[k].model, stages[k].growth
  units = growth.growth_units(src, dst, spec)
  state = TrainState.from_dict(state_d)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  tx = runtime_lib.stage_optimizer(config, stages[k], schedule)
  rewarm = None
  if spec.rewarmup_steps > 0:
    rewarm = lambda u, t: growth.rewarmup_updates(u, units, dst, t, spec.rewarmup_steps)
  train_step, _ = step_lib.make_step_fns(dst, tx, schedule, config.optim, rewarm)
  rows = batch_rows or int(config.train.global_batch_size)
  held_out = batches.make_eval_batches(config.data, seq_len=int(config.train.seq_len),
                                       batch_size=rows, num_batches=1)
  batch = {key: jnp.asarray(v) for key, v in next(iter(held_out.values()))[0].items()}
  model = Transformer(dst)

  def lm_loss(params, masks):
    logits = model.apply({'params': params}, batch['inputs'], positions=batch['positions'],
                         segment_ids=batch['segment_ids'], masks=masks)
    ce, _ = step_lib.token_losses(logits, batch['targets'], batch['loss_weights'])
    return ce / jnp.maximum(batch['loss_weights'].astype(jnp.float32).sum(), 1.0)

  masks = step_lib.current_masks(state)
  # Both losses from one compiled forward: the grad program's fusions may round its loss
  # differently, and at the growth step (masks = units) the share must be exactly 0.
  forward = jax.jit(lm_loss)
  loss, loss_off = forward(state.params, masks), forward(state.params, units)
  grads = jax.jit(jax.grad(lm_loss))(state.params, masks)
  new_state, _ = jax.jit(train_step)(state, batch)
  updates = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
  gm = group_masks(units, dst)
  sums = {name: _sums(tree, gm) for name, tree in
          (('grad', grads), ('update', updates), ('param', state.params))}
  rms: dict[str, dict[str, dict[str, float]]] = {}
  for (kind, g) in sums['grad']:
    r = {name: _rms(sums[name][(kind, g)]) for name in sums}
    r['rel_update'] = r['update'] / r['param'] if r['param'] else float('nan')
    rms.setdefault(kind, {})[g] = r
  step = int(meta['step'])
  return {'step': step, 'since_growth': step - int(jax.device_get(state.grow_step)),
          'loss': float(loss), 'loss_new_off': float(loss_off),
          'loss_share_new': float(loss_off) - float(loss), 'rms': rms}
