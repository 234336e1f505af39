"""The growth benchmark's analysis (curves, FLOPs-to-target, seed intervals, the jump at a
growth, band plots) on hand-made metrics, and its three arms' setting (equal budget, shared
recipe, every operator a valid plan)."""

import json
import math
import os
import random
import statistics

import flax.linen as nn
import jax
import numpy as np
import pytest

from flmjax import curves, experiment, growth, plan, plot
from flmjax.model import Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, 'experiments', 'growth_evidence.py')


def _write(path, rows):
  path.mkdir(parents=True, exist_ok=True)
  with open(path / 'metrics.jsonl', 'w') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')
  return str(path)


def _growth_run(jump=0.0, offset=0.0, grow_at=6, steps=12):
  """Training loss falls 0.1 per step, plus `jump` from the growth on; val every 2 steps."""
  rows, flops = [], 0.0
  for step in range(1, steps + 1):
    stage = 0 if step <= grow_at else 1
    flops += 1e9 * (1 + 2 * stage)
    loss = 5.0 - 0.1 * step + (jump if stage else 0.0) + offset
    rows.append({'step': step, 'stage': stage, 'flops': flops, 'tokens': 100 * step, 'loss': loss})
    if step % 2 == 0:
      rows.append({'step': step, 'stage': stage, 'flops': flops, 'tokens': 100 * step,
                   'val_loss_en': loss - 0.5, 'val_loss_zh': loss + 0.5})
  return rows


def test_val_curve_is_the_mean_over_languages_at_eval_steps(tmp_path):
  recs = curves.run_records(_write(tmp_path / 'r', _growth_run()))
  c = curves.val_curve(recs)
  assert len(c) == 6
  assert c[0] == (2e9, pytest.approx(4.8))  # step 2: loss 4.8, (4.3 + 5.3) / 2


def test_resumed_steps_count_once(tmp_path):
  rows = _growth_run() + [{'step': 4, 'val_loss_en': 0.0, 'val_loss_zh': 0.0, 'flops': 4e9}]
  c = curves.val_curve(curves.run_records(_write(tmp_path / 'r', rows)))
  assert len(c) == 6 and c[1] == (4e9, 0.0)  # the re-logged step replaces the first record


def test_at_flops_interpolates_and_refuses_to_extrapolate():
  c = [(1.0, 4.0), (3.0, 2.0)]
  assert curves.at_flops(c, 2.0) == pytest.approx(3.0)
  assert curves.at_flops(c, 1.0) == 4.0 and curves.at_flops(c, 3.0) == 2.0
  assert curves.at_flops(c, 0.5) is None and curves.at_flops(c, 3.5) is None


def test_flops_to_reach_is_the_first_crossing_interpolated():
  c = [(1.0, 4.0), (2.0, 3.0), (3.0, 3.5), (4.0, 2.0)]
  assert curves.flops_to_reach(c, 3.5) == pytest.approx(1.5)
  assert curves.flops_to_reach(c, 2.5) == pytest.approx(3.0 + 1.0 / 1.5)  # first time below
  assert curves.flops_to_reach(c, 4.5) == 1.0  # already there at the first point
  assert curves.flops_to_reach(c, 1.0) is None


def test_mean_curve_averages_on_the_common_range():
  a = [(1.0, 4.0), (2.0, 3.0), (3.0, 2.0)]
  b = [(1.0, 5.0), (2.0, 4.0)]
  grid, mean, std = curves.mean_curve([a, b])
  assert grid == [1.0, 2.0]
  assert mean == pytest.approx([4.5, 3.5])
  assert std == pytest.approx([math.sqrt(0.5)] * 2)
  grid, mean, _ = curves.mean_curve([a, b], points=3)
  assert grid == pytest.approx([1.0, 1.5, 2.0]) and mean[1] == pytest.approx(4.0)
  with pytest.raises(ValueError):
    curves.mean_curve([a, []])


