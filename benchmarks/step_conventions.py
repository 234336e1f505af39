"""What each training convention costs the step: the trainer's step with conventions switched off
one at a time, interleaved, on one device.

  python benchmarks/step_conventions.py --sizes 10m,50m --reps 5
  python benchmarks/step_conventions.py --smoke                  # tiny size, 2 steps (CI)

The conventions are those of issue 14 that can touch the step: xPos (vs plain rotary), the
padded-vocabulary mask (vocabulary = the size's less 64, so 64 padded rows are masked; switched off
= the size's own vocabulary, a multiple of 128, nothing to mask, same shapes), the FreeLM teacher
term (one label token per row in `teacher_weights`), and the non-finite-update guard
(`faults.skip_nonfinite`).  BOS is a data convention (one token per document), not a step cost.
Float16 is the only compute dtype where xPos runs in float32 (`model.score_dtype`); at float32
and bfloat16 that path is the plain one, so it has no row here.

Every variant is its own jitted trainer step (`StageRuntime.train_step`), timed in rotation with
the others (medians).  The last line is the headline: the step with every convention ÷ the step
with none of them.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from train_throughput import SIZES, SMOKE_SIZES  # noqa: E402

# name -> what it switches off (from the trainer's defaults, where every convention is on)
VARIANTS = {
    'every convention (the trainer as is)': {},
    'xPos off (plain rotary)': {'xpos': False},
    'padded-vocabulary mask off': {'mask': False},
    'teacher term off (no teacher tokens)': {'teacher': False},
    'non-finite guard off': {'guard': False},
    'none of them': {'xpos': False, 'mask': False, 'teacher': False, 'guard': False},
}
PADDED_ROWS = 64


def variant_stepper(model_kw: dict, seq_len: int, batch: int, off: dict, host_batches: list):
  """The trainer's step for one variant, on the given batches."""
  model_kw = dict(model_kw, max_len=seq_len, use_xpos=off.get('xpos', True))
  if off.get('mask', True):
    model_kw['vocab_size'] = model_kw['vocab_size'] - PADDED_ROWS
  config = common.flmjax_config(model_kw, seq_len, batch)
  config.faults.skip_nonfinite = off.get('guard', True)
  rt = common.flmjax_runtimes(config)[0]
  if not off.get('teacher', True):
    host_batches = [{k: v for k, v in b.items() if k != 'teacher_weights'} for b in host_batches]
  return common.FlmjaxStepper(rt, rt.init_state(0), host_batches)


def with_teacher(host_batches: list[dict]) -> list[dict]:
  """Each row's last token a teacher-signal label (what a FreeLM teacher sample contributes)."""
  import numpy as np
  out = []
  for b in host_batches:
    tw = np.zeros_like(b['loss_weights'])
    tw[:, -1] = 1.0
    out.append(dict(b, teacher_weights=tw))
  return out


def run_size(name: str, spec, reps: int, warmup: int
             ) -> tuple[dict[str, float], dict[str, list[float]]]:
  """(median seconds per variant, every timing per variant) at one size."""
  model_kw, seq_len, batch = spec
  vocab = model_kw['vocab_size'] - PADDED_ROWS  # token ids valid for every variant
  batches = with_teacher(common.random_batches(2, batch, seq_len, vocab, seed=1))
  fns = {v: variant_stepper(model_kw, seq_len, batch, off, batches) for v, off in VARIANTS.items()}
  times = common.interleaved(fns, reps=reps, warmup=warmup)
  return {v: common.median(t) for v, t in times.items()}, times


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='tiny size, 2 timed steps (CI)')
  ap.add_argument('--sizes', default=None, help=f'comma list of {sorted(SIZES)}')
  ap.add_argument('--reps', type=int, default=None, help='timed steps per variant')
  ap.add_argument('--warmup', type=int, default=1, help='untimed steps per variant (compile)')
  args = ap.parse_args(argv)
  table = SMOKE_SIZES if args.smoke else SIZES
  names = (['smoke-b'] if args.smoke else ['10m', '50m']) if not args.sizes else [
      s.strip().lower() for s in args.sizes.split(',')]
  for n in names:
    if n not in table:
      ap.error(f'--sizes: unknown size {n!r}; known: {sorted(table)}')
  reps = args.reps or (2 if args.smoke else 5)
  rows, headline = [], {}
  for n in names:
    med, times = run_size(n, table[n], reps, args.warmup)
    base = med['every convention (the trainer as is)']
    for v, t in med.items():
      rows.append([n, v, common.spread(times[v]), f'{100 * (t / base - 1):+.1f}%'])
    headline[n] = base / med['none of them']
  common.print_table(['size', 'variant', 'step ms med (min-max)', 'vs the trainer as is'], rows,
                     title=f'the trainer\'s step, conventions switched off one at a time '
                           f'({reps} interleaved reps, medians)')
  for n, r in headline.items():
    print(f'{n}: step with every convention / with none = {r:.3f}x')
  print(f'headline: step with every convention / step with none at {names[-1]} = '
        f'{headline[names[-1]]:.3f}x')


if __name__ == '__main__':
  main()
