"""Metrics sinks: `W/metrics.jsonl` (one JSON object per line) and TensorBoard events in `W/tb/`.

Only process 0 writes, and only by appending: the file is never replaced, so nothing another
writer or an earlier run logged is ever lost.  On resume, records after the restored step belong
to steps that will be re-run; instead of deleting them, a marker `{"resumed_at_step": N}` is
appended, and `read_metrics` drops the records before a marker whose step is after N, so readers
never see a trajectory twice.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional


RESUME_KEY = 'resumed_at_step'


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
  if not os.path.exists(path):
    return out
  with open(path) as f:
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


class MetricsWriter:
  """Appends metrics to jsonl and TensorBoard; `resume_step` supersedes records after it."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: Optional[int] = None,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    after = [r for r in read_metrics(self.path) if r.get('step', 0) > (resume_step or 0)]
    torn = os.path.exists(self.path) and os.path.getsize(self.path) and not _ends_with_newline(
        self.path)
    self._file = open(self.path, 'a')
    if torn:  # a crash cut the last line: end it, so the next record is a line of its own
      self._file.write('\n')
    if after:
      self._file.write(json.dumps({RESUME_KEY: int(resume_step or 0)}) + '\n')
      self._file.flush()
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
