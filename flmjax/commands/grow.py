"""`flmjax grow`: grow a saved checkpoint offline to a stage of an experiment file.

  flmjax grow --checkpoint W/stage_0 --to experiments/X.py:stage_name --out W2 [--verify]

Writes `W2/stage_K/<step>/` (K = the target stage's index) exactly as `flmjax train` writes a
checkpoint right after a growth, so `flmjax train --config experiments/X.py --workdir W2` resumes
from it.  The growth is the same as the trainer's (same rng split, same method from the stage's
`growth`).  `--verify` runs both models in float32 on a sample batch (masks at 0) and prints, as
its last line, `max_abs_logit_diff=<float>`; the exit status is 1 when a method that claims
exactness exceeds 1e-5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any


def add_grow_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--checkpoint', required=True,
                      help='source checkpoint: a step dir, a stage dir (latest step) or a workdir')
  parser.add_argument('--to', required=True, metavar='FILE.py:STAGE',
                      help='target: experiment file and the name of the stage to grow into')
  parser.add_argument('--out', required=True, help='output workdir (gets stage_K/<step>/)')
  parser.add_argument('--verify', action='store_true',
                      help='compare logits of source and grown model on a sample batch')
  parser.add_argument('--verify_batch', type=int, default=2, help='rows of the sample batch')
  parser.add_argument('--verify_len', type=int, default=None,
                      help="tokens per row (at most the models' max_len; default 64, or max_len "
                           'when shorter)')
  parser.add_argument('--allow_unverified', action='store_true',
                      help='read a checkpoint without a manifest (or with files its manifest '
                      'does not list), e.g. one written by another tool: its bytes cannot be '
                      'verified')


def parse_target(text: str) -> tuple[str, str]:
  """'experiments/X.py:stage' -> (path, stage name)."""
  from flmjax.config import ConfigError
  path, sep, stage = text.rpartition(':')
  if not sep or not path or not stage:
    raise ConfigError(f'--to must be FILE.py:STAGE_NAME, got {text!r}')
  return path, stage


def find_stage(stages: list, name: str, where: str):
  from flmjax.config import ConfigError
  for s in stages:
    if s.name == name:
      return s
  raise ConfigError(f'--to {where}:{name}: no stage named {name!r}; stages are '
                    f'{[s.name for s in stages]}')


def _check_verify_args(args: argparse.Namespace, src: Any, dst: Any) -> None:
  """--verify's sample batch must exist and fit both models (never silently clamped)."""
  from flmjax.config import ConfigError
  if args.verify_batch < 1:
    raise ConfigError(f'--verify_batch must be >= 1, got {args.verify_batch}')
  longest = min(src.max_len, dst.max_len)
  if args.verify_len is None:
    args.verify_len = min(64, longest)
  if not 1 <= args.verify_len <= longest:
    raise ConfigError(f'--verify_len must be in [1, {longest}] (the max_len of the source and '
                      f'target models), got {args.verify_len}')


def grow_main(args: argparse.Namespace) -> int:
  from flmjax import experiment, plan
  from flmjax.storage import checkpoint, paths
  from flmjax.storage.workdir_lock import WorkdirLock

  path, stage_name = parse_target(args.to)
  config = experiment.load_config(path)
  stages = plan.stage_plan(config)
  stage = find_stage(stages, stage_name, path)
  out_dir = checkpoint.stage_dir(args.out, stage.index)
  created = not paths.exists(args.out)
  try:
    with WorkdirLock(args.out, 'flmjax grow'):  # one writer per workdir, as for train
      return _grow(args, config, stages, stage, out_dir, path)
  except BaseException:
    if created and not paths.is_remote(args.out) and os.path.isdir(args.out) \
        and not os.listdir(args.out):
      os.rmdir(args.out)  # a failed grow (e.g. a damaged source) leaves nothing behind
    raise


