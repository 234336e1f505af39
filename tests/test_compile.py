"""`flmjax compile`: AOT compile of every stage and growth for a TPU topology on this CPU host
(libtpu from the `tpu` extra).  A tiny two-stage growth experiment on v5e:2x2 fits; a too-large
one gets the out-of-HBM message and exit status 1; a batch that does not divide names the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from flmjax import cli
from flmjax.training import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = """
from flmjax import experiment

def get_config():
  c = experiment.default_config()
  c.model.update(vocab_size=256, d_model=64, n_heads=4, head_dim=16, d_ff=256, n_layers=2,
                 max_len=64, compute_dtype='bfloat16', remat='full')
  c.data.source = 'synthetic'
  c.data.synthetic.update(vocab_size=200)
  c.train.update(seq_len=64, global_batch_size=16)
  c.mesh.update(data=1, fsdp=-1, tensor=2)
  c.stages = [dict(name='small', steps=10),
              dict(name='big', steps=5, model=dict(d_model=128, n_heads=8, d_ff=512),
                   growth=dict(width='msg', depth='msg', ramp_steps=3))]
  return c
"""


def run_compile(tmp_path, config_text: str, *extra: str) -> subprocess.CompletedProcess:
  cfg = tmp_path / 'exp.py'
  cfg.write_text(textwrap.dedent(config_text))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'flmjax.cli', 'compile', '--config', str(cfg),
                         *extra], env=env, capture_output=True, text=True, timeout=600,
                        cwd=str(tmp_path))


def test_parse_slice():
  s = aot.parse_slice('v5p-512')  # Cloud's v5p names count TensorCores: 2 per chip
  assert (s.topology, s.chips) == ('v5p:4x8x8', 256)
  assert aot.parse_slice('v5p:8x8x8').chips == 512
  assert aot.parse_slice('v5p-8').topology == 'v5p:2x2x1'
  assert aot.parse_slice('v5litepod-16').topology == 'v5e:4x4'
  assert aot.parse_slice('v5e-4').topology == 'v5e:2x2'
  assert aot.parse_slice('v6e-8').topology == 'v6e:2x4'
  # v4 names count TensorCores too (v4-8 is one host of 4 chips), up to v4-4096 = 2048 chips
  assert (aot.parse_slice('v4-8').topology, aot.parse_slice('v4-8').chips) == ('v4:2x2x1', 4)
  assert aot.parse_slice('v4-16').topology == 'v4:2x2x2'
  assert aot.parse_slice('v4-1024').topology == 'v4:8x8x8'
  assert (aot.parse_slice('v4-4096').topology, aot.parse_slice('v4-4096').chips) == (
      'v4:8x16x16', 2048)
  assert aot.parse_slice('v4:4x4x4').chips == 64
  v4 = aot.CHIPS['v4']
  assert (v4.hbm_spec, v4.peak_bf16) == (32 * aot.GiB, 275e12)
  two = aot.parse_slice('v5e:2x2', num_slices=2)
  assert two.chips == 8 and 'slices' in str(two)
  for bad in ('v9x-8', 'v5p-12', 'v5p:4x4', 'v5p', 'v4-6', 'v4:2x2'):
    with pytest.raises(aot.PodPlanError):
      aot.parse_slice(bad)


def test_libtpu_accepts_v4_and_v6e_topologies():
  """libtpu describes the slices: v4 in megacore mode, one device per chip as on a TPU VM."""
  for name, kind, chips, hosts in (('v4-8', 'TPU v4', 4, 1), ('v4-1024', 'TPU v4', 512, 128),
                                   ('v6e-8', 'TPU v6 lite', 8, 2)):
    devices = aot.topology_devices(aot.parse_slice(name))
    assert len(devices) == chips and {d.device_kind for d in devices} == {kind}, name
    assert len({d.process_index for d in devices}) == hosts, name
    assert len({tuple(d.coords) for d in devices}) == chips, name  # no chip twice


def _row(kind, name, days=0.0, paper=None):
  return aot.Row(kind, name, (1, 1, 1), 10, flops_per_step=1.0 if kind == 'train' else 0.0,
                 days=days, paper_days=paper, capacity=1, peak_bytes=1)


def test_footer_names_the_stages_it_summed():
  sl, rows = aot.parse_slice('v4-8'), [_row('growth', '51B -> 101B'), _row('train', '101B', 2.5,
                                                                            6.54)]
  last = aot.format_table(rows, sl, 0.52, all_stages=False).splitlines()[-1]
  assert last.startswith('training days (stage 101B only; at 52% MFU): 2.50'), last
  assert 'all stages' not in last and 'paper: 6.54' in last
  rows = [_row('train', '16B', 1.0, 9.63), _row('eval', '16B'), _row('train', '101B', 2.5, 6.54)]
  last = aot.format_table(rows, sl, 0.52).splitlines()[-1]
  assert last.startswith('training days (all stages: 16B, 101B; at 52% MFU): 3.50'), last


def test_footer_sums_only_the_stages_that_fit():
  sl = aot.parse_slice('v6e-256')
  rows = [_row('train', '16B', 1.0, 9.63), _row('growth', '16B -> 51B'),
          _row('train', '51B', 2.0, 5.37), _row('train', '101B', 2.5, 6.54)]
  rows[1].error = 'out of HBM'  # the growth into 51B fails: 51B does not fit
  rows[3].error = 'out of HBM'
  last = aot.format_table(rows, sl, 0.52).splitlines()[-3]
  assert last.startswith('training days (all stages: 16B, 51B, 101B; at 52% MFU): n/a: 2 stages '
                         '(51B, 101B) do not fit; 16B, which fits: 1.00'), last
  for r in rows:
    r.error = 'out of HBM'
  last = aot.days_footer(rows, 0.52)
  assert 'n/a: 3 stages (16B, 51B, 101B) do not fit; paper' in last, last


def _plan_config(**mesh):
  from flmjax import experiment
  c = experiment.default_config()
  c.mesh.update(mesh)
  c.train.update(global_batch_size=2176, steps=10)
  c.optim.grad_accum = 2
  return c


def test_each_host_feeds_the_rows_its_chips_hold_on_real_host_layouts():
  """libtpu's devices carry their host (process): with tensor=8 a tensor group spans hosts of 4
  chips, so several hosts feed the same batch shard (never batch // hosts rows each)."""
  from flmjax import sharding
  from flmjax.config import ConfigError
  for name, hosts, rows, per_shard in (('v5p-16', 2, 2176, 2), ('v5p-512', 64, 136, 4),
                                       ('v6e-256', 64, 68, 2)):
    devices = aot.topology_devices(aot.parse_slice(name))
    mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 8}, devices)
    sh = sharding.batch_sharding(mesh, sharding.logical_rules({}))
    feed = aot.host_feeding(sh, 2176, 2, 'stages[2].global_batch_size')
    assert (feed['hosts'], feed['chips_per_host']) == (hosts, 4), name
    assert (feed['rows_per_host'], feed['hosts_per_shard']) == (rows, per_shard), (name, feed)
    assert feed['rows_per_host'] * feed['hosts'] == 2176 * feed['hosts_per_shard']
  with pytest.raises(ConfigError, match=r'stages\[2\].global_batch_size=2176 / optim.grad_accum=8 '
                                        r'does not split evenly over the batch shards data×fsdp = 32'):
    aot.host_feeding(sh, 2176, 8, 'stages[2].global_batch_size')


