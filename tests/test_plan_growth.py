"""`flmjax plan-growth`: the candidate grid, the ranking rule, the prefix property of the probe
schedules, branching from a copied prefix checkpoint, and the command end to end."""

from __future__ import annotations

import json
import math
import os

import pytest

from conftest import read_losses, tiny_config
from flmjax import experiment, optimizer, plan
from flmjax.config import ConfigError
from flmjax.scaling import growth_planner as gp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVIDENCE = os.path.join(ROOT, 'experiments', 'growth_evidence.py')


def _evidence_base():
  return gp.read_base(experiment.load_config(f'{EVIDENCE}:growth,lr_after=peak'))


def test_default_grid_is_the_growth_evidence_sweeps():
  base = _evidence_base()
  ops = gp.default_operators(base)
  shape = lambda op: (op.first_model()['d_model'], op.first_model()['n_layers'])
  got = {op.name: (op.width, op.depth, shape(op)) for op in ops}
  # benchmarks/growth_evidence.py SWEEP_OPERATORS: msg from d16×L2, stack ×2 from 32x2, ×4 from
  # 32x1, tile+stack from d16×L2
  assert got == {'msg': ('msg', 'msg', (16, 2)), 'stack2': ('msg', 'stack', (32, 2)),
                 'stack4': ('msg', 'stack', (32, 1)), 'tile_stack': ('tile', 'stack', (16, 2))}
  grid = gp.candidate_grid(ops, gp.DEFAULT_SHARES)
  assert len(grid) == 16 and len({c.name for c in grid}) == 16
  assert len({c.operator.first for c in grid}) == 3  # three shared prefixes, not 16
  with pytest.raises(ConfigError, match='growth point'):
    gp.candidate_grid(ops, [1.0])
  assert [c.name for c in gp.parse_candidates('stack4@0.5, msg@0.125', ops)] == [
      'stack4@0.5', 'msg@0.125']
  for bad in ('msg', 'nope@0.5', 'msg@x'):
    with pytest.raises(ConfigError, match='--candidates'):
      gp.parse_candidates(bad, ops)


