"""Pod readiness of the paper's run: compile every stage and growth of experiments/flm101b.py for
a TPU v5p-512 slice (256 chips) on this CPU host, and report per-chip peak HBM against capacity.

  python benchmarks/pod_plan.py            # flm101b.py on v5p-512 (~40 min on 2 CPU cores)
  python benchmarks/pod_plan.py --smoke    # experiments/tiny_growth.py on v5e:2x2, no eval (CI)

Needs the `tpu` extra (libtpu).  The table is `flmjax compile`'s; the last line is the headline:
the largest per-chip peak HBM ÷ capacity over all stages and growths (target ≤ 0.90).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

TARGET = 0.90


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='tiny growth experiment on v5e:2x2 (CI)')
  ap.add_argument('--config', help='experiment file (default: flm101b.py, or tiny_growth.py '
                                   'with --smoke)')
  ap.add_argument('--topology', help='TPU slice (default: v5p-512, or v5e:2x2 with --smoke)')
  ap.add_argument('--json', help='also write the plan rows here')
  args = ap.parse_args(argv)
  name = args.config or os.path.join(common.ROOT, 'experiments',
                                     'tiny_growth.py' if args.smoke else 'flm101b.py')
  topology = args.topology or ('v5e:2x2' if args.smoke else 'v5p-512')

  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from flmjax import experiment
  from flmjax.training import aot
  sl = aot.parse_slice(topology)
  config = experiment.load_config(name)
  aot.no_persistent_cache()
  rows = aot.compile_stages(config, sl, eval_step=not args.smoke,  # smoke: train + growth only
                            log=lambda s: print(s, file=sys.stderr, flush=True))
  print(f'config: {os.path.relpath(name, common.ROOT)}')
  print(aot.format_table(rows, sl, aot.PAPER_MFU))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump([r.to_dict() for r in rows], f, indent=1)
  failed = [r for r in rows if r.error]
  worst = float('inf') if failed else max(r.ratio for r in rows)
  top = max(rows, key=lambda r: float('inf') if r.error else r.ratio)
  print(f'largest: {top.kind} {top.name}; target <= {TARGET:.2f}: '
        f'{"met" if worst <= TARGET else "NOT met"}')
  print(f'headline: max per-chip peak HBM / capacity over all stages and growths = {worst:.3f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
