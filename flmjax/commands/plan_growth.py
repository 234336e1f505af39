"""`flmjax plan-growth`: choose how and when to grow from short probes
(the work is done in flmjax.scaling.growth_planner).

  flmjax plan-growth --config 'experiments/growth_evidence.py:growth,lr_after=peak' \
      --budget_flops 3.6e13 --workdir W [--candidates msg@0.25,stack2@0.5] [--shard K/N] \
      [--chains stack2>stack2,msg>stack2] [--chain_first 0.125] [--lr_after 2] \
      [--pod_plan plan.json]

Writes W/plan.json (every candidate: probe loss, cost) and W/chosen_schedule.py (the pick as an
experiment file that `flmjax train --config W/chosen_schedule.py` runs as is).  `--smoke` plans
on the tiny synthetic preset of experiments/growth_evidence.py, then trains the written file.
"""

from __future__ import annotations

import argparse
import json
import math
import os

SMOKE_CONFIG = 'growth,preset=smoke_d64x8,lr_after=peak'  # d16×L2 → d32×L4: chains fit
SMOKE_CANDIDATES = 'msg@0.25,tile_stack@0.25,msg@0.5,stack2>stack2@0.25>0.5'


def add_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', default='',
                 help='a two-stage experiment (first stage, grown stage): its models, LR peak, '
                      'warm-up, end_lr and growth settings; e.g. '
                      "'experiments/growth_evidence.py:growth,lr_after=peak'")
  p.add_argument('--budget_flops', type=float, default=0.0,
                 help="the FLOPs budget of the schedule (default: the experiment's own total)")
  p.add_argument('--candidates', default='',
                 help='OPERATOR@SHARE[:lrM],... (operators: msg, stack2, stack4, tile_stack; '
                      "SHARE: the share of the budget before the growth) and CHAIN@FIRST>SECOND "
                      '(two growths: stack2>stack2, msg>stack2, msg>msg, stack2>msg); :lrM = the LR after the '
                      'growths at M x the peak; default: every operator x --shares and every '
                      'chain x --chain_first x the later --shares')
  p.add_argument('--shares', default='0.125,0.25,0.333,0.5',
                 help='growth points of the default grid, as shares of the budget')
  p.add_argument('--chains', default='',
                 help='two-growth operators of the default grid: stack2>stack2, msg>stack2, '
                      "msg>msg, stack2>msg (default: the first two, where the target's layers "
                      "divide by 4; 'none': one growth only, the plans before issue 40)")
  p.add_argument('--chain_first', default='0.125',
                 help="the chains' first growth points (shares of the budget); their second "
                      'is each later --shares point')
  p.add_argument('--lr_after', default='2',
                 help="the LR round: each growth point's winner again with the LR after its "
                      "growths at M x the peak, for each M ('none': the peak only); the peak is "
                      "the experiment's LR, i.e. the scratch arm's tuned optimum in "
                      'growth_evidence')
  p.add_argument('--lag', type=float, default=None,
                 help='the probes\' lag after each growth, a share of the budget (default 1/24); '
                      'C_probe = the latest growth point + LAG')
  p.add_argument('--workdir', default='', help='one run dir per prefix and probe, plan.json, '
                                               'chosen_schedule.py')
  p.add_argument('--shard', default='', help='K/N: run only jobs K, K+N, ... (then once without '
                                              '--shard to rank and write the plan)')
  p.add_argument('--pod_plan', default='',
                 help='a `flmjax compile --output` JSON: also print the days each candidate '
                      'implies on that slice')
  p.add_argument('--sweep_runs', type=int, default=0,
                 help='the full sweep the probe cost is compared with, in runs of the budget '
                      '(default: one per candidate; benchmarks/growth_evidence.py --sweep runs '
                      '20: 16 cells on one seed, the best 2 on 2 more)')
  p.add_argument('--dry_run', action='store_true',
                 help='train nothing: print the candidates, growth steps and the planned cost')
  p.add_argument('--smoke', action='store_true',
                 help=f'plan on experiments/growth_evidence.py:{SMOKE_CONFIG} (synthetic data, '
                      'a few steps) and train the written schedule')