def test_mean_interval_uses_student_t():
  m, lo, hi = curves.mean_interval([1.0, 2.0, 3.0])
  assert m == 2.0
  assert hi - m == pytest.approx(4.303 * 1.0 / math.sqrt(3))
  assert lo == pytest.approx(2 * m - hi)
  assert curves.mean_interval([0.5]) == (0.5, -math.inf, math.inf)  # one seed claims nothing
  m, lo, hi = curves.mean_interval([0.4, math.inf, 0.6])  # a seed that never reached
  assert m == math.inf and hi == math.inf and lo == 0.4
  assert curves.t_quantile(1) == 12.706 and curves.t_quantile(100) == 1.96


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time():
  rng = random.Random(0)
  for n in (3, 5):
    hits = 0
    trials = 4000
    for _ in range(trials):
      _, lo, hi = curves.mean_interval([rng.gauss(0.6, 0.1) for _ in range(n)])
      hits += lo <= 0.6 <= hi
    assert 0.93 <= hits / trials <= 0.97, (n, hits / trials)


def test_mean_std():
  assert curves.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
  assert curves.mean_std([1.5]) == (1.5, 0.0)


def test_growth_points_and_the_jump_at_a_growth(tmp_path):
  exact = curves.run_records(_write(tmp_path / 'e', _growth_run(jump=0.0)))
  copy = curves.run_records(_write(tmp_path / 'c', _growth_run(jump=0.7)))
  assert curves.growth_points(exact) == [(1, 6, 6e9)]
  j_exact, noise = curves.jump_at_growth(exact, 6)
  j_copy, _ = curves.jump_at_growth(copy, 6)
  assert j_exact == pytest.approx(-0.1) and noise == pytest.approx(0.1)
  assert j_copy == pytest.approx(0.6)
  assert curves.jump_at_growth(exact, 40) is None  # not logged


def test_plot_groups_draws_bands_and_parses_groups(tmp_path):
  runs = [_write(tmp_path / f's{i}', _growth_run(offset=0.1 * i)) for i in range(3)]
  flat = [_write(tmp_path / f'f{i}', _growth_run(jump=1.0, offset=0.1 * i)) for i in range(2)]
  out = plot.plot_groups({'growth': runs, 'other': flat}, str(tmp_path / 'p' / 'x.png'),
                         target=4.0)
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert plot.parse_group('a b=x,y') == ('a b', ['x', 'y'])
  for bad in ('nolabel', '=x', 'a='):
    with pytest.raises(ValueError):
      plot.parse_group(bad)
  with pytest.raises(ValueError, match='no runs'):
    plot.plot_groups({'empty': []}, str(tmp_path / 'y.png'))


def test_plot_command_groups(tmp_path):
  from flmjax import cli
  runs = [_write(tmp_path / f's{i}', _growth_run(offset=0.1 * i)) for i in range(2)]
  assert cli.main(['plot', '--group', 'g=' + ','.join(runs), '--out', str(tmp_path / 'o'),
                   '--target', '4.2']) == 0
  assert os.path.exists(tmp_path / 'o' / 'val_loss_groups.png')


# ---- the setting ----------------------------------------------------------------------

def _plan(arg):
  cfg = experiment.load_config(f'{EXPERIMENT}:{arg}')
  return cfg, plan.stage_plan(cfg)


