"""Checkpoints with orbax: one CheckpointManager per stage directory `W/stage_K/`.

Each step directory holds four items: `state` (params, optimizer state, step, RNG, growth-mask
state; a PyTree restored straight onto any mesh via target shardings), `config` (the resolved
experiment config, JSON), `meta` (stage, model config, mask shapes, wall time; JSON) and `data`
(the data iterator's state, JSON).  Saves are async; orbax writes to a temporary directory and
renames it when complete, so a crash never leaves a checkpoint that looks complete.

`flmjax_manifest.json` (size and CRC32 of every file) is part of committing a step: orbax calls
back once the data is final but before it renames the temporary directory, and the manifest is
written into that directory then, so the rename commits data and manifest together and the
newest checkpoint after a `kill -9` is protected like any other.  (orbax's own bookkeeping files,
rewritten during the rename, are not listed.)  `verify_step` checks a checkpoint against it, so
flipped bytes or a removed file are found before restoring — by the trainer and by every reader
(`load_params`, `restore_step`: sample, eval, grow); `quarantine` moves a damaged checkpoint to
`W/stage_K/corrupt-<step>/` (never deleting it) and the trainer falls back to the previous one.
A checkpoint without a manifest (written by another tool, or before manifests were committed
with the step), or with a file its manifest does not list, is refused by every reader unless the
user opts in (`allow_unverified`; `--allow_unverified` on the commands, `faults.allow_unverified`
for the trainer): then it is checked structurally only.  orbax deletes old checkpoints (`keep`)
only after a new one finalised, so a failed save never costs the last good one.

A workdir that holds checkpoints of a *different* model is refused; with
`train.allow_overwrite=True` the old run is moved to `W/overwritten-<time>/`, never deleted.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import re
import sys
import threading
import time
import zlib
from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn

from flmjax.config import ModelConfig
from flmjax.model import abstract_params
from flmjax.storage import paths

ITEMS = ('state', 'config', 'meta', 'data')
JSON_ITEMS = ('config', 'meta', 'data')
MANIFEST = 'flmjax_manifest.json'
# orbax rewrites these while committing (after our manifest is written; on an object store in
# every item too): not data, not listed.
_ORBAX_COMMIT_FILES = ('_CHECKPOINT_METADATA', 'commit_success.txt')
TMP_MARKER = '.orbax-checkpoint-tmp'
_STAGE_RE = re.compile(r'^stage_(\d+)$')


class CheckpointError(RuntimeError):
  """A checkpoint or workdir cannot be used; the message names the path."""


class UnverifiedCheckpointError(CheckpointError):
  """A checkpoint without a manifest, or with files its manifest does not list: its bytes
  cannot be checked, so it is not read unless the user opts in (`OPT_IN`)."""


OPT_IN = ('--allow_unverified (flmjax sample, eval, grow) or '
          '--config.faults.allow_unverified=True (flmjax train)')


def stage_dir(workdir: str, stage: int) -> str:
  return paths.join(paths.absolute(workdir), f'stage_{stage}')


def stage_dirs(workdir: str) -> dict[int, str]:
  if not paths.isdir(workdir):
    return {}
  out = {}
  for name in paths.listdir(workdir):
    m = _STAGE_RE.match(name)
    if m and paths.isdir(paths.join(workdir, name)):
      out[int(m.group(1))] = paths.join(paths.absolute(workdir), name)
  return dict(sorted(out.items()))


def steps_in(directory: str) -> list[int]:
  """Completed steps in a manager directory.  Local: orbax renames a temporary directory only
  when the step is complete.  Object store (no rename; orbax writes the step in place): a step
  is complete once its manifest, written last, is there (`committed`)."""
  if not paths.isdir(directory):
    return []
  return sorted(int(name) for name in paths.listdir(directory)
                if name.isdigit() and committed(paths.join(directory, name)))


def committed(step_dir: str) -> bool:
  """Whether a step directory holds a complete checkpoint (see `steps_in`)."""
  if paths.is_remote(step_dir):
    return paths.exists(paths.join(step_dir, MANIFEST))
  return paths.isdir(paths.join(step_dir, 'meta'))


class StageCheckpointer:
  """Async orbax manager for one stage directory; keeps the last `keep` checkpoints.

  The manifest of each save is written (by process 0) from orbax's commit callback into the
  temporary directory, before the rename that commits the step.  Where orbax commits without a
  temporary directory, it is written after the save finalised instead (next save, `wait`,
  `close`).  A failed save raises `CheckpointError`; orbax removes old checkpoints only after a
  save finalised, so the previous ones stay.  `async_save=False` waits for each save."""

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    self.directory = paths.absolute(directory)
    self._async = async_save
    self._in_flight: Optional[int] = None
    self._failed: Optional[CheckpointError] = None  # a save failed: `close` keeps its error
    _quiet_abandoned_reads()  # a write that fails (a full disk) leaves TensorStore callbacks
    # finding the event loop closed, as failed reads do: 20-60 tracebacks before the error line
    absl_log = logging.getLogger('absl')
    quiet = _ReadOnlyNotes() if read_only else None
    if quiet:  # orbax notes three times that a reader's manager is read-only, on every load
      absl_log.addFilter(quiet)
    try:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=True, create=not read_only,
          read_only=read_only,
          async_options=ocp.AsyncOptions(post_finalization_callback=self._manifest_before_commit))
      self.mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    finally:
      if quiet:
        absl_log.removeFilter(quiet)
    self._unmanifested: list[int] = []
    self._manifester: Optional[threading.Thread] = None
    self._primary = jax.process_index() == 0

  def _manifest_before_commit(self) -> None:
    """orbax's callback: the step's data is final, its temporary directory not yet renamed.
    On an object store orbax writes the step in place (no temporary directory): the manifest,
    written now, is what commits it (`committed`)."""
    step = self._in_flight
    if step is None or not self._primary:
      return
    if paths.is_remote(self.directory):
      write_manifest(paths.join(self.directory, str(step)))
      return
    tmp = [paths.join(self.directory, n) for n in paths.listdir(self.directory)
           if n.startswith(f'{step}{TMP_MARKER}')]
    if len(tmp) == 1:
      write_manifest(tmp[0])

  def save(self, step: int, state: Mapping[str, Any], *, config: Mapping[str, Any],
           meta: Mapping[str, Any], data_state: Optional[Mapping[str, Any]]) -> None:
    self.wait()  # orbax would wait for the previous save anyway; now we can manifest it
    self._in_flight = step
    try:
      self.mngr.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(dict(state)),
          config=ocp.args.JsonSave(_jsonable(config)),
          meta=ocp.args.JsonSave(_jsonable(meta)),
          data=ocp.args.JsonSave(_jsonable(data_state or {}))))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    self._unmanifested.append(step)
    if not self._async:
      self.wait(manifests='now')

  def _save_error(self, step: int, e: BaseException) -> CheckpointError:
    kept = steps_in(self.directory)
    partial = sorted(n for n in paths.listdir(self.directory) if TMP_MARKER in n) \
        if paths.isdir(self.directory) else []
    left = (f'; the unfinished {", ".join(partial)} in it is removed when the run restarts'
            if partial else '')
    reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
    if is_disk_full(e):  # the cause's text is orbax's path dump, cut mid-word: say what it means
      self._failed = CheckpointError(
          f'saving checkpoint step {step} in {self.directory} failed: No space left on device. '
          f'Earlier checkpoints are kept (complete steps here: {kept or "none"}){left}; free '
          f'space there, then run the same command again to resume from the newest complete '
          f'one (--debug shows the details).')
      return self._failed
    self._failed = CheckpointError(
        f'saving checkpoint step {step} in {self.directory} failed: {type(e).__name__}: '
        f'{reason}. Earlier checkpoints are kept (complete steps here: {kept or "none"}){left}; '
        'check disk space and permissions, then restart to resume from the newest complete one.')
    return self._failed

  def check(self, step: int) -> None:
    """Raise `CheckpointError` as soon as the in-flight async save has failed; called after
    every training step (`step`: the one just trained).  Never waits: it looks only once orbax
    says the save is over, so a failure stops the run at the next step, not at the next save."""
    if not self._unmanifested or self.mngr.is_saving_in_progress():
      return
    try:
      self.wait()
    except CheckpointError as e:
      raise CheckpointError(f'{e} Training stopped at step {step}, as soon as the failure was '
                            'known.') from e

  def latest_step(self) -> Optional[int]:
    return self.mngr.latest_step()

  def read_json(self, step: int, item: str) -> dict:
    return read_json(paths.join(self.directory, str(step)), item)

  def restore_state(self, step: int, abstract_state: Any, partial: bool = False) -> Any:
    """Restore `state` onto the shardings of `abstract_state` (ShapeDtypeStructs)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    _quiet_abandoned_reads()  # before the read: a failure's leftovers may report at once
    error = None
    try:
      out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract_state, restore_args=restore_args, partial_restore=partial)))
    except Exception as e:  # pylint: disable=broad-except  (tensorstore raises its own types)
      error = CheckpointError(
          f'cannot restore checkpoint step {step}: '
          f'{paths.join(self.directory, str(step), "state")}: {_short_reason(e)}')
    if error is not None:  # outside `except`: nothing holds orbax's failed reads any more
      gc.collect()  # finalise them now, quietly, not after the error line or at exit
      raise error
    return out['state']

  def wait(self, *, manifests: str = 'background') -> None:
    """Wait for the in-flight save, then manifest every finalised one — in a background thread
    (hashing a large checkpoint must not stall training) unless `manifests='now'`."""
    pending = self._unmanifested[-1] if self._unmanifested else None
    if self._manifester is not None:
      self._manifester.join()
      self._manifester = None
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._unmanifested = []
      raise self._save_error(pending, e) from e
    steps, self._unmanifested = self._unmanifested, []
    self._in_flight = None
    if not (self._primary and steps):
      return
    dirs = [paths.join(self.directory, str(s)) for s in steps
            if not paths.exists(paths.join(self.directory, str(s), MANIFEST))]
    if not dirs:
      return
    if manifests == 'now':
      _write_manifests(dirs)
    else:
      self._manifester = threading.Thread(target=_write_manifests, args=(dirs,), daemon=True,
                                          name='flmjax-manifest')
      self._manifester.start()

  def close(self) -> None:
    try:
      self.wait(manifests='now')
    finally:
      try:
        self.mngr.close()
      except Exception as e:  # pylint: disable=broad-except
        # orbax re-raises the failed save's own OSError here; raised from `finally` it would
        # replace the CheckpointError that names the step (as the caller's error would be)
        if self._failed is None:
          raise self._save_error(self._in_flight, e) from e


