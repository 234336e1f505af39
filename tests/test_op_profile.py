"""benchmarks/op_profile.py: every XLA op of a real step lands in the family of the source line
that emitted it, and the families plus host time account for the step's wall time."""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from flmjax.config import ModelConfig
from flmjax.model import Transformer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import op_profile  # noqa: E402

CFG = ModelConfig(vocab_size=200, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=32)  # 200 -> 256 padded: the vocabulary mask is in the program


def _loss_fn():
  model = Transformer(CFG)
  tokens = jnp.arange(2 * 32, dtype=jnp.int32).reshape(2, 32) % CFG.vocab_size
  params = model.init(jax.random.PRNGKey(0), tokens)['params']

  def loss(p):
    logits = model.apply({'params': p}, tokens)
    return jax.nn.logsumexp(logits, -1).mean()

  grad = jax.jit(jax.grad(loss))
  return grad, params


def test_every_family_of_a_training_step_is_found():
  grad, params = _loss_fn()
  families = op_profile.hlo_op_families(grad.lower(params).compile().as_text())
  found = set(families.values())
  for fam in ('matmul', 'attention', 'xPos / positions', 'LayerNorm', 'GeLU', 'softmax / loss'):
    assert fam in found, (fam, sorted(found))
  assert found <= set(op_profile.FAMILIES)


def test_family_priority_and_contractions():
  frames = lambda fn, path: [[(fn, path, 1)]]
  assert op_profile.family_of_frames(frames('xpos_rotate', '/x/flmjax/model.py'), False) == \
      'xPos / positions'
  # A contraction is a matmul unless it comes from the attention.
  assert op_profile.family_of_frames(frames('Block._attend', '/x/flmjax/model.py'), True) == \
      'attention'
  assert op_profile.family_of_frames(frames('layer_norm', '/x/flmjax/model.py'), True) == 'matmul'
  assert op_profile.family_of_frames(frames('update', '/x/optax/_src/transform.py'), False) == \
      'optimizer'
  assert op_profile.family_of_frames([], False) == 'other'
  assert op_profile.torch_family('aten::addmm') == 'matmul'
  assert op_profile.torch_family('aten::_scaled_dot_product_flash_attention_for_cpu') == 'attention'
  assert op_profile.torch_family('aten::native_layer_norm_backward') == 'LayerNorm'
  assert op_profile.torch_family('aten::_foreach_addcdiv_') == 'optimizer'


@pytest.mark.slow
def test_profile_accounts_for_the_step():
  grad, params = _loss_fn()
  step = lambda: jax.block_until_ready(grad(params))
  step()
  t0 = time.perf_counter()
  for _ in range(3):
    step()
  wall = (time.perf_counter() - t0) / 3
  prof = op_profile.jax_profile(step, grad.lower(params).compile().as_text(), steps=3)
  assert prof['matmul'] > 0 and prof['attention'] > 0
  assert all(v >= 0 for v in prof.values())
  # families + host = the profiled step's wall time; the profiler's own cost keeps it loose.
  assert 0.3 * wall < sum(prof.values()) < 10 * wall + 0.05
  rows = op_profile.share_rows({'flmjax': prof})
  assert rows[-1][0] == 'step (wall)'
  shares = [float(r[1].split('%')[0]) for r in rows[:-1]]
  assert abs(sum(shares) - 100.0) < 1.0
