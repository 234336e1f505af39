"""The growth probe (issue 25's diagnosis): old / new entries, their gradients and the new units'
loss share, on a real tiny growth run."""

import math
import os

import numpy as np

from conftest import tiny_config
from flmjax import growth
from flmjax.storage import checkpoint
from flmjax.config import ModelConfig
from flmjax.growth_ops import GrowthSpec
from flmjax.params import flatten_paths
from flmjax.training import growth_probe, loop


def _cfg(**kw) -> ModelConfig:
  return ModelConfig.from_dict({**tiny_config().model.to_dict(), **kw})


def test_group_masks_count_old_new_units_and_new_layers():
  src, dst = _cfg(), _cfg(d_model=64, n_heads=4, d_ff=128, n_layers=3)
  units = growth.growth_units(src, dst, GrowthSpec())
  masks = growth_probe.group_masks(units, dst)
  count = lambda g, p: float(np.broadcast_to(flatten_paths(masks[g])[p],
                                             (3, 64, 4, 16)).sum())
  wq = 'layers/wq'
  assert count('old', wq) == 2 * 32 * 2 * 16            # the old block of the two old layers
  assert count('new_layers', wq) == 1 * 64 * 4 * 16     # the whole third layer
  assert count('new_units', wq) == 2 * (64 * 4 * 16 - 32 * 2 * 16)
  embed_new_layers = flatten_paths(masks['new_layers']).get('embed')
  assert embed_new_layers is None or float(np.sum(embed_new_layers)) == 0.0  # no layer axis


def test_probe_sees_silent_new_units_at_the_growth_and_active_ones_after(workdir):
  stages = [dict(name='small', steps=4),
            dict(name='big', model=dict(d_model=64, n_heads=4, d_ff=128, n_layers=3), steps=6,
                 lr=5e-3, growth=dict(width='msg', depth='msg', ramp_steps=2))]
  loop.train(tiny_config(train=dict(ckpt_every=1, keep=20, eval_batches=1), stages=stages),
             workdir)
  d = checkpoint.stage_dirs(workdir)[1]
  first, last = os.path.join(d, '4'), os.path.join(d, '10')
  at_growth = growth_probe.probe_checkpoint(first)
  assert at_growth['since_growth'] == 0
  # masks at 0: switching the new units off changes nothing, and they get no gradient
  assert abs(at_growth['loss_share_new']) < 1e-6
  for kind in ('attention', 'mlp'):
    assert at_growth['rms'][kind]['new_units']['grad'] == 0.0
    assert at_growth['rms'][kind]['new_layers']['grad'] == 0.0
    assert at_growth['rms'][kind]['old']['grad'] > 0.0
  later = growth_probe.probe_checkpoint(last)
  assert later['since_growth'] == 6
  assert math.isfinite(later['loss_share_new']) and later['loss_share_new'] != 0.0
  for kind in ('attention', 'mlp'):
    assert later['rms'][kind]['new_units']['grad'] > 0.0
    assert later['rms'][kind]['new_layers']['update'] > 0.0
