"""Fault injection: preemption signals, kill -9 (also mid-save and right after growth), damaged
checkpoints, NaN/Inf steps and loss spikes, a dead peer process, an unwritable or full workdir.

Subprocess tests slow the data iterator (a test-side wrapper, not a trainer feature) so a signal
or kill lands at a known point; every resumed run must reproduce the uninterrupted losses."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import traceback

import jax
import numpy as np
import pytest

from conftest import ROOT, free_port, read_losses, subprocess_env, tiny_config, tiny_stages
from flmjax import experiment, optimizer, plan
from flmjax.storage import checkpoint, metrics
from flmjax.training import batches, faults, loop, runtime
from flmjax.config import ConfigError
from flmjax.storage.metrics import read_metrics

# Child prelude: batches are slowed and announced, saves announced, so the parent can aim.
CHILD = textwrap.dedent('''
  import json, os, sys, time
  sys.path.insert(0, %r)
  from conftest import tiny_config, tiny_stages
  from flmjax import plan
  from flmjax.storage import checkpoint
  from flmjax.training import batches, loop, runtime
  DELAY = float(os.environ.get('FAULT_TEST_DELAY', '0.3'))
  make = batches.make_train_iterator
  class Slow:
    def __init__(self, it): self.it = it
    def __iter__(self): return self
    def __next__(self):
      time.sleep(DELAY)
      b = next(self.it)
      print('BATCH', flush=True)
      return b
    def get_state(self): return self.it.get_state()
    def set_state(self, s): self.it.set_state(s)
  batches.make_train_iterator = lambda *a, **k: Slow(make(*a, **k))
  save = checkpoint.StageCheckpointer.save
  def loud_save(self, step, *a, **k):
    save(self, step, *a, **k)  # returns while orbax still writes in the background
    print('SAVE', os.path.basename(self.directory), step, flush=True)
  checkpoint.StageCheckpointer.save = loud_save
''' % os.path.join(ROOT, 'tests'))


def _spawn(body: str, *args: str, devices: int = 1, env=None) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-u', '-c', CHILD + textwrap.dedent(body), *args],
                          env=subprocess_env(devices, env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for(proc: subprocess.Popen, predicate, timeout: float = 300) -> list[str]:
  """Read the child's stdout until a line satisfies `predicate`; returns the lines read."""
  lines, t0 = [], time.time()
  for line in proc.stdout:
    lines.append(line.strip())
    if predicate(line.strip()):
      return lines
    assert time.time() - t0 < timeout, lines[-20:]
  raise AssertionError(f'child ended before the expected line (rc {proc.wait()}):\n'
                       + '\n'.join(lines[-20:]) + proc.stderr.read()[-4000:])


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
  try:
    out, err = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  return out, err


def _newest_is_complete(wd: str) -> tuple[int, int]:
  """The checkpoint a restart would pick is complete and protected: it carries its manifest
  (committed with the step, so also after a kill -9) and verifies against it."""
  found = checkpoint.latest(wd)
  assert found is not None
  assert checkpoint.verify_step(
      os.path.join(checkpoint.stage_dir(wd, found[0]), str(found[1]))) is True, 'no manifest'
  return found


# ---- preemption ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_checkpoints_exits_0_and_resume_matches_uninterrupted(baseline, workdir):
  _, want, _ = baseline
  proc = _spawn('''
    r = loop.train(tiny_config(6), sys.argv[1])
    print('RESULT ' + json.dumps(r), flush=True)
  ''', workdir)
  batches = []
  _wait_for(proc, lambda l: l == 'BATCH' and (batches.append(l) or len(batches) == 3))
  proc.send_signal(signal.SIGTERM)
  out, err = _finish(proc)
  assert proc.returncode == 0, err[-3000:]
  result = json.loads([l for l in out.splitlines() if l.startswith('RESULT ')][-1][7:])
  assert result['preempted'] == 'SIGTERM' and 3 <= result['stopped_at'] < 6, result
  assert 'stopping after this step with a checkpoint' in err
  stopped = result['stopped_at']
  assert _newest_is_complete(workdir) == (0, stopped)
  assert os.path.exists(os.path.join(workdir, 'stage_0', str(stopped), checkpoint.MANIFEST))
  loop.train(tiny_config(6), workdir)  # restarting the same command resumes
  assert read_losses(workdir) == want


