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


def test_two_growth_chains_and_their_candidates():
  shape = lambda m: (m['d_model'], m['n_layers'])
  for arg, first_stack, first_msg, middle in (
      ('growth,lr_after=peak', (32, 1), (16, 1), (32, 2)),
      ('growth,lr_after=peak,preset=d64x8', (64, 2), (32, 2), (64, 4))):  # issue 40's size
    base = gp.read_base(experiment.load_config(f'{EVIDENCE}:{arg}'))
    got = {op.name: (shape(op.first_model()), op.middle_width, op.middle_depth,
                     shape(op.middle_model()), op.width, op.depth)
           for op in gp.default_chains(base)}
    assert got == {'stack2>stack2': (first_stack, 'msg', 'stack', middle, 'msg', 'stack'),
                   'msg>stack2': (first_msg, 'msg', 'msg', middle, 'msg', 'stack')}
  # beside the default two: FLM-101B-style MSG twice and a narrow stack then MSG (d64x8 here)
  more = {op.name: (shape(op.first_model()), shape(op.middle_model()), op.middle_depth, op.depth)
          for op in gp.chain_operators(base) if op.name not in gp.DEFAULT_CHAINS}
  assert more == {'msg>msg': ((16, 2), (32, 4), 'msg', 'msg'),
                  'stack2>msg': ((32, 2), (32, 4), 'stack', 'msg')}
  ops = gp.default_operators(base) + gp.default_chains(base)
  grid = gp.candidate_grid(ops, [0.125, 0.25, 0.5], first_shares=[0.125])
  assert [c.name for c in grid if c.operator.middle] == [
      'stack2>stack2@0.125>0.25', 'stack2>stack2@0.125>0.5', 'msg>stack2@0.125>0.25',
      'msg>stack2@0.125>0.5']  # the second growth after the first
  c = gp.parse_candidates('msg>stack2@0.125>0.5:lr2', ops)[0]
  assert (c.first_share, c.share, c.lr_after, c.name) == (0.125, 0.5, 2.0,
                                                          'msg>stack2@0.125>0.5:lr2')
  assert gp.parse_candidates('stack2@0.5:lr1.5', ops)[0].lr_after == 1.5
  for bad in ('stack2>stack2@0.5', 'msg@0.25>0.5', 'msg>stack2@0.5>0.25', 'msg@0.5:lr0',
              'msg@0.5:x2'):
    with pytest.raises(ConfigError, match='--candidates'):
      gp.parse_candidates(bad, ops)


