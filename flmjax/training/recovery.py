"""Where a run restarts from, and what it survives on the way: the workdir checks before the
first step, the newest checkpoint that verifies on a restart, and the newest good one before a
divergence (rollback).  Split from `flmjax.training.loop` so the loop there reads as a loop.

Every decision is taken by all processes together (`distributed.all_processes`), and only
process 0 touches the filesystem (discarding or quarantining a damaged checkpoint), so a
multi-host run never splits into processes that resumed from different steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence

from flmjax.storage import checkpoint, paths
from flmjax.distributed import all_processes, log0, sync
from flmjax.training import faults
from flmjax.storage.workdir_lock import WorkdirLock, WorkdirLockedError


@contextlib.contextmanager
def workdir_lock(workdir: str, primary: bool, what: str = 'flmjax train') -> Iterator[None]:
  """Hold the workdir's one-writer lock for the run (process 0 takes it: only it writes; the
  others learn the outcome, so every process fails alike).  A workdir that cannot even be
  created is left to the pre-flight check, which says why."""
  lock, error = None, None
  if primary:
    try:
      lock = WorkdirLock(workdir, what).acquire(log=log0)
    except (WorkdirLockedError, paths.StorageError) as e:
      error = e
    except OSError:
      lock = None
  if not all_processes(error is None):
    raise error or WorkdirLockedError(f'workdir {workdir} is in use by another run (see process '
                                      '0\'s log)')
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def prepare_workdir(workdir: str, stages: Sequence[Any], fault_cfg: Any, *, allow_overwrite: bool,
                    primary: bool, keep: int = 2) -> None:
  """Leftover temporaries of an interrupted save go (we hold the workdir lock: nobody else is
  writing them), then the pre-flight (disk space, writable), then integrity — a damaged newest
  checkpoint must neither block the run nor be resumed — then the guard against training into
  another run."""
  if primary:
    for path, size in checkpoint.remove_leftover_temporaries(workdir):
      log0(f'removed {path} ({size / 2**20:.1f} MiB), left by a save that did not finish')
  problem = faults.preflight(workdir, stages, fault_cfg, keep=keep)
  if not all_processes(problem is None):
    raise faults.PreflightError(problem or 'another process failed the workdir pre-flight '
                                'check (see its log)')
  sync('mkdir')
  discard_damaged(checkpoint.stage_dirs(workdir), primary, bool(fault_cfg.verify_checksums),
                  bool(fault_cfg.allow_unverified))
  sync('verify-all')
  moved = checkpoint.check_workdir(workdir, [s.model for s in stages],
                                   allow_overwrite=allow_overwrite, is_primary=primary)
  if moved:
    log0(f'train.allow_overwrite: moved the previous run to {moved}')
  sync('workdir')


def discard_damaged(directories: dict[int, str], primary: bool, checksums: bool,
                    allow_unverified: bool, below: Optional[int] = None) -> None:
  """`checkpoint.discard_damaged` on process 0; a checkpoint that cannot be verified (no
  manifest) stops every process alike, unless `faults.allow_unverified`."""
  error = None
  if primary:
    try:
      checkpoint.discard_damaged(directories, checksums=checksums, log=log0, below=below,
                                 allow_unverified=allow_unverified)
    except checkpoint.UnverifiedCheckpointError as e:
      error = e
  if not all_processes(error is None):
    raise error or checkpoint.UnverifiedCheckpointError(
        'process 0 refused to resume from a checkpoint it cannot verify (see its log)')


@dataclasses.dataclass
class Restored:
  stage: int
  step: int
  runtime: Any  # training.runtime.StageRuntime
  state: Any  # training.state.TrainState
  meta: dict
  data_state: dict


def restore_newest(workdir: str, make_runtime: Callable[[int, float], Any],
                   primary: bool, checksums: bool, allow_unverified: bool = False
                   ) -> Optional[Restored]:
  """Restore the newest checkpoint that verifies and restores; a damaged one (found by its
  manifest, or by a failing restore when it has none and `allow_unverified`) is moved aside and
  the previous one is tried."""
  verified = True  # the caller has just run `discard_damaged`
  while True:
    if not verified:
      discard_damaged(checkpoint.stage_dirs(workdir), primary, checksums, allow_unverified)
    sync('verify')
    verified = False
    found = checkpoint.latest(workdir)
    if found is None:
      return None
    k, step = found
    sdir = checkpoint.stage_dir(workdir, k)
    error = None
    try:
      meta = checkpoint.read_json(paths.join(sdir, str(step)), 'meta')
      runtime = make_runtime(k, float((meta.get('faults') or {}).get('lr_scale', 1.0)))
      ckptr = checkpoint.StageCheckpointer(sdir, read_only=True)
      try:
        state, meta, data_state = runtime.restore(ckptr, step)
      finally:
        ckptr.close()
    except checkpoint.CheckpointError as e:
      error = e
    if all_processes(error is None):
      return Restored(k, step, runtime, state, meta, data_state)
    if primary:
      dest = checkpoint.quarantine(paths.join(sdir, str(step)),
                                   str(error or 'failed to restore on another process'))
      log0(f'{error}; moved it to {dest} and falling back to the previous checkpoint')
    sync(f'quarantine-{k}-{step}')


def roll_back(rb: faults.Rollback, k: int, runtime: Any, ckptr, workdir: str,
               make_runtime: Callable, guard: faults.Guard, writer, fault_cfg, primary: bool, t
               ) -> tuple[Any, checkpoint.StageCheckpointer, Any]:
  """Back to the newest good checkpoint of this stage (a fresh init in stage 0 without one),
  keeping the data iterator where it is, so the offending window is skipped."""
  try:
    ckptr.close()  # in-flight saves are of good steps (the guard ran before each save)
  except checkpoint.CheckpointError as e:
    log0(f'rollback: {e}')
  guard.rollbacks += 1
  if guard.rollbacks > int(fault_cfg.max_rollbacks):
    raise faults.DivergedError(
        f'{rb}: rollback {guard.rollbacks} exceeds faults.max_rollbacks={fault_cfg.max_rollbacks}; '
        'the run keeps diverging. Lower optim.lr, raise optim.warmup_steps or set '
        'faults.rollback_lr_factor < 1, then restart (checkpoints are kept).')
  lr_scale = guard.lr_scale * float(fault_cfg.rollback_lr_factor)
  new_runtime = runtime if lr_scale == guard.lr_scale else make_runtime(k, lr_scale)
  sdir = checkpoint.stage_dir(workdir, k)
  while True:
    discard_damaged({k: sdir}, primary, bool(fault_cfg.verify_checksums),
                    bool(fault_cfg.allow_unverified), below=rb.step)
    sync(f'rollback-verify-{guard.rollbacks}')
    steps = [s for s in checkpoint.steps_in(sdir) if s <= rb.step]
    ckptr = checkpoint.StageCheckpointer(sdir, keep=t.keep)
    if not steps:
      if k:
        raise checkpoint.CheckpointError(f'{rb}: no checkpoint to roll back to in {sdir}')
      state, saved, to_step = new_runtime.init_state(t.seed), None, 0
      break
    to_step, error = steps[-1], None
    try:
      state, meta, _ = new_runtime.restore(ckptr, to_step)
      saved = meta.get('faults')
    except checkpoint.CheckpointError as e:
      error = e
    if all_processes(error is None):
      break
    ckptr.close()
    if primary:
      dest = checkpoint.quarantine(paths.join(sdir, str(to_step)), str(error))
      log0(f'{error}; moved it to {dest}')
  first_skipped = int((saved or {}).get('batches', 0)) + 1
  guard.reset_to(saved)
  guard.lr_scale = lr_scale
  record = {'event': 'rollback', 'stage': k, 'reason': rb.reason, 'to_step': to_step,
            'skipped_batches': [first_skipped, guard.batches], 'lr_scale': lr_scale,
            'rollbacks': guard.rollbacks}
  writer.write(rb.step, record)
  log0(f'rollback at step {rb.step} ({rb.reason}) to step {to_step}: skipping data batches '
       f'{first_skipped}..{guard.batches}, lr scale {lr_scale:g}')
  return new_runtime, ckptr, state
