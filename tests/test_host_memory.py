"""flmjax.host_memory: a process that repeats a jitted step re-faults no host memory.

Each case is a fresh subprocess (glibc's arena limit binds only threads started after it)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A step whose temporaries (~200 MB) are allocated and freed by XLA on every call, as a training
# step's activations are; the minor page faults of the last calls are what a step pays per call.
PROGRAM = r'''
import json, resource, sys
from flmjax import host_memory
applied = host_memory.retain_freed_memory()
assert host_memory.retain_freed_memory() == applied  # once per process, same answer
import jax, jax.numpy as jnp

@jax.jit
def step(w, x):
  h = jnp.tanh(x @ w)                 # 2048 x 8192 floats: 64 MB per temporary
  return (jnp.exp(h) * jnp.cos(h) + h).sum(axis=1)

w = jnp.ones((512, 8192)) / 512
x = jnp.ones((2048, 512))
for _ in range(10):  # the heap settles within a few calls (its peak: ~2x the temporaries)
  step(w, x).block_until_ready()
faults = []
for _ in range(9):
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = step(w, x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
# the median call: a heap that grows once more late (a busy machine reorders the threads'
# frees) is one call's faults, not every call's
print(json.dumps({'applied': applied, 'faults_per_call': sorted(faults)[4],
                  'value': float(y.sum())}))
'''


def run(env_value: str) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env['FLMJAX_HOST_MALLOC'] = env_value
  out = subprocess.run([sys.executable, '-c', PROGRAM], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt: Linux only')
def test_retained_memory_removes_per_step_page_faults_and_changes_no_value():
  system, retained = run('system'), run('')
  assert not system['applied'] and retained['applied']
  # Without it every call faults its temporaries in again (64 MB = 16k pages each); with it the
  # freed blocks are reused.
  assert system['faults_per_call'] > 10_000, system
  assert retained['faults_per_call'] < 0.05 * system['faults_per_call'], (system, retained)
  assert retained['value'] == system['value']



@pytest.mark.parametrize('platforms, expected', [('cpu', True), ('cuda', False), ('tpu,cpu', False),
                                                 ('cpu,cuda', True)])
def test_applied_only_where_the_steps_run_on_the_cpu(monkeypatch, platforms, expected):
  from flmjax import cli
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert cli.steps_on_cpu() is expected
  monkeypatch.delenv('JAX_PLATFORMS')
  monkeypatch.setattr(cli, 'accelerator_present', lambda: True)
  assert not cli.steps_on_cpu()
  monkeypatch.setattr(cli, 'accelerator_present', lambda: False)
  assert cli.steps_on_cpu()
