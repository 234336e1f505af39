"""The `flmjax` command: sub-commands registered in `COMMANDS`.

Each entry names its functions as 'module:function' strings, imported only when that command runs
(so `flmjax --help` stays fast).  To add a command, add a line, e.g.
  'grow': Command('grow a checkpoint to a bigger model', 'flmjax.grow_cli:run',
                  'flmjax.grow_cli:add_args', config_overrides=False),
`add_args(parser)` declares its flags; `run(args) -> int` is the exit status.  Commands with
`config_overrides=True` receive `--config.a.b=value` overrides as `args.config_overrides`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import Callable, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Command:
  help: str
  run: str                      # 'module:function', function(args) -> int
  add_args: Optional[str] = None  # 'module:function', function(parser) -> None
  config_overrides: bool = False


COMMANDS: dict[str, Command] = {
    'train': Command('train (or resume) an experiment: all its growth stages',
                     'flmjax.cli:run_train', 'flmjax.cli:add_train_args', config_overrides=True),
    'grow': Command('grow a checkpoint to a bigger model (offline), optionally verify exactness',
                    'flmjax.grow_cmd:grow_main', 'flmjax.grow_cmd:add_grow_arguments'),
    'mup-check': Command('µP coordinate check: activation scale vs width (PNG)',
                         'flmjax.coord_check:mup_check_main',
                         'flmjax.coord_check:add_mup_check_arguments', config_overrides=True),
    'sweep': Command('µP sweep of lr / init std / output mult on proxies; transfer the best point',
                     'flmjax.sweep:sweep_main', 'flmjax.sweep:add_sweep_arguments',
                     config_overrides=True),
    'predict-loss': Command("predict a wide model's loss from µP proxies (L(N), L(C) fits)",
                            'flmjax.loss_prediction:predict_loss_main',
                            'flmjax.loss_prediction:add_predict_loss_arguments',
                            config_overrides=True),
    'vocab': Command('train the SentencePiece vocabulary of an experiment\'s data section',
                     'flmjax.cli:run_vocab', 'flmjax.cli:add_vocab_args', config_overrides=True),
    'eval': Command('run the IQ / knowledge suites on a checkpoint or a local HF model',
                    'flmjax.evaluation.run:eval_main', 'flmjax.evaluation.run:add_eval_arguments'),
    'sample': Command('generate text from a checkpoint (greedy or top-p, KV cache)',
                      'flmjax.sampling:sample_main', 'flmjax.sampling:add_sample_arguments'),
    'compile': Command('AOT-compile every stage and growth for a TPU slice on this host: fits HBM?',
                       'flmjax.commands.compile:run', 'flmjax.commands.compile:add_args',
                       config_overrides=True),
    'plot': Command('plot validation loss vs FLOPs and tokens, growth marked, runs compared',
                    'flmjax.plot:plot_main', 'flmjax.plot:add_plot_arguments'),
}


def _resolve(ref: str) -> Callable:
  module, name = ref.split(':')
  return getattr(importlib.import_module(module), name)


def add_distributed_args(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group('multi-host (or env JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
                           'JAX_PROCESS_ID)')
  g.add_argument('--coordinator_address', help='host:port of process 0')
  g.add_argument('--num_processes', type=int)
  g.add_argument('--process_id', type=int)
  g.add_argument('--local_device_ids', help='comma-separated local device ids')
  g.add_argument('--distributed', action='store_true',
                 help='call jax.distributed.initialize() with cluster auto-detection (TPU pods, '
                      'SLURM, Open MPI)')
  g.add_argument('--heartbeat_timeout_s', type=int, default=None,
                 help='declare a silent process dead after this many seconds (JAX default 100; '
                      'or env JAX_HEARTBEAT_TIMEOUT_SECONDS)')


def init_distributed(args: argparse.Namespace) -> None:
  from flmjax import distributed
  ids = args.local_device_ids
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         [int(x) for x in ids.split(',')] if ids else None,
                         auto=args.distributed, heartbeat_timeout_s=args.heartbeat_timeout_s)


def add_train_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', required=True,
                 help='experiment file, e.g. experiments/tiny.py (optionally path:arg); '
                      'override fields with --config.section.field=value')
  p.add_argument('--workdir', required=True, help='checkpoints, metrics.jsonl, tb/')
  add_distributed_args(p)


def run_train(args: argparse.Namespace) -> int:
  init_distributed(args)
  from flmjax import experiment, train
  config = experiment.load_config(args.config, args.config_overrides)
  train.train(config, args.workdir)
  return 0


def add_vocab_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', required=True, help='experiment file whose `data` section to use')
  p.add_argument('--out', required=True, help='directory for spm.model')


def run_vocab(args: argparse.Namespace) -> int:
  from flmjax import data, experiment
  config = experiment.load_config(args.config, args.config_overrides)
  print(data.train_vocabulary(config.data, args.out))
  return 0


def split_overrides(rest: Sequence[str]) -> tuple[list[str], list[str]]:
  """Pull `--config.a.b=v` / `--config.a.b v` out of `rest`; returns (overrides, others)."""
  overrides, others, i = [], [], 0
  rest = list(rest)
  while i < len(rest):
    a = rest[i]
    if a.startswith('--config.'):
      if '=' in a:
        overrides.append(a[len('--config.'):])
      elif i + 1 < len(rest):
        overrides.append(a[len('--config.'):] + '=' + rest[i + 1])
        i += 1
      else:
        others.append(a)
    else:
      others.append(a)
    i += 1
  return overrides, others


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='flmjax', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  for name, cmd in COMMANDS.items():
    p = sub.add_parser(name, help=cmd.help, description=cmd.help)
    if cmd.add_args:
      _resolve(cmd.add_args)(p)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  from flmjax.config import ConfigError
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  overrides, others = split_overrides(argv)
  args = parser.parse_args(others)
  cmd = COMMANDS[args.command]
  if overrides and not cmd.config_overrides:
    parser.error(f'{args.command} takes no --config.* overrides (got --config.{overrides[0]})')
  args.config_overrides = overrides
  try:
    return int(_resolve(cmd.run)(args) or 0)
  except ConfigError as e:
    print(f'flmjax {args.command}: config error: {e}', file=sys.stderr)
    return 2
  except Exception as e:  # checkpoint / data errors: one clear line, no traceback wall
    from flmjax.checkpoint import CheckpointError
    if isinstance(e, CheckpointError):
      print(f'flmjax {args.command}: {e}', file=sys.stderr)
      return 1
    raise


if __name__ == '__main__':
  sys.exit(main())
