"""Fault handling for the trainer: preemption signals, pre-flight disk checks, the loss guard
(skipped non-finite updates, rollback on repeated bad steps or loss spikes), a hang watchdog,
and test hooks that corrupt chosen batches.

Everything here is host-side and cheap; the only in-step piece is `select_if_finite`, which the
jitted train step uses so a NaN/Inf loss or gradient leaves params and optimizer state untouched.
The trainer (`flmjax.training.loop`) wires these together; the `faults` config section holds the knobs.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flmjax.storage import checkpoint, paths
from flmjax.config import ConfigError, check_section


def default_faults_config() -> ml_collections.ConfigDict:
  """The `faults` section.  Spike detection is off by default (early losses fall fast)."""
  return ml_collections.ConfigDict(dict(
      skip_nonfinite=True,      # skip (and count) updates whose loss or gradient is NaN/Inf
      max_bad_steps=3,          # this many consecutive skipped updates → roll back (0: never)
      spike_factor=0.0,         # loss > factor × running mean → roll back (0: off)
      spike_window=20,          # running mean over the last this many finite losses
      spike_min_steps=5,        # ... once at least this many are in the window
      rollback_lr_factor=1.0,   # multiply the LR by this at each rollback (1: keep it)
      max_rollbacks=3,          # then stop with an error: the run is diverging
      verify_checksums=True,    # check per-file CRC32s on restore (sizes are always checked)
      allow_unverified=False,   # resume from a checkpoint without a manifest (another tool's)
      min_free_bytes=-1,        # pre-flight: -1 = estimate (train.keep + 1 checkpoints, less the
                                #   run's own already there), 0 = no check
      hang_timeout_s=0.0,       # exit with an error if no step completes for this long (0: off)
      stop_timeout_s=600.0,     # after SIGTERM/SIGINT: exit anyway if still running this long
      inject_nan_batches=(),    # test hook: stream batch indices (1-based) to make NaN
      inject_spike_batches=(),  # test hook: batch indices whose targets become a rare token
  ))


def validate_faults_config(f: Any) -> Any:
  """Checks the `faults` section (fields, types, ranges); returns it.  Errors name the field."""
  check_section(f, default_faults_config(), 'faults')
  for k in ('max_bad_steps', 'spike_window', 'spike_min_steps', 'max_rollbacks'):
    if f[k] < 0:
      raise ConfigError(f'faults.{k} must be >= 0, got {f[k]!r}')
  if f.spike_window < 1:  # a mean over no loss: the spike check would compare with nothing
    raise ConfigError(f'faults.spike_window must be >= 1, got {f.spike_window!r}')
  if f.spike_factor != 0 and f.spike_factor <= 1:
    raise ConfigError(f'faults.spike_factor must be 0 (off) or > 1, got {f.spike_factor!r}')
  if not 0 < f.rollback_lr_factor <= 1:
    raise ConfigError(f'faults.rollback_lr_factor must be in (0, 1], got '
                      f'{f.rollback_lr_factor!r}')
  if f.hang_timeout_s < 0 or f.min_free_bytes < -1:
    raise ConfigError(f'faults.hang_timeout_s must be >= 0 and faults.min_free_bytes >= -1, got '
                      f'{f.hang_timeout_s!r}, {f.min_free_bytes!r}')
  if not 0 <= f.stop_timeout_s < float('inf'):
    raise ConfigError(f'faults.stop_timeout_s must be a number of seconds >= 0 (0: wait for '
                      f'ever), got {f.stop_timeout_s!r}')
  for k in ('inject_nan_batches', 'inject_spike_batches'):
    if not all(isinstance(i, int) and i > 0 for i in f[k]):
      raise ConfigError(f'faults.{k} must hold positive batch indices, got {f[k]!r}')
  return f


def settings(config: Any) -> Any:
  """The run's validated `faults` section."""
  return validate_faults_config(config.faults)


# ---- in the jitted step ------------------------------------------------------------------