def is_disk_full(e: BaseException) -> bool:
  """Whether a failed write (or its cause) is a full disk or quota: ENOSPC/EDQUOT, or the
  text TensorStore and orbax put it in (`RESOURCE_EXHAUSTED`, `No space left on device`)."""
  x, seen = e, 0
  while x is not None and seen < 10:
    if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(s in str(x) for s in ('RESOURCE_EXHAUSTED', 'No space left on device',
                                 'Disk quota exceeded')):
      return True
    x, seen = x.__cause__ or x.__context__, seen + 1
  return False


def _write_manifests(step_dirs: list[str]) -> None:
  for d in step_dirs:
    try:
      write_manifest(d)
    except FileNotFoundError:
      pass  # already removed by `keep` while we hashed it


def _short_reason(e: BaseException) -> str:
  """One line for a failed restore.  tensorstore's errors carry a multi-KB repr of the array
  spec; the line that says what and where (a status code, the array, the file) is the
  innermost error of the chain."""
  chain, x = [], e
  while x is not None and len(chain) < 10:
    chain.append(x)
    x = x.__cause__ or x.__context__
  for x in reversed(chain):
    line = _first_line(x)
    if re.match(r'[A-Z_]{5,}: ', line):
      return f'{line[:500]} (a truncated, missing or damaged file)'
  return f'{type(e).__name__}: {_first_line(e)[:300]}'