def test_sigint_in_process_stops_after_the_step_and_restores_handlers(baseline, workdir,
                                                                       monkeypatch):
  _, want, _ = baseline
  make, seen = batches.make_train_iterator, []

  def interrupting(*a, **k):
    it = make(*a, **k)
    nxt = it.__next__
    def interrupt_at_3():
      seen.append(1)
      if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGINT)  # arrives while batch 3 is being prepared
      return nxt()
    it.__class__ = type('Interrupting', (type(it),), {'__next__': lambda self: interrupt_at_3()})
    return it

  monkeypatch.setattr(batches, 'make_train_iterator', interrupting)
  before = signal.getsignal(signal.SIGINT)
  assert loop.train(tiny_config(6), workdir) == {'stopped_at': 3, 'preempted': 'SIGINT'}
  assert signal.getsignal(signal.SIGINT) is before
  assert _newest_is_complete(workdir) == (0, 3)
  monkeypatch.setattr(batches, 'make_train_iterator', make)
  loop.train(tiny_config(6), workdir)
  assert read_losses(workdir) == want


# ---- kill -9 -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def grown_baseline(tmp_path_factory):
  cfg = tiny_config(stages=tiny_stages((3, 4), ramp_steps=2), train=dict(ckpt_every=1, keep=2))
  wd = str(tmp_path_factory.mktemp('grown') / 'w')
  loop.train(cfg, wd)
  return cfg, read_losses(wd)


@pytest.mark.slow
def test_kill_9_mid_save_and_after_growth_resumes_exactly(grown_baseline, workdir):
  cfg, want = grown_baseline
  rng = random.Random(8)
  body = '''
    c = tiny_config(stages=tiny_stages((3, 4), ramp_steps=2), train=dict(ckpt_every=1, keep=2))
    loop.train(c, sys.argv[1])
  '''
  kill_points = [
      lambda l: l == 'SAVE stage_0 2',   # async save of step 2 still being written
      lambda l: l == 'SAVE stage_1 3',   # right after the growth checkpoint
      lambda l: l.startswith('SAVE stage_1') and int(l.split()[-1]) >= 5,
  ]
  kills, mid_save = [], []
  for i, point in enumerate(kill_points):
    proc = _spawn(body, workdir)
    _wait_for(proc, point)
    time.sleep(rng.uniform(0.0, 0.05) if i else 0.0)  # the first: while orbax still writes
    proc.kill()
    proc.wait()
    kills.append(_newest_is_complete(workdir))
    mid_save.append(any('orbax-checkpoint-tmp' in n for d in checkpoint.stage_dirs(workdir).values()
                        for n in os.listdir(d)))
  assert any(mid_save), kills  # at least one kill hit an unfinished async save
  # killed while the grown state was being saved: resume from stage 0's end (growth is
  # redone) or from the grown state itself; later kills resume inside stage 1
  assert kills[1] in ((0, 3), (1, 3)) and kills[2] >= (1, 3), kills
  loop.train(cfg, workdir)
  assert read_losses(workdir) == want


# ---- a second writer -----------------------------------------------------------------------

@pytest.mark.slow
def test_second_train_on_a_running_workdir_is_refused_then_a_killed_run_is_resumed(baseline,
                                                                                  workdir):
  """The reported case: a second `train` on a workdir a run is writing.  It is refused, naming
  the running process, before it reads or writes anything; the running run's metrics keep
  every step; after that run is killed (-9), its stale lock is taken over and the resume is
  exact."""
  from flmjax.storage.workdir_lock import WorkdirLockedError
  _, want, _ = baseline
  proc = _spawn('''
    loop.train(tiny_config(6, train=dict(ckpt_every=1)), sys.argv[1])
  ''', workdir)
  try:
    batches = []
    _wait_for(proc, lambda l: l == 'BATCH' and (batches.append(l) or len(batches) == 2))
    with pytest.raises(WorkdirLockedError, match=rf'is in use by pid {proc.pid} on host '):
      loop.train(tiny_config(6), workdir)
    _wait_for(proc, lambda l: l == 'SAVE stage_0 3')
  finally:
    proc.kill()
    proc.wait()
  logged = sorted(r['step'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl'))
                  if 'loss' in r)
  assert logged[:3] == [1, 2, 3], logged  # the refused run removed nothing
  loop.train(tiny_config(6), workdir)
  assert read_losses(workdir) == want


# ---- damaged checkpoints -----------------------------------------------------------------

def _flip_bytes(path: str) -> None:
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(4)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(x ^ 0xFF for x in b))