def test_to_fix_names_only_the_knobs_that_can_help():
  big = aot.Row('train', '101B', (1, 4, 2), 10 ** 11, param_bytes=30 * aot.GiB,
                opt_bytes=60 * aot.GiB, capacity=int(95.74 * aot.GiB), global_batch=2176,
                batch_shards=4)
  tip = aot.oom_advice(_plan_config(), big)  # the state alone fills the chip
  assert 'use more chips' in tip and 'raise optim.grad_accum' not in tip, tip
  act = aot.Row('train', '101B', (1, 32, 8), 10 ** 11, param_bytes=aot.GiB, opt_bytes=aot.GiB,
                capacity=int(95.74 * aot.GiB), global_batch=2176, batch_shards=32)
  tip = aot.oom_advice(_plan_config(), act)
  assert tip.startswith('raise optim.grad_accum (now 2) to 4 or more'), tip
  act.batch_shards = 1088  # one sequence per shard already: grad_accum cannot help
  assert 'grad_accum' not in aot.oom_advice(_plan_config(), act)
  sl = aot.parse_slice('v5p-8')  # 4 chips: tensor=8 cannot be laid out; only the mesh helps
  fix = aot.config_fix(_plan_config(data=1, fsdp=-1, tensor=8), sl)
  assert 'mesh.tensor must divide 4' in fix and 'grad_accum' not in fix and 'batch' not in fix
  c = _plan_config(data=1, fsdp=-1, tensor=1)  # 64 batch shards: 2176 / 4 = 544 does not divide
  c.optim.grad_accum = 4
  fix = aot.config_fix(c, aot.parse_slice('v5p:4x4x4'))
  assert fix.startswith('optim.grad_accum one of [1, 2, 17, 34]; or train.global_batch_size a '
                        'multiple of 256 (2048, 2304)'), fix


def test_without_libtpu_says_how_to_install(monkeypatch, capsys, tmp_path):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real(name, *a))
  assert cli.main(['compile', '--config', 'x.py', '--topology', 'v5e:2x2']) == 3
  err = capsys.readouterr().err
  assert 'needs libtpu' in err and "pip install -e '.[tpu]'" in err


