"""The loss and the train / eval step functions (jitted by `runtime.StageRuntime`).

Gradient accumulation is a scan over micro-batches inside the step.  While a growth's masks ramp
in, alpha is computed inside the step from the step counter, so the ramp never recompiles.
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
  logits = logits_BxLxV.astype(jnp.float32)
  logz_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  w = weights_BxL.astype(jnp.float32)
  return ((logz_BxL - target_logit) * w).sum(), (jnp.square(logz_BxL) * w).sum()


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

  def forward(params, batch, masks):
    return model.apply({'params': params}, batch['inputs'], positions=batch['positions'],
                       segment_ids=batch['segment_ids'], masks=masks)

  def train_step(state: TrainState, batch: dict[str, Array]):
    masks = current_masks(state)
    denom = jnp.maximum(batch['loss_weights'].astype(jnp.float32).sum(), 1.0)

    def micro_loss(params, mb):
      ce, zl = token_losses(forward(params, mb, masks), mb['targets'], mb['loss_weights'])
      return (ce + z_loss * zl) / denom, (ce, zl)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    if accum == 1:
      (_, (ce, zl)), grads = grad_fn(state.params, batch)
    else:  # micro-batch i = rows i, i+accum, …: each keeps its share of every batch shard
      mbs = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, mb):
        g_acc, ce_acc, zl_acc = carry
        (_, (ce, zl)), g = grad_fn(state.params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), ce_acc + ce, zl_acc + zl), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, ce, zl), _ = jax.lax.scan(body, (zeros, jnp.zeros(()), jnp.zeros(())), mbs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if rewarmup is not None:
      updates = rewarmup(updates, state.step - state.grow_step)
    params = optax.apply_updates(state.params, updates)
    out = {'loss': ce / denom, 'grad_norm': optax.tree.norm(grads),
           'learning_rate': schedule(state.step)}
    if z_loss:
      out['z_loss'] = zl / denom
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

