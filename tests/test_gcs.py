"""Runs on object storage (`gs://`), against a real GCS server (fake-gcs-server, `gcs_server`):
a growth run across stages, kill -9 mid-save and SIGTERM with exact resumes, the readers
(sample, grow, plot, eval) on gs://, the one-writer lock by generation preconditions, a
flipped object refused by every reader, the faults that must end in one line, the data cache
in the bucket, and sweep / plan-growth rooted in it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, read_losses, subprocess_env, tiny_config, tiny_stages
from gcs_server import Front, TransientError, gcs  # noqa: F401  (the fixture)
from test_faults import _finish, _spawn, _wait_for
from flmjax import cli
from flmjax.storage import checkpoint, paths
from flmjax.storage.metrics import read_metrics
from flmjax.storage.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError
from flmjax.training import loop

# The command of BUILD.md › "Running the paper's configuration on a pod" (object storage), with
# the bucket the server made: experiments/tiny_growth.py's three stages, shrunk to a few steps.
POD_COMMAND = (
    'flmjax train --config experiments/tiny_growth.py --workdir gs://BUCKET/tiny_growth '
    '--config.data.source=synthetic --config.train.seq_len=32 '
    '--config.train.global_batch_size=4 --config.train.log_every=1 --config.train.eval_every=2 '
    '--config.train.eval_batches=1 --config.optim.warmup_steps=1 '
    '--config.stages.0.warmup_steps=1 --config.stages.0.tokens=512 '
    '--config.stages.1.tokens=256 --config.stages.2.tokens=256 '
    '--config.stages.1.growth.ramp_steps=1 --config.stages.2.growth.ramp_steps=1')


def _values(records: list[dict]) -> list[dict]:
  """Every logged value but the clock's (tokens_per_sec, wall times)."""
  return [{k: v for k, v in r.items() if not re.search(r'per_sec|wall|time', k)}
          for r in records]


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
  capsys.readouterr()  # only this command's output
  rc = cli.main(argv)
  out, err = capsys.readouterr()
  return rc, out, err


@pytest.fixture(scope='module')
def bucket(gcs):  # noqa: F811
  return gcs.bucket('flmjax-test')


