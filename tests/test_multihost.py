"""Two CPU processes on 127.0.0.1 (gloo collectives, 2 devices each) train on one global mesh and
reproduce the single-process losses, also across a Ctrl-C on one host, also when a model axis
(tensor) or a batch shard (fsdp) spans both processes, so that both feed the same rows."""

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
  c = tiny_config(int(sys.argv[4]), **json.loads(sys.argv[5]))
  out = loop.train(c, sys.argv[3])
  print('RESULT ' + json.dumps({k: out.get(k) for k in ('stopped_at', 'preempted')}), flush=True)
''' % os.path.join(ROOT, 'tests'))


DATA_FSDP = {'mesh': dict(data=2, fsdp=2, tensor=1)}  # each process holds its own batch shard
# tensor=4 over both processes: no batch shards, both processes feed all 8 rows; grad_accum=2
TENSOR_SPANS = {'model': dict(n_heads=4, head_dim=8), 'mesh': dict(data=1, fsdp=1, tensor=4),
                'optim': dict(grad_accum=2)}
# the batch split over fsdp only, whose shard {device 0, device 2} spans both processes (data is a
# replica axis for the batch): both processes feed all 6 rows.  As main fed 3 rows per process,
# JAX could not split them over the two shards (IndivisibleError).
FSDP_SPANS = {'mesh': dict(data=2, fsdp=2, tensor=1,
                           rules={'batch': ('fsdp',), 'act_batch': ('fsdp',)}),
              'train': dict(global_batch_size=6)}


def _launch(wd: str, steps: int, sections: dict = DATA_FSDP) -> list[subprocess.Popen]:
  addr = f'127.0.0.1:{free_port()}'
  return [subprocess.Popen([sys.executable, '-c', WORKER, addr, str(i), wd, str(steps),
                            json.dumps(sections)],
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
@pytest.mark.parametrize('sections', [DATA_FSDP, TENSOR_SPANS], ids=['data_fsdp', 'tensor_spans'])
def test_ctrl_c_on_one_host_stops_every_host_at_one_step_and_resumes_exactly(tmp_path, sections):
  """SIGINT reaches only process 1 (as when one host's terminal is interrupted); both processes
  must stop at the same step with a complete checkpoint, and the resumed run must reproduce an
  uninterrupted single-process run on the same global batches."""
  from flmjax.training import loop
  steps = 150
  want_wd = str(tmp_path / 'want')
  one_device = {k: v for k, v in sections.items() if k != 'mesh'}
  loop.train(tiny_config(steps, **one_device), want_wd)
  want = read_losses(want_wd)

  wd = str(tmp_path / 'w')
  procs = _launch(wd, steps, sections)
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

  second = _finish(_launch(wd, steps, sections))
  assert second[0]['stopped_at'] is None  # ran to the end
  got = read_losses(wd)
  assert sorted(got) == sorted(want)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_fsdp_shard_spanning_both_processes_matches_single_process(tmp_path):
  from flmjax.training import loop
  one_device = {k: v for k, v in FSDP_SPANS.items() if k != 'mesh'}
  want_wd = str(tmp_path / 'want')
  loop.train(tiny_config(4, **one_device), want_wd)
  wd = str(tmp_path / 'w')
  assert _finish(_launch(wd, 4, FSDP_SPANS))[0]['stopped_at'] is None
  assert read_losses(wd) == pytest.approx(read_losses(want_wd), rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_batch_that_does_not_split_over_the_shards_is_refused_in_one_line(tmp_path):
  """6 rows over fsdp=4 spanning both processes: `flmjax train` on each host stops before any
  step with one line naming the field and the mesh axes."""
  addr = f'127.0.0.1:{free_port()}'
  wd = str(tmp_path / 'w')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'flmjax.cli', 'train', '--config',
       os.path.join(ROOT, 'experiments', 'tiny.py'), '--workdir', wd,
       '--config.train.global_batch_size=6', '--config.mesh.data=1', '--config.mesh.fsdp=4',
       '--config.mesh.tensor=1', '--coordinator_address', addr, '--num_processes', '2',
       '--process_id', str(i)], env=subprocess_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, cwd=ROOT) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert 'train.global_batch_size=6' in last and 'data×fsdp = 4' in last, err[-3000:]
  assert not os.path.exists(os.path.join(wd, 'metrics.jsonl'))


def test_synthetic_iterator_yields_the_given_rows_of_the_global_stream():
  """What a process whose devices hold rows {0, 1, 4, 5} of 8 gets: exactly those rows of the
  global batches, and the same (global) resume state as the whole batch's iterator."""
  from flmjax import synthetic_data
  cfg = tiny_config().data
  whole = synthetic_data.make_synthetic_iterator(cfg, seq_len=16, global_batch_size=8)
  part = synthetic_data.make_synthetic_iterator(cfg, seq_len=16, global_batch_size=8,
                                                rows=[0, 1, 4, 5])
  for _ in range(2):
    w, p = next(whole), next(part)
    for k in w:
      assert (p[k] == w[k][[0, 1, 4, 5]]).all(), k
  assert part.get_state() == whole.get_state()
