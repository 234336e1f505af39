"""Multi-stage runs: growth at the boundary, per-stage checkpoints, exact resume in any stage
(including right after a growth), stage/FLOPs columns in metrics and the run summary."""

import os
import shutil

import pytest

from conftest import read_losses, tiny_config, tiny_stages
from flmjax import experiment, plan
from flmjax.storage import checkpoint
from flmjax.training import loop
from flmjax.storage.metrics import read_metrics

pytest.importorskip('flmjax.growth')


@pytest.fixture(scope='module')
def grown(tmp_path_factory):
  cfg = tiny_config(stages=tiny_stages((3, 4), ramp_steps=2), train=dict(eval_batches=1))
  wd = str(tmp_path_factory.mktemp('stages') / 'w')
  summary = loop.train(cfg, wd)
  return cfg, wd, read_losses(wd), summary


def test_stages_grow_checkpoint_and_log_cumulative_flops(grown):
  cfg, wd, losses, summary = grown
  assert sorted(losses) == list(range(1, 8))
  assert set(checkpoint.stage_dirs(wd)) == {0, 1}
  assert checkpoint.steps_in(os.path.join(wd, 'stage_0'))[-1] == 3
  assert 3 in checkpoint.steps_in(os.path.join(wd, 'stage_1'))  # the grown state, pre-step
  _, params, _ = checkpoint.load_params(wd)
  assert params['embed'].shape == (128, 64)
  records = [r for r in read_metrics(os.path.join(wd, 'metrics.jsonl')) if 'loss' in r]
  assert [r['stage'] for r in records] == [0, 0, 0, 1, 1, 1, 1]
  stages = plan.stage_plan(cfg)
  f0, f1 = (s.model.flops_per_token(16) * 128 for s in stages)
  assert records[2]['flops'] == pytest.approx(3 * f0)
  assert records[-1]['flops'] == pytest.approx(3 * f0 + 4 * f1)
  assert summary['saved_fraction'] == pytest.approx(1 - (3 * f0 + 4 * f1) / (7 * f1))
  assert [s['stage'] for s in summary['stages']] == ['small', 'big']
  # MSG growth is function preserving: no loss jump at the boundary (masks start at 0)
  assert losses[4] < losses[3] + 0.05


def test_lr_and_validation_loss_continue_across_the_growth(grown):
  """optim.stage_schedule='continue' (default): the grown stage starts at the LR the previous
  one ended with; the validation loss measured right after the growth (grown model, masks at 0)
  equals the one measured right before it."""
  cfg, wd, _, _ = grown
  records = read_metrics(os.path.join(wd, 'metrics.jsonl'))
  lr = {r['step']: r['learning_rate'] for r in records if 'learning_rate' in r}  # lr of step-1
  big = plan.stage_plan(cfg)[1]
  assert lr[3] == pytest.approx(big.lr, rel=1e-6)   # last step of 'small' ends at big's lr …
  assert lr[4] == pytest.approx(big.lr, rel=1e-6)   # … where 'big' starts: no jump, no warm-up
  assert lr[5] < lr[4]
  before = [r for r in records if r['step'] == 3 and r['stage'] == 0 and 'val_loss_synthetic' in r]
  after = [r for r in records if r.get('after_growth')]
  assert len(before) == 1 and len(after) == 1 and after[0]['step'] == 3 and after[0]['stage'] == 1
  assert after[0]['val_loss_synthetic'] == pytest.approx(before[0]['val_loss_synthetic'],
                                                         abs=1e-5)


@pytest.mark.slow
def test_resume_at_stage_end_and_right_after_growth_is_exact(grown, workdir):
  cfg, _, want, _ = grown
  assert loop.train(cfg, workdir, stop_at_step=3) == {'stopped_at': 3}  # end of stage 0
  assert loop.train(cfg, workdir, stop_at_step=4) == {'stopped_at': 4}  # grows, 1 step
  assert read_losses(workdir) == {s: want[s] for s in range(1, 5)}
  # drop everything after the growth checkpoint: resume from the grown state itself
  stage1 = os.path.join(workdir, 'stage_1')
  for step in checkpoint.steps_in(stage1):
    if step > 3:
      shutil.rmtree(os.path.join(stage1, str(step)))
  loop.train(cfg, workdir)
  assert read_losses(workdir) == want


def test_stage_config_errors_name_the_stage():
  from flmjax.config import ConfigError
  bad = tiny_stages()
  bad[1]['model'] = dict(d_model=16, n_heads=1)
  with pytest.raises(ConfigError, match=r'stages\[1\]\.model\.d_model=16'):
    experiment.validate(tiny_config(stages=bad), 1)
  bad = tiny_stages()
  del bad[1]['growth']
  with pytest.raises(ConfigError, match=r'stages\[1\]\.growth is required'):
    experiment.validate(tiny_config(stages=bad), 1)
  bad = tiny_stages()
  bad[1]['tokens'] = 100
  with pytest.raises(ConfigError, match=r'stages\[1\]: set exactly one of steps or tokens'):
    experiment.validate(tiny_config(stages=bad), 1)