def test_every_probe_starts_with_the_shared_prefix_and_the_full_schedule_spends_the_budget():
  base = _evidence_base()
  budget = 2e12
  cands = gp.candidate_grid(gp.default_operators(base), gp.DEFAULT_SHARES)
  probe = gp.probe_flops_for(base, cands, budget)
  assert probe == pytest.approx((0.5 + gp.LAG_SHARE) * budget)
  sched = lambda cfg: optimizer.make_schedule([s.schedule_dict() for s in plan.stage_plan(cfg)],
                                              cfg.optim.schedule)
  for c in cands:
    t = gp.first_steps(base, c, budget)
    longest = max(gp.first_steps(base, d, budget) for d in cands
                  if d.operator.first == c.operator.first)
    prefix = sched(gp.prefix_config(base, c.operator, longest, keep=3))
    probe_cfg = gp.probe_config(base, c, budget, probe)
    stages = plan.stage_plan(probe_cfg)
    assert stages[0].steps == t and stages[0].model.to_dict() == plan.stage_plan(
        gp.prefix_config(base, c.operator, longest, keep=3))[0].model.to_dict()
    lr = sched(probe_cfg)
    for i in sorted({*range(0, t, max(1, t // 16)), t - 1}):  # the probe's first stage IS
      assert float(lr(i)) == float(prefix(i))  # the prefix's first t steps
    assert float(lr(t + 1)) == pytest.approx(base.lr)  # the peak held through the probe
    assert plan.flops_summary(stages)['growth_flops'] == pytest.approx(probe, rel=0.02)
    full = gp.full_config(base, c, budget)
    fs = plan.stage_plan(full)
    assert plan.flops_summary(fs)['growth_flops'] == pytest.approx(budget, rel=0.01)
    flr = sched(full)
    assert float(flr(t - 1)) == pytest.approx(base.lr)  # peak held up to the growth ...
    assert float(flr(fs[-1].end_step)) == pytest.approx(base.end_lr)  # ... cosine to end_lr


def test_planned_cost_counts_each_prefix_once_and_four_continuations():
  base = _evidence_base()
  budget = 2e12
  cands = gp.candidate_grid(gp.default_operators(base), gp.DEFAULT_SHARES)
  cost = gp.planned_cost(base, cands, budget, '/nonexistent')
  # three prefixes (d16xL2, d32xL2, d32xL1) to half the budget each
  assert cost['prefix_flops'] == pytest.approx(1.5 * budget, rel=0.01)
  assert cost['lag_flops_total'] == pytest.approx(16 * gp.LAG_SHARE * budget, rel=0.02)
  # growth points 1/8, 1/4, 1/3 go on from their lag to the latest point's (1/2 + lag)
  assert cost['probe_continue_flops'] == pytest.approx(
      (0.375 + 0.25 + (0.5 - 0.333)) * budget, rel=0.02)
  # the bound: <= 15% of the growth-evidence sweep (16 cells + the best 2 on 2 seeds)
  assert cost['probe_cost_flops'] <= 0.15 * 20 * budget


def test_group_winners_take_the_lowest_lag_loss_of_each_growth_point():
  rows = [dict(candidate='a@0.25', share=0.25, lag_loss=3.0),
          dict(candidate='b@0.25', share=0.25, lag_loss=2.5),
          dict(candidate='c@0.5', share=0.5, lag_loss=float('nan')),
          dict(candidate='d@0.5', share=0.5, lag_loss=2.9)]
  assert gp.group_winners(rows) == {0.25: 'b@0.25', 0.5: 'd@0.5'}


def test_rank_orders_by_probe_loss_and_puts_diverged_probes_last():
  rows = [dict(candidate='a@0.25', share=0.25, probe_loss=3.1),
          dict(candidate='b@0.5', share=0.5, probe_loss=float('nan')),
          dict(candidate='c@0.125', share=0.125, probe_loss=2.9),
          dict(candidate='d@0.25', share=0.25, probe_loss=float('inf')),
          dict(candidate='e@0.5', share=0.5, probe_loss=3.1)]
  ranked = gp.rank(rows)
  assert [r['candidate'] for r in ranked] == ['c@0.125', 'e@0.5', 'a@0.25', 'b@0.5', 'd@0.25']
  assert [r['rank'] for r in ranked] == [1, 2, 3, 4, 5]


def test_plan_refuses_growth_in_the_warm_up_and_a_probe_past_the_budget():
  base = _evidence_base()
  ops = gp.default_operators(base)
  tiny_budget = gp.flops_per_step(base, base.first) * base.warmup_steps * 4
  with pytest.raises(ConfigError, match='within the warm-up'):
    gp.check_plan(base, gp.candidate_grid(ops[:1], [0.125]), tiny_budget, tiny_budget / 2)
  with pytest.raises(ConfigError, match='past the budget'):
    gp.check_plan(base, gp.candidate_grid(ops[:1], [0.5]), 1e12, 1.1e12)


def test_pod_plan_days_use_the_compiled_rows_and_the_slice_rate_otherwise():
  base = _evidence_base()
  c = gp.candidate_grid(gp.default_operators(base)[:1], [0.25])[0]
  full = gp.full_config(base, c, 1e13)
  stages = plan.stage_plan(full)
  pod = {'chips': 4, 'peak_bf16_flops': 1e12, 'mfu': 0.5,
         'rows': [{'kind': 'train', 'params': stages[1].model.param_count(),
                   'flops_per_step': 1e9, 'step_s': 2.0}]}
  rate = gp.pod_seconds_per_flop(pod)
  want = (stages[0].flops / 2e12 + stages[1].flops * 2e-9) / 86400
  assert gp.config_days(full, rate) == pytest.approx(want)


def _tiny_experiment(tmp_path) -> str:
  """A two-stage tiny experiment (d32×L2 → d64×L4, MSG) as a file, with a validation set."""
  c = tiny_config(train=dict(eval_batches=1, log_every=1), optim=dict(warmup_steps=1),
                  stages=[dict(name='first', steps=4),
                          dict(name='final', model=dict(d_model=64, n_heads=4, d_ff=128,
                                                        n_layers=4),
                               steps=4, growth=dict(width='msg', depth='msg', ramp_steps=1))])
  c.optim.update(lr=1e-2, end_lr=1e-3)
  path = tmp_path / 'tiny_growth_exp.py'
  path.write_text(gp.experiment_file_text(c, 'tiny planner experiment'))
  return str(path)


@pytest.mark.slow
def test_plan_growth_end_to_end_branches_exactly_and_writes_a_trainable_schedule(tmp_path):
  from flmjax import cli
  from flmjax.training import loop
  exp = _tiny_experiment(tmp_path)
  base = gp.read_base(experiment.load_config(exp))
  budget = gp.flops_per_step(base, base.final) * 12
  work = tmp_path / 'plan'
  argv = ['plan-growth', '--config', exp, '--budget_flops', str(budget), '--workdir', str(work),
          '--candidates', 'msg@0.25,msg@0.5', '--lag', '0.125']
  assert cli.main([*argv, '--dry_run']) == 0 and not os.listdir(work)  # trains nothing
  assert cli.main(argv) == 0
  with open(work / 'plan.json') as f:
    result = json.load(f)
  rows = result['rows']
  assert result['complete'] and sorted(r['candidate'] for r in rows) == ['msg@0.25', 'msg@0.5']
  assert all(r['group_best'] and math.isfinite(r['probe_loss']) for r in rows)
  assert rows[0]['probe_loss'] <= rows[1]['probe_loss'] and rows[0]['rank'] == 1
  late = next(r for r in rows if r['candidate'] == 'msg@0.5')
  assert late['probe_loss'] == late['lag_loss']  # the latest growth point's lag ends at C_probe
  assert len([d for d in os.listdir(work) if d.startswith('prefix')]) == 1  # shared first stage
  assert result['probe_cost_flops'] == pytest.approx(
      result['prefix_flops'] + result['lag_flops_total'] + result['probe_continue_flops'])

  # msg@0.25 branched twice (prefix -> lag run -> on to C_probe): the same losses as its probe
  # trained uninterrupted from step 0
  early = next(r for r in rows if r['candidate'] == 'msg@0.25')
  cand = gp.parse_candidates('msg@0.25', gp.default_operators(base))[0]
  fresh = tmp_path / 'uninterrupted'
  loop.train(gp.probe_config(base, cand, budget, result['probe_flops']), str(fresh))
  lag, on = read_losses(early['workdir']), read_losses(early['probe_workdir'])
  assert min(lag) == early['growth_step'] + 1 and min(on) == max(lag) + 1  # no step twice
  full = read_losses(str(fresh))
  branched = {**lag, **on}
  assert sorted(branched) == [s for s in sorted(full) if s > early['growth_step']]
  assert {s: full[s] for s in branched} == branched  # exact float equality on CPU
  with open(fresh / 'summary.json') as f:
    assert json.load(f)['stages'][-1]['val_loss']['val_loss_synthetic'] == early['probe_loss']

  # the branches hard-linked the prefix's checkpoints: they are still intact
  from flmjax.storage import checkpoint
  prefix = next(d for d in os.listdir(work) if d.startswith('prefix'))
  stage0 = checkpoint.stage_dir(str(work / prefix), 0)
  assert [r['growth_step'] for r in sorted(rows, key=lambda r: r['share'])] == \
      checkpoint.steps_in(stage0)
  for step in checkpoint.steps_in(stage0):
    assert checkpoint.verify_step(os.path.join(stage0, str(step)))

  # a second call reads every run back and writes the same plan
  mtime = os.path.getmtime(os.path.join(early['workdir'], 'summary.json'))
  assert cli.main(argv) == 0
  assert os.path.getmtime(os.path.join(early['workdir'], 'summary.json')) == mtime
  with open(work / 'plan.json') as f:
    assert [r['candidate'] for r in json.load(f)['rows']] == [r['candidate'] for r in rows]

  # the written experiment file trains as is: the whole budget, growing at the chosen point
  chosen = experiment.load_config(str(work / 'chosen_schedule.py'))
  stages = plan.stage_plan(chosen)
  assert stages[0].steps == rows[0]['growth_step']
  assert plan.flops_summary(stages)['growth_flops'] == pytest.approx(budget, rel=0.15)
  summary = loop.train(chosen, str(tmp_path / 'chosen_run'))
  assert math.isfinite(summary['stages'][-1]['val_loss']['val_loss_synthetic'])


def test_dry_run_prints_cost_and_pod_days_and_refuses_a_one_stage_experiment(tmp_path, capsys):
  from flmjax import cli
  pod = tmp_path / 'pod.json'
  pod.write_text(json.dumps({'chips': 256, 'peak_bf16_flops': 4.59e14, 'mfu': 0.4, 'rows': []}))
  argv = ['plan-growth', '--config', f'{EVIDENCE}:growth,lr_after=peak', '--workdir',
          str(tmp_path / 'w'), '--dry_run', '--sweep_runs', '20', '--pod_plan', str(pod)]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert 'stack4@0.125' in out and '% of the full sweep (20 runs' in out and 'days' in out
  assert not os.listdir(tmp_path / 'w')
  assert cli.main(['plan-growth', '--config', os.path.join(ROOT, 'experiments', 'tiny_scratch.py'),
                   '--workdir', str(tmp_path / 'w')]) == 2
  assert 'two stages' in capsys.readouterr().err
