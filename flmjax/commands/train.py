"""`flmjax train`: train (or resume) an experiment, all its growth stages, on one or many hosts."""

from __future__ import annotations

import argparse


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
  if not args.workdir.strip():
    from flmjax.config import ConfigError
    raise ConfigError(f'--workdir {args.workdir!r} is empty; give the directory for checkpoints '
                      f'and metrics')
  init_distributed(args)
  from flmjax import experiment
  from flmjax.training.loop import train
  from flmjax.data.vocab import require_vocabulary
  config = experiment.load_config(args.config, args.config_overrides)
  require_vocabulary(config.data, args.config)
  train(config, args.workdir)
  return 0
