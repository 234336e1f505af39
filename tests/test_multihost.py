"""Two CPU processes on 127.0.0.1 (gloo collectives, 2 devices each) train on one global mesh and
reproduce the single-process losses, also across a Ctrl-C on one host."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, free_port, read_losses, subprocess_env, tiny_config


WORKER = textwrap.dedent('''
  import json, sys
  sys.path.insert(0, %r)
  from flmjax import distributed
  distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
  import jax
  assert jax.device_count() == 4 and jax.local_device_count() == 2
  from conftest import tiny_config
  from flmjax.training import loop
  c = tiny_config(int(sys.argv[4]))
  c.mesh.update(data=2, fsdp=2, tensor=1)
  out = loop.train(c, sys.argv[3])
  print('RESULT ' + json.dumps({k: out.get(k) for k in ('stopped_at', 'preempted')}), flush=True)
''' % os.path.join(ROOT, 'tests'))


def _launch(wd: str, steps: int) -> list[subprocess.Popen]:
  addr = f'127.0.0.1:{free_port()}'
  return [subprocess.Popen([sys.executable, '-c', WORKER, addr, str(i), wd, str(steps)],
                           env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT) for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: int = 480) -> list[dict]:
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  results = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
    line = [l for l in out.splitlines() if l.startswith('RESULT ')][-1]
    results.append(json.loads(line[len('RESULT '):]))
  return results


@pytest.mark.slow
def test_two_processes_match_single_process_losses(baseline, tmp_path):
  _, want, _ = baseline
  wd = str(tmp_path / 'w')
  result = _finish(_launch(wd, 6))
  assert result[0]['stopped_at'] is None
  assert read_losses(wd) == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_ctrl_c_on_one_host_stops_every_host_at_one_step_and_resumes_exactly(tmp_path):
  """SIGINT reaches only process 1 (as when one host's terminal is interrupted); both processes
  must stop at the same step with a complete checkpoint, and the resumed run must reproduce an
  uninterrupted single-process run."""
  from flmjax.training import loop
  steps = 150
  want_wd = str(tmp_path / 'want')
  loop.train(tiny_config(steps), want_wd)
  want = read_losses(want_wd)

  wd = str(tmp_path / 'w')
  procs = _launch(wd, steps)
  metrics = os.path.join(wd, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and procs[1].poll() is None:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGINT)
  first = _finish(procs)
  stop = first[0]['stopped_at']
  assert stop is not None and first[1]['stopped_at'] == stop and 3 <= stop < steps, first
  assert first[1]['preempted'] == 'SIGINT' and first[0]['preempted'] == 'SIGTERM'
  assert os.path.isdir(os.path.join(wd, 'stage_0', str(stop)))

  second = _finish(_launch(wd, steps))
  assert second[0]['stopped_at'] is None  # ran to the end
  got = read_losses(wd)
  assert sorted(got) == sorted(want)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
