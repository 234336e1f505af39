"""AdamW with warm-up + cosine (or constant) schedule, global-norm clipping, and a hook for
per-parameter learning-rate multipliers (µP).

The schedule is a function of the *global* step so it continues across growth stages: each stage
warms up linearly from the previous stage's final LR (0 for the first) to its own LR, then decays
(cosine) to `end_lr` at the stage's last step.  Under `optim.stage_schedule='continue'` (the
default, `flmjax.plan`) a grown stage has no warm-up and the previous stage ended at this stage's
LR, so the LR runs on without a jump.  Gradient accumulation lives in the train step (a scan over
micro-batches), so the optimizer's step count is the number of updates.

Weight decay under µP (`optim.mup_weight_decay`): 'width_invariant' (default) decays every
matrix by lr·wd per step whatever its LR multiplier, as mup's MuAdam (decoupled_wd=False) and
cofe-ai/Mu-scaling do, so a swept wd transfers across widths; 'lr_scaled' decays by
lr·multiplier·wd (1/width_mult weaker for hidden matrices).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from flmjax import mup
from flmjax.config import ModelConfig
from flmjax.params import NO_DECAY, leaf_name

Schedule = Callable[[Any], Any]
LrScales = Union[None, Any, Callable[[Any], Any]]

MUP_WEIGHT_DECAY = ('width_invariant', 'lr_scaled')


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: matrices and embeddings, not LN or biases."""
  return jax.tree.map_with_path(lambda path, _: leaf_name(path) not in NO_DECAY, params)


def stage_schedule(*, lr: float, warmup_steps: int, steps: int, end_lr: float, kind: str,
                   init_lr: float = 0.0) -> Schedule:
  """One stage: linear warm-up init_lr → lr (reached at step warmup_steps − 1), then cosine
  lr → end_lr (or constant lr) over the remaining steps."""
  warmup_steps = min(warmup_steps, steps)
  if kind == 'constant':
    main = optax.constant_schedule(lr)
  elif kind == 'cosine':
    decay = steps - warmup_steps - 1  # the stage's last step trains at exactly end_lr
    main = (optax.cosine_decay_schedule(lr, decay, alpha=end_lr / lr if lr else 0.0)
            if decay >= 1 else optax.constant_schedule(end_lr))
  else:
    raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {kind!r}")
  if warmup_steps <= 0:
    return main
  def warm(step):  # step 0 already trains at init + 1/warmup of the way (no wasted lr=0 step)
    frac = jnp.minimum((jnp.asarray(step, jnp.float32) + 1.0) / warmup_steps, 1.0)
    return init_lr + (lr - init_lr) * frac
  return optax.join_schedules([warm, main], [warmup_steps])


def make_schedule(stages: Sequence[Mapping[str, Any]], kind: str) -> Schedule:
  """Global-step schedule over stages: dicts with start_step, steps, lr, warmup_steps, end_lr."""
  parts, boundaries, prev_end = [], [], 0.0
  for i, s in enumerate(stages):
    parts.append(stage_schedule(lr=s['lr'], warmup_steps=s['warmup_steps'], steps=s['steps'],
                                end_lr=s['end_lr'], kind=kind, init_lr=prev_end))
    if i:
      boundaries.append(s['start_step'])
    prev_end = s['lr'] if kind == 'constant' else s['end_lr']
  return parts[0] if len(parts) == 1 else optax.join_schedules(parts, boundaries)


def scale_by_lr_multipliers(lr_scales: LrScales) -> optax.GradientTransformation:
  """Multiply each update by a per-parameter factor (a pytree like params, or a function of the
  updates returning one).  µP plugs its width-dependent learning rates in here."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scales = lr_scales(updates) if callable(lr_scales) else lr_scales
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init, update)


def add_decayed_weights(weight_decay: float, lr_scales: LrScales = None
                        ) -> optax.GradientTransformation:
  """Masked `u + wd·p`, with wd divided by each parameter's LR multiplier when `lr_scales` is
  given, so that after the multiplier the decay per step is lr·wd for every matrix.  Same state
  as optax's (checkpoints and growth see no difference)."""
  if lr_scales is None:
    return optax.add_decayed_weights(weight_decay, mask=decay_mask)

  reference = optax.add_decayed_weights(weight_decay, mask=decay_mask)

  def update(updates, state, params=None):
    scales = lr_scales(updates) if callable(lr_scales) else lr_scales
    decayed = lambda u, p, s, m: u + (weight_decay / s) * p.astype(u.dtype) if m else u
    updates = jax.tree.map(decayed, updates, params, scales, decay_mask(params))
    return updates, state

  return optax.GradientTransformation(reference.init, update)


def make_optimizer(optim_cfg: Mapping[str, Any], schedule: Schedule,
                   lr_scales: LrScales = None) -> optax.GradientTransformation:
  """AdamW: clip → Adam → decoupled weight decay (masked) → −lr(step) → per-param multipliers.

  State (in order): clip, ScaleByAdamState(count, mu, nu), masked decay, ScaleByScheduleState,
  multipliers.  Growth code grows `mu`/`nu` like the params and keeps the counts.
  """
  parts = []
  if optim_cfg['clip'] and optim_cfg['clip'] > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg['clip']))
  parts.append(optax.scale_by_adam(b1=optim_cfg['b1'], b2=optim_cfg['b2'], eps=optim_cfg['eps']))
  if optim_cfg['weight_decay']:
    invariant = (optim_cfg.get('mup_weight_decay', MUP_WEIGHT_DECAY[0]) == 'width_invariant')
    parts.append(add_decayed_weights(optim_cfg['weight_decay'],
                                     lr_scales if invariant else None))
  parts.append(optax.scale_by_learning_rate(schedule))
  if lr_scales is not None:
    parts.append(scale_by_lr_multipliers(lr_scales))
  return optax.chain(*parts)


def at_schedule_step(opt_state: Any, step: int) -> Any:
  """`opt_state` with the LR schedule's step counter (ScaleByScheduleState.count) set to `step`.

  The LR the update applies is read from that counter, not from TrainState.step; a state moved to
  another place in a run's plan (`flmjax grow` into a stage that starts elsewhere) moves both.
  Adam's own count is left alone: bias correction follows the moments' real history."""
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  fix = lambda x: x._replace(count=jnp.full_like(x.count, step)) if is_sched(x) else x
  return jax.tree.map(fix, opt_state, is_leaf=is_sched)


def model_optimizer(optim_cfg: Mapping[str, Any], schedule: Schedule, model_cfg: ModelConfig
                    ) -> optax.GradientTransformation:
  """The optimizer a model trains with: AdamW with its µP learning-rate multipliers (plain
  AdamW under standard parametrisation).  The trainer, `flmjax grow` and the µP tools all
  build their optimizer here."""
  return make_optimizer(optim_cfg, schedule, lr_scales=mup.lr_scales(model_cfg))