@pytest.mark.slow
def test_tiny_growth_plan(tmp_path):
  out = tmp_path / 'plan.json'
  proc = run_compile(tmp_path, TINY, '--topology', 'v5e-4', '--output', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = json.loads(out.read_text())
  assert (plan['topology'], plan['chips']) == ('v5e:2x2', 4)
  got = [(r['kind'], r['name']) for r in plan['rows']]
  assert got == [('train', 'small'), ('eval', 'small'), ('growth', 'small -> big'),
                 ('train (ramp masks)', 'big'), ('train', 'big'), ('eval', 'big')]
  for r in plan['rows']:
    assert r['mesh'] == [1, 2, 2] and not r['error']
    assert 0 < r['peak_bytes'] < r['capacity'] == aot.CHIPS['v5e'].hbm_usable
    assert r['param_bytes'] > 0  # Adam mu, nu (+ step counters):
    assert 0 <= r['opt_bytes'] - 2 * r['param_bytes'] < 64
  small, big = plan['rows'][0], plan['rows'][4]
  assert big['params'] > small['params'] and big['param_bytes'] > small['param_bytes']
  # the trainer's analytic FLOPs; step time at the paper's MFU on 4 × 197 TFLOP/s
  assert big['flops_per_step'] > small['flops_per_step'] > 0
  assert big['step_s'] == pytest.approx(big['flops_per_step'] / (4 * 197e12 * 0.52))
  lines = proc.stdout.splitlines()
  assert lines[0].startswith('pod plan for v5e:2x2 (4 chips)')
  assert any(l.startswith('growth') and 'small -> big' in l for l in lines)
  assert 'training days' in lines[-1]


@pytest.mark.slow
def test_one_stage_on_v4(tmp_path):
  """`--stage big` on a v4 host (4 chips, megacore): the growth into it and its steps compile,
  the footer says which stage it summed."""
  out = tmp_path / 'plan.json'
  proc = run_compile(tmp_path, TINY, '--topology', 'v4-8', '--stage', 'big', '--no_eval',
                     '--output', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  plan = json.loads(out.read_text())
  assert (plan['topology'], plan['chips'], plan['chip']) == ('v4:2x2x1', 4, 'v4')
  assert [(r['kind'], r['name']) for r in plan['rows']] == [
      ('growth', 'small -> big'), ('train (ramp masks)', 'big'), ('train', 'big')]
  assert all(0 < r['peak_bytes'] < r['capacity'] == aot.CHIPS['v4'].hbm_usable
             for r in plan['rows'])
  big = plan['rows'][-1]
  assert big['step_s'] == pytest.approx(big['flops_per_step'] / (4 * 275e12 * 0.52))
  lines = proc.stdout.splitlines()
  assert lines[0].startswith('pod plan for v4:2x2x1 (4 chips): v4 30.75 GiB usable HBM')
  assert lines[-1].startswith('training days (stage big only; at 52% MFU)'), lines[-1]


TOO_LARGE = """
from flmjax import experiment

def get_config():  # ~60M params but 16 sequences of 2048 per chip, no remat: > 16 GiB of HBM
  c = experiment.default_config()
  c.model.update(vocab_size=32000, d_model=1024, n_heads=16, head_dim=64, d_ff=4096, n_layers=4,
                 max_len=2048, compute_dtype='bfloat16', remat='none')
  c.data.source = 'synthetic'
  c.train.update(steps=10, seq_len=2048, global_batch_size=64)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c
"""


@pytest.mark.slow
def test_too_large_is_out_of_hbm(tmp_path):
  proc = run_compile(tmp_path, TOO_LARGE, '--topology', 'v5e:2x2', '--no_eval')
  assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
  assert 'out of HBM' in proc.stdout and 'FAILED train main' in proc.stdout
  assert 'raise optim.grad_accum' in proc.stdout and "model.remat='full'" in proc.stdout
  assert 'act_length' not in proc.stdout  # tensor=1: sequence parallelism would split nothing


def test_batch_that_does_not_divide_names_the_field(tmp_path):
  proc = run_compile(tmp_path, TINY, '--topology', 'v5e:2x2', '--config.mesh.tensor=1',
                     '--config.train.global_batch_size=6')  # 4 batch shards
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'train.global_batch_size=6' in proc.stderr and 'batch shards' in proc.stderr
  fix = proc.stderr.split('To fix: ')[1]  # 6 rows never split over 4 shards: grad_accum can't help
  assert 'grad_accum' not in fix and 'train.global_batch_size a multiple of 4 (4, 8)' in fix, fix
  assert 'mesh.data × mesh.fsdp dividing 6' in fix


def test_multislice_mesh_puts_only_data_across_slices():
  from flmjax import sharding
  from flmjax.config import ConfigError
  sl = aot.parse_slice('v5e:2x2', num_slices=2)
  devices = aot.topology_devices(sl)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}, devices)
  slice_of = lambda d: d.slice_index
  for i in range(2):  # each data row is one slice; fsdp × tensor stay inside it
    assert {slice_of(d) for d in mesh.devices[i].flat} == {i}
  with pytest.raises(ConfigError, match='mesh.data=1 must be a multiple of the 2 slices'):
    sharding.make_mesh({'data': 1, 'fsdp': 4, 'tensor': 2}, devices)
