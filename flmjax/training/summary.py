"""The end-of-run summary: per-stage parameters, tokens, FLOPs, wall time and validation loss."""

from __future__ import annotations

from typing import Any, Mapping

from flmjax import plan
from flmjax.plan import Stage


def run_summary(stages: list[Stage], run_info: Mapping[str, Any]) -> dict[str, Any]:
  rows = []
  for s in stages:
    info = run_info.get(s.name, {})
    rows.append({'stage': s.name, 'params': s.model.param_count(), 'tokens': s.tokens,
                 'flops': s.flops, 'wall_time_s': info.get('wall_time', 0.0),
                 'val_loss': info.get('val_loss', {})})
  return {'stages': rows, **plan.flops_summary(stages)}


def format_summary(summary: Mapping[str, Any]) -> str:
  langs = sorted({k for r in summary['stages'] for k in r['val_loss']})
  head = ['stage', 'params', 'tokens', 'FLOPs', 'wall s'] + [k.replace('val_loss_', 'val ')
                                                             for k in langs]
  lines = ['run summary', '  '.join(f'{h:>12}' for h in head)]
  for r in summary['stages']:
    cells = [r['stage'], f"{r['params']:.4g}", f"{r['tokens']:.4g}", f"{r['flops']:.4g}",
             f"{r['wall_time_s']:.1f}"] + [f"{r['val_loss'].get(k, float('nan')):.4f}"
                                          for k in langs]
    lines.append('  '.join(f'{c:>12}' for c in cells))
  lines.append(
      f"growth FLOPs {summary['growth_flops']:.4g} vs final model from scratch on the same "
      f"{summary['tokens']:.4g} tokens {summary['scratch_flops']:.4g}: "
      f"{100 * summary['saved_fraction']:.1f}% saved")
  return '\n'.join(lines)
