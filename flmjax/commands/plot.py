"""`flmjax plot`: validation loss against FLOPs and tokens, growth marked, runs compared."""

from __future__ import annotations

import argparse


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--workdir', default=None, help='run directory holding metrics.jsonl')
  p.add_argument('--compare', default=None, help='a second run (e.g. the from-scratch baseline)')
  p.add_argument('--out', default=None, help='where to write PNGs (default: the workdir)')
  p.add_argument('--group', action='append', default=[], metavar='LABEL=W1,W2,...',
                 help='runs that differ only in seed, drawn as their mean with a min-max band '
                      '(repeatable; writes OUT/val_loss_groups.png)')
  p.add_argument('--target', type=float, default=None,
                 help='with --group: a horizontal line at this loss')


def plot_main(args: argparse.Namespace) -> int:
  from flmjax import plot
  from flmjax.storage import paths
  if args.group:
    groups = dict(plot.parse_group(g) for g in args.group)
    out_dir = args.out or args.workdir or '.'
    print(plot.plot_groups(groups, paths.join(out_dir, 'val_loss_groups.png'), args.target))
    if not args.workdir:
      return 0
  elif not args.workdir:
    raise SystemExit('flmjax plot: give --workdir (and optionally --compare) or --group')
  for path in plot.plot_runs(args.workdir, args.compare, args.out):
    print(path)
  return 0