@pytest.fixture(scope='module')
def pod_run(gcs, bucket):  # noqa: F811
  """The documented command, run as a user would (the console entry point, a subprocess)."""
  argv = shlex.split(POD_COMMAND.replace('gs://BUCKET', bucket))
  proc = subprocess.run([sys.executable, '-m', 'flmjax.cli', *argv[1:]], cwd=ROOT,
                        env=subprocess_env(1), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return f'{bucket}/tiny_growth'


@pytest.mark.slow
def test_pod_command_grows_across_stages_on_gs_and_every_reader_reads_it(pod_run, bucket,
                                                                          tmp_path, capsys):
  wd = pod_run
  assert sorted(checkpoint.stage_dirs(wd)) == [0, 1, 2]
  newest = checkpoint.latest(wd)
  assert newest is not None and newest[0] == 2
  step_dir = paths.join(checkpoint.stage_dir(wd, 2), str(newest[1]))
  assert checkpoint.verify_step(step_dir) is True  # manifest = the commit marker, written last
  records = read_metrics(paths.join(wd, 'metrics.jsonl'))
  assert {r.get('stage') for r in records if 'loss' in r} == {0, 1, 2}
  assert any(n.startswith('events') for n in paths.listdir(paths.join(wd, 'tb')))
  assert paths.exists(paths.join(wd, 'summary.json'))
  assert not paths.exists(paths.join(wd, LOCK_NAME))  # released at the end

  rc, out, err = _cli(['sample', '--checkpoint', wd, '--prompt_ids', '1,2,3',
                       '--max_new_tokens', '4'], capsys)
  assert rc == 0, err
  rc, out, err = _cli(['plot', '--workdir', wd], capsys)
  assert rc == 0, err
  assert paths.exists(paths.join(wd, 'val_loss_vs_flops.png'))
  grown = f'{bucket}/regrown'
  mid = paths.join(checkpoint.stage_dir(wd, 0), str(checkpoint.steps_in(
      checkpoint.stage_dir(wd, 0))[-1]))
  rc, out, err = _cli(['grow', '--checkpoint', mid, '--to', 'experiments/tiny_growth.py:mid',
                       '--out', grown, '--verify', '--verify_len', '16'], capsys)
  assert rc == 0, err
  assert checkpoint.latest(grown) is not None and checkpoint.latest(grown)[0] == 1


def _grown_config():
  return tiny_config(stages=tiny_stages((3, 4), ramp_steps=2), train=dict(ckpt_every=1, keep=2))


@pytest.mark.slow
def test_kill_9_mid_save_and_sigterm_on_gs_resume_to_the_local_run_exactly(gcs, bucket,  # noqa: F811
                                                                           tmp_path):
  local = str(tmp_path / 'local')
  loop.train(_grown_config(), local)
  want = _values(read_metrics(os.path.join(local, 'metrics.jsonl')))
  wd = f'{bucket}/resume'
  body = '''
    c = tiny_config(stages=tiny_stages((3, 4), ramp_steps=2), train=dict(ckpt_every=1, keep=2))
    loop.train(c, sys.argv[1])
  '''
  proc = _spawn(body, wd)  # killed while orbax still writes step 2 into the bucket
  _wait_for(proc, lambda l: l == 'SAVE stage_0 2')
  proc.kill()
  proc.wait()
  found = checkpoint.latest(wd)  # a committed step (its manifest there) verifies
  assert found is not None and found <= (0, 2), found
  assert checkpoint.verify_step(paths.join(checkpoint.stage_dir(wd, found[0]),
                                           str(found[1]))) is True
  proc = _spawn(body, wd)  # the stale lock (a dead pid) is taken over; SIGTERM in stage 1
  seen = _wait_for(proc, lambda l: l.startswith('SAVE stage_1') and int(l.split()[-1]) >= 4)
  assert any('taking it over' in l for l in seen), seen
  proc.send_signal(signal.SIGTERM)
  out, err = _finish(proc)
  assert proc.returncode == 0 and 'preempted' in out, err[-3000:]
  # the rest of the run meets a flaky server: every 4th write (objects, checkpoint chunks,
  # the lock's heartbeat, metrics) is answered 503 once; the clients retry, nothing is lost
  failed = []

  def every_4th_write_fails(method: str, path: str) -> None:
    if method in ('POST', 'PUT', 'PATCH', 'DELETE'):
      failed.append(path)
      if len(failed) % 4 == 0:
        raise TransientError

  with Front(forward_to=gcs.url, before=every_4th_write_fails) as front:
    proc = _spawn(body, wd, env={'STORAGE_EMULATOR_HOST': front.url,
                                 'TENSORSTORE_GCS_HTTP_URL': front.url})
    out, err = _finish(proc)
  assert proc.returncode == 0, err[-3000:]
  answered_503 = failed[3::4]
  assert any('stage_' in p for p in answered_503), answered_503  # some fell inside the saves
  assert _values(read_metrics(paths.join(wd, 'metrics.jsonl'))) == want
  assert read_losses(wd) == read_losses(local)


def test_two_writers_are_refused_and_a_stale_lock_is_taken_over(gcs, bucket):  # noqa: F811
  wd = f'{bucket}/locked'
  first = WorkdirLock(wd, 'first').acquire()
  with pytest.raises(WorkdirLockedError, match=f'in use by pid {os.getpid()}'):
    WorkdirLock(wd, 'second').acquire()
  first.release()
  assert not paths.exists(paths.join(wd, LOCK_NAME))
  lock = paths.join(wd, LOCK_NAME)
  elsewhere = {'pid': 1, 'host': 'another-host', 'started': '1', 'since': 'then', 'what': 'x'}
  paths.write_atomic(lock, json.dumps({**elsewhere, 'heartbeat': time.time()}))
  with pytest.raises(WorkdirLockedError, match='another-host'):  # a live heartbeat
    WorkdirLock(wd).acquire()
  paths.write_atomic(lock, json.dumps({**elsewhere, 'heartbeat': time.time() - 3600}))
  said = []
  taken = WorkdirLock(wd).acquire(log=said.append)  # its heartbeat stopped an hour ago
  assert 'taking it over' in said[0]
  assert json.loads(paths.read_text(lock))['pid'] == os.getpid()
  taken.release()
  # the generation precondition, raw: of two create-only writes exactly one succeeds
  paths.create_exclusive(paths.join(wd, 'once'), b'a')
  with pytest.raises(FileExistsError):
    paths.create_exclusive(paths.join(wd, 'once'), b'b')
  assert paths.read_bytes(paths.join(wd, 'once')) == b'a'


def _flip(path: str) -> None:
  data = bytearray(paths.read_bytes(path))
  data[len(data) // 2] ^= 0xFF
  paths.write_atomic(path, bytes(data))


@pytest.mark.slow
def test_a_flipped_object_is_refused_by_every_reader(gcs, bucket, tmp_path, capsys):  # noqa: F811
  wd = f'{bucket}/flipped'
  loop.train(tiny_config(4, train=dict(ckpt_every=2)), wd)
  step_dir = paths.join(checkpoint.stage_dir(wd, 0), '4')
  files = json.loads(paths.read_text(paths.join(step_dir, checkpoint.MANIFEST)))['files']
  biggest = max(files, key=lambda f: files[f]['size'])
  _flip(paths.join(step_dir, biggest))
  with pytest.raises(checkpoint.CheckpointError, match='CRC32 .* bytes changed'):
    checkpoint.verify_step(step_dir)
  with pytest.raises(checkpoint.CheckpointError, match='bytes changed'):
    checkpoint.load_params(wd)
  rc, _, err = _cli(['sample', '--checkpoint', wd, '--prompt_ids', '1', '--max_new_tokens',
                     '2'], capsys)
  assert rc == 1 and 'bytes changed' in err and len(err.strip().splitlines()) == 1, err
  rc, _, err = _cli(['grow', '--checkpoint', wd, '--to', 'experiments/tiny_growth.py:mid',
                     '--out', f'{bucket}/flipped-grown'], capsys)
  assert rc == 1 and 'bytes changed' in err, err
  assert checkpoint.latest(f'{bucket}/flipped-grown') is None
  loop.train(tiny_config(4, train=dict(ckpt_every=2)), wd)  # the trainer moves it aside
  assert paths.exists(paths.join(checkpoint.stage_dir(wd, 0), 'corrupt-4', 'QUARANTINED.txt'))
  assert checkpoint.latest(wd) == (0, 4)  # retrained from step 2


def _closed_port() -> str:
  """127.0.0.1:PORT where nothing listens (a refused connection: fails at once)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return f'127.0.0.1:{s.getsockname()[1]}'


@pytest.mark.parametrize('workdir, env, message', [
    ('s3://bucket/x', {}, 'unsupported storage scheme s3://'),
    ('gs://no-such-bucket-here/x', {}, 'no-such-bucket-here'),
    ('gs://flmjax-test/x', {'STORAGE_EMULATOR_HOST': 'http://127.0.0.1:9',
                            'TENSORSTORE_GCS_HTTP_URL': 'http://127.0.0.1:9'}, 'Connect call failed'),
    # every request answered with GCS's 403 (a real HTTP server: fake-gcs-server checks no
    # permissions), through the real gcsfs client
    ('gs://flmjax-test/x', 'forbidden', 'gs://flmjax-test/x/.flmjax.lock: permission denied'),
    # google-auth's own lookup finds nothing: no emulator, no key file, no gcloud config under
    # an empty HOME, and the metadata server at a closed port (GCE_METADATA_HOST / _IP)
    ('gs://flmjax-test/x', 'no credentials', 'gs://flmjax-test/x/.flmjax.lock: no Google Cloud '
                                             'credentials found'),
])
def test_storage_faults_end_in_one_line_in_bounded_time(gcs, bucket, workdir, env,  # noqa: F811
                                                        message, tmp_path):
  with contextlib.ExitStack() as stack:
    unset = ()
    if env == 'forbidden':
      url = stack.enter_context(Front()).url
      env = {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url}
    elif env == 'no credentials':
      env = {'HOME': str(tmp_path), 'GCE_METADATA_HOST': _closed_port(),
             'GCE_METADATA_IP': _closed_port()}
      unset = ('STORAGE_EMULATOR_HOST', 'TENSORSTORE_GCS_HTTP_URL',
               'GOOGLE_AUTH_TOKEN_FOR_TESTING', 'GOOGLE_APPLICATION_CREDENTIALS', 'CLOUDSDK_CONFIG')
    env = {k: v for k, v in subprocess_env(1, env).items() if k not in unset}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-m', 'flmjax.cli', 'train', '--config', 'experiments/tiny.py',
         '--workdir', workdir, '--config.train.steps=2', '--config.optim.warmup_steps=1',
         '--config.data.source=synthetic'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and message in err[0] and 'Traceback' not in proc.stderr, proc.stderr
  if 'permission denied' in message:  # and what to check
    assert 'objects in bucket flmjax-test' in err[0], err[0]
  if 'credentials' in message:
    assert 'gcloud auth application-default login' in err[0], err[0]
  assert time.monotonic() - t0 < 120


_OLD_HOLDER = """
import sys
from flmjax.storage.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1], 'old holder').acquire()
print('HELD', flush=True)
sys.stdin.readline()
lock.release()
"""


def test_a_lock_taken_over_is_never_removed_by_its_old_holder(gcs, bucket):  # noqa: F811
  """A holder judged stale (frozen past STALE_AFTER_S) wakes up and releases: the run that took
  the lock over meanwhile keeps it.  The old holder talks to the server through a `Front`, and
  the takeover lands just before its release's first write reaches the server: between any
  check and any delete the old holder could make."""
  lock = paths.join(f'{bucket}/taken-over', LOCK_NAME)
  taker = {'pid': 1, 'host': 'another-host', 'what': 'taker', 'heartbeat': time.time()}
  armed, taken = threading.Event(), []

  def take_over_first(method: str, path: str) -> None:
    if armed.is_set() and method != 'GET' and not taken:
      taken.append(paths.put_if_generation(lock, json.dumps(taker).encode(),
                                           paths.generation(lock)))

  with Front(forward_to=gcs.url, before=take_over_first) as front:
    proc = subprocess.Popen([sys.executable, '-c', _OLD_HOLDER, f'{bucket}/taken-over'],
                            cwd=ROOT, env=subprocess_env(1, {'STORAGE_EMULATOR_HOST': front.url}),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'HELD', proc.stderr.read()
    armed.set()
    _, err = proc.communicate('\n', timeout=60)
  assert proc.returncode == 0 and taken, err
  assert json.loads(paths.read_text(lock))['what'] == 'taker'  # not deleted, not overwritten
  assert 'held by another run now' in err, err
  # with nobody interfering, the release leaves no lock behind
  WorkdirLock(f'{bucket}/taken-over-2').acquire().release()
  assert not paths.exists(paths.join(f'{bucket}/taken-over-2', LOCK_NAME))


@pytest.mark.slow
def test_two_processes_train_with_their_workdir_on_gs(gcs, bucket, baseline):  # noqa: F811
  """jax.distributed over gloo, two processes, no shared local folder: the bucket is the
  workdir (orbax writes each process's shards, process 0 the lock, manifest and metrics)."""
  from test_multihost import _finish as finish_all, _launch
  _, want, _ = baseline
  wd = f'{bucket}/two-processes'
  result = finish_all(_launch(wd, 6))
  assert result[0]['stopped_at'] is None
  assert read_losses(wd) == pytest.approx(want, rel=1e-5, abs=1e-5)
  assert checkpoint.verify_step(paths.join(checkpoint.stage_dir(wd, 0), '6')) is True


@pytest.mark.slow
def test_server_gone_mid_run_stops_in_bounded_time_and_the_last_checkpoint_resumes(
    gcs, bucket, baseline):  # noqa: F811
  """The server stops after step 2's checkpoint: the run ends (bounded by
  faults.stop_timeout_s: the next save cannot finish) and writes nothing partial that counts;
  with the server back, the same command resumes to the uninterrupted losses."""
  _, want, _ = baseline
  wd = f'{bucket}/server-gone'
  body = '''
    c = tiny_config(6, train=dict(eval_batches=1, ckpt_every=2))
    c.faults.stop_timeout_s = 20
    try:
      loop.train(c, sys.argv[1])
    except Exception as e:  # what `flmjax train` (cli.main) prints
      from flmjax import cli
      print('flmjax train: ' + cli.describe_error(e), file=sys.stderr)
      sys.exit(1)
  '''
  proc = _spawn(body, wd, env={'FAULT_TEST_DELAY': '3'})  # 3 s a batch: time to aim
  _wait_for(proc, lambda l: l == 'SAVE stage_0 2')
  deadline = time.monotonic() + 60
  while checkpoint.latest(wd) != (0, 2) and time.monotonic() < deadline:
    time.sleep(0.2)  # step 2's save finishes and its manifest is written
  found = checkpoint.latest(wd)
  gcs.stop()
  t0 = time.monotonic()
  try:
    out, err = _finish(proc, timeout=240)
  finally:
    gcs.start()
  assert proc.returncode != 0 and time.monotonic() - t0 < 200, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  assert checkpoint.latest(wd) == found == (0, 2)
  cfg = tiny_config(6, train=dict(eval_batches=1, ckpt_every=2))
  loop.train(cfg, wd)
  assert read_losses(wd) == want


_COMPILE = """
import os, jax
from flmjax.storage import paths  # what flmjax.cli imports before any compile
print(int(jax.jit(lambda x: x * 2 + 1)(3)))
"""


def test_jax_compilation_cache_on_gs(gcs, bucket):  # noqa: F811
  """JAX's persistent compilation cache writes through etils.epath, so a gs:// cache dir is
  shared by the hosts of a pod (epath on gcsfs, as storage.paths sets it)."""
  cache = f'{bucket}/jax-cache'
  proc = subprocess.run([sys.executable, '-c', _COMPILE], cwd=ROOT, capture_output=True,
                        text=True, timeout=120,
                        env=subprocess_env(1, {'JAX_COMPILATION_CACHE_DIR': cache}))
  assert proc.returncode == 0 and proc.stdout.split() == ['7'], proc.stderr[-3000:]
  assert any(n.endswith('-cache') for n in paths.walk_files(cache)), paths.walk_files(cache)


def test_eval_report_goes_to_gs_and_a_bad_output_is_named_first(gcs, bucket):  # noqa: F811
  from flmjax.commands.eval import output_problem
  from flmjax.evaluation import report
  assert output_problem(f'{bucket}/reports/r.json') is None
  report.write_json(f'{bucket}/reports/r.json', {'tasks': {'counting': 0.5}})
  assert json.loads(paths.read_text(f'{bucket}/reports/r.json')) == {'tasks': {'counting': 0.5}}
  assert 'no-such-bucket-here' in output_problem('gs://no-such-bucket-here/r.json')


_READ_BACK = '''
import os, sys
import numpy as np
import flmjax.data as D
from flmjax.data import vocab
from test_data import make_cfg
cfg = make_cfg(sys.argv[1], {'en': sys.argv[4] + '/en.txt', 'zh': sys.argv[4] + '/zh.jsonl'})
cfg.cache_dir = sys.argv[2]
vocab.progress = lambda m: print('BUILT', m, file=sys.stderr)  # a rebuild would say so
it = D.make_train_iterator(cfg, seq_len=32, global_batch_size=4)
np.savez(sys.argv[3], **{f'{i}:{k}': v for i in range(4) for k, v in next(it).items()})
'''


def test_data_cache_on_gs_is_built_once_and_read_back_by_another_process(gcs, bucket,  # noqa: F811
                                                                          tmp_path):
  """data.cache_dir and the corpus files (data.*.files) on gs://: the vocabulary and the token
  store are built into the bucket from the corpus objects; a second process with an empty local
  temp folder (no mirror of the vocabulary) reads both back, builds nothing, and feeds the same
  batches as local files with a local cache_dir."""
  import numpy as np
  import flmjax.data as D
  from test_data import make_cfg, write_corpus
  files = write_corpus(str(tmp_path), n_docs=120)
  corpus = f'{bucket}/corpus'
  for f in files.values():
    paths.copy(f, paths.join(corpus, os.path.basename(f)))
  cache = f'{bucket}/data-cache'
  local = D.make_train_iterator(make_cfg(str(tmp_path), files), seq_len=32, global_batch_size=4)
  want = [next(local) for _ in range(4)]
  on_gs = {k: paths.join(corpus, os.path.basename(f)) for k, f in files.items()}
  D.vocab_size(make_cfg(str(tmp_path), on_gs, cache_dir=cache))  # the vocabulary, into the bucket
  env = {'PYTHONPATH': os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'),
                                        os.environ.get('PYTHONPATH', '')])}
  os.makedirs(tmp_path / 'tmp1')
  proc = subprocess.run([sys.executable, '-c', _READ_BACK, str(tmp_path), cache,
                         str(tmp_path / 'first.npz'), corpus], cwd=ROOT, capture_output=True, text=True,
                        env=subprocess_env(1, {**env, 'TMPDIR': str(tmp_path / 'tmp1')}), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'token store built' in proc.stderr, proc.stderr[-3000:]  # the store, into the bucket
  assert 'vocabulary trained' not in proc.stderr
  names = paths.walk_files(cache)
  assert any(n.startswith('vocab/') and n.endswith('spm.model') for n in names), names
  assert any(n.startswith('stores/') and n.endswith('manifest.json') for n in names), names
  proc = subprocess.run([sys.executable, '-c', _READ_BACK, str(tmp_path), cache,
                         str(tmp_path / 'second.npz'), corpus], cwd=ROOT, capture_output=True, text=True,
                        env=subprocess_env(1, {**env, 'TMPDIR': str(tmp_path / 'tmp2')}), timeout=300)
  assert proc.returncode == 0 and 'BUILT' not in proc.stderr, proc.stderr[-3000:]
  for got in (np.load(tmp_path / 'first.npz'), np.load(tmp_path / 'second.npz')):
    for i, batch in enumerate(want):
      for k, v in batch.items():
        np.testing.assert_array_equal(got[f'{i}:{k}'], v, err_msg=f'batch {i} {k}')


@pytest.mark.slow
def test_plan_growth_and_sweep_with_their_root_on_gs(gcs, bucket, tmp_path, capsys):  # noqa: F811
  """Drivers that lay out many runs under one root: plan-growth's prefix run, its branches
  (copied object by object, the manifest last) and the written schedule; a sweep's runs, its
  shard results and the merge; every file in the bucket, read back by a second call."""
  from test_plan_growth import _tiny_experiment
  from flmjax import experiment
  from flmjax.scaling import growth_planner as gp
  exp = _tiny_experiment(tmp_path)
  base = gp.read_base(experiment.load_config(exp))
  work = f'{bucket}/plan'
  argv = ['plan-growth', '--config', exp, '--workdir', work, '--candidates', 'msg@0.25,msg@0.5',
          '--budget_flops', str(gp.flops_per_step(base, base.final) * 12), '--lag', '0.125',
          '--lr_after', 'none']
  rc, out, err = _cli(argv, capsys)
  assert rc == 0, err
  assert 'branched from' in out, out
  result = json.loads(paths.read_text(paths.join(work, 'plan.json')))
  assert result['complete'] and result['chosen_schedule'] == paths.join(work, 'chosen_schedule.py')
  lag = next(r for r in result['rows'] if r['share'] == 0.25)['workdir']
  assert lag.startswith(work + '/')
  branched = checkpoint.stage_dir(lag, 0)  # the prefix's step, copied into the lag run
  assert [checkpoint.verify_step(paths.join(branched, str(s))) for s in
          checkpoint.steps_in(branched)] == [True]
  chosen = experiment.load_config(result['chosen_schedule'])  # a gs:// experiment file
  assert len(chosen.stages) == 2
  summary = paths.join(lag, 'summary.json')
  before = paths.generation(summary)
  rc, out2, err = _cli(argv, capsys)  # every run is read back from the bucket, none retrained
  assert rc == 0 and paths.generation(summary) == before, err

  sweep = f'{bucket}/sweep'
  base_argv = ['sweep', '--config', os.path.join(ROOT, 'experiments', 'mup_sweep.py:tiny'),
               '--workdir', sweep, '--config.sweep.widths=[32]',
               '--config.experiment.train.steps=2', '--config.sweep.train_target=False']
  rc, out, err = _cli(base_argv, capsys)
  assert rc == 0 and 'best at width 32' in out, err
  assert sorted(n for n in paths.listdir(sweep) if n.endswith('.json')) == [
      'results_shard0of1.json', 'sweep.json']
  rows = json.loads(paths.read_text(paths.join(sweep, 'sweep.json')))['rows']
  assert len(rows) == 2 and all(r['workdir'].startswith(sweep + '/') for r in rows)
  rc, out, err = _cli([*base_argv, '--merge_only'], capsys)
  assert rc == 0 and json.loads(paths.read_text(paths.join(sweep, 'sweep.json')))['rows'] == rows


@pytest.mark.slow
def test_eval_reads_a_text_model_and_its_vocabulary_from_gs(gcs, bucket, tmp_path, capsys):  # noqa: F811
  """`flmjax eval --checkpoint gs://...` end to end: a tiny bilingual model trained with its
  workdir and its data cache in the bucket; eval finds the tokenizer through the saved config
  (the vocabulary object in the bucket) and scores a generated IQ task."""
  from test_data import write_corpus
  files = write_corpus(str(tmp_path), n_docs=120)
  c = tiny_config(2)
  c.model.update(vocab_size=512, max_len=128)
  c.data.source = 'bilingual'
  c.data.cache_dir = f'{bucket}/eval-cache'
  c.data.vocab.size = 400
  c.data.en.kind, c.data.en.files = 'files', [files['en']]
  c.data.zh.kind, c.data.zh.files, c.data.zh.field = 'files', [files['zh']], 'content'
  wd = f'{bucket}/text-model'
  loop.train(c, wd)
  assert any(n.startswith('vocab/') for n in paths.walk_files(f'{bucket}/eval-cache'))
  rc, out, err = _cli(['eval', '--checkpoint', wd, '--suite', 'iq', '--tasks', 'counting',
                       '--n_items', '2', '--batch_size', '2'], capsys)
  assert rc == 0, err
  assert 'counting' in out, out


@pytest.mark.slow
def test_predict_loss_with_its_root_on_gs(gcs, bucket, capsys):  # noqa: F811
  """predict-loss's proxies, prediction.json and figure in the bucket; a second call trains
  nothing (every proxy's summary read back) and predicts the same."""
  pred = f'{bucket}/predict'
  argv = ['predict-loss', '--config', os.path.join(ROOT, 'experiments', 'mup_proxy.py:tiny'),
          '--workdir', pred, '--config.experiment.train.steps=4']
  rc, out, err = _cli(argv, capsys)
  assert rc == 0, err
  first = json.loads(paths.read_text(paths.join(pred, 'prediction.json')))
  assert [r['width'] for r in first['proxies']] == [16, 32, 48]
  assert all(r['workdir'].startswith(pred + '/') for r in first['proxies'])
  assert paths.getsize(paths.join(pred, 'loss_prediction.png')) > 10_000
  summary = paths.join(first['proxies'][0]['workdir'], 'summary.json')
  before = paths.generation(summary)
  rc, out, err = _cli(argv, capsys)
  assert rc == 0 and paths.generation(summary) == before, err
  assert json.loads(paths.read_text(paths.join(pred, 'prediction.json')))['predicted_N'] == \
      first['predicted_N']
