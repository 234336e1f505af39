"""Cost of the MSG mask ramp: the trainer's step with growth masks vs the plain step, same model.

  python benchmarks/msg_ramp_overhead.py           # 8M -> 29M params (d_model, heads, d_ff, layers)
  python benchmarks/msg_ramp_overhead.py --smoke   # tiny (CI)

Grows a small model into a larger one with MSG width + depth masks (`StageRuntime.grow_from`,
as the trainer does), then alternates the masked train step (alpha computed from the step
counter inside the step) with the plain step of the same grown model (`mask_base=None`, what the
trainer runs after the ramp).  The last line is the headline: masked ÷ plain step time
(target < 1.10, i.e. the ramp costs under 10% throughput).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

SHAPES = {
    'full': (dict(vocab_size=8192, d_model=256, n_heads=4, head_dim=64, d_ff=1024, n_layers=4),
             dict(d_model=512, n_heads=8, d_ff=2048, n_layers=8), 512, 4),
    'smoke': (dict(vocab_size=256, d_model=64, n_heads=2, head_dim=32, d_ff=256, n_layers=2),
              dict(d_model=128, n_heads=4, d_ff=512, n_layers=4), 64, 2),
}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='tiny shapes, 2 timed steps (CI)')
  ap.add_argument('--reps', type=int, default=None, help='timed steps per side')
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  shape = 'smoke' if args.smoke else 'full'
  src, dst, seq_len, batch = SHAPES[shape]
  reps = args.reps or (2 if args.smoke else 7)
  spec = dict(width='msg', depth='msg', ramp_steps=1_000_000)  # stays mid-ramp while timed
  stages = [dict(name='src', steps=1), dict(name='dst', steps=1000, model=dst, growth=spec)]
  rt0, rt1 = common.flmjax_runtimes(common.flmjax_config(src, seq_len, batch, stages=stages))
  grown = rt1.grow_from(rt0, rt0.init_state(0))
  plain = jax.device_put(jax.tree.map(jnp.copy, grown.replace(mask_base=None)),
                         rt1.state_shardings())
  batches = common.random_batches(2, batch, seq_len, rt1.cfg.vocab_size, seed=2)
  fns = {'masked (ramp)': common.FlmjaxStepper(rt1, grown, batches),
         'plain': common.FlmjaxStepper(rt1, plain, batches)}
  times = common.interleaved(fns, reps=reps, warmup=1)
  tokens = batch * seq_len
  rows = [[name, common.spread(t), f'{tokens / common.median(t):,.0f}']
          for name, t in times.items()]
  keys = sorted(grown.mask_base)
  print(f'{rt0.cfg.param_count() / 1e6:.1f}M -> {rt1.cfg.param_count() / 1e6:.1f}M params, '
        f'masks {keys}, seq {seq_len} x batch {batch}, {reps} interleaved reps, medians; '
        f'device {jax.devices()[0].device_kind}')
  common.print_table(['step', 'ms med (min-max)', 'tokens/s'], rows)
  ratio = common.median(times['masked (ramp)']) / common.median(times['plain'])
  print(f'ramp overhead {100 * (ratio - 1):+.1f}% (target < +10%)')
  print(f'headline: masked step time / plain step time = {ratio:.3f}x')


if __name__ == '__main__':
  main()
