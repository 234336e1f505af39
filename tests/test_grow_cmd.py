"""`flmjax grow`: offline growth of a real trainer checkpoint, --verify, resumable output."""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import optax
import pytest

from flmjax import experiment, growth
from flmjax.storage import checkpoint
from flmjax.training import loop, runtime
from flmjax.commands import grow as grow_cmd
from flmjax.config import ConfigError

EXPERIMENT = '''
from flmjax import experiment

def get_config():
  c = experiment.default_config()
  c.model.update(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                 max_len=32)
  c.data.source = 'synthetic'
  c.data.synthetic.update(vocab_size=32, min_doc_len=4, max_doc_len=12)
  c.optim.update(lr=1e-2, warmup_steps=1, end_lr=1e-3, weight_decay=0.01)
  c.train.update(seq_len=16, global_batch_size=8, log_every=1, eval_every=0, eval_batches=1,
                 ckpt_every=0, keep=3)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.stages = [
      dict(name='small', steps=2),
      dict(name='big', model=dict(d_model=64, n_heads=4, d_ff=128), steps=2, lr=5e-3,
           growth=dict(width='msg', depth='msg', ramp_steps=2)),
      dict(name='deep', model=dict(d_model=64, n_heads=4, d_ff=128, n_layers=3), steps=2,
           growth=dict(width='tile', depth='stack')),
  ]
  return c
'''


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A real checkpoint of stage 'small' after 2 training steps, and the experiment file."""
  root = tmp_path_factory.mktemp('grow_cmd')
  exp = root / 'exp.py'
  exp.write_text(EXPERIMENT)
  work = str(root / 'w')
  out = loop.train(experiment.load_config(str(exp)), work, stop_at_step=2)
  assert out == {'stopped_at': 2}
  return str(exp), work, root


def _args(ckpt, to, out, verify=True):
  p = argparse.ArgumentParser()
  grow_cmd.add_grow_arguments(p)
  argv = ['--checkpoint', ckpt, '--to', to, '--out', out] + (['--verify'] if verify else [])
  return p.parse_args(argv)


def _last_diff(text: str) -> float:
  last = text.strip().splitlines()[-1]
  assert last.startswith('max_abs_logit_diff='), last
  return float(last.split('=', 1)[1])


@pytest.mark.slow
def test_grow_verify_and_restore_as_trainer_checkpoint(source, capsys):
  exp, work, root = source
  out = str(root / 'w2')
  rc = grow_cmd.grow_main(_args(os.path.join(work, 'stage_0'), f'{exp}:big', out))
  text = capsys.readouterr().out
  assert rc == 0, text
  assert _last_diff(text) <= growth.EXACT_TOL
  assert f'<= {growth.EXACT_TOL}' in text and 'verify OK: function-preserving' in text  # a verdict
  # The output is a trainer checkpoint of stage 1 right after the growth, grown Adam state in it.
  step_dir = checkpoint.resolve_step_dir(out)
  assert step_dir == os.path.join(os.path.abspath(out), 'stage_1', '2')
  meta = checkpoint.read_json(step_dir, 'meta')
  assert meta['model']['d_model'] == 64 and meta['stage_name'] == 'big'
  assert sorted(meta['mask_shapes']) == ['heads', 'hidden', 'mlp']
  _, state, meta2, _ = runtime.load_state(out)  # the trainer's own restore path
  assert meta2['stage'] == 1 and int(state['step']) == int(state['grow_step']) == 2
  assert state['params']['layers']['wq'].shape == (2, 64, 4, 16)
  adam, = [s for s in jax.tree.leaves(state['opt_state'], is_leaf=lambda s: isinstance(
      s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  assert int(adam.count) == 2 and adam.mu['embed'].shape == (128, 64)
  assert float(np.abs(np.asarray(adam.mu['embed'])[:, :32]).max()) > 0  # moments carried over
  assert float(np.abs(np.asarray(adam.mu['embed'])[:, 32:]).max()) == 0


@pytest.mark.slow
def test_non_exact_method_reports_diff_and_broken_growth_fails(source, capsys, monkeypatch):
  exp, work, root = source
  rc = grow_cmd.grow_main(_args(os.path.join(work, 'stage_0'), f'{exp}:deep', str(root / 'w3')))
  text = capsys.readouterr().out
  assert rc == 0 and 'does not claim exactness' in text
  assert _last_diff(text) > growth.EXACT_TOL  # stack copies layers: the function changes

  real = growth.grow_state

  def broken(*a, **kw):  # an exact method whose output is off by 1e-3: --verify must catch it
    params, state, masks = real(*a, **kw)
    params = dict(params, final_ln_bias=params['final_ln_bias'] + 1e-3)
    return params, state, masks

  monkeypatch.setattr(growth, 'grow_state', broken)
  rc = grow_cmd.grow_main(_args(os.path.join(work, 'stage_0'), f'{exp}:big', str(root / 'w4')))
  text = capsys.readouterr().out
  assert rc == 1 and 'verify FAILED' in text
  assert _last_diff(text) > growth.EXACT_TOL


def test_bad_target_and_occupied_output_are_refused(tmp_path):
  exp = tmp_path / 'exp.py'
  exp.write_text(EXPERIMENT)
  with pytest.raises(ConfigError, match='--to must be FILE.py:STAGE_NAME'):
    grow_cmd.grow_main(_args('W', str(exp), str(tmp_path / 'o')))
  with pytest.raises(ConfigError,
                     match=r"no stage named 'huge'; stages are \['small', 'big', 'deep'\]"):
    grow_cmd.grow_main(_args('W', f'{exp}:huge', str(tmp_path / 'o')))
  occupied = tmp_path / 'o' / 'stage_1' / '7'
  occupied.mkdir(parents=True)
  with pytest.raises(checkpoint.CheckpointError, match='already holds checkpoints'):
    grow_cmd.grow_main(_args('W', f'{exp}:big', str(tmp_path / 'o')))


@pytest.mark.slow
def test_grow_from_a_single_stage_run_resumes_the_stage_at_its_start(source, capsys):
  """A single-stage run (3 steps) grown into 'big', which starts at step 2 of the experiment:
  the grown checkpoint is placed at step 2 (state, masks and the schedule's own counter), so
  `train` runs big's 2 steps at big's LRs (it resumed at step 3 under the schedule of 'small',
  or before the stage with a negative progress bar)."""
  from conftest import read_losses
  from flmjax.storage.metrics import read_metrics
  exp, _, root = source
  single = experiment.load_config(exp)
  single.stages = []
  single.train.steps = 3
  loop.train(single, str(root / 'single'))
  out = str(root / 'w5')
  rc = grow_cmd.grow_main(_args(os.path.join(root, 'single', 'stage_0'), f'{exp}:big', out,
                                verify=False))
  text = capsys.readouterr().out
  assert rc == 0 and 'source checkpoint is at step 3' in text, text
  config = experiment.load_config(exp)
  big = experiment.validate(config)[1]
  _, state, meta, _ = runtime.load_state(out)
  assert int(state['step']) == int(state['grow_step']) == big.start_step == 2
  assert meta['source_step'] == 3
  sched, = [s for s in jax.tree.leaves(state['opt_state'], is_leaf=lambda s: isinstance(
      s, optax.ScaleByScheduleState)) if isinstance(s, optax.ScaleByScheduleState)]
  adam, = [s for s in jax.tree.leaves(state['opt_state'], is_leaf=lambda s: isinstance(
      s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  assert int(sched.count) == 2 and int(adam.count) == 3  # LR at the stage; moments' real age
  config.stages = config.stages[:2]
  loop.train(config, out)
  trained = sorted(read_losses(out))
  assert trained == [3, 4], trained  # big's 2 steps, not 4 - 3 + ... nor steps of 'small'
  lrs = {r['step']: r['learning_rate'] for r in read_metrics(os.path.join(out, 'metrics.jsonl'))
         if 'learning_rate' in r}
  assert lrs[3] == pytest.approx(big.lr)  # the stage's first step trains at its own LR
