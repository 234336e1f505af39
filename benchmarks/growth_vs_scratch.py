"""Growth vs training from scratch: FLOPs to reach the baseline's final validation loss.

  python benchmarks/growth_vs_scratch.py                       # tiny_growth vs tiny_scratch
  python benchmarks/growth_vs_scratch.py --growth experiments/X_growth.py \\
      --scratch experiments/X_scratch.py --workdir /tmp/gvs     # larger variants
  python benchmarks/growth_vs_scratch.py --smoke               # a few steps each (CI)
  python benchmarks/growth_vs_scratch.py --reuse --workdir W   # re-analyse finished runs

Runs `flmjax.training.loop.train_to_end(config, workdir)` for both experiments (unless `--reuse` finds a
finished run), reads each `metrics.jsonl` (cumulative model `flops`, `stage`, `val_loss_<lang>`
at eval steps; the mean over languages is the validation loss), and prints the two curves at
equal FLOPs (linear interpolation between eval points).  The last line is the headline: the
FLOPs the growth run needs to reach the baseline's final validation loss ÷ the baseline's FLOPs
(target ≤ 0.60; MSG reports 1/1.4 ≈ 0.71 on GPT-2).

One seed, two runs, whatever regime the two files set: a quick comparison of two experiments, not
evidence.  The tiny_growth / tiny_scratch pair sits where any smaller model wins (the baseline sees
0.4 tokens per parameter); benchmarks/growth_evidence.py is the controlled comparison (three arms,
seeds, LR sweep, every operator).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

EXPERIMENTS = os.path.join(common.ROOT, 'experiments')
TARGET = 0.60
Curve = list[tuple[float, float]]  # (cumulative FLOPs, validation loss), increasing FLOPs


def smoke_overrides(config, steps: int = 4) -> None:
  """A few steps per stage on the synthetic language, evaluated every other step."""
  from flmjax import synthetic_data
  config.data.source = 'synthetic'
  if 'synthetic' not in config.data:
    config.data.synthetic = synthetic_data.synthetic_config()
  vocab = min(int(config.model.vocab_size), int(config.data.synthetic.vocab_size))
  config.data.synthetic.vocab_size = vocab
  config.train.update(eval_every=2, eval_batches=1, log_every=1, ckpt_every=0)
  config.optim.warmup_steps = min(int(config.optim.warmup_steps), 1)
  stages = list(config.get('stages') or [])
  if not stages:
    config.train.update(steps=steps, tokens=0)
    return
  for s in stages:
    s['steps'], s['tokens'] = steps, 0
    if s.get('warmup_steps'):
      s['warmup_steps'] = 1
    if s.get('growth') and 'ramp_steps' in s['growth']:
      s['growth']['ramp_steps'] = min(int(s['growth']['ramp_steps']), 2)
  config.stages = stages


def run(path: str, workdir: str, overrides: Sequence[str], smoke: bool, reuse: bool) -> float:
  """Train `path` into `workdir` (skipped with --reuse when it finished); returns wall seconds."""
  from flmjax import experiment
  from flmjax.training import loop, summary
  config = experiment.load_config(path, overrides)
  if smoke:
    smoke_overrides(config)
  config.train.allow_overwrite = True
  if reuse and summary.read_finished(workdir, config, experiment.default_config()) is not None:
    return float('nan')
  t0 = time.perf_counter()
  loop.train_to_end(config, workdir)
  return time.perf_counter() - t0


def val_curve(workdir: str) -> tuple[Curve, dict[str, Curve]]:
  """(mean-over-languages curve, per-language curves) from `workdir/metrics.jsonl`."""
  from flmjax.storage.metrics import read_metrics
  recs = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  mean: Curve = []
  langs: dict[str, Curve] = {}
  for r in sorted(recs, key=lambda r: r['step']):
    vals = {k[len('val_loss_'):]: float(v) for k, v in r.items()
            if k.startswith('val_loss_') and isinstance(v, (int, float))}
    if not vals:
      continue
    f = float(r['flops'])
    mean.append((f, sum(vals.values()) / len(vals)))
    for k, v in vals.items():
      langs.setdefault(k, []).append((f, v))
  if not mean:
    raise SystemExit(f'{workdir}/metrics.jsonl has no val_loss_* records: set train.eval_every '
                     '(and eval_batches > 0) in the experiment')
  return mean, langs


def at_flops(curve: Curve, f: float) -> Optional[float]:
  """The curve's loss at `f` FLOPs (linear between eval points); None outside its range."""
  if not curve or f < curve[0][0] - 1e-9 * abs(f) or f > curve[-1][0] * (1 + 1e-9):
    return None
  for (f0, l0), (f1, l1) in zip(curve, curve[1:]):
    if f0 <= f <= f1:
      return l0 if f1 == f0 else l0 + (l1 - l0) * (f - f0) / (f1 - f0)
  return curve[-1][1] if f >= curve[-1][0] else curve[0][1]