def _biggest_file(step_dir: str) -> str:
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, 'state')) for n in ns]
  return max(files, key=os.path.getsize)


def test_damaged_checkpoints_are_named_moved_aside_and_skipped(baseline, workdir, capsys):
  _, want, _ = baseline
  cfg = tiny_config(6, train=dict(ckpt_every=1, keep=4))
  assert loop.train(cfg, workdir, stop_at_step=4) == {'stopped_at': 4}
  s0 = os.path.join(workdir, 'stage_0')
  assert all(os.path.exists(os.path.join(s0, str(s), checkpoint.MANIFEST)) for s in (1, 2, 3, 4))
  # step 4: a file removed and no manifest to tell (orbax's restore fails)
  os.remove(os.path.join(s0, '4', checkpoint.MANIFEST))
  os.remove(_biggest_file(os.path.join(s0, '4')))
  # step 3: bytes flipped inside the array data (only the manifest's CRC can tell)
  flipped = os.path.relpath(_biggest_file(os.path.join(s0, '3')), os.path.join(s0, '3'))
  _flip_bytes(os.path.join(s0, '3', flipped))
  with pytest.raises(checkpoint.CheckpointError, match=r'step 3 is damaged: .*CRC32'):
    checkpoint.verify_step(os.path.join(s0, '3'))
  # with no manifest step 4 cannot be verified: the resume is refused, nothing is moved
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'stage_0/4 has no manifest .*faults.allow_unverified=True'):
    loop.train(cfg, workdir)
  assert checkpoint.steps_in(s0) == [1, 2, 3, 4]
  cfg.faults.allow_unverified = True  # opted in: its failing restore is what tells
  capsys.readouterr()
  loop.train(cfg, workdir)
  log = capsys.readouterr().out
  assert f'checkpoint step 3 is damaged: {os.path.join(s0, "3", flipped)}: CRC32' in log
  assert 'cannot restore checkpoint step 4' in log
  assert 'resuming from' in log and log.split('resuming from')[1].split()[0].endswith('stage_0/2')
  for step in (3, 4):  # moved aside with a note, not deleted
    dest = os.path.join(s0, f'corrupt-{step}')
    assert os.path.isdir(os.path.join(dest, 'state'))
    assert 'damaged' in open(os.path.join(dest, 'QUARANTINED.txt')).read() or step == 4
  assert read_losses(workdir) == want
  # a truncated file is named with its size
  last = os.path.join(s0, str(checkpoint.steps_in(s0)[-1]))
  victim = _biggest_file(last)
  with open(victim, 'r+b') as f:
    f.truncate(10)
  with pytest.raises(checkpoint.CheckpointError, match=r'size 10 != \d+ recorded at save'):
    checkpoint.verify_step(last)


# ---- non-finite steps and loss spikes -----------------------------------------------------

def _faulty(steps=16):
  # batch 3: one NaN step (skipped, no rollback); batches 5, 6: two in a row → rollback to the
  # step-4 checkpoint, LR × 0.5.  The guard reads each step's loss one step late (no host sync
  # before the next dispatch), so batch 7 was drawn too and batches 5..7 are skipped.  Batch 14
  # (now step 11) makes a loss spike → rollback to step 8 (its checkpoint was after batch 11),
  # skipping batches 12..15 (batch 15 went into step 12, already dispatched), LR × 0.25.
  return tiny_config(steps, train=dict(ckpt_every=4, keep=3), faults=dict(
      inject_nan_batches=(3, 5, 6), max_bad_steps=2, inject_spike_batches=(14,),
      spike_factor=1.3, spike_min_steps=3, spike_window=5, rollback_lr_factor=0.5))


def test_step_skips_update_on_nan_batch():
  from flmjax import sharding, synthetic_data
  c = tiny_config(4)
  stages = plan.stage_plan(c)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], 'cosine')
  rt = runtime.StageRuntime(c, stages, 0, sharding.make_mesh(c.mesh), sharding.logical_rules(c.mesh),
                          schedule)
  batch = next(synthetic_data.make_synthetic_iterator(c.data, seq_len=16, global_batch_size=8))
  state = rt.init_state(0)
  before = jax.device_get((state.params, state.opt_state))
  bad = faults.inject(batch, 1, dict(inject_nan_batches=(1,), inject_spike_batches=()), 128)
  state, out = rt.train_step(state, batches.to_global(bad, rt.batch_sh))
  assert int(out['update_skipped']) == 1 and not np.isfinite(float(out['loss']))
  assert int(state.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(before),
                  jax.tree_util.tree_leaves(jax.device_get((state.params, state.opt_state)))):
    np.testing.assert_array_equal(a, b)
  state, out = rt.train_step(state, batches.to_global(batch, rt.batch_sh))
  assert int(out['update_skipped']) == 0 and np.isfinite(float(out['loss']))