def _is_abandoned_read(text: str) -> bool:
  """Whether an error report is one of orbax's abandoned reads (a TensorStore read that failed
  or was cut short, or its callback finding the event loop already closed)."""
  return any(s in text for s in ('TensorStore', 'Event loop is closed', '_read_array',
                                 'OCDBT', 'reading array index'))


class _ReadOnlyNotes(logging.Filter):
  """Drops orbax's warnings that a read-only manager is read-only (what a reader asked for)."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not ('read_only=True' in msg or 'directory is read only' in msg)


class _AbandonedReadFilter(logging.Filter):
  """asyncio logs 'Task/Future exception was never retrieved' when a read orbax abandoned is
  garbage collected: drop those, keep every other asyncio record."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not ('never retrieved' in record.getMessage()
                and _is_abandoned_read(record.getMessage() + repr(record.exc_info)))


def _quiet_abandoned_reads() -> None:
  """Keep quiet the read coroutines orbax abandons when one of them fails, so a failed restore
  ends in its one-line error.  They surface three ways, around the error line, and some only
  under load (when the failure wins the race with the other reads): finalised by the garbage
  collector (sys.unraisablehook: a page of TensorStore spec), as asyncio's 'exception was never
  retrieved' log records, and as TensorStore's own callback threads finding the event loop closed
  (sys.excepthook: 'RuntimeError: Event loop is closed').  Every other error still reaches the
  previous hook or handler."""
  if not getattr(sys.unraisablehook, 'flmjax_quiet_reads', False):
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
      if _is_abandoned_read(f'{unraisable.exc_value} {unraisable.object!r}'):
        return
      previous(unraisable)
    hook.flmjax_quiet_reads = True
    sys.unraisablehook = hook
  if not getattr(sys.excepthook, 'flmjax_quiet_reads', False):
    previous_except = sys.excepthook

    def excepthook(kind, value, tb) -> None:
      # raised in asyncio's call_soon_threadsafe, called straight from a TensorStore thread
      if (kind is RuntimeError and str(value) == 'Event loop is closed' and tb is not None
          and tb.tb_frame.f_code.co_name == 'call_soon_threadsafe'):
        return
      previous_except(kind, value, tb)
    excepthook.flmjax_quiet_reads = True
    sys.excepthook = excepthook
  asyncio_log = logging.getLogger('asyncio')
  if not any(isinstance(f, _AbandonedReadFilter) for f in asyncio_log.filters):
    asyncio_log.addFilter(_AbandonedReadFilter())


