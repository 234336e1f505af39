"""`flmjax sweep`: search learning rate, init std and output multiplier on µP proxies, then
transfer the best point to the target width.

Under µP the optimum of these three does not move with width (Yang et al. 2022), so FLM-101B
searched them on a width-256 proxy (finding lr 4e-4, init std 1.6e-2, output multiplier 2.0) and
used them unchanged at 101B.  A sweep file defines `get_config()` with two sections:

  experiment  a full experiment config (the proxy family: µP on, any width; see flmjax.experiment)
  sweep       mode ('grid' | 'random'), lr / init_std / output_mult (grid values, or for 'random'
              the log-uniform [min, max] range), num_samples, seed, widths (proxy d_models),
              target_width, train_target

Every point is a normal `flmjax.training.loop.train` run in `WORKDIR/w{width}_p{index}/` (a finished point is
read back, not re-run, so an interrupted sweep resumes).  Points run one after another on all
local devices; to use several hosts/devices in parallel run one process per device subset with
`--shard K/N` (points K, K+N, …) and then `--shard` off (or any shard) to merge the table.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from flmjax import experiment, mup, plan
from flmjax.config import ConfigError
from flmjax.storage import paths
from flmjax.storage.metrics import read_metrics
from flmjax.training.loop import train_to_end
from flmjax.training.summary import read_finished

HPARAMS = ('lr', 'init_std', 'output_mult')


def default_sweep_config() -> dict[str, Any]:
  return dict(mode='grid', num_samples=8, seed=0, lr=[1e-4, 4e-4, 1.6e-3],
              init_std=[4e-3, 1.6e-2, 6.4e-2], output_mult=[0.5, 2.0, 8.0], widths=[256],
              target_width=0, train_target=False)


@dataclasses.dataclass(frozen=True)
class Point:
  index: int
  lr: float
  init_std: float
  output_mult: float

  def hparams(self) -> dict[str, float]:
    return {k: getattr(self, k) for k in HPARAMS}


def sweep_points(sweep_cfg: Mapping[str, Any]) -> list[Point]:
  """The grid (cartesian product, in order) or `num_samples` log-uniform random points."""
  mode = sweep_cfg['mode']
  values = {k: [float(v) for v in sweep_cfg[k]] for k in HPARAMS}
  for k, v in values.items():
    if not v or min(v) <= 0:
      raise ConfigError(f'sweep.{k} must be a non-empty list of positive numbers, got {v!r}')
  if mode == 'grid':
    combos = itertools.product(*(values[k] for k in HPARAMS))
  elif mode == 'random':
    rng = np.random.default_rng(int(sweep_cfg['seed']))
    n = int(sweep_cfg['num_samples'])
    if n <= 0:
      raise ConfigError(f'sweep.num_samples must be > 0, got {n!r}')
    lo_hi = [(math.log(min(values[k])), math.log(max(values[k]))) for k in HPARAMS]
    combos = [tuple(float(math.exp(rng.uniform(lo, hi))) for lo, hi in lo_hi) for _ in range(n)]
  else:
    raise ConfigError(f"sweep.mode must be 'grid' or 'random', got {mode!r}")
  return [Point(i, *c) for i, c in enumerate(combos)]


def final_loss(summary: Mapping[str, Any], workdir: str) -> float:
  """Mean validation loss over the eval sets at the end (last train loss without eval sets);
  inf when the run diverged."""
  val = summary['stages'][-1].get('val_loss') or {}
  if val:
    loss = float(np.mean([float(v) for v in val.values()]))
  else:
    losses = [r['loss'] for r in read_metrics(paths.join(workdir, 'metrics.jsonl'))
              if 'loss' in r]
    loss = float(losses[-1]) if losses else float('nan')
  return loss if math.isfinite(loss) else float('inf')


def run_point(config: Any, workdir: str) -> dict[str, Any]:
  """Train `config` in `workdir` with the trainer, or read a finished run of it back."""
  summary = read_finished(workdir, config, experiment.default_config())
  if summary is None:
    train_to_end(config, workdir)
    summary = read_finished(workdir, config, experiment.default_config())
  stages = plan.stage_plan(config)
  return {'loss': final_loss(summary, workdir), 'flops': summary['growth_flops'],
          'tokens': summary['tokens'], 'params': stages[-1].model.param_count(),
          'non_embedding_params': stages[-1].model.param_count(include_embedding=False),
          'workdir': workdir}


def load_sweep_config(path: str, overrides: Sequence[str] = ()) -> Any:
  cfg = experiment.load_tool_config(path, overrides, 'sweep', default_sweep_config(),
                                   'a sweep file')
  if not cfg.experiment.model.use_mup:
    print('sweep: note: experiment.model.use_mup is False: the best point will not transfer '
          'across widths', flush=True)
  return cfg


def run_sweep(cfg: Any, workdir: str, shard: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
  """Train this shard's (width, point) runs; returns their result rows."""
  points = sweep_points(cfg.sweep)
  widths = [int(w) for w in cfg.sweep.widths]
  jobs = [(w, p) for w in widths for p in points]
  rows = []
  for j, (w, p) in enumerate(jobs):
    if j % shard[1] != shard[0]:
      continue
    run_cfg = mup.with_hparams(cfg.experiment, width=w, **p.hparams())
    wd = paths.join(workdir, f'w{w}_p{p.index}')
    print(f'sweep: width {w} point {p.index} {p.hparams()}', flush=True)
    res = run_point(run_cfg, wd)
    rows.append({'width': w, 'point': p.index, **p.hparams(), **res})
  return rows


