"""Metrics sinks: `W/metrics.jsonl` (one JSON object per line) and TensorBoard events in `W/tb/`.

Writing metrics never blocks or ends training by itself: see `MetricsWriter`.

Only process 0 writes, and only by appending: the file is never replaced, so nothing another
writer or an earlier run logged is ever lost.  On resume, records after the restored step belong
to steps that will be re-run; instead of deleting them, a marker `{"resumed_at_step": N}` is
appended, and `read_metrics` drops the records before a marker whose step is after N, so readers
never see a trajectory twice.

Object stores (`gs://`) cannot append: there the writer keeps the file's text and uploads it
whole (one PUT, so a reader sees an old or a new version, never a torn one) at most every
`UPLOAD_EVERY_S` seconds, before every checkpoint save (`sync`: the bucket's metrics never lag
behind a checkpoint) and on close; TensorBoard events are written to a local spool folder and
uploaded the same way.  A crash (`kill -9`) loses the records since the last upload — at most
`UPLOAD_EVERY_S` seconds, all of them after the last checkpoint, so a resume re-runs and logs
those steps again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping, Optional

from flmjax.storage import paths


RESUME_KEY = 'resumed_at_step'
UPLOAD_EVERY_S = 30.0  # object stores: the longest a record waits before reaching the bucket


def current_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The records of the trajectory that stands: each resume marker drops the records before it
  whose step is after the resumed step (they were re-run)."""
  out: list[dict[str, Any]] = []
  for r in records:
    if RESUME_KEY in r and 'step' not in r:
      out = [o for o in out if o.get('step', 0) <= r[RESUME_KEY]]
    else:
      out.append(r)
  return out


def read_metrics(path: str, *, raw: bool = False) -> list[dict[str, Any]]:
  """The current records of a metrics.jsonl file (all lines with `raw`, markers included);
  skips a torn line from a crash."""
  out = []
  if not paths.exists(path):
    return out
  with paths.open_file(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out if raw else current_records(out)


def _ends_with_newline(path: str) -> bool:
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


def _jsonable(v: Any) -> Any:
  if hasattr(v, 'item'):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


class MetricsError(RuntimeError):
  """`metrics.jsonl` cannot be written (a full disk): the trainer stops after a checkpoint
  attempt, with this message saying what happened to both."""


class _ObjectFile:
  """An append-only text file on an object store: the text is kept here and uploaded whole (one
  PUT) by `flush` at most every UPLOAD_EVERY_S seconds, by `sync` at once.  A failed upload
  raises OSError, as a failed local write would."""

  def __init__(self, path: str):
    self.path = path
    self._text = paths.read_text(path) if paths.exists(path) else ''
    self._uploaded = time.monotonic()
    self._dirty = False

  def torn(self) -> bool:
    return bool(self._text) and not self._text.endswith('\n')

  def write(self, s: str) -> None:
    self._text += s
    self._dirty = True

  def flush(self) -> None:
    if self._dirty and time.monotonic() - self._uploaded >= UPLOAD_EVERY_S:
      self.sync()

  def sync(self) -> None:
    if self._dirty:
      try:
        paths.write_atomic(self.path, self._text)
      except Exception as e:  # an HTTP error of the client library: a failed write all the same
        if isinstance(e, OSError):
          raise
        raise OSError(paths.describe_error(e)) from e
      self._dirty = False
    self._uploaded = time.monotonic()

  def close(self) -> None:
    self.sync()


class _TensorBoard:
  """Scalars as TensorBoard event files, written on the caller's thread.

  tensorboardX's SummaryWriter hands events to a thread through a bounded queue; once that
  thread dies (a full disk), every later write — and the writer's close — blocks forever.
  Written here, a failure raises at once and the caller decides."""

  FLUSH_EVERY_S = 10.0

  def __init__(self, logdir: str):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
    self.logdir = logdir
    # object stores: events go to a local spool folder, uploaded on every flush
    self._spool = tempfile.mkdtemp(prefix='flmjax-tb-') if paths.is_remote(logdir) else None
    local = self._spool or logdir
    os.makedirs(local, exist_ok=True)
    self._pb = event_pb2, summary_pb2
    self._events = EventsWriter(os.path.join(local, 'events'))
    self._flushed = time.monotonic()
    self._flush_every_s = UPLOAD_EVERY_S if self._spool else self.FLUSH_EVERY_S

  def add(self, step: int, scalars: Mapping[str, float]) -> None:
    event_pb2, summary_pb2 = self._pb
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._events.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary_pb2.Summary(value=values)))
    if time.monotonic() - self._flushed > self._flush_every_s:
      self.sync()

  def sync(self) -> None:
    self._events.flush()
    self._flushed = time.monotonic()
    if self._spool:
      for name in os.listdir(self._spool):
        with open(os.path.join(self._spool, name), 'rb') as f:
          paths.write_atomic(paths.join(self.logdir, name), f.read())

  def close(self) -> None:
    self._events.close()
    if self._spool:
      try:
        self.sync()
      finally:
        shutil.rmtree(self._spool, ignore_errors=True)