def _first_line(e: BaseException) -> str:
  text = str(e).split('See full TensorStore details')[0].strip()
  return text.splitlines()[0].strip() if text else ''


def _jsonable(x: Any) -> Any:
  if isinstance(x, ml_collections.ConfigDict):
    x = x.to_dict()
  return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, 'item') else str(o)))


def read_json(step_dir: str, item: str) -> dict:
  """Read a JSON item of a step directory directly (no manager, no devices)."""
  item_dir = paths.join(step_dir, item)
  path = paths.join(item_dir, 'metadata')  # where orbax's JsonCheckpointHandler writes
  if not paths.isfile(path):
    raise CheckpointError(f'checkpoint item missing: {path}')
  try:
    return json.loads(paths.read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f'cannot read {path}: {e}') from e


# ---- integrity: manifests, verification, quarantine ----------------------------------------

def _crc32(path: str) -> str:
  crc = 0
  with paths.open_file(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      crc = zlib.crc32(chunk, crc)
  return f'{crc:08x}'


def _files(step_dir: str) -> list[str]:
  return [rel for rel in paths.walk_files(step_dir) if rel != MANIFEST and not rel.endswith('.tmp')
          and rel.rsplit('/', 1)[-1] not in _ORBAX_COMMIT_FILES]


def write_manifest(step_dir: str) -> None:
  """Record size and CRC32 of every data file of a final checkpoint (tmp file + rename; on an
  object store one PUT: the manifest is the step's commit marker there, written last)."""
  files = {rel: {'size': paths.getsize(paths.join(step_dir, rel)),
                 'crc32': _crc32(paths.join(step_dir, rel))} for rel in _files(step_dir)}
  paths.write_atomic(paths.join(step_dir, MANIFEST),
                     json.dumps({'version': 1, 'files': files}, indent=0))


def verify_step(step_dir: str, *, checksums: bool = True, allow_unverified: bool = False
                ) -> bool:
  """Raise `CheckpointError` naming the step and the file if the checkpoint is damaged.

  A checkpoint without a manifest, or with a file the manifest does not list, raises
  `UnverifiedCheckpointError` (nothing unverified is read) unless `allow_unverified`: then only
  the structure, the JSON items and the listed files are checked.  Returns True when the
  manifest vouched for every file, False otherwise."""
  step = paths.basename(step_dir.rstrip('/'))
  def bad(rel: str, why: str) -> CheckpointError:
    return CheckpointError(f'checkpoint step {step} is damaged: {paths.join(step_dir, rel)}: '
                           f'{why}')
  def unverified(why: str) -> bool:
    if allow_unverified:
      return False
    raise UnverifiedCheckpointError(
        f'checkpoint {step_dir} {why}, so its bytes cannot be verified; refusing to read it. '
        f'If you trust it (written by another tool or an older flmjax), pass {OPT_IN}')
  if not paths.isdir(paths.join(step_dir, 'state')):
    raise bad('state', 'item directory missing')
  for item in JSON_ITEMS:
    try:
      read_json(step_dir, item)
    except CheckpointError as e:
      raise bad(paths.join(item, 'metadata'), str(e).split(': ', 1)[0]
                if 'missing' in str(e) else 'unreadable JSON') from e
  path = paths.join(step_dir, MANIFEST)
  if not paths.exists(path):
    return unverified(f'has no manifest ({MANIFEST})')
  try:
    files = json.loads(paths.read_text(path))['files']
  except (OSError, ValueError, KeyError) as e:
    raise bad(MANIFEST, f'unreadable manifest ({e})') from e
  for rel, want in sorted(files.items()):
    full = paths.join(step_dir, rel)
    if not paths.isfile(full):
      raise bad(rel, 'file missing')
    size = paths.getsize(full)
    if size != want['size']:
      raise bad(rel, f'size {size} != {want["size"]} recorded at save (truncated or changed)')
    try:
      crc = _crc32(full) if checksums else want['crc32']
    except OSError as e:
      raise bad(rel, f'unreadable ({e.strerror or e})') from e
    if crc != want['crc32']:
      raise bad(rel, f'CRC32 {crc} != {want["crc32"]} recorded at save (checksum '
                     'mismatch: bytes changed)')
  unlisted = [rel for rel in _files(step_dir) if rel not in files]
  if unlisted:
    return unverified(f'holds {paths.join(step_dir, unlisted[0])}, which its manifest does not '
                      f'list{f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""}')
  return True


def quarantine(step_dir: str, reason: str) -> str:
  """Move a damaged checkpoint aside to `<stage dir>/corrupt-<step>[-n]/` with a note saying
  why; returns the new path.  Never deletes anything."""
  parent, step = paths.split(paths.absolute(step_dir))
  dest = paths.join(parent, f'corrupt-{step}')
  n = 1
  while paths.exists(dest):
    dest = paths.join(parent, f'corrupt-{step}-{n}')
    n += 1
  paths.move(step_dir, dest)
  paths.write_atomic(paths.join(dest, 'QUARANTINED.txt'),
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")} moved here from {step_dir}:\n{reason}\n')
  return dest


def discard_damaged(directories: Mapping[int, str], *, checksums: bool = True,
                    log: Callable[[str], None] = print, below: Optional[int] = None,
                    allow_unverified: bool = False) -> Optional[tuple[int, int]]:
  """Newest (stage, step) over `directories` ({stage: dir}) that verifies, moving each damaged
  newer one aside (and logging it).  `below`: only consider steps <= below.  An unverified
  checkpoint (no manifest) is not damaged: it raises `UnverifiedCheckpointError` unless
  `allow_unverified`, and is never moved."""
  for k, d in reversed(list(directories.items())):
    for step in reversed(steps_in(d)):
      if below is not None and step > below:
        continue
      step_dir = paths.join(d, str(step))
      try:
        if not verify_step(step_dir, checksums=checksums, allow_unverified=allow_unverified):
          log(f'checkpoint {step_dir} is not covered by a manifest: checked its structure only '
              '(faults.allow_unverified)')
        return k, step
      except UnverifiedCheckpointError:
        raise
      except CheckpointError as e:
        dest = quarantine(step_dir, str(e))
        log(f'{e}; moved it to {dest} and falling back to the previous checkpoint')
  return None


# ---- locating checkpoints ------------------------------------------------------------------

def latest(workdir: str) -> Optional[tuple[int, int]]:
  """(stage, step) of the newest complete checkpoint in a workdir, or None."""
  for k, d in reversed(list(stage_dirs(workdir).items())):
    steps = steps_in(d)
    if steps:
      return k, steps[-1]
  return None


def resolve_step_dir(path: str) -> str:
  """A step dir from: a step dir, a stage dir (latest step), or a workdir (latest stage)."""
  path = paths.absolute(path)
  if paths.isdir(paths.join(path, 'meta')) and paths.isdir(paths.join(path, 'state')):
    return path
  steps = steps_in(path)
  if steps:
    return _note_skipped(path, steps[-1])
  found = latest(path)
  if found:
    return _note_skipped(stage_dir(path, found[0]), found[1])
  raise CheckpointError(f'no complete checkpoint found under {path}')


def _note_skipped(directory: str, step: int) -> str:
  """The dir of `step`, saying on stderr which newer step dirs were passed over and why (a step
  without `meta/` is not a complete checkpoint; reading the one before it silently would look
  like the newest model)."""
  newer = sorted(int(n) for n in paths.listdir(directory)
                 if n.isdigit() and int(n) > step and not paths.isdir(
                     paths.join(directory, n, 'meta')))
  for n in newer:
    print(f'note: step {n} skipped ({paths.join(directory, str(n))} has no meta/, so it is not '
          f'a complete checkpoint); reading step {step}', file=sys.stderr)
  return paths.join(directory, str(step))


def dir_bytes(path: str) -> int:
  """Bytes of the files under `path` (0 when it is gone)."""
  return paths.tree_bytes(path)


def held_by_run(workdir: str, stage_models: list[ModelConfig]) -> dict[int, list[int]]:
  """{stage: [bytes of each complete checkpoint]} of the checkpoints in `workdir` that belong
  to this run (their stage's model is the config's): rotation (`keep`) deletes them, so the
  pre-flight counts them toward the space a run needs.  Another model's are not counted."""
  out = {}
  for k, d in stage_dirs(workdir).items():
    steps = steps_in(d)
    if not steps or k >= len(stage_models):
      continue
    try:
      saved = read_json(paths.join(d, str(steps[-1])), 'meta').get('model', {})
    except CheckpointError:
      continue
    want = stage_models[k].to_dict()
    if all(saved.get(f) == v for f, v in want.items()):
      out[k] = [dir_bytes(paths.join(d, str(s))) for s in steps]
  return out


def remove_leftover_temporaries(workdir: str) -> list[tuple[str, int]]:
  """Delete what a save that never finished (a crash, a full disk) left: orbax's temporary
  step directories, and on an object store the step directories without a commit marker (their
  manifest); only call it while holding the workdir lock.  Returns [(path, bytes)]."""
  removed = []
  for d in stage_dirs(workdir).values():
    for name in sorted(paths.listdir(d)):
      path = paths.join(d, name)
      unfinished = (TMP_MARKER in name or
                    (paths.is_remote(path) and name.isdigit() and not committed(path)))
      if unfinished and paths.isdir(path):
        size = dir_bytes(path)
        paths.rmtree(path)
        removed.append((path, size))
  return removed


# ---- workdir ownership -----------------------------------------------------------------

def check_workdir(workdir: str, stage_models: list[ModelConfig], *, allow_overwrite: bool,
                  is_primary: bool = True) -> Optional[str]:
  """Refuse a workdir whose checkpoints belong to a different model; returns the directory the
  old run was moved to when `allow_overwrite` (else None)."""
  mismatch = None
  for k, d in stage_dirs(workdir).items():
    steps = steps_in(d)
    if not steps:
      continue
    step_dir = paths.join(d, str(steps[-1]))
    saved = read_json(step_dir, 'meta').get('model', {})
    if k >= len(stage_models):
      mismatch = f'{step_dir} is stage {k} but this config has {len(stage_models)} stage(s)'
      break
    want = stage_models[k].to_dict()
    diffs = [f'{f}: saved {saved.get(f)!r} != config {want[f]!r}' for f in want
             if saved.get(f) != want[f]]
    if diffs:
      mismatch = f'{step_dir} holds a different model ({"; ".join(diffs)})'
      break
  if mismatch is None:
    return None
  if not allow_overwrite:
    raise CheckpointError(
        f'refusing workdir {workdir}: {mismatch}. Use another --workdir, or pass '
        f'--config.train.allow_overwrite=True to move the old run aside (nothing is deleted).')
  dest = paths.join(workdir, time.strftime('overwritten-%Y%m%d-%H%M%S'))
  if is_primary:
    paths.makedirs(dest)
    for name in paths.listdir(workdir):
      if _STAGE_RE.match(name) or name in ('metrics.jsonl', 'tb', 'summary.json'):
        paths.move(paths.join(workdir, name), paths.join(dest, name))
  return dest


# ---- offline helpers (`flmjax grow`, evaluation, sampling) ---------------------------------

def _model_from_meta(meta: Mapping[str, Any], step_dir: str) -> ModelConfig:
  if 'model' not in meta:
    raise CheckpointError(f'{step_dir}/meta has no "model" entry')
  return ModelConfig.from_dict(meta['model'])


def _abstract_params(model_cfg: ModelConfig, sharding_fn=None) -> Any:
  tree = nn.meta.unbox(abstract_params(model_cfg))
  if sharding_fn is None:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    sharding_fn = lambda _: dev
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), tree)