def collect(workdir: str) -> list[dict[str, Any]]:
  """All rows written by any shard in `workdir`."""
  rows = []
  for name in sorted(paths.listdir(workdir)):
    if name.startswith('results_shard') and name.endswith('.json'):
      rows.extend(json.loads(paths.read_text(paths.join(workdir, name))))
  return sorted(rows, key=lambda r: (r['width'], r['point']))


def best_points(rows: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
  """The lowest-loss row per width."""
  out: dict[int, Mapping[str, Any]] = {}
  for r in rows:
    if r['width'] not in out or r['loss'] < out[r['width']]['loss']:
      out[r['width']] = r
  return out


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = [f"{'width':>6} {'point':>5} {'lr':>10} {'init_std':>10} {'out_mult':>9} {'loss':>9}"]
  best = {id(r) for r in best_points(rows).values()}
  for r in rows:
    mark = ' *' if id(r) in best else ''
    lines.append(f"{r['width']:>6} {r['point']:>5} {r['lr']:>10.3g} {r['init_std']:>10.3g} "
                 f"{r['output_mult']:>9.3g} {r['loss']:>9.4f}{mark}")
  return '\n'.join(lines)


def transfer(cfg: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Best point of the widest proxy, applied to the target width: the experiment config to train
  at scale (as a dict) and whether every proxy width agreed on the best point."""
  best = best_points(rows)
  widest = max(best)
  hp = {k: best[widest][k] for k in HPARAMS}
  target = int(cfg.sweep.target_width) or widest
  target_cfg = mup.with_hparams(cfg.experiment, width=target, **hp)
  return {'hparams': hp, 'from_width': widest, 'target_width': target,
          'agree_across_widths': len({best[w]['point'] for w in best}) == 1,
          'best_per_width': {str(w): {k: best[w][k] for k in (*HPARAMS, 'loss')} for w in best},
          'target_model': target_cfg.model.to_dict(), 'target_optim': target_cfg.optim.to_dict(),
          'target_config': target_cfg}


def parse_shard(text: Optional[str]) -> tuple[int, int]:
  if not text:
    return 0, 1
  k, n = (int(x) for x in text.split('/'))
  if not 0 <= k < n:
    raise ConfigError(f'--shard must be K/N with 0 <= K < N, got {text!r}')
  return k, n