def _reason(e: BaseException) -> str:
  return (e.strerror if isinstance(e, OSError) and e.strerror else
          f'{type(e).__name__}: {str(e).strip()[:200]}')


class MetricsWriter:
  """Appends metrics to jsonl and TensorBoard; `resume_step` supersedes records after it.

  Never blocks training and never raises on a write: a TensorBoard failure drops that sink
  (said once on stderr; metrics.jsonl keeps every value); a metrics.jsonl failure sets
  `failed` (a one-line reason), which the trainer turns into a stop after a checkpoint."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: Optional[int] = None,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = paths.join(workdir, 'metrics.jsonl')
    self.failed: Optional[str] = None
    self._tb: Optional[_TensorBoard] = None
    self._file = None
    if not enabled:
      return
    paths.makedirs(workdir)
    after = [r for r in read_metrics(self.path) if r.get('step', 0) > (resume_step or 0)]
    if paths.is_remote(self.path):
      self._file = _ObjectFile(self.path)
      torn = self._file.torn()
    else:
      torn = os.path.exists(self.path) and os.path.getsize(self.path) and not _ends_with_newline(
          self.path)
      self._file = open(self.path, 'a')
    if torn:  # a crash cut the last line: end it, so the next record is a line of its own
      self._file.write('\n')
    if after:
      self._file.write(json.dumps({RESUME_KEY: int(resume_step or 0)}) + '\n')
      self._file.flush()
    if tensorboard:
      tb_dir = paths.join(workdir, 'tb')
      try:
        self._tb = _TensorBoard(tb_dir)
      except Exception as e:  # pylint: disable=broad-except  (a sink, not the run)
        self._drop_tensorboard(tb_dir, e)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    if self._file is not None:
      try:
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()
      except OSError as e:
        self.failed = (f'cannot append to {self.path}: {_reason(e)} (the metrics of step '
                       f'{int(step)} are not in it)')
        self._close_quietly(self._file)
        self._file = None
    if self._tb is not None:
      scalars = {k: v for k, v in record.items()
                 if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)}
      try:
        self._tb.add(int(step), scalars)
      except Exception as e:  # pylint: disable=broad-except  (a sink, not the run)
        tb, self._tb = self._tb, None
        self._close_quietly(tb)
        self._drop_tensorboard(tb.logdir, e)

  def sync(self) -> None:
    """Object stores: upload what is not in the bucket yet (the trainer calls it before every
    checkpoint save); a no-op on local files, which are flushed at every record."""
    if isinstance(self._file, _ObjectFile):
      try:
        self._file.sync()
      except OSError as e:
        self.failed = f'cannot upload {self.path}: {_reason(e)}'
    if self._tb is not None and self._tb._spool:  # pylint: disable=protected-access
      try:
        self._tb.sync()
      except Exception as e:  # pylint: disable=broad-except  (a sink, not the run)
        tb, self._tb = self._tb, None
        self._close_quietly(tb)
        self._drop_tensorboard(tb.logdir, e)

  @staticmethod
  def _drop_tensorboard(logdir: str, e: BaseException) -> None:
    print(f'metrics: cannot write TensorBoard events in {logdir} ({_reason(e)}); continuing '
          f'without TensorBoard (metrics.jsonl keeps every value)', file=sys.stderr, flush=True)

  @staticmethod
  def _close_quietly(sink: Any) -> None:
    try:
      sink.close()
    except Exception:  # pylint: disable=broad-except  (it already failed; said once)
      pass

  def close(self) -> None:
    if not self.enabled:
      return
    for sink in (self._file, self._tb):
      if sink is not None:
        self._close_quietly(sink)
    self._file = self._tb = None