def run(args: argparse.Namespace) -> int:
  from flmjax import experiment, plan
  from flmjax.config import ConfigError
  from flmjax.scaling import growth_planner as gp
  from flmjax.scaling.sweep import parse_shard
  from flmjax.storage import paths
  from flmjax.training.loop import train

  config_path, candidates_text, shares_text = args.config, args.candidates, args.shares
  if args.smoke:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_path = config_path or os.path.join(root, 'experiments', f'growth_evidence.py:'
                                              f'{SMOKE_CONFIG}')
    candidates_text = candidates_text or SMOKE_CANDIDATES
  if not config_path:
    raise ConfigError('plan-growth: --config is required (or --smoke)')
  if not args.workdir:
    raise ConfigError('plan-growth: --workdir is required')
  lag = gp.LAG_SHARE if args.lag is None else args.lag
  if not 0 < lag < 1:
    raise ConfigError(f'--lag must be a share of the budget in (0, 1), got {lag!r}')
  cfg = experiment.load_config(config_path, getattr(args, 'config_overrides', ()))
  base = gp.read_base(cfg, lag)
  budget = args.budget_flops or plan.flops_summary(plan.stage_plan(cfg))['growth_flops']
  chains = {op.name: op for op in gp.chain_operators(base)}
  operators = gp.default_operators(base) + list(chains.values())
  chain_names = ([] if args.chains == 'none' else [x for x in args.chains.split(',') if x]
                 or [op.name for op in gp.default_chains(base)])
  for name in chain_names:
    if name not in chains:
      raise ConfigError(f'--chains: {name!r} is not a two-growth operator of this target '
                        f'(known here: {sorted(chains) or "none: its layers do not divide by 4"})')
  if candidates_text:
    candidates = gp.parse_candidates(candidates_text, operators)
  else:
    shares = _numbers('--shares', shares_text)
    candidates = gp.candidate_grid(
        gp.default_operators(base) + [chains[n] for n in chain_names], shares,
        _numbers('--chain_first', args.chain_first))
  lr_after = [] if args.lr_after == 'none' else _numbers('--lr_after', args.lr_after)
  if any(m <= 0 for m in lr_after):
    raise ConfigError(f'--lr_after: expected multiples of the peak LR > 0, got {args.lr_after!r}')
  shard = parse_shard(args.shard)
  if not args.dry_run:  # a dry run writes nothing, not even an empty workdir
    paths.makedirs(args.workdir)
  result = gp.run_plan(base, candidates, budget, args.workdir, shard=shard,
                       dry_run=args.dry_run, sweep_runs=args.sweep_runs, lr_after=lr_after,
                       log=lambda m: print(m, flush=True))
  days = None
  if args.pod_plan:
    rate = gp.pod_seconds_per_flop(json.loads(paths.read_text(args.pod_plan)))
    days = {c.name: gp.config_days(gp.full_config(base, c, budget), rate) for c in candidates}
    print(f'days: the full schedule of each candidate on the slice of {args.pod_plan}; '
          f"the probes: {result['probe_cost_flops'] * rate[0] / 86400:.2f} days", flush=True)
  print(gp.format_table(result, days), flush=True)
  if args.dry_run:
    print(f'plan-growth: dry run: nothing was trained and nothing written ({args.workdir} is '
          f'untouched); drop --dry_run to train the probes and rank the candidates', flush=True)
    return 0
  if result['waiting']:
    print(f"plan-growth: waiting for the run they branch from: {', '.join(result['waiting'])}; "
          'run this shard again once the other shards finished', flush=True)
  if not result['complete']:
    print('plan-growth: not every run has finished: run again (once more without --shard once '
          'the shards are done) to rank the candidates and write the plan', flush=True)
    return 0
  best = result['rows'][0]
  chosen = next(c for c in gp.with_lr_round(candidates, result) if c.name == best['candidate'])
  full = gp.full_config(base, chosen, budget)
  path = paths.join(args.workdir, 'chosen_schedule.py')
  op = chosen.operator
  grown = (f"grown after {best['growth_step']} steps" if not op.middle else
           f"grown to {op.middle_model()} ({op.middle_width}/{op.middle_depth}) after "
           f"{best['growth_steps'][0]} steps and to the target after {best['growth_steps'][1]}")
  after = ('then a cosine' if chosen.lr_after == 1.0 else
           f'then {chosen.lr_after:g}x the peak after each growth, held, and a cosine from it')
  note = (f"The schedule `flmjax plan-growth` chose: {chosen.name} (operator width="
          f"{op.width}, depth={op.depth}, first stage {op.first_model()}), {grown}, on a "
          f"budget of {budget:.4g} FLOPs;\nprobe loss {best['probe_loss']:.4f} at C_probe "
          f"{result['probe_flops']:.4g} FLOPs (see plan.json beside this file).\nLR: warm-up, "
          f"the peak {base.lr:g} held through the first stage, {after} to {base.end_lr:g}.")
  paths.write_atomic(path, gp.experiment_file_text(full, note))
  paths.write_atomic(paths.join(args.workdir, 'plan.json'), json.dumps(
      {**result, 'chosen': best, 'chosen_schedule': path, 'days': days}, indent=1))
  print(f"chosen: {chosen.name}; train it with: flmjax train --config {path} --workdir <dir>",
        flush=True)
  if args.smoke:
    loaded = experiment.load_config(path)
    summary = train(loaded, paths.join(args.workdir, 'chosen_run'))
    loss = summary['stages'][-1]['val_loss'] or {}
    finite = all(math.isfinite(float(v)) for v in loss.values())
    print(f'smoke: the written schedule trained: {summary["growth_flops"]:.4g} FLOPs, '
          f'val loss {loss}', flush=True)
    return 0 if finite else 1
  return 0


def _numbers(flag: str, text: str) -> list[float]:
  from flmjax.config import ConfigError
  try:
    return [float(x) for x in text.split(',') if x.strip()]
  except ValueError:
    raise ConfigError(f'{flag}: expected comma-separated numbers, got {text!r}') from None
