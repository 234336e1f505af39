"""The loss and the train / eval step functions (jitted by `runtime.StageRuntime`).

Gradient accumulation is a scan over micro-batches inside the step.  While a growth's masks ramp
in, alpha is computed inside the step from the step counter, so the ramp never recompiles.

The objective is the mean CE over `loss_weights` tokens (+ z-loss), plus, when the batch has
`teacher_weights` (FreeLM teacher-signal label tokens, `flmjax.data`), `optim.teacher_loss` × the
mean CE over those tokens: the teacher signal is its own term, reported as `loss_teacher`, not a
token share of the LM loss (where its one label token per sample would all but vanish).
The logits arrive with the padded vocabulary already masked (`flmjax.model.mask_padded_vocab`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from flmjax import growth
from flmjax.config import ModelConfig
from flmjax.model import Transformer
from flmjax.training import faults
from flmjax.training.state import TrainState

Array = jax.Array


def token_losses(logits_BxLxV: Array, targets_BxL: Array, weights_BxL: Array
                 ) -> tuple[Array, Array]:
  """(Σ w·CE, Σ w·logZ²) in float32 over the batch: sums, so micro-batches add up exactly."""
  logits32_BxLxV = logits_BxLxV.astype(jnp.float32)
  logz_BxL = jax.nn.logsumexp(logits32_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits32_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  weights32_BxL = weights_BxL.astype(jnp.float32)
  return (((logz_BxL - target_logit_BxL) * weights32_BxL).sum(),
          (jnp.square(logz_BxL) * weights32_BxL).sum())


def teacher_ce(logits_BxLxV: Array, batch: dict[str, Array]) -> Array:
  """Σ CE over the teacher-signal label tokens (0 when the batch has none)."""
  if 'teacher_weights' not in batch:
    return jnp.zeros((), jnp.float32)
  return token_losses(logits_BxLxV, batch['targets'], batch['teacher_weights'])[0]


def current_masks(state: TrainState) -> Optional[dict[str, Array]]:
  """Growth masks for this step: alpha = clip((step − grow_step) / ramp_steps, 0, 1)."""
  if state.mask_base is None:
    return None
  alpha = growth.ramp_alpha(state.step - state.grow_step, state.ramp_steps)
  return growth.ramp_masks(state.mask_base, alpha)


def make_step_fns(model_cfg: ModelConfig, tx: optax.GradientTransformation,
                  schedule: Callable, optim_cfg: Any,
                  rewarmup: Optional[Callable] = None,
                  skip_nonfinite: bool = True) -> tuple[Callable, Callable]:
  """(train_step(state, batch) → (state, metrics), eval_step(state, batch) → (Σ CE, Σ w)).

  `skip_nonfinite`: a step whose loss or gradient norm is NaN/Inf keeps params and optimizer
  state (the step counter still advances) and reports `update_skipped` = 1."""
  model = Transformer(model_cfg)
  accum, z_loss = int(optim_cfg.grad_accum), float(optim_cfg.z_loss)
  teacher_weight = float(optim_cfg.get('teacher_loss', 0.1))  # experiment.py's default

  def forward(params, batch, masks):
    return model.apply({'params': params}, batch['inputs'], positions=batch['positions'],
                       segment_ids=batch['segment_ids'], masks=masks)

  def train_step(state: TrainState, batch: dict[str, Array]):
    masks = current_masks(state)
    lm_tokens = jnp.maximum(batch['loss_weights'].astype(jnp.float32).sum(), 1.0)
    has_teacher = 'teacher_weights' in batch
    teacher_tokens = (jnp.maximum(batch['teacher_weights'].astype(jnp.float32).sum(), 1.0)
                      if has_teacher else jnp.ones(()))

    def micro_loss(params, micro_batch):
      logits_BxLxV = forward(params, micro_batch, masks)
      ce, z_sum = token_losses(logits_BxLxV, micro_batch['targets'],
                               micro_batch['loss_weights'])
      teacher = teacher_ce(logits_BxLxV, micro_batch)
      objective = (ce + z_loss * z_sum) / lm_tokens + teacher_weight * teacher / teacher_tokens
      return objective, (ce, z_sum, teacher)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    if accum == 1:
      (_, (ce, z_sum, teacher)), grads = grad_fn(state.params, batch)
    else:  # micro-batch i = rows i, i+accum, …: each keeps its share of every batch shard
      micro_batches = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, micro_batch):
        grads_acc, sums_acc = carry
        (_, sums), micro_grads = grad_fn(state.params, micro_batch)
        return (jax.tree.map(jnp.add, grads_acc, micro_grads),
                jax.tree.map(jnp.add, sums_acc, sums)), None

      zero_grads = jax.tree.map(jnp.zeros_like, state.params)
      zero_sums = (jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
      (grads, (ce, z_sum, teacher)), _ = jax.lax.scan(body, (zero_grads, zero_sums),
                                                      micro_batches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if rewarmup is not None:
      updates = rewarmup(updates, state.step - state.grow_step)
    params = optax.apply_updates(state.params, updates)
    out = {'loss': ce / lm_tokens, 'grad_norm': optax.tree.norm(grads),
           'learning_rate': schedule(state.step)}
    if z_loss:
      out['z_loss'] = z_sum / lm_tokens
    if has_teacher:
      out['loss_teacher'] = teacher / teacher_tokens
    if skip_nonfinite:
      finite = jnp.isfinite(out['loss']) & jnp.isfinite(out['grad_norm'])
      params = faults.select_if_finite(finite, params, state.params)
      opt_state = faults.select_if_finite(finite, opt_state, state.opt_state)
      out['update_skipped'] = jnp.logical_not(finite).astype(jnp.int32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  def eval_step(state: TrainState, batch: dict[str, Array]):
    ce, _ = token_losses(forward(state.params, batch, current_masks(state)), batch['targets'],
                         batch['loss_weights'])
    return ce, batch['loss_weights'].astype(jnp.float32).sum()

  return train_step, eval_step