def select_if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` where `finite` else `old`, leaf by leaf: a skipped update changes nothing (like
  optax.apply_if_finite, but without adding state, so checkpoints and growth are unaffected)."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


# ---- preemption --------------------------------------------------------------------------

class Preemption:
  """SIGTERM/SIGINT → stop after the current step.  A second SIGINT interrupts at once.

  Multi-process runs use JAX's preemption sync point instead: its coordination service turns a
  SIGTERM on any host into the same stop step on all hosts (a local flag could make hosts stop
  at different steps and deadlock).  A Ctrl-C there is forwarded as a SIGTERM to this process,
  so it takes the same path and every host stops at one step with a checkpoint; without JAX's
  preemption service (`jax_enable_preemption_service` off) SIGINT keeps Python's default.

  Bounded: from the stop request on, the process has `stop_timeout_s` to end (finish the step,
  save, wait for the save); if something blocks longer (a hung filesystem), it exits with
  `HANG_EXIT_CODE` and a message, leaving the previous checkpoints as they are.  The trainer
  calls `cancel_deadline` once it has returned.
  """

  def __init__(self, stop_timeout_s: float = 0.0):
    self.signum: Optional[int] = None
    self._old: dict[int, Any] = {}
    self.multi = jax.process_count() > 1
    self.stop_timeout_s = float(stop_timeout_s)
    self._deadline: Optional[threading.Timer] = None

  def _arm_deadline(self, signum: int) -> None:
    if self.stop_timeout_s > 0 and self._deadline is None:
      self._deadline = threading.Timer(self.stop_timeout_s, self._give_up, args=(signum,))
      self._deadline.daemon = True
      self._deadline.start()

  def _give_up(self, signum: int) -> None:
    print(f'\nflmjax: still running {self.stop_timeout_s:g} s after {signal.Signals(signum).name} '
          '(faults.stop_timeout_s): something blocks the stop (a hung filesystem, a save that '
          'never finishes); exiting now without a new checkpoint. Restart to resume from the '
          'newest complete one.', file=sys.stderr, flush=True)
    os._exit(HANG_EXIT_CODE)

  def cancel_deadline(self) -> None:
    if self._deadline is not None:
      self._deadline.cancel()
      self._deadline = None

  def __enter__(self) -> 'Preemption':
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    if not self.multi:
      for s in (signal.SIGINT, signal.SIGTERM):
        self._old[s] = signal.signal(s, self._handle)
    elif _preemption_service_running():
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_sigint)
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}

  def _handle(self, signum, frame) -> None:
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    self._arm_deadline(signum)
    print(f'received {signal.Signals(signum).name}: stopping after this step with a checkpoint '
          '(send SIGINT again to interrupt now)', file=sys.stderr, flush=True)

  def _forward_sigint(self, signum, frame) -> None:
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum
    self._arm_deadline(signum)
    print('received SIGINT: telling every host to stop at the next common step with a '
          'checkpoint (send SIGINT again to interrupt now)', file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier catches it

  def request(self) -> None:
    """Stop as a SIGTERM would — after this step, with a checkpoint, at one step on every host —
    for a reason of the trainer's own (metrics.jsonl cannot be written)."""
    if self.signum is not None:
      return
    if self.multi and _preemption_service_running():
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells every host
    else:
      self.signum = signal.SIGTERM
      self._arm_deadline(signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Call once per step on every process; True on all of them at the same step."""
    if not self.multi:
      return self.signum is not None
    from jax.experimental import multihost_utils
    try:
      stop = bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # jax_enable_preemption_service is off
      return False
    if stop and self.signum is None:
      self.signum = signal.SIGTERM  # the notice reached this host through JAX's coordinator
    if stop:
      self._arm_deadline(self.signum)
    return stop


def _preemption_service_running() -> bool:
  """Whether JAX's preemption sync manager (which owns SIGTERM on multi-host runs) is up."""
  try:
    from jax._src import distributed as jax_distributed
  except ImportError:  # JAX moved it: keep Python's SIGINT rather than risk a bare SIGTERM
    return False
  return getattr(jax_distributed.global_state, 'preemption_sync_manager', None) is not None


# ---- pre-flight ----------------------------------------------------------------------------

class PreflightError(RuntimeError):
  """The workdir cannot hold this run's checkpoints; raised before any compile or step."""


def checkpoint_bytes(stages: Sequence[Any]) -> int:
  """Rough size of the largest stage's checkpoint: params + Adam mu and nu in float32."""
  return max(_estimate(s) for s in stages)


def _estimate(stage: Any) -> int:
  return 3 * 4 * stage.model.param_count()


def space_needed(workdir: str, stages: Sequence[Any], keep: int) -> tuple[int, int]:
  """(bytes the run still needs, bytes its own checkpoints already hold toward that).

  A stage directory peaks at `keep` + 1 checkpoints (a new one is written before the oldest is
  deleted).  The checkpoints this run already has there count toward that peak — rotation
  deletes them — so a resume needs only what is missing, and at least one new checkpoint.
  Stages before the newest one with checkpoints are finished and need nothing more."""
  held = checkpoint.held_by_run(workdir, [s.model for s in stages])
  start = max(held, default=0)
  need, counted = 0, 0
  for s in stages:
    if s.index < start:
      continue
    have = held.get(s.index, [])
    one = max([_estimate(s)] + have[-1:])  # the newest real one, if larger than the estimate
    extra = max(one, (keep + 1) * one - sum(have)) if have else (keep + 1) * one
    if extra > need:
      need, counted = extra, sum(have)
  return need, counted


def preflight(workdir: str, stages: Sequence[Any], fcfg: Mapping[str, Any],
              keep: int = 2) -> Optional[str]:
  """Create the workdir and prove it takes a write (file + fsync + rename + delete) and has
  room for checkpoints (`space_needed`: `keep` + 1 of a stage, less what the run's own
  checkpoints already hold).  Returns an error message, or None when fine (the trainer agrees
  on the answer across processes before raising)."""
  probe = paths.join(workdir, f'.write_probe.{jax.process_index()}')
  try:
    paths.makedirs(workdir)
    paths.write_atomic(probe, b'\0' * 4096)
    paths.remove(probe)
  except OSError as e:
    return (f'workdir {workdir} is not writable ({e.strerror or e}: {e.filename or probe}); '
            'fix its permissions or choose another --workdir')
  except Exception as e:  # pylint: disable=broad-except  (an object store's client error)
    return (f'workdir {workdir} is not writable ({paths.describe_error(e)}); check the bucket, '
            'the credentials and the endpoint, or choose another --workdir')
  need, held = int(fcfg['min_free_bytes']), 0
  if need < 0:
    need, held = space_needed(workdir, stages, keep)
  free = paths.disk_free(workdir)
  if need and free is not None and free < need:
    own = (f', beyond the {held / 2**20:.1f} MiB its own checkpoints there already hold'
           if held else '')
    return (f'workdir {workdir} has {free / 2**20:.1f} MiB free but checkpoints need about '
            f'{need / 2**20:.1f} MiB more{own} (faults.min_free_bytes={fcfg["min_free_bytes"]}; '
            f'-1 = up to train.keep + 1 = {keep + 1} checkpoints of a stage at once, as a new '
            'one is written before the oldest is deleted); free space or choose another '
            '--workdir')
  return None


# ---- the loss guard ------------------------------------------------------------------------

class Rollback(Exception):
  """Raised by the guard: roll back to the last good checkpoint and skip the data so far."""

  def __init__(self, step: int, reason: str):
    super().__init__(f'step {step}: {reason}')
    self.step, self.reason = step, reason


class DivergedError(RuntimeError):
  """Too many rollbacks: the run keeps diverging; the message says what to change."""


class Guard:
  """Host-side watch over each step's loss and skip flag.

  Counts skipped updates; raises `Rollback` after `max_bad_steps` consecutive skips or when a
  finite loss exceeds `spike_factor` × the mean of the last `spike_window` finite losses.
  `batches` counts batches drawn from the data stream (it keeps growing across rollbacks, so
  the skipped data window is never re-read, and injected faults stay tied to data, not steps).
  Its state is saved in checkpoint meta so a restart decides exactly as the first run would.
  """

  def __init__(self, fcfg: Mapping[str, Any], state: Optional[Mapping[str, Any]] = None):
    self.cfg = fcfg
    state = dict(state or {})
    self.batches = int(state.get('batches', 0))
    self.skipped_updates = int(state.get('skipped_updates', 0))
    self.rollbacks = int(state.get('rollbacks', 0))
    self.lr_scale = float(state.get('lr_scale', 1.0))
    self.bad_streak = int(state.get('bad_streak', 0))
    self.window = collections.deque(state.get('loss_window', []),
                                    maxlen=max(int(fcfg['spike_window']), 1))

  def state_dict(self) -> dict[str, Any]:
    return {'batches': self.batches, 'skipped_updates': self.skipped_updates,
            'rollbacks': self.rollbacks, 'lr_scale': self.lr_scale,
            'bad_streak': self.bad_streak, 'loss_window': list(self.window)}

  def reset_to(self, saved: Optional[Mapping[str, Any]]) -> None:
    """After a rollback: the loss history and streak of the restored checkpoint, but keep the
    data cursor and the running counters."""
    saved = dict(saved or {})
    self.bad_streak = int(saved.get('bad_streak', 0))
    self.window.clear()
    self.window.extend(saved.get('loss_window', []))

  def check(self, step: int, loss: float, skipped: bool, log: Callable[[dict], None]) -> None:
    """Account for one finished step; may raise `Rollback`."""
    c = self.cfg
    if skipped or not math.isfinite(loss):
      self.skipped_updates += int(skipped)
      self.bad_streak += 1
      log({'event': 'skipped_update', 'loss': loss, 'bad_streak': self.bad_streak,
           'skipped_updates': self.skipped_updates})
      if c['max_bad_steps'] and self.bad_streak >= c['max_bad_steps']:
        raise Rollback(step, f'{self.bad_streak} consecutive non-finite steps')
      return
    self.bad_streak = 0
    if (c['spike_factor'] and len(self.window) >= max(int(c['spike_min_steps']), 1)):
      mean = sum(self.window) / len(self.window)
      if loss > c['spike_factor'] * mean:
        raise Rollback(step, f'loss spike {loss:.4f} > {c["spike_factor"]} x running mean '
                             f'{mean:.4f}')
    self.window.append(loss)


def inject(batch: dict[str, np.ndarray], batch_index: int, fcfg: Mapping[str, Any],
           vocab_size: int) -> dict[str, np.ndarray]:
  """Test hook: make batch `batch_index` (1-based stream position) poison the step — NaN
  loss weights (non-finite loss and gradient) or every target set to the last, never-seen
  token (a loss spike).  Untouched batches are returned as they are."""
  if batch_index in tuple(fcfg['inject_nan_batches']):
    batch = dict(batch, loss_weights=np.full_like(batch['loss_weights'], np.nan))
  if batch_index in tuple(fcfg['inject_spike_batches']):
    batch = dict(batch, targets=np.full_like(batch['targets'], vocab_size - 1))
  return batch


# ---- hang watchdog -------------------------------------------------------------------------

HANG_EXIT_CODE = 75


class Watchdog:
  """Exit the process with a clear message when no step completes for `timeout_s` — e.g. a
  collective waiting on a peer process that died.  A hung collective cannot be interrupted from
  Python, so this ends the process (`os._exit`); the last complete checkpoint is untouched.
  It arms at the first finished step (the first compile does not count), so the timeout must
  exceed the longest later pause: a recompile after growth, an eval, a checkpoint wait."""

  def __init__(self, timeout_s: float):
    self.timeout_s = float(timeout_s)
    self.step: Optional[int] = None
    self._last = time.monotonic()
    self._stop = threading.Event()
    self._thread = None
    if self.timeout_s > 0:
      self._thread = threading.Thread(target=self._run, name='flmjax-watchdog', daemon=True)
      self._thread.start()

  def beat(self, step: Optional[int] = None) -> None:
    """Progress: a step finished (or a checkpoint was written)."""
    self._last = time.monotonic()
    if step is not None:
      self.step = step

  def _run(self) -> None:
    while not self._stop.wait(min(1.0, self.timeout_s / 4)):
      if self.step is None:
        continue
      idle = time.monotonic() - self._last
      if idle > self.timeout_s:
        print(f'\nflmjax watchdog: process {jax.process_index()}/{jax.process_count()}: no '
              f'training step finished for {idle:.0f} s (faults.hang_timeout_s='
              f'{self.timeout_s:g}); last finished step: {self.step}. Another process has probably died or '
              'hangs; exiting. Restart all processes to resume from the last complete '
              'checkpoint.', file=sys.stderr, flush=True)
        os._exit(HANG_EXIT_CODE)

  def close(self) -> None:
    self._stop.set()
