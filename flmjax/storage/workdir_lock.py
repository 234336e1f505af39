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
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable, Optional

LOCK_NAME = '.flmjax.lock'


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
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable / half-written: judged by age below


def holder_is_gone(holder: dict, lock_path: str) -> bool:
  """Whether the lock's holder is certainly dead (only decidable on its own host)."""
  if not holder:  # torn write: the writer died between create and write
    try:
      return time.time() - os.path.getmtime(lock_path) > 60
    except OSError:
      return True
  if holder.get('host') != socket.gethostname():
    return False
  pid = int(holder.get('pid', -1))
  if pid <= 0 or not _running(pid):
    return True
  started = holder.get('started')
  return started is not None and _start_time(pid) not in (None, started)


class WorkdirLock:
  """Held while a run writes to a workdir; `release` removes it only if it is still ours."""

  def __init__(self, workdir: str, what: str = 'flmjax'):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.record = {'pid': os.getpid(), 'host': socket.gethostname(),
                   'started': _start_time(os.getpid()), 'since': time.strftime('%Y-%m-%d %H:%M:%S'),
                   'what': what}
    self.held = False

  def acquire(self, log: Callable[[str], None] = print) -> 'WorkdirLock':
    """Take the lock or raise `WorkdirLockedError` naming the holder; OSError if the workdir
    cannot be created or written."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(self.path)
        if holder is None:
          continue  # released meanwhile: try again
        if not holder_is_gone(holder, self.path):
          raise WorkdirLockedError(self._locked_message(holder)) from None
        aside = f'{self.path}.stale-{os.getpid()}'
        try:
          os.rename(self.path, aside)  # atomic: of two runs taking it over, one wins
        except FileNotFoundError:
          continue
        os.remove(aside)
        log(f'workdir lock {self.path} was left by pid {holder.get("pid")} on '
            f'{holder.get("host")}, which is gone (killed?): taking it over')
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(self.record, f)
        f.flush()
        os.fsync(f.fileno())
      self.held = True
      return self
    raise WorkdirLockedError(f'could not take the workdir lock {self.path}: it keeps changing '
                             'hands; is another run starting in this workdir?')

  def _locked_message(self, holder: dict) -> str:
    who = (f'pid {holder.get("pid")} on host {holder.get("host")} ({holder.get("what")}, since '
           f'{holder.get("since")})') if holder else 'a process that is still writing the lock'
    same_host = holder.get('host') == socket.gethostname()
    hint = ('wait for it or stop it' if same_host else
            f'wait for it or stop it; if that run is gone for good, delete {self.path}')
    return (f'workdir {os.path.dirname(self.path)} is in use by {who}: one run writes a '
            f'workdir at a time; {hint}, or choose another --workdir')

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    if _read(self.path) == self.record:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