def load_params(path: str, shardings: Any = None, *, allow_unverified: bool = False
                ) -> tuple[ModelConfig, Any, ml_collections.ConfigDict]:
  """(ModelConfig, params, experiment config) of the checkpoint at `path` (step, stage or
  workdir), verified against its manifest (`verify_step`).  Params land on the first device
  unless `shardings` (a tree like params) is given."""
  step_dir = resolve_step_dir(path)
  verify_step(step_dir, allow_unverified=allow_unverified)
  meta = read_json(step_dir, 'meta')
  model_cfg = _model_from_meta(meta, step_dir)
  config = ml_collections.ConfigDict(read_json(step_dir, 'config'))
  abstract = _abstract_params(model_cfg)
  if shardings is not None:
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  mngr = StageCheckpointer(paths.dirname(step_dir), read_only=True)
  try:
    state = mngr.restore_state(int(paths.basename(step_dir)), {'params': abstract},
                               partial=True)
  finally:
    mngr.close()
  return model_cfg, state['params'], config


def restore_step(step_dir: str, abstract_state: Any, *, allow_unverified: bool = False) -> Any:
  """Restore the whole state of one step directory into `abstract_state` (read-only), after
  verifying it against its manifest (`verify_step`)."""
  verify_step(step_dir, allow_unverified=allow_unverified)
  mngr = StageCheckpointer(paths.dirname(step_dir), read_only=True)
  try:
    return mngr.restore_state(int(paths.basename(step_dir)), abstract_state)
  finally:
    mngr.close()


def save_state(path: str, config: Mapping[str, Any], state: Mapping[str, Any], *,
               meta: Mapping[str, Any], data_state: Optional[Mapping[str, Any]] = None) -> str:
  """Write `state` (the trainer's state dict) as a checkpoint at `path` (a stage directory) at
  step `state['step']`; synchronous.  `meta` needs at least 'model' and 'stage'.  Refuses to
  replace an existing step."""
  for key in ('model', 'stage'):
    if key not in meta:
      raise CheckpointError(f'save_state: meta needs {key!r}')
  step = int(np.asarray(jax.device_get(state['step'])))
  if step in steps_in(path):
    raise CheckpointError(f'save_state: {paths.join(path, str(step))} already exists')
  mngr = StageCheckpointer(path, keep=1 << 30, async_save=False)
  try:
    mngr.save(step, state, config=config, meta=meta, data_state=data_state)
  finally:
    mngr.close()
  return paths.join(paths.absolute(path), str(step))