@pytest.mark.slow
def test_nan_streak_and_spike_roll_back_skip_data_lower_lr_and_resume_exactly(tmp_path):
  wd = str(tmp_path / 'a')
  loop.train(_faulty(), wd)
  records = read_metrics(os.path.join(wd, 'metrics.jsonl'))
  events = [r for r in records if 'event' in r]
  assert [(r['step'], r['event']) for r in events] == [
      (3, 'skipped_update'), (5, 'skipped_update'), (6, 'skipped_update'), (6, 'rollback'),
      (11, 'rollback')]
  nan_rb, spike_rb = events[3], events[4]
  assert nan_rb['to_step'] == 4 and nan_rb['skipped_batches'] == [5, 7]
  assert nan_rb['lr_scale'] == 0.5 and 'non-finite' in nan_rb['reason']
  assert spike_rb['to_step'] == 8 and spike_rb['skipped_batches'] == [12, 15]
  assert spike_rb['lr_scale'] == 0.25 and 'loss spike' in spike_rb['reason']
  # after each rollback the LR is the schedule's times the lowered scale
  schedule = optimizer.make_schedule(
      [s.schedule_dict() for s in plan.stage_plan(_faulty())], 'cosine')
  final = {r['step']: r for r in records if 'loss' in r and 'event' not in r}  # last wins
  for step in (9, 16):
    assert final[step]['learning_rate'] == pytest.approx(0.25 * float(schedule(step - 1)))
  assert all(np.isfinite(final[s]['loss']) for s in range(7, 17))
  meta = checkpoint.read_json(os.path.join(wd, 'stage_0', '16'), 'meta')['faults']
  assert (meta['skipped_updates'], meta['rollbacks'], meta['batches']) == (3, 2, 23)
  # a restart after the first rollback continues exactly (cursor, LR scale, loss window saved)
  wd2 = str(tmp_path / 'b')
  assert loop.train(_faulty(), wd2, stop_at_step=8) == {'stopped_at': 8}
  loop.train(_faulty(), wd2)
  assert read_losses(wd2) == read_losses(wd)


def test_guard_decisions_and_config_validation():
  cfg = faults.settings(tiny_config(faults=dict(spike_factor=2.0, spike_min_steps=2,
                                                max_bad_steps=2)))
  g, log = faults.Guard(cfg), []
  g.check(1, 4.0, False, log.append)
  g.check(2, 4.0, False, log.append)
  g.check(3, 7.9, False, log.append)  # under 2 × 4.0
  g.check(4, float('nan'), True, log.append)
  assert g.skipped_updates == 1 and log[0]['event'] == 'skipped_update'
  with pytest.raises(faults.Rollback, match='2 consecutive'):
    g.check(5, float('inf'), True, log.append)
  g2 = faults.Guard(cfg, g.state_dict())
  with pytest.raises(faults.Rollback, match='loss spike 20.0000 > 2.0 x running mean'):
    g2.check(6, 20.0, False, log.append)
  with pytest.raises(ConfigError, match=r'faults: unknown field\(s\) \[.nan_steps.\]'):
    experiment.validate(tiny_config(faults=dict(nan_steps=(1,))), 1)
  with pytest.raises(ConfigError, match=r'faults.spike_factor must be 0 \(off\) or > 1'):
    experiment.validate(tiny_config(faults=dict(spike_factor=0.5)), 1)
  with pytest.raises(ConfigError, match=r'faults.stop_timeout_s must be a number of seconds'):
    experiment.validate(tiny_config(faults=dict(stop_timeout_s=-1.0)), 1)


# ---- unwritable / full workdir and failing saves -------------------------------------------

