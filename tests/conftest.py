"""Shared fixtures: tiny experiment configs, metrics readers, and a runner for snippets that need
several (simulated) CPU devices or processes — XLA_FLAGS must be set before JAX starts, so those
run in a subprocess and answer with one JSON line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import traceback
from typing import Any, Optional

import pytest

# LLVM's backend optimisations cost most of a CPU test's compile time and buy nothing at these
# sizes; numerics (and so every exactness/resume comparison) are unaffected.
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + FAST_COMPILE).strip()
# With the `tpu` extra installed, jax would look for a TPU first and libtpu print pages of
# warnings on a machine without one; the tests run on CPU (set JAX_PLATFORMS to override).
# `flmjax compile` still reaches libtpu: topologies are compiled for without a TPU backend.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CPython 3.11's AST builder keeps its recursion depth in interpreter-wide state, so two threads
# parsing at once corrupt it: "SystemError: AST constructor recursion depth mismatch" (python/cpython
# gh-106905 and its threaded reports).  Formatting a traceback parses its source lines (the `^~~`
# anchors); orbax, TensorStore and pytest's own hooks format tracebacks in background threads while
# pytest parses a failed test's source in the main one, which crashed an xdist worker in CI and hid
# the test's own error.  Background threads here get tracebacks without the anchors instead.
_caret_anchors = getattr(traceback, '_extract_caret_anchors_from_line_segment', None)
if _caret_anchors is not None:

  def _anchors_in_main_thread_only(segment):
    if threading.current_thread() is threading.main_thread():
      return _caret_anchors(segment)
    return None

  traceback._extract_caret_anchors_from_line_segment = _anchors_in_main_thread_only


def tiny_config(steps: int = 6, **sections: dict) -> Any:
  """A 2-layer d_model 32 model on the synthetic task: a few seconds per run on CPU."""
  from flmjax import experiment
  c = experiment.default_config()
  c.model.update(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                 max_len=32)
  c.data.source = 'synthetic'
  c.data.synthetic.update(vocab_size=32, min_doc_len=4, max_doc_len=12)
  c.optim.update(lr=1e-2, warmup_steps=2, end_lr=1e-3, weight_decay=0.01)
  c.train.update(steps=steps, seq_len=16, global_batch_size=8, log_every=1, eval_every=0,
                 eval_batches=0, ckpt_every=0, keep=3)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  for name, fields in sections.items():
    if name == 'stages':
      c.stages = fields
    else:
      c[name].update(fields)
  return c


def tiny_stages(steps=(4, 4), ramp_steps: int = 2) -> list[dict]:
  """Two stages: d_model 32 → 64 (2 → 4 heads, d_ff 64 → 128), MSG growth."""
  return [
      dict(name='small', steps=steps[0]),
      dict(name='big', model=dict(d_model=64, n_heads=4, d_ff=128), steps=steps[1], lr=5e-3,
           growth=dict(width='msg', depth='msg', ramp_steps=ramp_steps)),
  ]


def read_losses(workdir: str) -> dict[int, float]:
  from flmjax.storage import paths
  from flmjax.storage.metrics import read_metrics
  return {r['step']: r['loss'] for r in read_metrics(paths.join(workdir, 'metrics.jsonl'))
          if 'loss' in r}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def subprocess_env(devices: int = 1, extra: Optional[dict] = None) -> dict:
  env = dict(os.environ)
  # the parent's own flags too (e.g. a user's --xla_cpu_multi_thread_eigen=false): a child that
  # compiled differently would differ in the last bits from the run it is compared with
  inherited = [f for f in os.environ.get('XLA_FLAGS', '').split()
               if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join([f'--xla_force_host_platform_device_count={devices}', *inherited]
                              + ([] if FAST_COMPILE in inherited else [FAST_COMPILE]))
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  env.update(extra or {})
  return env


def run_py(code: str, devices: int = 8, timeout: int = 600, env: Optional[dict] = None) -> Any:
  """Run `code` in a fresh python with `devices` CPU devices; it must print one JSON line last
  (`emit(obj)` is predefined).  Returns the parsed object."""
  prelude = ('import json, sys\n'
             'sys.path.insert(0, %r)\n'
             'def emit(obj):\n'
             '  print("\\nRESULT " + json.dumps(obj), flush=True)\n') % os.path.join(ROOT, 'tests')
  proc = subprocess.run([sys.executable, '-c', prelude + textwrap.dedent(code)],
                        env=subprocess_env(devices, env), capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    raise AssertionError(f'subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n'
                         f'{proc.stderr[-5000:]}')
  return json.loads(lines[-1][len('RESULT '):])


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Reuse compiled train steps across the many short runs (resume tests re-run the same
  programs); subprocesses share the cache through the environment."""
  import jax
  # one cache for both xdist workers (their base temps share a parent): each compiles the same
  # tiny programs; JAX writes cache entries atomically, so concurrent writers are safe
  root = tmp_path_factory.getbasetemp()
  shared = root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root
  path = str(shared / 'jax_cache')
  os.makedirs(path, exist_ok=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  yield path


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / 'w')


@pytest.fixture(scope='session')
def baseline(tmp_path_factory):
  """One uninterrupted 6-step tiny run on 1 device: (workdir, {step: loss}).  Shared by the
  resume, multi-device and multi-host tests, which must reproduce these losses."""
  from flmjax.training import loop
  wd = str(tmp_path_factory.mktemp('baseline') / 'w')
  summary = loop.train(tiny_config(6, train=dict(eval_batches=1)), wd)
  return wd, read_losses(wd), summary


# The suite's longest tests (whole benchmark smokes and the notebook, minutes each) go first:
# with two xdist workers, one of them left to the end would run alone while the other idles.
LONG_FIRST = ('test_benchmarks_smoke.py', 'test_notebook.py')


def pytest_collection_modifyitems(config, items):
  items.sort(key=lambda item: (item.path.name not in LONG_FIRST,
                              item.name != 'test_loss_prediction_smoke'))  # the longest of all
