"""`flmjax plot`: validation loss against FLOPs and tokens, growth events marked, runs compared.

Reads only `W/metrics.jsonl`, so it works on a run in progress and on any run that wrote one.
"""

from __future__ import annotations

import io
import json
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from flmjax import curves  # noqa: E402
from flmjax.storage import paths  # noqa: E402
from flmjax.storage.metrics import current_records  # noqa: E402


class PlotError(ValueError):
  """A metrics file that cannot be plotted (empty, not JSON lines); the message names it."""


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of `W/metrics.jsonl`; a malformed line is an error naming file and line."""
  path = paths.join(workdir, 'metrics.jsonl')
  if not paths.exists(path):
    raise FileNotFoundError(f'{path}: no metrics file (is {workdir!r} an flmjax workdir?)')
  rows = []
  with paths.open_file(path, 'rb') as f:
    for lineno, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        rec = json.loads(raw.decode('utf-8'))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8 text'
        raise PlotError(f'{path}:{lineno}: not valid JSON ({why}); is it a metrics.jsonl '
                        f'written by flmjax train?') from None
      if not isinstance(rec, dict):
        raise PlotError(f'{path}:{lineno}: expected a JSON object per line, got '
                        f'{type(rec).__name__}')
      rows.append(rec)
  return current_records(rows)


def _dedupe_by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """A resumed run re-logs steps after its checkpoint; keep the last record of each step.  The
  grown model's evaluation at the growth step (`after_growth`) is left out: that step belongs to
  the old stage, whose last step is always logged."""
  by_step: dict[int, dict[str, Any]] = {}
  for r in rows:
    if 'step' in r and not r.get('after_growth'):
      by_step.setdefault(int(r['step']), {}).update(r)
  return [by_step[s] for s in sorted(by_step)]


def val_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
  """{metric name: [(flops, tokens, value)]} for every `val_loss*` metric present."""
  out: dict[str, list[tuple[float, float, float]]] = {}
  for r in _dedupe_by_step(rows):
    for k, v in r.items():
      if k.startswith('val_loss') and v is not None:
        out.setdefault(k, []).append((float(r.get('flops', 0.0)), float(r.get('tokens', 0.0)),
                                      float(v)))
  return out


def growth_events(rows: list[dict[str, Any]]) -> list[tuple[float, float, Any]]:
  """(flops, tokens, new stage) at each growth: the old stage's last step (the trainer always
  logs it), not the new stage's first logged record, up to `log_every` steps later."""
  events, last = [], None
  for r in _dedupe_by_step(rows):
    stage = r.get('stage')
    if stage is None:
      continue
    if last is not None and stage != last.get('stage'):
      events.append((float(last.get('flops', 0.0)), float(last.get('tokens', 0.0)), stage))
    last = r
  return events


def plot_runs(workdir: str, compare: str | None = None, out_dir: str | None = None) -> list[str]:
  """Writes `val_loss_vs_flops.png` and `val_loss_vs_tokens.png`; returns their paths."""
  runs = [(_run_name(workdir), read_metrics(workdir))]
  if compare:
    runs.append((_run_name(compare), read_metrics(compare)))
  out_dir = out_dir or workdir
  paths.makedirs(out_dir)
  written = []
  for axis, (xi, xlabel) in {'flops': (0, 'training FLOPs'), 'tokens': (1, 'tokens')}.items():
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_i, (name, rows) in enumerate(runs):
      style = '-' if run_i == 0 else '--'
      series = val_series(rows)
      if not series:
        raise PlotError(f'{name}: metrics.jsonl has no val_loss* records to plot (none '
                        f'logged yet: a run evaluates every train.eval_every steps and at the end '
                        f'of each stage)')
      for metric, pts in sorted(series.items()):
        ax.plot([p[xi] for p in pts], [p[2] for p in pts], style, marker='.',
                label=f'{name}: {metric}')
      for ev in growth_events(rows):
        ax.axvline(ev[xi], color='grey', linestyle=':', linewidth=1)
        ax.text(ev[xi], ax.get_ylim()[1], f' grow→{ev[2]}', rotation=90, va='top', fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('validation loss (nats/token)')
    if axis == 'flops':
      ax.set_xscale('log')
    ax.set_title(f'validation loss vs {xlabel} (dotted lines: growth)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = paths.join(out_dir, f'val_loss_vs_{axis}.png')
    save_figure(fig, path)
    written.append(path)
  return written


def _run_name(workdir: str) -> str:
  return paths.basename(workdir.rstrip('/')) or workdir


def save_figure(fig: Any, path: str) -> None:
  """PNG at `path`, local or on an object store (rendered in memory, written in one go)."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110)
  plt.close(fig)
  paths.write_atomic(path, buf.getvalue())


def plot_groups(groups: dict[str, list[str]], out_path: str, target: float | None = None,
                title: str = 'validation loss vs training FLOPs (mean over seeds, band: min-max)'
                ) -> str:
  """One line per group of runs (the seeds of one arm): the mean validation loss (mean over
  languages) against FLOPs, with the seeds' min-max band; growth points of the first run dotted.
  `target`: a horizontal line (e.g. the from-scratch arm's final mean loss).  Returns the path."""
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for label, workdirs in groups.items():
    if not workdirs:
      raise ValueError(f'group {label!r} has no runs')
    records = [curves.run_records(w) for w in workdirs]
    runs = [curves.val_curve(r) for r in records]
    for w, c in zip(workdirs, runs):
      if not c:
        raise PlotError(f'{w}: metrics.jsonl has no val_loss* records to plot')
    grid, mean, _ = curves.mean_curve(runs)
    lo = [min(curves.at_flops(c, f) for c in runs) for f in grid]
    hi = [max(curves.at_flops(c, f) for c in runs) for f in grid]
    line, = ax.plot(grid, mean, marker='.', markersize=3, label=f'{label} (n={len(runs)})')
    ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    for _, _, flops in curves.growth_points(records[0]):
      ax.axvline(flops, color=line.get_color(), linestyle=':', linewidth=1)
  if target is not None:
    ax.axhline(target, color='black', linestyle='--', linewidth=1, label=f'target {target:.4f}')
  ax.set_xscale('log')
  ax.set_xlabel('training FLOPs')
  ax.set_ylabel('validation loss (nats/token, mean over languages)')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.makedirs(paths.dirname(paths.absolute(out_path)))
  save_figure(fig, out_path)
  return out_path


def parse_group(spec: str) -> tuple[str, list[str]]:
  """'LABEL=W1,W2,W3' -> ('LABEL', ['W1', 'W2', 'W3'])."""
  label, sep, dirs = spec.partition('=')
  runs = [d for d in dirs.split(',') if d]
  if not sep or not label or not runs:
    raise ValueError(f'--group {spec!r}: expected LABEL=WORKDIR[,WORKDIR...]')
  return label, runs