def _grow(args: argparse.Namespace, config: Any, stages: list, stage: Any, out_dir: str,
          path: str) -> int:
  """Load (verified), grow with the trainer's own builder, save; the caller holds the lock on
  `--out`."""
  import jax
  import jax.numpy as jnp

  from flmjax import growth, optimizer, sharding
  from flmjax.storage import checkpoint, paths
  from flmjax.config import ConfigError, ModelConfig
  from flmjax.growth import EXACT_TOL, max_abs_logit_diff
  from flmjax.training.runtime import StageRuntime, load_state, stage_meta
  from flmjax.training.state import TrainState
  if paths.listdir(out_dir):
    raise checkpoint.CheckpointError(f'refusing to write into {out_dir}: it already holds '
                                     f'checkpoints; choose another --out')

  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  _, state, meta, data_state = load_state(args.checkpoint, mesh=mesh, rules=rules,
                                          allow_unverified=args.allow_unverified)
  src = ModelConfig.from_dict(meta['model'])
  dst = stage.model
  spec = stage.growth or growth.GrowthSpec()
  step = int(jax.device_get(state['step']))
  if state.get('mask_base') is not None:
    since = step - int(jax.device_get(state['grow_step']))
    ramp = int(jax.device_get(state['ramp_steps']))
    if since < ramp:
      raise ConfigError(f'--checkpoint {args.checkpoint}: step {step} is inside a mask ramp '
                        f'({since} of {ramp} steps since the last growth); grow after the ramp')

  if args.verify:
    _check_verify_args(args, src, dst)
  start = stage.start_step
  source = state
  if step != start:  # the plan places the stage at `start`: its LRs, length and progress
    state = {**state, 'step': jnp.full_like(state['step'], start),  # follow the global step
             'opt_state': optimizer.at_schedule_step(state['opt_state'], start)}

  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  runtime = StageRuntime(config, stages, stage.index, mesh, rules, schedule)
  grown = runtime.grow(src, TrainState.from_dict(state))
  new_meta = {**stage_meta(stage, grown, start), 'grown_from': paths.absolute(args.checkpoint),
              'growth': dataclasses.asdict(spec), 'source_step': step}
  saved = checkpoint.save_state(out_dir, json.loads(config.to_json()), grown.to_dict(),
                                meta=new_meta, data_state=data_state)
  exact = growth.is_exact(src, dst, spec)
  print(f'grew {src.param_count() / 1e6:.2f}M -> {dst.param_count() / 1e6:.2f}M params '
        f'(width={spec.width}, depth={spec.depth}, exact={exact}) at step {start}: {saved}')
  if step != start:
    print(f'note: the source checkpoint is at step {step}; stage {stage.name!r} starts at step '
          f'{start} in {path}, so the grown checkpoint is placed there: `flmjax train` runs the '
          f"stage's {stage.steps} steps with its own learning rates")
  if not args.verify:
    return 0
  diff = max_abs_logit_diff(src, source['params'], dst, grown.params, grown.mask_base,
                            batch=args.verify_batch, length=args.verify_len)
  status = 0
  if exact and not diff <= EXACT_TOL:
    print(f'verify FAILED: {spec.width}/{spec.depth} claims exactness but the logits differ by '
          f'{diff:.3g} > {EXACT_TOL}')
    status = 1
  elif not exact:
    print(f'verify: depth={spec.depth!r} copies layers and does not claim exactness')
  else:
    print(f'verify OK: function-preserving: the logits differ by {diff:.3g} <= {EXACT_TOL} '
          f'(the float32 tolerance for exact growth)')
  print(f'max_abs_logit_diff={diff:.6g}')
  return status


def main(argv: Any = None) -> int:
  """`python -m flmjax.commands.grow ...` (the same as `flmjax grow ...`)."""
  p = argparse.ArgumentParser(prog='flmjax grow', description=__doc__.splitlines()[0])
  add_grow_arguments(p)
  return grow_main(p.parse_args(argv))


if __name__ == '__main__':
  import sys
  sys.exit(main())
