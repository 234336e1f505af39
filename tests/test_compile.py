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
  two = aot.parse_slice('v5e:2x2', num_slices=2)
  assert two.chips == 8 and 'slices' in str(two)
  for bad in ('v9x-8', 'v5p-12', 'v5p:4x4', 'v5p'):
    with pytest.raises(aot.PodPlanError):
      aot.parse_slice(bad)


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
  assert 'mesh.rules.act_length=tensor' in proc.stdout


def test_batch_that_does_not_divide_names_the_field(tmp_path):
  proc = run_compile(tmp_path, TINY, '--topology', 'v5e:2x2', '--config.mesh.tensor=1',
                     '--config.train.global_batch_size=6')  # 4 batch shards
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'train.global_batch_size=6' in proc.stderr and 'batch shards' in proc.stderr
  assert 'optim.grad_accum' in proc.stderr and 'mesh' in proc.stderr


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
