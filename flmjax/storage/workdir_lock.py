"""One writer per workdir: an exclusive lock file `W/.flmjax.lock` holding the writer's pid, host
and process start time.

Why a lock *file* created with O_CREAT|O_EXCL rather than `fcntl.flock`: exclusive create is
atomic on local filesystems and on NFSv3+/Lustre/GPFS alike, while `flock` is local-only or
silently a no-op on several shared filesystems (and a flock held by a dead host may never be
released).  The file also says *who* holds the workdir, so a refused run can name it.

A lock left by a run that died (`kill -9`, power loss) is stale: on the same host, its pid no
longer runs, or runs a different process (the start time differs: the pid was reused).  A stale
lock is taken over (renamed aside first, so two runs cannot both take it).  A lock from another
host cannot be checked from here; the error says how to remove it once that run is gone.

On an object store (`gs://`) there is no O_EXCL and no rename: the lock is a create-only PUT
(`ifGenerationMatch=0`: of two writers exactly one creates it), and its holder rewrites it every
`HEARTBEAT_S` seconds (only while the object is still the generation it wrote), so a lock from
another host whose heartbeat is older than `STALE_AFTER_S` is stale too.  A stale lock is taken
over by overwriting exactly the generation that was judged stale (`ifGenerationMatch`): of two
runs taking it over, one wins.  Release never removes a lock another run took over: it first
overwrites the lock with a "released" record only if it is still the generation we wrote (one
conditional request, so a takeover in between makes it fail and the lock is left alone), then
deletes that record only if it is still that generation (`ifGenerationMatch` on the delete:
Google honours it; the bundled fake-gcs-server ignores delete preconditions, which is why the
conditional overwrite comes first).  A "released" record that stays (the delete failed) is a
free lock to the next run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional

from flmjax.storage import paths

LOCK_NAME = '.flmjax.lock'
HEARTBEAT_S = 30.0  # object stores: how often the holder rewrites the lock
STALE_AFTER_S = 300.0  # object stores: a lock not rewritten for this long is stale


class WorkdirLockedError(RuntimeError):
  """Another live process writes to this workdir."""


def _start_time(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (Linux), None where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _read(path: str) -> Optional[dict]:
  try:
    return json.loads(paths.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable / half-written: judged by age below


def holder_is_gone(holder: dict, lock_path: str) -> bool:
  """Whether the lock's holder is certainly dead: on its own host by its pid; on an object
  store also by its heartbeat's age (any host)."""
  if holder.get('released'):  # its holder released it; only the delete did not happen
    return True
  if not holder:  # torn write: the writer died between create and write
    try:
      return time.time() - paths.getmtime(lock_path) > 60
    except OSError:
      return True
  if holder.get('host') != socket.gethostname():
    beat = holder.get('heartbeat')
    return (paths.is_remote(lock_path) and beat is not None
            and time.time() - float(beat) > STALE_AFTER_S)
  pid = int(holder.get('pid', -1))
  if pid <= 0 or not _running(pid):
    return True
  started = holder.get('started')
  return started is not None and _start_time(pid) not in (None, started)


