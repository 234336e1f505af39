"""Metrics sinks: `W/metrics.jsonl` (one JSON object per line) and TensorBoard events in `W/tb/`.

Only process 0 writes.  On resume, records after the restored step are dropped (they belong to
steps that will be re-run), so plots never show a trajectory twice.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl file (skips a torn last line from a crash)."""
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
  return out


def _jsonable(v: Any) -> Any:
  if hasattr(v, 'item'):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


class MetricsWriter:
  """Appends metrics to jsonl and TensorBoard; `resume_step` truncates records after it."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: Optional[int] = None,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      records = read_metrics(self.path)
      keep = [r for r in records if resume_step is not None and r.get('step', 0) <= resume_step]
      if len(keep) != len(records):
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
          for r in keep:
            f.write(json.dumps(r) + '\n')
        os.replace(tmp, self.path)
    self._file = open(self.path, 'a')
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
