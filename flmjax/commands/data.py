"""`flmjax data build`: tokenize an experiment's sources once into a sharded token store (Beam).

  flmjax data build --config X --out DIR [--runner DirectRunner --direct_num_workers 2 ...]
Flags it does not know are Apache Beam pipeline options (a Dataflow / Flink / Spark runner takes
only its own options). A killed build resumes from the units it finished; an existing store is
reused only if it was built for this experiment's data (else refused, naming the field). Train on
it with `--config.data.store_dir=DIR`.
"""

from __future__ import annotations

import argparse
import logging
import re


def add_data_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('action', choices=['build'], help='build: tokenize the sources into a store')
  p.add_argument('--config', required=True, help='experiment file whose `data` section to use')
  p.add_argument('--out', required=True, help='store directory (local, or any etils.epath path)')
  p.add_argument('--unit_mb', type=int, default=64,
                 help='text per build unit, MiB: bounds a shard (default 64)')
  p.add_argument('--runner', default='DirectRunner', help='Beam runner (default DirectRunner)')
  p.add_argument('--direct_num_workers', type=int, default=0,
                 help='DirectRunner worker processes (0: one per CPU core)')
  p.add_argument('--direct_running_mode', default='multi_processing',
                 choices=['in_memory', 'multi_threading', 'multi_processing'],
                 help='DirectRunner mode (default multi_processing)')


def run_data(args: argparse.Namespace) -> int:
  from flmjax import experiment
  from flmjax.data import DataError, store_build, validate_data_config
  config = experiment.load_config(args.config, args.config_overrides)
  cfg = validate_data_config(config.data)
  if cfg.source != 'bilingual':
    raise DataError(f"data.source = {cfg.source!r}: only 'bilingual' data has a token store")
  if args.unit_mb < 1:
    raise DataError(f'--unit_mb must be >= 1, got {args.unit_mb}')
  root_logger = logging.getLogger()
  level = root_logger.level
  root_logger.setLevel(logging.ERROR)   # Beam's import warns about GCP clients it does not need
  try:
    from flmjax.data import beam_build  # Beam is the optional extra flmjax[beam]
  except ImportError as e:
    raise DataError(f'flmjax data build needs Apache Beam (pip install -e ".[beam]"): {e}') \
        from None
  finally:
    root_logger.setLevel(level)
  beam_args = ['--runner', args.runner, *args.extra_args]
  if args.runner == 'DirectRunner':
    beam_args += ['--direct_num_workers', str(args.direct_num_workers),
                  '--direct_running_mode', args.direct_running_mode]
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  try:
    manifest = store_build.build_store(cfg, args.out, run_units=beam_build.beam_runner(beam_args),
                                       unit_bytes=args.unit_mb << 20)
  except DataError:
    raise
  except Exception as e:  # a worker's DataError reaches the driver wrapped by the runner
    found = re.search(r'DataError: ([^\n]+)', str(e))
    if found:
      raise DataError(found.group(1)) from None
    raise
  for split, per_source in manifest['splits'].items():
    for source, entry in per_source.items():
      print(f'{split:10s} {source:8s} {entry["docs"]:>10d} docs {entry["tokens"]:>13d} tokens '
            f'{len(entry["shards"]):>5d} shards')
  print(f'store {args.out} (key {manifest["key"]}): train on it with '
        f'--config.data.store_dir={args.out}')
  return 0