def test_unwritable_or_full_workdir_fails_before_training(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(faults.PreflightError, match=r'workdir .*file/w is not writable'):
    loop.train(tiny_config(2), str(blocker / 'w'))
  wd = str(tmp_path / 'w')
  with pytest.raises(faults.PreflightError, match=r'MiB free but checkpoints need about'):
    loop.train(tiny_config(2, faults=dict(min_free_bytes=1 << 60)), wd)
  assert not os.path.exists(os.path.join(wd, 'metrics.jsonl'))  # nothing ran
  assert faults.preflight(wd, plan.stage_plan(tiny_config(2)),
                          faults.settings(tiny_config(2))) is None


def test_failed_save_keeps_previous_checkpoint_and_resume_is_exact(baseline, workdir,
                                                                   monkeypatch):
  from orbax.checkpoint._src.handlers.base_pytree_checkpoint_handler import \
      BasePyTreeCheckpointHandler as Handler
  _, want, _ = baseline
  orig = Handler.async_save

  async def full_disk(self, directory, *a, **k):
    if re.search(r'/3(\.orbax[^/]*)?/state', str(directory)):  # step 3's arrays
      raise OSError(28, 'No space left on device', str(directory))
    return await orig(self, directory, *a, **k)

  monkeypatch.setattr(Handler, 'async_save', full_disk)
  cfg = tiny_config(6, train=dict(ckpt_every=1, keep=1))  # keep=1: a save would delete step 2
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'saving checkpoint step 3 .* failed: .*No space left.* Earlier '
                           r'checkpoints are kept \(complete steps here: \[2\]\)'):
    loop.train(cfg, workdir)
  monkeypatch.setattr(Handler, 'async_save', orig)
  assert _newest_is_complete(workdir) == (0, 2)
  loop.train(cfg, workdir)
  assert read_losses(workdir) == want


class _FailsLater:
  """A commit future of orbax's background write that fails after a while (the disk filled
  while the arrays were being written), as the reported run's save of step 100 did."""

  def result(self, timeout=None):
    time.sleep(0.1)
    raise OSError(28, 'No space left on device')

  def cancel(self):
    pass