class WorkdirLock:
  """Held while a run writes to a workdir; `release` removes it only if it is still ours."""

  def __init__(self, workdir: str, what: str = 'flmjax'):
    self.path = paths.join(paths.absolute(workdir), LOCK_NAME)
    self.record = {'pid': os.getpid(), 'host': socket.gethostname(),
                   'started': _start_time(os.getpid()), 'since': time.strftime('%Y-%m-%d %H:%M:%S'),
                   'what': what}
    self.held = False
    self._generation = 0  # object stores: the generation we wrote last
    self._stop = threading.Event()
    self._beat: Optional[threading.Thread] = None

  def _data(self) -> bytes:
    record = dict(self.record, heartbeat=time.time()) if paths.is_remote(self.path) \
        else self.record
    return json.dumps(record).encode()

  def acquire(self, log: Callable[[str], None] = print) -> 'WorkdirLock':
    """Take the lock or raise `WorkdirLockedError` naming the holder; OSError if the workdir
    cannot be created or written."""
    paths.makedirs(paths.dirname(self.path))
    for _ in range(5):
      try:
        self._generation = self._create()
      except FileExistsError:
        seen = paths.generation(self.path)
        holder = _read(self.path)
        if holder is None or seen is None:
          continue  # released meanwhile: try again
        if not holder_is_gone(holder, self.path):
          raise WorkdirLockedError(self._locked_message(holder)) from None
        if not self._take_over(seen):
          continue  # another run changed it first: judge again
        if not holder.get('released'):
          log(f'workdir lock {self.path} was left by pid {holder.get("pid")} on '
              f'{holder.get("host")}, which is gone (killed?): taking it over')
        if not paths.is_remote(self.path):
          continue  # removed: now create it
      self.held = True
      if paths.is_remote(self.path):
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name='flmjax-lock-heartbeat')
        self._beat.start()
      return self
    raise WorkdirLockedError(f'could not take the workdir lock {self.path}: it keeps changing '
                             'hands; is another run starting in this workdir?')

  def _locked_message(self, holder: dict) -> str:
    who = (f'pid {holder.get("pid")} on host {holder.get("host")} ({holder.get("what")}, since '
           f'{holder.get("since")})') if holder else 'a process that is still writing the lock'
    same_host = holder.get('host') == socket.gethostname()
    hint = ('wait for it or stop it' if same_host else
            f'wait for it or stop it; if that run is gone for good, delete {self.path}')
    return (f'workdir {paths.dirname(self.path)} is in use by {who}: one run writes a '
            f'workdir at a time; {hint}, or choose another --workdir')

  def _create(self) -> int:
    """Create the lock (FileExistsError when it exists).  An object store that cannot be
    reached or written is a `StorageError` naming the lock, after the client's retries."""
    try:
      return paths.create_exclusive(self.path, self._data())
    except FileExistsError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (the client's own error types)
      if not paths.is_remote(self.path):
        raise
      raise paths.storage_error(self.path, e, 'write the workdir lock') from e

  def _take_over(self, generation: int) -> bool:
    """Take the stale lock we judged; False when someone else changed or removed it first.
    Local: rename it aside (atomic: of two runs taking it over, one wins), the caller creates
    it again; object store: overwrite only that generation with our record (we then hold it)."""
    try:
      if paths.is_remote(self.path):
        self._generation = paths.put_if_generation(self.path, self._data(), generation)
      else:
        aside = f'{self.path}.stale-{os.getpid()}'
        os.rename(self.path, aside)
        os.remove(aside)
    except (FileNotFoundError, FileExistsError):
      return False
    return True

  def _heartbeat(self) -> None:
    """Object stores: rewrite the lock every HEARTBEAT_S while it is still the generation we
    wrote; if another run took it over (we were judged stale), say so once and stop beating."""
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._generation = paths.put_if_generation(self.path, self._data(), self._generation)
      except FileExistsError:
        print(f'workdir lock {self.path} was taken over by another run (this one missed its '
              f'heartbeat for {STALE_AFTER_S:.0f} s): two runs may now write this workdir',
              file=sys.stderr, flush=True)
        return
      except Exception:  # pylint: disable=broad-except  (a transient error: beat again later)
        continue

  def _ours(self, holder: Optional[dict]) -> bool:
    return bool(holder) and all(holder.get(k) == v for k, v in self.record.items())

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
    try:
      if paths.is_remote(self.path):
        self._release_remote()
      elif self._ours(_read(self.path)):
        paths.remove(self.path)
    except FileNotFoundError:
      pass
    except Exception as e:  # pylint: disable=broad-except  (a server gone: say so, keep the
      if not paths.is_remote(self.path):  # run's own outcome; the lock is then stale by pid)
        raise
      print(f'could not remove the workdir lock {self.path} ({paths.describe_error(e)}); the '
            'next run takes it over as stale', file=sys.stderr, flush=True)

  def _release_remote(self) -> None:
    """Mark the lock released only if it is still the generation we wrote, then delete that
    generation: never a lock another run took over meanwhile (see the module's docstring)."""
    try:
      released = paths.put_if_generation(
          self.path, json.dumps(dict(self.record, released=time.time())).encode(),
          self._generation)
    except FileExistsError:
      print(f'workdir lock {self.path} is held by another run now (this one was judged stale): '
            'left in place', file=sys.stderr, flush=True)
      return
    paths.delete_if_generation(self.path, released)

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