def test_a_chain_probe_shares_its_prefixes_and_jumps_to_its_lr_at_each_growth():
  base = _evidence_base()
  budget = 2e12
  chain = next(op for op in gp.default_chains(base) if op.name == 'stack2>stack2')
  sched = lambda cfg: optimizer.make_schedule([s.schedule_dict() for s in plan.stage_plan(cfg)],
                                              cfg.optim.schedule)
  for lr_after in (1.0, 2.0):
    c = gp.Candidate(chain, 0.5, 0.125, lr_after)
    t1, t2 = gp.growth_steps(base, c, budget)
    probe = gp.probe_config(base, c, budget, gp.lag_flops_for(base, c, budget))
    assert probe.optim.stage_schedule == ('continue' if lr_after == 1.0 else 'rewarm')
    stages = plan.stage_plan(probe)
    assert [s.model.n_layers for s in stages] == [1, 2, 4]
    assert [s.growth.depth for s in stages[1:]] == ['stack', 'stack']
    assert (stages[1].start_step, stages[2].start_step) == (t1, t2)
    assert plan.flops_summary(stages[:2])['growth_flops'] == pytest.approx(0.5 * budget, rel=0.02)
    lr, prefix = sched(probe), sched(gp.prefix_config(base, chain, t1, keep=3))
    middle = sched(gp.middle_config(base, c, budget, t2, keep=3))
    for i in sorted({*range(0, t1, max(1, t1 // 16)), t1 - 1}):  # the chain's first stage IS
      assert float(lr(i)) == float(prefix(i))  # the shared prefix's first t1 steps ...
    for i in (t1, (t1 + t2) // 2, t2 - 1):  # ... and its middle stage the middle run's
      assert float(lr(i)) == float(middle(i)) == pytest.approx(lr_after * base.lr)
    assert float(lr(t2 + 1)) == pytest.approx(lr_after * base.lr)  # held through the lag
    full = gp.full_config(base, c, budget)
    fs = plan.stage_plan(full)
    assert plan.flops_summary(fs)['growth_flops'] == pytest.approx(budget, rel=0.01)
    flr = sched(full)
    assert float(flr(t1 - 1)) == pytest.approx(base.lr)
    assert float(flr(t2)) == pytest.approx(lr_after * base.lr)  # the cosine starts there ...
    assert float(flr(fs[-1].end_step)) == pytest.approx(base.end_lr)  # ... and ends at end_lr
  # the jobs: one prefix per first shape (stack4 shares the chain's d32xL1), one middle run
  # per chain x first growth point, branched from that prefix at t1
  cands = gp.candidate_grid(gp.default_operators(base) + [chain], gp.DEFAULT_SHARES, [0.125])
  jobs = gp.prefix_jobs(base, cands, budget, '/w')
  assert sorted(j.kind for j in jobs.values()) == ['middle', 'prefix', 'prefix', 'prefix']
  mid = next(j for j in jobs.values() if j.kind == 'middle')
  assert mid.source == (jobs[chain.first].workdir, 0, gp.first_steps(base, cands[-1], budget))
  assert mid.steps == tuple(gp.growth_steps(base, c, budget)[1] for c in cands
                            if c.operator.middle)


def test_default_search_with_two_growths_and_the_lr_round_costs_at_most_15pct_of_its_sweep():
  """The default grid (16 one-growth cells, 6 chains, LR after growth at 1x and 2x the peak)
  on both growth-evidence sizes: the probes' FLOPs, the LR round counted at its dearest."""
  for arg in ('growth,lr_after=peak', 'growth,lr_after=peak,preset=d64x8'):
    base = gp.read_base(experiment.load_config(f'{EVIDENCE}:{arg}'))
    budget = plan.flops_summary(plan.stage_plan(base.config))['growth_flops']
    cands = gp.candidate_grid(gp.default_operators(base) + gp.default_chains(base),
                              gp.DEFAULT_SHARES, [0.125])
    assert len(cands) == 22
    cost = gp.planned_cost(base, cands, budget, '/w', [2.0])
    assert cost['lr_round_flops'] > 0
    sweep = 2 * len(cands) * budget  # every cell at both LRs, one run of the budget each
    assert cost['probe_cost_flops'] <= 0.15 * sweep


def test_smoke_dry_run_plans_one_and_two_growths(tmp_path, capsys):
  from flmjax import cli
  assert cli.main(['plan-growth', '--smoke', '--dry_run', '--workdir', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert 'stack2>stack2@0.25>0.5' in out and 'msg@0.25' in out and 'LR round' in out
  assert not os.listdir(tmp_path)


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
  chain = 'stack2>stack2@0.25>0.5:lr2'  # two growths, the LR after them at 2x the peak
  argv = ['plan-growth', '--config', exp, '--budget_flops', str(budget), '--workdir', str(work),
          '--candidates', f'msg@0.25,msg@0.5,{chain}', '--lag', '0.125', '--lr_after', '2']
  assert cli.main([*argv, '--dry_run']) == 0 and not os.path.exists(work)  # writes nothing
  assert cli.main(argv) == 0
  with open(work / 'plan.json') as f:
    result = json.load(f)
  rows = result['rows']
  by_name = {r['candidate']: r for r in rows}
  # round 1 (three candidates) and the LR round (each growth point's winner at 2x the peak)
  winner_05 = min(('msg@0.5', chain), key=lambda n: by_name[n]['lag_loss'])
  lr_round = {'msg@0.25:lr2', *([] if winner_05 == chain else ['msg@0.5:lr2'])}
  assert result['complete'] and set(by_name) == {'msg@0.25', 'msg@0.5', chain} | lr_round
  assert all(by_name[n].get('lr_round') for n in lr_round)
  ranked = [r for r in rows if r['probe_loss'] is not None]
  assert len(ranked) == 2 and all(r['group_best'] and math.isfinite(r['probe_loss'])
                                  for r in ranked)
  assert ranked[0]['probe_loss'] <= ranked[1]['probe_loss'] and ranked[0]['rank'] == 1
  for share in (0.25, 0.5):  # each point's winner: the lowest lag loss over operators and LRs
    point = [r for r in rows if r['share'] == share]
    assert min(point, key=lambda r: r['lag_loss'])['group_best']
  late = next(r for r in ranked if r['share'] == 0.5)
  assert late['probe_loss'] == late['lag_loss']  # the latest growth point's lag ends at C_probe
  # one prefix per first-stage shape (d32xL2 for msg, d64xL1 for the chain), one middle run
  assert len([d for d in os.listdir(work) if d.startswith('prefix')]) == 2
  assert len([d for d in os.listdir(work) if d.startswith('mid_')]) == 1
  assert result['probe_cost_flops'] == pytest.approx(
      result['prefix_flops'] + result['lag_flops_total'] + result['lr_round_flops']
      + result['probe_continue_flops'])

  # the chain branched twice (prefix -> middle run -> lag), with an LR that jumps at each
  # growth: the same losses as its probe trained uninterrupted from step 0
  ops = gp.default_operators(base) + gp.default_chains(base)
  cand = gp.parse_candidates(chain, ops)[0]
  loop.train(gp.probe_config(base, cand, budget, gp.lag_flops_for(base, cand, budget)),
             str(tmp_path / 'chain_uninterrupted'))
  fresh, branched = read_losses(str(tmp_path / 'chain_uninterrupted')), read_losses(
      by_name[chain]['workdir'])
  t1, t2 = by_name[chain]['growth_steps']
  assert min(branched) == t2 + 1 and t1 < t2
  assert {s: fresh[s] for s in branched} == branched  # exact float equality on CPU
  rows = ranked

  # the winner at 1/4 (msg, at the peak or 2x) branched twice (prefix -> lag run -> on to
  # C_probe): the same losses as its probe trained uninterrupted from step 0
  early = next(r for r in rows if r['share'] == 0.25)
  cand = gp.parse_candidates(early['candidate'], ops)[0]
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
  prefix = gp.prefix_dirname(ops[0])  # msg's, branched at 1/4 and 1/2
  stage0 = checkpoint.stage_dir(str(work / prefix), 0)
  assert [by_name[n]['growth_step'] for n in ('msg@0.25', 'msg@0.5')] == \
      checkpoint.steps_in(stage0)
  for step in checkpoint.steps_in(stage0):
    assert checkpoint.verify_step(os.path.join(stage0, str(step)))

  # a second call reads every run back and writes the same plan
  mtime = os.path.getmtime(os.path.join(early['workdir'], 'summary.json'))
  assert cli.main(argv) == 0
  assert os.path.getmtime(os.path.join(early['workdir'], 'summary.json')) == mtime
  with open(work / 'plan.json') as f:
    assert [r['candidate'] for r in json.load(f)['rows']] == [
        r['candidate'] for r in result['rows']]

  # the written experiment file trains as is: the whole budget, growing at the chosen point
  chosen = experiment.load_config(str(work / 'chosen_schedule.py'))
  stages = plan.stage_plan(chosen)
  assert stages[0].steps == rows[0]['growth_steps'][0]
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
  assert 'dry run: nothing was trained and nothing written' in out
  assert not os.path.exists(tmp_path / 'w')  # not even an empty workdir
  assert cli.main(['plan-growth', '--config', os.path.join(ROOT, 'experiments', 'tiny_scratch.py'),
                   '--workdir', str(tmp_path / 'w')]) == 2
  assert 'two stages' in capsys.readouterr().err