def test_failed_async_save_stops_the_run_at_once(workdir, monkeypatch):
  """The failure is known when the background write ends: the run stops then (naming the step
  that failed), not a whole checkpoint interval later at the next save."""
  from orbax.checkpoint._src.handlers.base_pytree_checkpoint_handler import \
      BasePyTreeCheckpointHandler as Handler
  orig, make = Handler.async_save, batches.make_train_iterator

  async def fills_the_disk(self, directory, *a, **k):
    futures = await orig(self, directory, *a, **k)
    if re.search(r'/3(\.orbax[^/]*)?/state', str(directory)):
      futures = list(futures or []) + [_FailsLater()]
    return futures

  def slow(*a, **k):  # 0.5 s a step, so the failure lands well inside the next interval
    it = make(*a, **k)
    nxt = it.__next__
    it.__class__ = type('Slow', (type(it),), {'__next__': lambda self: time.sleep(0.5) or nxt()})
    return it

  monkeypatch.setattr(Handler, 'async_save', fills_the_disk)
  monkeypatch.setattr(batches, 'make_train_iterator', slow)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'saving checkpoint step 3 .* failed: .*No space left.*Training stopped '
                           r'at step [45], as soon as the failure was known') as e:
    loop.train(tiny_config(9, train=dict(ckpt_every=3, keep=2)), workdir)
  assert '\n' not in str(e.value)
  trained = {r['step'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')) if 'loss' in r}
  assert max(trained) < 6, trained  # never reached the next save
  assert checkpoint.steps_in(os.path.join(workdir, 'stage_0')) == []


# ---- a full disk: metrics sinks ------------------------------------------------------------

def _tensorboard_fills_the_disk(monkeypatch) -> None:
  """Every TensorBoard record after the event file's header fails with ENOSPC."""
  from tensorboardX import record_writer
  orig, calls = record_writer.RecordWriter.write, []

  def write(self, data):
    calls.append(1)
    if len(calls) > 1:
      raise OSError(28, 'No space left on device')
    return orig(self, data)
  monkeypatch.setattr(record_writer.RecordWriter, 'write', write)


def test_dead_tensorboard_sink_is_dropped_once_and_never_blocks(tmp_path, monkeypatch, capsys):
  """The reported hang: tensorboardX's writer thread died with ENOSPC, then every write (and
  close) blocked forever.  Now the sink is dropped, said once, and metrics.jsonl goes on."""
  import threading
  _tensorboard_fills_the_disk(monkeypatch)
  w = metrics.MetricsWriter(str(tmp_path))
  done = threading.Event()

  def use():
    for s in range(1, 41):  # more events than tensorboardX's queue holds
      w.write(s, {'loss': float(s), 'learning_rate': 0.1})
    w.close()
    done.set()
  threading.Thread(target=use, daemon=True).start()
  assert done.wait(30), 'metrics writing blocked'
  err = capsys.readouterr().err
  assert err.count('continuing without TensorBoard') == 1 and 'No space left' in err, err
  assert [r['step'] for r in read_metrics(str(tmp_path / 'metrics.jsonl'))] == list(range(1, 41))
  assert w.failed is None


class _FullAfter:
  """A metrics.jsonl whose writes fail with ENOSPC once `n` records went in."""

  def __init__(self, f, n: int):
    self.f, self.n = f, n

  def write(self, text):
    if self.n <= 0:
      raise OSError(28, 'No space left on device')
    self.n -= text.count('\n')
    return self.f.write(text)

  def __getattr__(self, name):
    return getattr(self.f, name)


def test_metrics_file_on_a_full_disk_stops_after_a_checkpoint_and_resumes(baseline, workdir,
                                                                         monkeypatch):
  _, want, _ = baseline
  real_open = open
  monkeypatch.setattr(metrics, 'open', lambda p, *a, **k: _FullAfter(real_open(p, *a, **k), 2),
                      raising=False)
  with pytest.raises(Exception, match=r'cannot append to .*metrics.jsonl: No space left on '
                                         r'device \(the metrics of step 3 are not in it\); '
                                         r'training stopped; the checkpoint of step 3 is complete'
                     ) as e:
    loop.train(tiny_config(6), workdir)
  assert type(e.value).__name__ == 'MetricsError'  # one line from the CLI, exit 1
  assert _newest_is_complete(workdir) == (0, 3)
  monkeypatch.undo()
  loop.train(tiny_config(6), workdir)  # space freed: the same command resumes
  got = read_losses(workdir)
  assert {s: got[s] for s in got if s != 3} == {s: want[s] for s in want if s != 3}


def _mount_tmpfs(path: str, size: str) -> None:
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f'a real full disk needs a tmpfs mount, not permitted here: {r.stderr.strip()}')


def _fill(f) -> None:
  """Write zeros into the open file `f` until its disk is full. The file is created before the
  run: on this kernel a new tmpfs file was once refused (ENOSPC) with the disk 5% used, so the
  test creates nothing at the moment it fills."""
  try:
    while True:
      f.write(b'\0' * 65536)
      f.flush()
  except OSError:
    pass


def test_real_full_disk_stops_cleanly_and_the_same_command_resumes(baseline, tmp_path,
                                                                   monkeypatch):
  """On a real (tmpfs) disk filled to 0 bytes after step 2: one clear error, no hang, no
  damaged checkpoint; after freeing space the identical command passes the pre-flight and
  resumes to the uninterrupted losses."""
  _, want, _ = baseline
  disk = str(tmp_path / 'disk')
  _mount_tmpfs(disk, '8m')
  filler = os.path.join(disk, 'filler')
  filler_file = open(filler, 'wb', buffering=0)
  try:
    wd = os.path.join(disk, 'w')
    cfg = tiny_config(6, train=dict(ckpt_every=2, keep=2))
    make, drawn = batches.make_train_iterator, []

    def filling(*a, **k):
      it = make(*a, **k)
      nxt = it.__next__
      def next_batch():
        drawn.append(1)
        if len(drawn) == 4:  # step 2 is logged and its checkpoint is being written
          time.sleep(1.0)  # let that save finish
          _fill(filler_file)
        return nxt()
      it.__class__ = type('Filling', (type(it),), {'__next__': lambda self: next_batch()})
      return it

    monkeypatch.setattr(batches, 'make_train_iterator', filling)
    with pytest.raises(Exception, match='No space left on device') as e:
      loop.train(cfg, wd)
    assert type(e.value).__name__ in ('MetricsError', 'CheckpointError'), (  # one line, exit 1
        ''.join(traceback.format_exception(e.value)))
    assert '\n' not in str(e.value)
    assert _newest_is_complete(wd) == (0, 2)
    monkeypatch.setattr(batches, 'make_train_iterator', make)
    filler_file.close()
    os.remove(filler)
    loop.train(cfg, wd)
    assert read_losses(wd) == want
  finally:
    filler_file.close()
    subprocess.run(['umount', '-l', disk], capture_output=True)


@pytest.mark.slow
def test_sigterm_ends_a_run_whose_tensorboard_writer_died(workdir):
  """The reported hang, end to end: with TensorBoard's writes failing (a full disk), SIGTERM
  still stops the run after a step with a checkpoint, within a bounded time."""
  proc = _spawn('''
    from tensorboardX import record_writer
    orig, calls = record_writer.RecordWriter.write, []
    def write(self, data):
      calls.append(1)
      if len(calls) > 1:
        raise OSError(28, 'No space left on device')
      return orig(self, data)
    record_writer.RecordWriter.write = write
    r = loop.train(tiny_config(40), sys.argv[1])
    print('RESULT ' + json.dumps(r), flush=True)
  ''', workdir)
  _wait_for(proc, lambda l: l == 'BATCH')
  t0, metrics_file = time.time(), os.path.join(workdir, 'metrics.jsonl')
  while len(read_metrics(metrics_file)) < 2 and time.time() - t0 < 120:
    time.sleep(0.2)  # (stdout is not read here: a hung child would block `_wait_for` for ever)
  time.sleep(1.0)  # 2 logged steps are 16 events: more than tensorboardX's queue holds
  proc.send_signal(signal.SIGTERM)
  out, err = _finish(proc, timeout=60)
  assert proc.returncode == 0, err[-3000:]
  result = json.loads([l for l in out.splitlines() if l.startswith('RESULT ')][-1][7:])
  assert result['preempted'] == 'SIGTERM', result
  assert err.count('continuing without TensorBoard') == 1, err[-3000:]
  assert _newest_is_complete(workdir) == (0, result['stopped_at'])


@pytest.mark.slow
def test_sigterm_ends_a_run_whose_save_hangs_within_stop_timeout(workdir):
  """Whatever blocks the stop (here the checkpoint save, as on a filesystem that stopped
  answering), the process ends `faults.stop_timeout_s` after the signal, saying why."""
  proc = _spawn('''
    import threading
    def hung_save(self, step, *a, **k):
      threading.Event().wait()
    checkpoint.StageCheckpointer.save = hung_save
    loop.train(tiny_config(40, faults=dict(stop_timeout_s=3.0)), sys.argv[1])
  ''', workdir)
  seen = []
  _wait_for(proc, lambda l: l == 'BATCH' and (seen.append(l) or len(seen) == 3))
  t0 = time.time()
  proc.send_signal(signal.SIGTERM)
  _, err = _finish(proc, timeout=60)
  assert time.time() - t0 < 30
  assert proc.returncode == faults.HANG_EXIT_CODE, err[-3000:]
  assert 'still running 3 s after SIGTERM (faults.stop_timeout_s)' in err, err[-3000:]


# ---- multi-host: a peer dies ----------------------------------------------------------------

@pytest.mark.slow
def test_dead_peer_process_ends_the_other_with_a_clear_error_then_both_resume(tmp_path):
  wd = str(tmp_path / 'w')
  body = '''
    from flmjax import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    c = tiny_config(8, train=dict(ckpt_every=2), faults=dict(hang_timeout_s=20.0))
    c.mesh.update(data=2, fsdp=2, tensor=1)
    r = loop.train(c, sys.argv[3])
    print('RESULT ' + json.dumps(r), flush=True)
  '''

  def start():
    addr = f'127.0.0.1:{free_port()}'
    return [_spawn(body, addr, str(i), wd, devices=2) for i in range(2)]

  procs = start()
  try:
    _wait_for(procs[1], lambda l: l == 'SAVE stage_0 4')
    procs[1].kill()
    t0 = time.time()
    _, err = _finish(procs[0], timeout=150)
    waited = time.time() - t0
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode != 0
  assert waited < 120, waited  # bounded: the watchdog (20 s) or JAX's heartbeat (100 s)
  assert ('flmjax watchdog' in err and 'Another process has probably died' in err) or \
         'another task died' in err, err[-3000:]
  assert _newest_is_complete(wd)[1] >= 2  # step 4 may be unfinished: the peer died saving it
  procs = start()
  outs = [_finish(p, timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'resuming from' in outs[0][0]
  # the same losses as one uninterrupted single-process run of the same config
  ref = str(tmp_path / 'ref')
  loop.train(tiny_config(8, train=dict(ckpt_every=2)), ref)
  assert read_losses(wd) == pytest.approx(read_losses(ref), rel=1e-5, abs=1e-5)
