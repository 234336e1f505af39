"""`flmjax mup-check`, `flmjax sweep` and `flmjax predict-loss`: the µP workflow's commands.

The work is done in `flmjax.scaling`; each run function imports it when the command runs, so
`flmjax CMD --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os


def add_mup_check_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', required=True,
                 help='experiment file (its model is rescaled to each width; override fields '
                      'with --config.section.field=value)')
  p.add_argument('--widths', default='64,128,256,512',
                 help='comma-separated d_model values (multiples of model.head_dim)')
  p.add_argument('--steps', type=int, default=4, help='training steps per width')
  p.add_argument('--seeds', type=int, default=1, help='seeds averaged per width')
  p.add_argument('--compare_sp', action='store_true',
                 help='also run the same config with use_mup=False (second row of the plot)')
  p.add_argument('--out', default='mup_check.png', help='PNG path; the JSON goes next to it')


def mup_check_main(args: argparse.Namespace) -> int:
  from flmjax import experiment
  from flmjax.scaling.coord_check import coord_check, format_table, plot
  from flmjax.storage import paths
  config = experiment.load_config(args.config, getattr(args, 'config_overrides', ()))
  if 'experiment' in config:  # a sweep / predict-loss file: check its proxy family
    config = config.experiment
  widths = [int(w) for w in str(args.widths).split(',') if w]
  results = [coord_check(config, widths, args.steps, args.seeds)]
  if args.compare_sp:
    sp = config.copy_and_resolve_references()
    sp.model.use_mup = not bool(config.model.use_mup)
    results.append(coord_check(sp, widths, args.steps, args.seeds))
  for r in results:
    print(format_table(r))
  path = plot(results, args.out)
  paths.write_atomic(os.path.splitext(args.out)[0] + '.json', json.dumps(results, indent=1))
  print(f'wrote {path}')
  return 0


def _add_tool_file_and_workdir(p: argparse.ArgumentParser, file_help: str,
                               workdir_help: str) -> None:
  """--config (a tool file: sections experiment + the tool's own) and --workdir."""
  p.add_argument('--config', required=True, help=file_help)
  p.add_argument('--workdir', required=True, help=workdir_help)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
  _add_tool_file_and_workdir(
      p, 'sweep file, e.g. experiments/mup_sweep.py (sections experiment, sweep); override with '
         '--config.sweep.mode=random, --config.experiment.train.steps=…',
      'one sub-directory per run, results JSON')
  p.add_argument('--shard', default='', help='K/N: run only points K, K+N, … (parallel sweeps)')
  p.add_argument('--merge_only', action='store_true',
                 help='train nothing; merge the shards already in --workdir')


def sweep_main(args: argparse.Namespace) -> int:
  from flmjax.scaling.sweep import (collect, format_table, load_sweep_config, parse_shard,
                                    run_point, run_sweep, transfer)
  from flmjax.storage import paths
  cfg = load_sweep_config(args.config, getattr(args, 'config_overrides', ()))
  shard = parse_shard(args.shard)
  paths.makedirs(args.workdir)
  if not args.merge_only:
    rows = run_sweep(cfg, args.workdir, shard)
    paths.write_atomic(paths.join(args.workdir, f'results_shard{shard[0]}of{shard[1]}.json'),
                       json.dumps(rows, indent=1))
  rows = collect(args.workdir)
  if not rows:
    print('sweep: no results yet')
    return 1
  print(format_table(rows))
  result = transfer(cfg, rows)
  target_cfg = result.pop('target_config')
  if cfg.sweep.train_target and not args.merge_only:
    res = run_point(target_cfg, paths.join(args.workdir, f'target_w{result["target_width"]}'))
    result['target_loss'] = res['loss']
  paths.write_atomic(paths.join(args.workdir, 'sweep.json'),
                     json.dumps({'rows': rows, 'transfer': result}, indent=1))
  hp = result['hparams']
  print(f"best at width {result['from_width']}: lr {hp['lr']:.3g}, init_std "
        f"{hp['init_std']:.3g}, output_mult {hp['output_mult']:.3g}"
        f"{'' if result['agree_across_widths'] else ' (proxy widths disagree)'}")
  m = result['target_model']
  print(f"transfer: flmjax train --config <experiment> --config.model.d_model={m['d_model']} "
        f"--config.model.n_heads={m['n_heads']} --config.model.d_ff={m['d_ff']} "
        f"--config.optim.lr={hp['lr']:.3g} --config.model.init_std={hp['init_std']:.3g} "
        f"--config.model.output_mult={hp['output_mult']:.3g} "
        f"(full target config in {paths.join(args.workdir, 'sweep.json')})")
  if 'target_loss' in result:
    print(f"target width {result['target_width']}: loss {result['target_loss']:.4f}")
  return 0


def add_predict_loss_arguments(p: argparse.ArgumentParser) -> None:
  _add_tool_file_and_workdir(
      p, 'prediction file, e.g. experiments/mup_proxy.py (sections experiment, predict); '
         'override with --config.predict.target_width=…; proxies at several token budgets '
         '(laws with a data term): --config.predict.proxy_tokens=[T1,T2,T3], the target\'s '
         'budget: --config.predict.target_tokens=T',
      'one sub-directory per width, prediction JSON')
  p.add_argument('--train_target', action='store_true',
                 help='also train the target and report predicted vs measured')
  p.add_argument('--plot', default='', help='PNG path (default WORKDIR/loss_prediction.png)')


def predict_loss_main(args: argparse.Namespace) -> int:
  from flmjax.scaling.heldout import choose_for_target
  from flmjax.scaling.loss_prediction import (format_report, load_predict_config, plot,
                                              predict_loss)
  from flmjax.storage import paths
  cfg = load_predict_config(args.config, getattr(args, 'config_overrides', ()))
  out = predict_loss(cfg, args.workdir, train_target=True if args.train_target else None,
                     choose_law=choose_for_target)
  paths.write_atomic(paths.join(args.workdir, 'prediction.json'), json.dumps(out, indent=1))
  path = plot(out, args.plot or paths.join(args.workdir, 'loss_prediction.png'))
  print(format_report(out))
  print(f'wrote {path}')
  return 0
