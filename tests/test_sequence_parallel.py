"""Sequence parallelism (`mesh.rules.act_length = ('tensor',)`, used by experiments/flm101b.py):
the residual stream between layers is split over `tensor`, and training computes the same
losses as without it."""

from __future__ import annotations

import pytest

from conftest import run_py

CODE = """
import jax, flax.linen as nn
from conftest import tiny_config, tiny_stages
from flmjax import experiment, optimizer, sharding
from flmjax.training import loop
from flmjax.training.batches import BATCH_KEYS
from flmjax.training.runtime import StageRuntime
import jax.numpy as jnp

res = {}
for sp in (False, True):
  c = tiny_config(stages=tiny_stages(steps=(3, 3)), mesh=dict(data=1, fsdp=2, tensor=2))
  if sp:
    c.mesh.rules.act_length = ('tensor',)
  import tempfile
  w = tempfile.mkdtemp()
  loop.train(c, w)
  from conftest import read_losses
  res[str(sp)] = read_losses(w)

# where the residual stream lives between layers: the block's output constraint
c = tiny_config(mesh=dict(data=1, fsdp=2, tensor=2))
c.mesh.rules.act_length = ('tensor',)
stages = experiment.validate(c, 4)
mesh, rules = sharding.make_mesh(c.mesh), sharding.logical_rules(c.mesh)
sched = optimizer.make_schedule([s.schedule_dict() for s in stages], 'cosine')
rt = StageRuntime(c, stages, 0, mesh, rules, sched)
state = rt.abstract_state()
batch = {k: jax.ShapeDtypeStruct((8, 16), jnp.float32 if k == 'loss_weights' else jnp.int32,
                                 sharding=rt.batch_sh) for k in BATCH_KEYS}
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  hlo = rt.jitted_step('train', False, None).lower(state, batch).as_text()
import re
emit({'losses': res,
      'constraints': sorted(set(re.findall(r'sharding_constraint[^\\n]*?(<@mesh, \\[[^\\n]*?\\]>)',
                                           hlo)))})
"""


@pytest.mark.slow
def test_sequence_parallel_same_losses():
  r = run_py(CODE, devices=4)
  base, sp = r['losses']['False'], r['losses']['True']
  assert base.keys() == sp.keys() and len(base) == 6
  for step in base:
    assert sp[step] == pytest.approx(base[step], rel=2e-5, abs=2e-5), step
  # residual stream [batch, length, embed]: batch over data×fsdp, length over tensor
  assert r['constraints'] == ['<@mesh, [{"data", "fsdp"}, {"tensor"}, {}]>']
