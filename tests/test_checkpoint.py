"""Checkpoints: restore onto a different mesh, refuse a workdir of another model (or move it
aside when allowed), offline load/save helpers, and clear errors for damaged checkpoints."""

import os

import jax
import numpy as np
import pytest

from conftest import read_losses, run_py, tiny_config
from flmjax import plan
from flmjax.storage import checkpoint
from flmjax.training import loop, runtime


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('ckpt') / 'w')
  loop.train(tiny_config(2, train=dict(ckpt_every=1)), wd)
  return wd


def test_workdir_with_different_model_is_refused_then_moved_aside(two_steps, tmp_path):
  import shutil
  wd = str(tmp_path / 'w')
  shutil.copytree(two_steps, wd)
  other = tiny_config(2, model=dict(d_ff=128))
  with pytest.raises(checkpoint.CheckpointError, match=r'd_ff: saved 64 != config 128'):
    loop.train(other, wd)
  assert checkpoint.latest(wd) == (0, 2)  # untouched
  other.train.allow_overwrite = True
  moved = checkpoint.check_workdir(wd, [plan.stage_plan(other)[0].model],
                                   allow_overwrite=True)
  assert checkpoint.latest(moved) == (0, 2)  # the old run is kept, not deleted
  assert checkpoint.latest(wd) is None
  assert not os.path.exists(os.path.join(wd, 'metrics.jsonl'))


def test_load_params_load_state_and_save_state_round_trip(two_steps, tmp_path):
  model_cfg, params, config = checkpoint.load_params(two_steps)
  assert model_cfg.d_model == 32 and config.train.steps == 2
  assert params['layers']['wq'].shape == (2, 32, 2, 16)
  config2, state, meta, data_state = runtime.load_state(os.path.join(two_steps, 'stage_0'))
  assert int(state['step']) == 2 and meta['stage'] == 0 and data_state == {'row': 16}
  out = checkpoint.save_state(str(tmp_path / 'copy'), config2, state, meta=meta,
                              data_state=data_state)
  _, params2, _ = checkpoint.load_params(out)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(checkpoint.CheckpointError, match='already exists'):
    checkpoint.save_state(str(tmp_path / 'copy'), config2, state, meta=meta)


def test_damaged_or_missing_checkpoint_errors_name_the_file(two_steps, tmp_path):
  import shutil
  wd = str(tmp_path / 'w')
  shutil.copytree(two_steps, wd)
  meta = os.path.join(wd, 'stage_0', '2', 'meta', 'metadata')
  with open(meta, 'w') as f:
    f.write('{not json')
  with pytest.raises(checkpoint.CheckpointError, match=r'stage_0/2/meta/metadata'):
    checkpoint.load_params(wd)
  with pytest.raises(checkpoint.CheckpointError, match='no complete checkpoint'):
    checkpoint.load_params(str(tmp_path / 'empty'))


@pytest.mark.slow
def test_save_on_8x1x1_restore_on_2x2x2(baseline):
  _, want, _ = baseline
  got = run_py('''
    import tempfile
    import jax
    from conftest import tiny_config, read_losses
    from flmjax import plan
    from flmjax.storage import checkpoint
    from flmjax.training import loop, runtime
    wd = tempfile.mkdtemp()
    c = tiny_config(6)
    c.mesh.update(data=8, fsdp=1, tensor=1)
    loop.train(c, wd, stop_at_step=3)
    c.mesh.update(data=2, fsdp=2, tensor=2)
    loop.train(c, wd)
    emit(read_losses(wd))
  ''', devices=8)
  assert {int(k): v for k, v in got.items()} == pytest.approx(want, rel=1e-5, abs=1e-5)