def flops_to_reach(curve: Curve, loss: float) -> Optional[float]:
  """First FLOPs at which the curve gets down to `loss` (linear between eval points)."""
  prev = None
  for f, l in curve:
    if l <= loss:
      if prev is None or prev[1] == l:
        return f
      (f0, l0) = prev
      return f0 + (f - f0) * (l0 - loss) / (l0 - l)
    prev = (f, l)
  return None


def stage_starts(workdir: str) -> list[tuple[int, float]]:
  """(stage, FLOPs at its first logged record): where the growths happened."""
  from flmjax.storage.metrics import read_metrics
  seen, out = set(), []
  for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')):
    s = r.get('stage')
    if s is not None and s not in seen:
      seen.add(s)
      out.append((int(s), float(r['flops'])))
  return out


def fmt(x: Optional[float]) -> str:
  return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.4f}'


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--growth', default=os.path.join(EXPERIMENTS, 'tiny_growth.py'))
  ap.add_argument('--scratch', default=os.path.join(EXPERIMENTS, 'tiny_scratch.py'))
  ap.add_argument('--workdir', default=None, help='default: a temporary directory')
  ap.add_argument('--set', action='append', default=[], metavar='a.b=v',
                  help='config override applied to both runs')
  ap.add_argument('--smoke', action='store_true', help='a few steps per stage, synthetic (CI)')
  ap.add_argument('--reuse', action='store_true', help='analyse finished runs in --workdir')
  args = ap.parse_args(argv)
  for p in (args.growth, args.scratch):
    if not os.path.isfile(p.rsplit(':', 1)[0] if ':' in os.path.basename(p) else p):
      ap.error(f'no such experiment file {p!r}')
  tmp = None
  if args.workdir is None:
    tmp = tempfile.TemporaryDirectory()
    args.workdir = tmp.name
  wd = {'growth': os.path.join(args.workdir, 'growth'),
        'scratch': os.path.join(args.workdir, 'scratch')}
  wall = {'growth': run(args.growth, wd['growth'], args.set, args.smoke, args.reuse),
          'scratch': run(args.scratch, wd['scratch'], args.set, args.smoke, args.reuse)}
  curves = {k: val_curve(w) for k, w in wd.items()}
  g, b = curves['growth'][0], curves['scratch'][0]

  fl = sorted({f for f, _ in g} | {f for f, _ in b})
  rows = [[f'{f:.4g}', fmt(at_flops(g, f)), fmt(at_flops(b, f))] for f in fl]
  common.print_table(['FLOPs', 'growth val loss', 'scratch val loss'], rows,
                     title='validation loss (mean over languages) at equal FLOPs')
  langs = sorted(set(curves['growth'][1]) | set(curves['scratch'][1]))
  summ = []
  for k in ('growth', 'scratch'):
    c, per = curves[k]
    summ.append([k, f'{c[-1][0]:.4g}', fmt(c[-1][1])] +
                [fmt(per[l][-1][1]) if l in per else '-' for l in langs] +
                [f'{wall[k]:.1f}' if not math.isnan(wall[k]) else 'reused'])
  common.print_table(['run', 'FLOPs', 'final val'] + [f'final {l}' for l in langs] + ['wall s'],
                     summ, title='final')
  starts = stage_starts(wd['growth'])
  if len(starts) > 1:
    print('growth stages start at FLOPs: ' + ', '.join(f'stage {s}: {f:.4g}' for s, f in starts))
  base_loss, base_flops = b[-1][1], b[-1][0]
  at_base = at_flops(g, base_flops)
  print(f'at the baseline\'s {base_flops:.4g} FLOPs: growth val {fmt(at_base)} vs scratch '
        f'{fmt(base_loss)}; at the growth run\'s {g[-1][0]:.4g} FLOPs: scratch val '
        f'{fmt(at_flops(b, g[-1][0]))} vs growth {fmt(g[-1][1])}')
  reach = flops_to_reach(g, base_loss)
  if reach is None:
    print(f'growth never reached the baseline final val loss {base_loss:.4f} (its best '
          f'{min(l for _, l in g):.4f}, at {g[-1][0] / base_flops:.2f}x the baseline FLOPs); '
          f'target <= {TARGET:.2f}x')
    print(f'headline: FLOPs to reach baseline final val loss / baseline FLOPs = inf '
          f'(not reached)')
    return
  ratio = reach / base_flops
  print(f"target <= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'NOT met'}")
  print(f'headline: FLOPs to reach baseline final val loss / baseline FLOPs = {ratio:.3f}x')
  if tmp is not None:
    tmp.cleanup()


if __name__ == '__main__':
  main()
