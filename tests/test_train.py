"""The training loop: loss goes down, metrics/TensorBoard written, exact resume, the same losses
on 1 and 8 devices under three meshes, gradient accumulation, z-loss and the LR schedule."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import read_losses, run_py, tiny_config
from flmjax import optimizer
from flmjax.training import batches, loop, runtime, step as step_fns
from flmjax.plan import stage_plan


def test_tiny_run_lowers_loss_and_writes_metrics(baseline):
  wd, losses, summary = baseline
  assert sorted(losses) == list(range(1, 7))
  assert losses[6] < losses[1] - 0.3
  records = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  for key in ('step', 'loss', 'learning_rate', 'tokens', 'flops', 'stage', 'grad_norm'):
    assert all(key in r for r in records), key
  assert [r['tokens'] for r in records] == [128 * s for s in range(1, 7)]
  per_token = stage_plan(tiny_config(6))[0].model.flops_per_token(16)
  assert records[-1]['flops'] == pytest.approx(per_token * 6 * 128)
  assert 'val_loss_synthetic' in records[-1]  # eval at the end of the stage
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(wd, 'tb')))
  assert summary['stages'][0]['val_loss']['val_loss_synthetic'] > 0


def test_resume_reproduces_uninterrupted_losses_exactly(baseline, workdir):
  _, want, _ = baseline
  assert loop.train(tiny_config(6), workdir, stop_at_step=3) == {'stopped_at': 3}
  assert read_losses(workdir) == {s: want[s] for s in (1, 2, 3)}
  loop.train(tiny_config(6), workdir)
  assert read_losses(workdir) == want  # exact float equality on CPU


@pytest.mark.slow
def test_same_losses_on_1_and_8_devices_with_three_meshes(baseline):
  _, want, _ = baseline
  got = run_py('''
    import tempfile
    from conftest import tiny_config, read_losses
    from flmjax.training import batches, loop, runtime, step as step_fns
    out = {}
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
      c = tiny_config(6)
      c.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
      wd = tempfile.mkdtemp()
      loop.train(c, wd)
      out[str(shape)] = read_losses(wd)
    emit(out)
  ''', devices=8)
  for shape, losses in got.items():
    assert {int(k): v for k, v in losses.items()} == pytest.approx(want, rel=1e-5, abs=1e-5), shape


def _one_step(config, batch):
  from flmjax import sharding
  stages = stage_plan(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  rt = runtime.StageRuntime(config, stages, 0, mesh, rules, schedule)
  state = rt.init_state(0)
  state, out = rt.train_step(state, batches.to_global(batch, rt.batch_sh))
  return jax.device_get(out), jax.device_get(state.params)


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch():
  from flmjax import synthetic_data
  c1 = tiny_config(4)
  batch = next(synthetic_data.make_synthetic_iterator(c1.data, seq_len=16, global_batch_size=8))
  batch['loss_weights'][0, :5] = 0.0  # uneven weights: the normaliser is the global token count
  out1, p1 = _one_step(c1, batch)
  c2 = tiny_config(4, optim=dict(grad_accum=4))
  out2, p2 = _one_step(c2, batch)
  assert out2['loss'] == pytest.approx(out1['loss'], rel=1e-6)
  assert out2['grad_norm'] == pytest.approx(out1['grad_norm'], rel=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # Adam: ~sign(g)·lr at step 1


def test_token_losses_weighted_sums_and_z_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = rng.integers(0, 5, size=(2, 3)).astype(np.int32)
  w = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  ce, zl = step_fns.token_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(w))
  logz = np.log(np.exp(logits).sum(-1))
  want_ce = ((logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]) * w).sum()
  assert float(ce) == pytest.approx(want_ce, rel=1e-5)
  assert float(zl) == pytest.approx((logz ** 2 * w).sum(), rel=1e-5)


def test_schedule_warmup_cosine_and_continuation_across_stages():
  stages = [dict(start_step=0, steps=10, lr=1.0, warmup_steps=4, end_lr=0.1),
            dict(start_step=10, steps=10, lr=0.5, warmup_steps=2, end_lr=0.05)]
  f = optimizer.make_schedule(stages, 'cosine')
  lrs = [float(f(s)) for s in range(20)]
  assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
  assert lrs[4] > lrs[8] > lrs[9] == pytest.approx(0.1)     # cosine decay, ends at end_lr
  assert lrs[10] == pytest.approx(0.1 + (0.5 - 0.1) / 2)     # re-warm-up starts from 0.1
  assert lrs[11] == pytest.approx(0.5)
  assert lrs[19] == pytest.approx(0.05, rel=0.05)
  const = optimizer.make_schedule([dict(stages[0], warmup_steps=0)], 'constant')
  assert float(const(7)) == pytest.approx(1.0)


@pytest.mark.parametrize('name,end_lr', [('tiny_growth', 2e-4), ('flm101b', 6e-6)])
def test_staged_experiments_run_one_continuous_schedule(name, end_lr):
  """FLM-101B's schedule: each stage starts at its lr, which is where the previous stage ended;
  only the first stage warms up and only the last anneals to end_lr."""
  from conftest import ROOT
  from flmjax import experiment
  config = experiment.load_config(os.path.join(ROOT, 'experiments', f'{name}.py'))
  stages = stage_plan(config)
  f = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  lr = lambda step: float(f(step))
  assert lr(0) < stages[0].lr and lr(stages[0].warmup_steps) == pytest.approx(stages[0].lr)
  for prev, s in zip(stages, stages[1:]):
    assert s.warmup_steps == 0
    assert lr(s.start_step - 1) == pytest.approx(s.lr, rel=1e-5)
    assert lr(s.start_step) == pytest.approx(s.lr, rel=1e-5)
    step_size = abs(lr(s.start_step + 1) - lr(s.start_step))  # no bigger than a step inside
    assert abs(lr(s.start_step) - lr(s.start_step - 1)) <= max(step_size, 1e-12 * s.lr)
  assert lr(stages[-1].end_step - 1) == pytest.approx(end_lr, rel=1e-4)
  every = [lr(t) for t in range(stages[0].warmup_steps, stages[-1].end_step, 97)]
  assert all(a >= b for a, b in zip(every, every[1:]))  # one decaying schedule


def test_rewarm_stage_schedule_and_config_errors():
  from conftest import tiny_stages
  from flmjax.config import ConfigError
  rewarm = tiny_config(optim=dict(stage_schedule='rewarm'), stages=tiny_stages((4, 4)))
  rewarm.stages[1]['warmup_steps'] = 2
  stages = stage_plan(rewarm)
  f = optimizer.make_schedule([s.schedule_dict() for s in stages], 'cosine')
  assert float(f(3)) == pytest.approx(1e-3)                       # stage 0 anneals to end_lr
  assert float(f(4)) == pytest.approx(1e-3 + (5e-3 - 1e-3) / 2)   # and stage 1 warms up again
  bad = tiny_config(stages=tiny_stages())
  bad.stages[1]['warmup_steps'] = 3
  with pytest.raises(ConfigError, match=r"stages\[1\]\.warmup_steps=3: with "
                                        r"optim.stage_schedule='continue'"):
    stage_plan(bad)
  bad = tiny_config(stages=tiny_stages())
  bad.stages[0]['end_lr'] = 1e-4
  with pytest.raises(ConfigError, match=r'stages\[0\]\.end_lr=0.0001'):
    stage_plan(bad)
  with pytest.raises(ConfigError, match=r'optim.stage_schedule must be one of'):
    stage_plan(tiny_config(optim=dict(stage_schedule='restart'), stages=tiny_stages()))


def test_weight_decay_skips_layernorm_and_biases_and_lr_scales_apply():
  params = {'embed': jnp.ones((4, 2)), 'final_ln_scale': jnp.ones(2),
            'layers': {'wq': jnp.ones((1, 2, 2)), 'bq': jnp.ones((1, 2)),
                       'ln1_scale': jnp.ones((1, 2))}}
  mask = optimizer.decay_mask(params)
  assert mask == {'embed': True, 'final_ln_scale': False,
                  'layers': {'wq': True, 'bq': False, 'ln1_scale': False}}
  cfg = dict(clip=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.5)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx = optimizer.make_optimizer(cfg, optax.constant_schedule(0.1))
  upd, _ = tx.update(zeros, tx.init(params), params)  # zero grads: only weight decay moves
  assert float(upd['embed'][0, 0]) == pytest.approx(-0.05)
  assert float(upd['layers']['bq'][0, 0]) == 0.0
  scales = jax.tree_util.tree_map(lambda _: 2.0, params)
  tx2 = optimizer.make_optimizer(dict(cfg, mup_weight_decay='lr_scaled'),
                                 optax.constant_schedule(0.1), lr_scales=scales)
  upd2, _ = tx2.update(zeros, tx2.init(params), params)
  assert float(upd2['embed'][0, 0]) == pytest.approx(-0.1)  # decay × the LR multiplier
  tx3 = optimizer.make_optimizer(cfg, optax.constant_schedule(0.1), lr_scales=scales)
  upd3, _ = tx3.update(zeros, tx3.init(params), params)  # default: lr·wd whatever the multiplier
  assert float(upd3['embed'][0, 0]) == pytest.approx(-0.05)
  assert float(upd3['layers']['bq'][0, 0]) == 0.0
  ones = jax.tree_util.tree_map(jnp.ones_like, params)
  grads3, _ = tx3.update(ones, tx3.init(params), params)  # gradients do get the multiplier
  assert float(grads3['layers']['bq'][0, 0]) == pytest.approx(-0.2, rel=1e-4)


def test_drivers_stop_when_a_run_is_preempted(monkeypatch, tmp_path):
  """A SIGTERM ends a sweep or the growth planner, not just their current run: before, the
  driver took the preempted run for finished and started the next one (each then stopped at
  step 1), so a preempted sweep neither ended nor said how to resume."""
  from types import SimpleNamespace
  from flmjax.scaling import growth_planner, sweep
  calls = []

  def preempted(config, workdir, *, stop_at_step=None):
    calls.append((os.path.basename(workdir), stop_at_step))
    return {'stopped_at': 3, 'preempted': 'SIGTERM'}

  monkeypatch.setattr(loop, 'train', preempted)
  prefix = SimpleNamespace(config=tiny_config(), workdir=str(tmp_path / 'prefix'), steps=(2, 4, 8))
  with pytest.raises(SystemExit, match=r'prefix: preempted by SIGTERM at step 3 .*again to resume'):
    growth_planner.train_prefix(prefix)
  assert calls == [('prefix', 2)]  # neither the next branch point nor the rest was started
  with pytest.raises(SystemExit, match='point: preempted by SIGTERM'):
    sweep.run_point(tiny_config(), str(tmp_path / 'point'))
  assert calls[1:] == [('point', None)]
