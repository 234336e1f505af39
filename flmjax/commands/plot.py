"""`flmjax plot`: validation loss against FLOPs and tokens, growth marked, runs compared."""

from __future__ import annotations

import argparse


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--workdir', required=True, help='run directory holding metrics.jsonl')
  p.add_argument('--compare', default=None, help='a second run (e.g. the from-scratch baseline)')
  p.add_argument('--out', default=None, help='where to write PNGs (default: the workdir)')


def plot_main(args: argparse.Namespace) -> int:
  from flmjax.plot import plot_runs
  for path in plot_runs(args.workdir, args.compare, args.out):
    print(path)
  return 0