@pytest.mark.parametrize('preset', ['full', 'double', 'first_run', 'smoke'])
def test_three_arms_share_one_budget_and_recipe(preset):
  arms = {a: _plan(f'{a},preset={preset}') for a in ('growth', 'scratch', 'small')}
  flops = {a: sum(s.flops for s in st) for a, (_, st) in arms.items()}
  one_step = max(s.model.flops_per_token(s.seq_len) * s.tokens_per_step
                 for _, st in arms.values() for s in st)
  for a in ('growth', 'small'):
    assert abs(flops[a] - flops['scratch']) <= one_step, a
  growth = arms['growth'][1]
  assert [s.model for s in growth] == [arms['small'][1][0].model, arms['scratch'][1][0].model]
  assert growth[0].flops / flops['scratch'] == pytest.approx(1 / 3, abs=0.02)
  cfgs = [c for c, _ in arms.values()]
  for c in cfgs[1:]:
    assert c.data.to_dict() == cfgs[0].data.to_dict()
    assert c.optim.schedule == cfgs[0].optim.schedule
    assert c.train.global_batch_size == cfgs[0].train.global_batch_size
  assert {st[0].lr for _, st in arms.values()} == {3e-3}
  assert growth[1].model.d_model > growth[0].model.d_model
  assert growth[1].model.n_layers > growth[0].model.n_layers


def test_growth_arm_runs_one_schedule_like_the_others():
  """Warm-up, then one cosine to lr/10 over the whole run; no jump of the LR at the growth."""
  from flmjax import optimizer
  _, st = _plan('growth')
  sched = optimizer.make_schedule([s.schedule_dict() for s in st], 'cosine')
  g = st[1].start_step
  lr = lambda step: float(sched(step))
  assert lr(g - 1) == pytest.approx(lr(g), rel=0.02)
  assert lr(g) < 3e-3 and lr(st[1].end_step - 1) == pytest.approx(3e-4, rel=1e-3)
  assert max(lr(i) for i in range(0, st[1].end_step, 7)) == pytest.approx(3e-3, rel=1e-3)
  _, sc = _plan('scratch')
  sched_s = optimizer.make_schedule([s.schedule_dict() for s in sc], 'cosine')
  assert float(sched_s(sc[0].end_step - 1)) == pytest.approx(3e-4, rel=1e-3)


def test_after_growth_evaluations_are_kept_apart(tmp_path):
  rows = _growth_run() + [{'step': 6, 'stage': 1, 'after_growth': 1.0, 'flops': 6e9,
                           'val_loss_en': 1.0, 'val_loss_zh': 2.0}]
  wd = _write(tmp_path / 'r', rows)
  recs = curves.run_records(wd)
  assert curves.growth_points(recs) == [(1, 6, 6e9)]
  assert curves.val_curve(recs)[2] == (6e9, pytest.approx(4.4))
  assert curves.mean_val(curves.after_growth_records(wd)[6]) == 1.5


def test_final_size_gets_several_tokens_per_parameter():
  """The regime where size matters: not the old 0.4 tokens per parameter."""
  _, st = _plan('scratch')
  assert st[0].tokens / st[0].model.param_count() >= 10


@pytest.mark.parametrize('width', ['msg', 'tile'])
@pytest.mark.parametrize('depth', ['msg', 'identity', 'stack', 'interleave'])
def test_every_operator_is_a_valid_plan(width, depth):
  cfg, st = _plan(f'growth,width={width},depth={depth},seed=2,lr=1e-2')
  assert experiment.validate(cfg, num_devices=None)
  assert (st[1].growth.width, st[1].growth.depth) == (width, depth)
  assert cfg.train.seed == 2 and cfg.data.seed == 2 and st[0].lr == 1e-2 and st[1].lr < 1e-2


def test_bad_arguments_name_the_problem():
  for arg, msg in (('giant', 'arm must be'), ('growth,width', 'key=value'),
                   ('growth,colour=red', 'key=value'), ('small,preset=huge', 'preset')):
    with pytest.raises(ValueError, match=msg):
      experiment.load_config(f'{EXPERIMENT}:{arg}')


