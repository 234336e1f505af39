"""The end-of-run summary: per-stage parameters, tokens, FLOPs, wall time and validation loss.

The trainer writes it to `summary.json` with the config it ran, so tools that read a finished run
back instead of training it again (sweeps, loss prediction, the benchmarks) can check it is the
run they asked for: `read_finished`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from flmjax import plan
from flmjax.config import ConfigError
from flmjax.plan import Stage
from flmjax.storage import paths


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
  if summary['saved_fraction'] > 1e-9:  # else the model never grew: there is nothing saved
    lines.append(
        f"growth FLOPs {summary['growth_flops']:.4g} vs final model from scratch on the same "
        f"{summary['tokens']:.4g} tokens {summary['scratch_flops']:.4g}: "
        f"{100 * summary['saved_fraction']:.1f}% saved")
  else:
    lines.append(f"FLOPs {summary['growth_flops']:.4g} on {summary['tokens']:.4g} tokens (no "
                 f"growth: the model never changed size)")
  return '\n'.join(lines)


# How often a run checkpoints, how many it keeps and whether it may overwrite a workdir change
# nothing it trains (a resume is exact): a finished run read back for a config that differs only
# there is the same run.
BOOKKEEPING_FIELDS = ('train.ckpt_every', 'train.keep', 'train.allow_overwrite')


def config_differences(ran: Mapping[str, Any], asked: Mapping[str, Any],
                       prefix: str = '', defaults: Optional[Mapping[str, Any]] = None
                       ) -> list[str]:
  """'field: ran X, asked Y' for every leaf that differs between two config dicts, but for
  `BOOKKEEPING_FIELDS`.

  With `defaults`, a field the run did not record (added to the config after it ran) counts as
  equal when it is asked at its default: a new field's default keeps the behaviour before it."""
  out = []
  defaults = defaults or {}
  for key in sorted(set(ran) | set(asked)):
    a, b, d = ran.get(key), asked.get(key), defaults.get(key)
    if f'{prefix}{key}' in BOOKKEEPING_FIELDS:
      continue
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out.extend(config_differences(a, b, f'{prefix}{key}.',
                                    d if isinstance(d, Mapping) else None))
    elif key not in ran and key in defaults and b == d:
      continue
    elif a != b:
      out.append(f'{prefix}{key}: ran {a!r}, asked {b!r}')
  return out


def read_finished(workdir: str, config: Any, defaults: Any = None
                  ) -> Optional[dict[str, Any]]:
  """The summary of a finished run of `config` in `workdir`; None when none finished there.

  A finished run of another config is refused (ConfigError naming the fields that differ: the
  CLI shows it as one line): its
  losses would silently stand in for the run asked for.  A summary written before summaries
  recorded their config is trusted; `defaults` (the experiment defaults) let a run recorded
  before a field existed stand for that field's default (`config_differences`)."""
  path = paths.join(workdir, 'summary.json')
  if not paths.exists(path):
    return None
  summary = json.loads(paths.read_text(path))
  if 'config' in summary:
    differ = config_differences(summary['config'], json.loads(config.to_json()),
                                defaults=None if defaults is None else
                                json.loads(defaults.to_json()))
    if differ:
      raise ConfigError(f'{path}: this finished run is not the one asked for ({"; ".join(differ)})'
                       f': use another workdir, or remove this run to train it again')
  return summary
