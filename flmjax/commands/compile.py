"""`flmjax compile`: ahead-of-time compile every stage and growth of an experiment for a TPU
slice on a CPU host, and say whether each fits the chip's HBM (see `flmjax.training.aot`).

Exit status: 0 when every program compiled within HBM (and under --max_hbm_fraction), 1 when one
did not (the message says what to change), 2 for a config error (e.g. a batch that does not
divide the batch shards), 3 when the slice cannot be compiled for (libtpu missing, unknown slice).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', required=True,
                 help='experiment file; override fields with --config.section.field=value')
  p.add_argument('--topology', required=True,
                 help='TPU slice: a Cloud accelerator type (v5p-512 = 256 chips: v5p names '
                      'count TensorCores, as do v4 names: v4-8 = 4 chips; v5litepod-16, v6e-16 '
                      'count chips) or a topology (v5p:4x8x8, v4:2x2x1)')
  p.add_argument('--num_slices', type=int, default=1,
                 help='multi-slice: this many slices joined over DCN (the mesh data axis spans '
                      'them)')
  p.add_argument('--stage', help='only this stage (and the growth into it)')
  p.add_argument('--mfu', type=float, default=None,
                 help='model FLOPs utilisation for the step-time estimate (default: the '
                      "paper's 0.52)")
  p.add_argument('--max_hbm_fraction', type=float, default=1.0,
                 help='fail when a program needs more than this fraction of HBM (default 1.0: '
                      'only what does not compile fails)')
  p.add_argument('--no_eval', action='store_true', help='skip the eval steps')
  p.add_argument('--output', help='write the plan as JSON here')


def run(args: argparse.Namespace) -> int:
  from flmjax import experiment
  from flmjax.storage import paths
  from flmjax.training import aot
  mfu = aot.PAPER_MFU if args.mfu is None else args.mfu
  try:
    sl = aot.parse_slice(args.topology, args.num_slices)
    aot.require_libtpu()
  except aot.PodPlanError as e:
    print(f'flmjax compile: {e}', file=sys.stderr)
    return 3
  config = experiment.load_config(args.config, args.config_overrides)
  aot.no_persistent_cache()
  try:
    rows = aot.compile_stages(config, sl, stage=args.stage, mfu=mfu,
                              eval_step=not args.no_eval,
                              log=lambda s: print(s, file=sys.stderr, flush=True))
  except experiment.ConfigError as e:
    fix = aot.config_fix(config, sl)
    print(f'flmjax compile: config error for {sl}: {e}.' + (f' To fix: {fix}.' if fix else ''),
          file=sys.stderr)
    return 2
  print(aot.format_table(rows, sl, mfu, all_stages=args.stage is None), flush=True)
  over = [r for r in rows if not r.error and r.ratio > args.max_hbm_fraction]
  for r in over:
    print(f'OVER {r.kind} {r.name}: {100 * r.ratio:.1f}% of HBM > --max_hbm_fraction='
          f'{args.max_hbm_fraction}. To fit: {aot.oom_advice(config, r)}',
          file=sys.stderr)
  if args.output:
    paths.write_atomic(args.output, json.dumps({'topology': sl.topology, 'chips': sl.chips, 'num_slices': sl.num_slices,
                 'chip': sl.chip.prefix, 'hbm_usable_bytes': sl.chip.hbm_usable,
                 'peak_bf16_flops': sl.chip.peak_bf16, 'mfu': mfu, 'config': args.config,
                 'overrides': list(args.config_overrides),
                 'rows': [r.to_dict() for r in rows]}, indent=1))
  return 1 if over or any(r.error for r in rows) else 0