def _benchmark_module():
  import importlib.util
  import sys
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  spec = importlib.util.spec_from_file_location(
      'growth_evidence_benchmark', os.path.join(ROOT, 'benchmarks', 'growth_evidence.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_lr_sweep_extends_past_an_edge_optimum_by_a_fixed_rule():
  sweep_lr = _benchmark_module().sweep_lr
  seen = []

  def loss_at(lr):  # optimum at 0.05: beyond the grid's upper edge
    seen.append(lr)
    return (math.log(lr) - math.log(0.05)) ** 2

  out = sweep_lr(loss_at, [3e-3, 1e-2, 3e-2])
  assert sorted(out) == [3e-3, 1e-2, 3e-2, 9e-2]  # one step past the edge, then interior: stop
  assert seen == [3e-3, 1e-2, 3e-2, 9e-2]
  low = sweep_lr(lambda lr: lr, [3e-3, 1e-2, 3e-2])  # falls forever: at most two extensions
  assert sorted(low) == [3.33e-4, 1e-3, 3e-3, 1e-2, 3e-2]
  assert sweep_lr(lambda lr: (lr - 1e-2) ** 2, [3e-3, 1e-2, 3e-2]).keys() == {3e-3, 1e-2, 3e-2}
  assert list(sweep_lr(lambda lr: lr, [1e-2])) == [1e-2]  # one point (smoke): nothing to extend


# ---- issue 25: recipe options, diagnosis controls, sweep cells ---------------------------

def test_lr_after_growth_rules():
  """steps: where one cosine over steps stands; flops: where it stands at the same FLOPs (the
  scratch arm's LR there); peak: LEMON's return to the peak; a number: that share of it."""
  ge = _setting_module()
  _, st = _plan('growth,lr=1e-2')
  assert st[1].lr == pytest.approx(ge.cosine_lr(1e-2, st[0].steps / (st[0].steps + st[1].steps)))
  _, st = _plan('growth,lr=1e-2,lr_after=flops')
  assert st[1].lr == pytest.approx(ge.cosine_lr(1e-2, 1 / 3))
  assert st[1].lr > _plan('growth,lr=1e-2')[1][1].lr  # the small stage's cheap steps decay less
  _, st = _plan('growth,lr=1e-2,lr_after=peak')
  assert st[1].lr == 1e-2 and st[0].end_lr == 1e-2 and st[1].end_lr == pytest.approx(1e-3)
  assert _plan('growth,lr=1e-2,lr_after=0.5')[1][1].lr == pytest.approx(5e-3)


def test_continuation_is_the_growth_arm_without_the_growth():
  _, grown = _plan('growth,lr_after=peak')
  _, cont = _plan('growth,lr_after=peak,continuation=1')
  assert [s.model for s in cont] == [grown[0].model, grown[0].model]
  assert cont[1].growth is None
  assert [(s.steps, s.lr, s.end_lr) for s in cont] == [(s.steps, s.lr, s.end_lr) for s in grown]


@pytest.mark.parametrize('operator', ['msg (width+depth)', 'stack x2 (depth only)',
                                      'stack x4 (depth only)', 'tile+stack (width+depth)'])
@pytest.mark.parametrize('share', ['0.125', '0.5'])
def test_every_sweep_cell_spends_the_scratch_budget(operator, share):
  bench = _benchmark_module()
  width, depth, recipe = bench.sweep_cell(operator, share, 'lr_after=flops', 'full')
  cfg, st = _plan(f'growth,width={width},depth={depth},{recipe}')
  assert experiment.validate(cfg, num_devices=None)
  _, sc = _plan('scratch')
  one_step = max(s.model.flops_per_token(s.seq_len) * s.tokens_per_step for s in st)
  assert abs(sum(s.flops for s in st) - sc[0].flops) <= 2 * one_step  # each stage rounds
  assert st[0].flops / sc[0].flops == pytest.approx(float(share), abs=0.01)
  assert st[1].model == sc[0].model
  if 'depth only' in operator:
    assert st[0].model.d_model == st[1].model.d_model
    assert st[1].model.n_layers // st[0].model.n_layers == int(operator.split('x')[1][0])


def test_sweep_cells_stack_from_the_presets_own_final_size():
  """The stacks grow from the final width with 1/2 or 1/4 of its layers at every preset (the
  recipes of issue 25's runs at 'full' unchanged; issue 40's d64x8: 64x4 and 64x2)."""
  bench = _benchmark_module()
  first = lambda op, preset: bench.sweep_cell(op, '0.5', '', preset)[2]
  assert [first(op, 'full') for op in bench.SWEEP_OPERATORS] == [
      'share=0.5', 'share=0.5,first=32x2', 'share=0.5,first=32x1', 'share=0.5']
  assert first('stack x2 (depth only)', 'd64x8') == 'share=0.5,first=64x4'
  assert first('stack x4 (depth only)', 'd64x8') == 'share=0.5,first=64x2'
  assert first('stack x4 (depth only)', 'smoke') == 'share=0.5,first=32x1'  # L2: at least 1


def test_adam_and_mup_suspects_change_only_their_part():
  """The diagnosis' optimizer suspects: adam=reset sets only growth.adam; mup_after=first gives
  the grown stage the first stage's width_mult (hidden LR and init multipliers), and the growth
  still preserves the function (the final LayerNorm absorbs the logit multiplier)."""
  _, base = _plan('growth,preset=smoke')
  _, reset = _plan('growth,preset=smoke,adam=reset')
  assert reset[1].growth.adam == 'reset' and base[1].growth.adam == 'map'
  assert [(s.model, s.steps, s.lr) for s in reset] == [(s.model, s.steps, s.lr) for s in base]
  _, kept = _plan('growth,preset=smoke,mup_after=first')
  m0, m1 = kept[0].model, kept[1].model
  assert m1.d_model / m1.mup_base_width == m0.d_model / m0.mup_base_width == 1
  assert base[1].model.d_model / base[1].model.mup_base_width == 2
  assert m1.replace(mup_base_width=base[1].model.mup_base_width) == base[1].model
  rng = jax.random.PRNGKey(0)
  tokens = jax.random.randint(rng, (2, 8), 0, m0.vocab_size)
  src = nn.meta.unbox(Transformer(m0).init(rng, tokens)['params'])
  grown, _, mask_base = growth.grow_state(src, None, m0, m1, kept[1].growth, rng)
  masks = growth.ramp_masks(mask_base, 0.0)
  before = Transformer(m0).apply({'params': src}, tokens)
  after = Transformer(m1).apply({'params': grown}, tokens, masks=masks)
  np.testing.assert_allclose(after, before, atol=1e-5)


def test_bad_recipe_options_name_the_option():
  for arg, msg in (('growth,lr_after=soon', 'lr_after'), ('growth,share=1.5', 'share'),
                   ('growth,first=wide', 'first'), ('growth,continuation=2', 'continuation'),
                   ('growth,ramp=-1', 'ramp'), ('growth,adam=zero', 'adam'),
                   ('growth,mup_after=last', 'mup_after'), ('growth,new_layers=new', 'new_layers')):
    with pytest.raises(ValueError, match=msg):
      experiment.load_config(f'{EXPERIMENT}:{arg}')


def _setting_module():
  import importlib.util
  spec = importlib.util.spec_from_file_location('growth_evidence_setting', EXPERIMENT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_a_run_recorded_before_a_field_existed_stands_for_its_default():
  from flmjax.training.summary import config_differences
  ran = {'optim': {'lr': 0.01}, 'faults': {}}
  defaults = {'optim': {'lr': 0.003}, 'faults': {'stop_timeout_s': 600.0}}
  asked = {'optim': {'lr': 0.01}, 'faults': {'stop_timeout_s': 600.0}}
  assert config_differences(ran, asked, defaults=defaults) == []
  assert config_differences(ran, asked) == ['faults.stop_timeout_s: ran None, asked 600.0']
  off_default = {'optim': {'lr': 0.01}, 'faults': {'stop_timeout_s': 5.0}}
  assert config_differences(ran, off_default, defaults=defaults) == [
      'faults.stop_timeout_s: ran None, asked 5.0']
  assert config_differences(ran, {'optim': {'lr': 0.02}, 'faults': {}}, defaults=defaults) == [
      'optim.lr: ran 0.01, asked 0.02']


@pytest.mark.slow
def test_plan_pick_trains_the_written_schedule_once_and_compares_it(tmp_path, monkeypatch):
  """--plan_pick (issue 26's check): the planner's chosen_schedule.py trains on a seed like
  `flmjax train --config.train.seed=S --config.data.seed=S`, is read back on a rerun, and is
  compared with the growth arm on the same target; a plan for another budget is refused."""
  from flmjax.scaling import growth_planner as gp
  from flmjax.training import loop
  bench, setting = _benchmark_module(), _setting_module()
  plan_dir = tmp_path / 'plan'
  plan_dir.mkdir()
  cfg = experiment.load_config(f'{EXPERIMENT}:growth,preset=smoke,lr_after=peak')
  (plan_dir / 'chosen_schedule.py').write_text(gp.experiment_file_text(cfg, 'a test plan'))
  budget = setting.budget('smoke')
  plan_json = {'budget_flops': budget, 'chosen': {'candidate': 'msg@0.333'},
               'probe_cost_flops': 3 * budget, 'sweep_flops': 20 * budget}
  (plan_dir / 'plan.json').write_text(json.dumps(plan_json))
  wd = bench.train_pick(str(tmp_path), str(plan_dir), 1)
  ran = json.load(open(os.path.join(wd, 'summary.json')))['config']
  assert ran['train']['seed'] == ran['data']['seed'] == 1
  monkeypatch.setattr(loop, 'train', lambda *a, **k: pytest.fail('a finished pick retrained'))
  assert bench.train_pick(str(tmp_path), str(plan_dir), 1) == wd
  target = bench.final_loss(wd) + 0.01
  out = bench.plan_pick_report(str(plan_dir), [wd], [wd], [1], target, budget)
  assert out['chosen'] == 'msg@0.333' and out['difference'] == 0 and out['within_spread']
  assert out['pick']['ratios'][0] < 1.0
  plan_json['budget_flops'] = 2 * budget
  (plan_dir / 'plan.json').write_text(json.dumps(plan_json))
  with pytest.raises(SystemExit, match='planned for'):
    bench.plan_pick_report(str(plan_dir), [wd], [wd], [1], target, budget)


def test_a_shard_trains_its_share_and_reads_back_the_others_finished_runs(monkeypatch):
  """A sharded two-round sweep can pass to its second round only if each shard sees every
  first-round run: its own (trained) and the other shards' (read back when finished, never
  trained by it)."""
  mod = _benchmark_module()
  finished = {('growth', 0, 'b'), ('growth', 0, 'd')}  # shard 1's runs, already done
  trained = []

  def fake_train_arm(root, arm, seed, lr, preset, width='msg', depth='msg', recipe='',
                     train=True):
    job = (arm, seed, recipe)
    if job in finished:
      return f'{root}/{arm}{seed}{recipe}'
    if not train:
      return None
    trained.append(job)
    finished.add(job)
    return f'{root}/{arm}{seed}{recipe}'

  monkeypatch.setattr(mod, 'train_arm', fake_train_arm)
  jobs = [('growth', 0, r) for r in 'abcde']
  out = mod.run_jobs('W', jobs, 0.01, 'smoke', (0, 2))
  assert trained == [('growth', 0, 'a'), ('growth', 0, 'c'), ('growth', 0, 'e')]
  assert set(out) == set(jobs)  # its three, and shard 1's two read back
  finished.discard(('growth', 0, 'd'))  # shard 1 not finished there: not trained, not returned
  trained.clear()
  out = mod.run_jobs('W', jobs, 0.01, 'smoke', (0, 2))
  assert trained == [] and ('growth', 0, 'd') not in out and len(out) == 4


def test_three_arm_shards_split_every_run_once(monkeypatch, tmp_path, capsys):
  """`--shard K/N --lr X` in the three-arm protocol: the shards together train every arm run
  (the growth arm with its recipe, the small arm on its seeds only) and every other operator,
  each once; without --lr it is refused (the LR sweep is sequential)."""
  mod = _benchmark_module()
  trained = []

  def fake_train_arm(root, arm, seed, lr, preset, width='msg', depth='msg', recipe='',
                     train=True):
    if train:
      trained.append((arm, seed, width, depth, recipe))
    return None if not train else f'{root}/{arm}{seed}{width}{depth}{recipe}'

  monkeypatch.setattr(mod, 'train_arm', fake_train_arm)
  ops = [('tile', 'msg'), ('msg', 'stack')]
  jobs, _, rows = mod.protocol_jobs([3, 4], [3], [3], ops, ('msg', 'msg', 'lr_after=peak'))
  assert rows == [('msg', 'msg')] + ops
  for k in range(2):
    mod.run_jobs('W', jobs, 0.01, 'smoke', (k, 2), spec=lambda job: job[2:5])
  assert sorted(trained) == sorted([
      ('growth', 3, 'msg', 'msg', 'lr_after=peak'), ('growth', 4, 'msg', 'msg', 'lr_after=peak'),
      ('scratch', 3, 'msg', 'msg', ''), ('scratch', 4, 'msg', 'msg', ''),
      ('small', 3, 'msg', 'msg', ''),
      ('growth', 3, 'msg', 'msg', ''),  # the operator table's plain MSG row
      ('growth', 3, 'tile', 'msg', ''), ('growth', 3, 'msg', 'stack', '')])
  with pytest.raises(SystemExit):
    mod.main(['--smoke', '--workdir', str(tmp_path), '--shard', '0/2'])
  assert '--shard in the three-arm protocol needs --lr' in capsys.readouterr().err


def test_saving_vs_size_reads_each_sizes_held_out_ratios_and_draws_them(tmp_path, capsys):
  """Issue 40's trend figure, on the committed d32×L4 held-out result and a synthetic larger
  size whose second seed never reached the target (an interval open at the top)."""
  bench = _benchmark_module()
  committed = os.path.join(ROOT, 'benchmarks', 'results', 'growth_evidence_heldout.json')
  big = tmp_path / 'big.json'
  big.write_text(json.dumps({'ratios': [0.6, math.inf, 0.55], 'paired_ratios': [0.58, 0.9, 0.5]}))
  p = bench.size_point(committed, 'full')
  assert p['params'] == 116416 and p['seeds'] == 3
  assert (round(p['ratio'], 3), round(p['low'], 3), round(p['high'], 3)) == (0.707, 0.649, 0.766)
  q = bench.size_point(str(big), 'd64x8')
  assert q['params'] == 531072 and (q['ratio'], q['low'], q['high']) == (math.inf, 0.55, math.inf)
  assert bench.main(['--saving_vs_size', f'd64x8={big},full={committed}',
                     '--workdir', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert 'saving vs model size' in out and 'G_stack (theirs, arXiv:2405.15319' in out
  assert out.strip().splitlines()[-1].startswith(
      "headline: held-out growth FLOPs to reach scratch's final / scratch FLOPs at the largest "
      'size (d64x8, 531,072 parameters) = inf (95% CI [0.550, inf])')
  assert os.path.getsize(tmp_path / 'plots' / 'saving_vs_size.png') > 1000
  (tmp_path / 'empty.json').write_text('{}')
  with pytest.raises(SystemExit, match='no held-out ratios'):
    bench.size_point(str(tmp_path / 'empty.json'), 'full')
