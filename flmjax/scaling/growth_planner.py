"""`flmjax plan-growth`: choose how and when to grow from short probes on one FLOPs budget.

A candidate is an operator (width / depth growth and the first-stage shape it grows from, which
carries the growth factor) × a growth point (the first stage's share of the budget).  The plan:

  1. prefix  — each distinct first-stage shape is trained ONCE, at the constant peak LR after
               the warm-up, to the latest growth point any candidate needs, with a checkpoint at
               every candidate's growth step (`train(stop_at_step=...)`, then resumed);
  2. branch  — each candidate is an ordinary run dir whose stage 0 is the first-stage model for
               `t` steps at that same constant LR (so its stage 0 *is* the prefix's first `t`
               steps) and whose stage 1 is the target model with the candidate's growth; the
               prefix's step-`t` checkpoint is hard-linked (or copied) into the candidate's
               `stage_0/` and the trainer resumes from it, grows and trains the lag;
  3. probe   — every candidate goes on at the constant peak LR to one common FLOPs point
               C_probe = (latest growth point + lag) × budget and is ranked by its validation
               loss there (`rank`).

Why a constant first-stage LR: only then is the first `t` steps of a run that grows at `t` the
same for every `t` (a schedule that decays towards the growth makes each growth point's prefix a
different run), so one first-stage run serves every growth point.  Why equal FLOPs: a candidate
that grows later has trained its cheap model longer, so losses at different FLOPs would rank
growth points by how much they had spent; at one C_probe every candidate has spent the same.  Why
the constant LR through the probe: the LR after growth is what decides the grown model's early
loss (issue 25); holding it at the peak in every probe removes that from the comparison, and the
chosen schedule then decays from the peak after the growth (LEMON), as its probe predicted it
would be trained.  Why a lag: LAG (Karp et al. 2024) found that the loss a short lag after a
growth ranks growth strategies far better than the loss at the growth itself.

The written schedule (`full_config`) spends the whole budget: warm-up, peak held through the
first stage, then a cosine from the peak to the experiment's `end_lr` over the grown stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from flmjax import checkpoint, plan
from flmjax.config import ConfigError, ModelConfig
from flmjax.scaling.sweep import final_loss
from flmjax.training.loop import train
from flmjax.training.summary import read_finished

DEFAULT_SHARES = (1 / 8, 1 / 4, 1 / 3, 1 / 2)  # the growth-evidence sweep's growth points
LAG_SHARE = 1 / 16  # C_probe = latest growth point + this share of the budget


@dataclasses.dataclass(frozen=True)
class Operator:
  """How to grow: width / depth operator and the first stage's model (overrides of `model`)."""
  name: str
  width: str
  depth: str
  first: tuple[tuple[str, Any], ...]  # sorted (field, value) model overrides of the first stage

  def first_model(self) -> dict[str, Any]:
    return dict(self.first)


@dataclasses.dataclass(frozen=True)
class Candidate:
  operator: Operator
  share: float  # the first stage's share of the FLOPs budget

  @property
  def name(self) -> str:
    return f'{self.operator.name}@{self.share:.4g}'

  @property
  def dirname(self) -> str:
    return f"cand_{self.operator.name.replace(' ', '_')}_s{self.share:.4g}"


# ---- the experiment the planner starts from ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Base:
  """What the planner reads from a two-stage experiment: first and target model, LR, growth."""
  config: ml_collections.ConfigDict
  first: dict[str, Any]     # stage 0 model overrides
  final: dict[str, Any]     # stage 1 model overrides
  growth: dict[str, Any]    # stage 1 growth (width / depth replaced per candidate)
  lr: float                 # the peak
  end_lr: float             # where the grown stage's cosine ends
  warmup_steps: int
  tokens_per_step: int
  seq_len: int


def read_base(config: ml_collections.ConfigDict) -> Base:
  """The planner's view of `config`: it must have two stages (first, grown) of one batch size."""
  stages = plan.stage_plan(config)
  if len(stages) != 2 or stages[1].growth is None:
    raise ConfigError(f'plan-growth needs an experiment with two stages (a first stage and a '
                      f'grown one), got {len(stages)} stage(s)')
  if stages[0].tokens_per_step != stages[1].tokens_per_step:
    raise ConfigError('plan-growth: stages[0] and stages[1] must have the same global batch size')
  raw = [plan.as_dict(s) for s in config.stages]
  return Base(config=config, first=plan.as_dict(raw[0].get('model')),
              final=plan.as_dict(raw[1].get('model')), growth=plan.as_dict(raw[1].get('growth')),
              lr=stages[0].lr, end_lr=stages[1].end_lr, warmup_steps=stages[0].warmup_steps,
              tokens_per_step=stages[0].tokens_per_step, seq_len=stages[0].seq_len)


def _resolved(base: Base, overrides: Mapping[str, Any]) -> ModelConfig:
  return ModelConfig.from_dict({**plan.as_dict(base.config.model), **overrides})


def default_operators(base: Base) -> list[Operator]:
  """The growth-evidence sweep's operators: MSG width+depth and tile+stack from the experiment's
  first stage, and depth-only G_stack ×2 and ×4 at the target width (where the target's layers
  divide)."""
  first = tuple(sorted(base.first.items()))
  ops = [Operator('msg', 'msg', 'msg', first)]
  final = _resolved(base, base.final)
  for k in (2, 4):
    if final.n_layers % k == 0 and final.n_layers // k >= 1:
      shape = {**base.final, 'n_layers': final.n_layers // k}
      ops.append(Operator(f'stack{k}', 'msg', 'stack', tuple(sorted(shape.items()))))
  ops.append(Operator('tile_stack', 'tile', 'stack', first))
  return ops


def candidate_grid(operators: Sequence[Operator], shares: Sequence[float]) -> list[Candidate]:
  """operator × growth point, in that order; a share outside (0, 1) is an error."""
  for s in shares:
    if not 0 < s < 1:
      raise ConfigError(f'plan-growth: a growth point must be a share of the budget in (0, 1), '
                        f'got {s!r}')
  return [Candidate(op, float(s)) for op in operators for s in shares]


def parse_candidates(text: str, operators: Sequence[Operator]) -> list[Candidate]:
  """'msg@0.25,stack2@0.5' -> those candidates (operator names from `operators`)."""
  by_name = {op.name: op for op in operators}
  out = []
  for item in (x.strip() for x in text.split(',') if x.strip()):
    name, sep, share = item.partition('@')
    if not sep or name not in by_name:
      raise ConfigError(f'--candidates: {item!r}: expected OPERATOR@SHARE with OPERATOR one of '
                        f'{sorted(by_name)}')
    try:
      s = float(share)
    except ValueError:
      raise ConfigError(f'--candidates: {item!r}: the share must be a number') from None
    out.extend(candidate_grid([by_name[name]], [s]))
  return out


# ---- step counts and the configs of the plan's runs ----------------------------------------

def flops_per_step(base: Base, model: Mapping[str, Any]) -> float:
  return _resolved(base, model).flops_per_token(base.seq_len) * base.tokens_per_step


def first_steps(base: Base, c: Candidate, budget: float) -> int:
  """Steps of the first stage: its share of the budget, at least past the warm-up."""
  return max(1, round(c.share * budget / flops_per_step(base, c.operator.first_model())))


def _steps_to(base: Base, c: Candidate, budget: float, total: float) -> int:
  """Steps of the grown stage that bring the candidate's FLOPs to `total`."""
  t = first_steps(base, c, budget)
  rest = total - t * flops_per_step(base, c.operator.first_model())
  return max(1, round(rest / flops_per_step(base, base.final)))


def _with_stages(base: Base, stages: list[dict], **train: Any) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(base.config.to_dict())
  c.stages = stages
  c.optim.stage_schedule = 'continue'
  c.train.update(train)
  return c


def _first_stage(base: Base, model: Mapping[str, Any], steps: int) -> dict:
  return dict(name='first', model=dict(model), steps=steps, lr=base.lr,
              warmup_steps=base.warmup_steps)


def _grown_stage(base: Base, c: Candidate, steps: int, end_lr: float) -> dict:
  growth = {**base.growth, 'width': c.operator.width, 'depth': c.operator.depth}
  return dict(name='final', model=dict(base.final), steps=steps, lr=base.lr, end_lr=end_lr,
              growth=growth)


def prefix_config(base: Base, operator: Operator, steps: int, keep: int
                  ) -> ml_collections.ConfigDict:
  """The shared first-stage run: warm-up, then the peak LR held to `steps`."""
  stage = {**_first_stage(base, operator.first_model(), steps), 'end_lr': base.lr}
  return _with_stages(base, [stage], keep=keep, ckpt_every=0)


def probe_config(base: Base, c: Candidate, budget: float, probe_flops: float
                 ) -> ml_collections.ConfigDict:
  """The candidate's probe: its prefix, its growth, the peak LR held to `probe_flops`."""
  t = first_steps(base, c, budget)
  return _with_stages(base, [_first_stage(base, c.operator.first_model(), t),
                             _grown_stage(base, c, _steps_to(base, c, budget, probe_flops),
                                          base.lr)])


def full_config(base: Base, c: Candidate, budget: float) -> ml_collections.ConfigDict:
  """The chosen schedule over the whole budget: warm-up, the peak through the first stage, a
  cosine from the peak to `end_lr` after the growth."""
  t = first_steps(base, c, budget)
  return _with_stages(base, [_first_stage(base, c.operator.first_model(), t),
                             _grown_stage(base, c, _steps_to(base, c, budget, budget),
                                          base.end_lr)])


def probe_flops_for(candidates: Sequence[Candidate], budget: float,
                    lag_share: float = LAG_SHARE) -> float:
  """C_probe: the latest growth point plus a lag, as FLOPs."""
  return (max(c.share for c in candidates) + lag_share) * budget


def check_plan(base: Base, candidates: Sequence[Candidate], budget: float,
               probe_flops: float) -> None:
  """Refuse a plan whose probes would not measure what the rule assumes."""
  if not candidates:
    raise ConfigError('plan-growth: no candidates')
  if budget <= 0:
    raise ConfigError(f'--budget_flops must be > 0, got {budget!r}')
  if probe_flops > budget:
    raise ConfigError(f'plan-growth: C_probe {probe_flops:.3g} FLOPs is past the budget '
                      f'{budget:.3g}: lower --lag or use earlier growth points')
  for c in candidates:
    t = first_steps(base, c, budget)
    if t <= base.warmup_steps:
      raise ConfigError(f'plan-growth: candidate {c.name} grows at step {t}, within the warm-up '
                        f'({base.warmup_steps} steps): the first stage must reach the peak LR '
                        f'before any growth point (raise --budget_flops or lower '
                        f'optim.warmup_steps)')


# ---- running -------------------------------------------------------------------------------

def branch(prefix_workdir: str, step: int, workdir: str) -> bool:
  """Put the prefix's step-`step` checkpoint into `workdir/stage_0/` (hard links where the file
  system allows, else a copy); False when `workdir` already holds checkpoints (resumed as is)."""
  if checkpoint.latest(workdir) is not None:
    return False
  src = os.path.join(checkpoint.stage_dir(prefix_workdir, 0), str(step))
  if not os.path.isdir(src):
    raise checkpoint.CheckpointError(f'{src}: the prefix checkpoint to branch from is missing')
  dst_stage = checkpoint.stage_dir(workdir, 0)
  os.makedirs(dst_stage, exist_ok=True)
  tmp = os.path.join(dst_stage, f'{step}.branching')
  shutil.rmtree(tmp, ignore_errors=True)

  def link(a: str, b: str) -> None:
    try:
      os.link(a, b)
    except OSError:
      shutil.copy2(a, b)

  shutil.copytree(src, tmp, copy_function=link)
  os.rename(tmp, os.path.join(dst_stage, str(step)))  # complete or absent, as orbax's own
  return True


def run_prefix(base: Base, operator: Operator, steps: Sequence[int], workdir: str) -> dict:
  """Train the shared first stage to max(steps), checkpointing at each of `steps`."""
  steps = sorted(set(steps))
  cfg = prefix_config(base, operator, steps[-1], keep=len(steps) + 2)
  summary = read_finished(workdir, cfg)
  if summary is None:
    have = set(checkpoint.steps_in(checkpoint.stage_dir(workdir, 0)))
    for t in steps[:-1]:
      if t not in have:
        train(cfg, workdir, stop_at_step=t)
    train(cfg, workdir)
    summary = read_finished(workdir, cfg)
  return {'flops': summary['growth_flops'], 'workdir': workdir}


def prefix_dirname(operator: Operator) -> str:
  shape = '_'.join(f'{k}{v}' for k, v in operator.first)
  return f'prefix_{shape}' if shape else 'prefix'


def run_plan(base: Base, candidates: Sequence[Candidate], budget: float, workdir: str, *,
             lag_share: float = LAG_SHARE, shard: tuple[int, int] = (0, 1),
             log=print) -> dict[str, Any]:
  """Train (or read back) this shard's prefixes and probes; returns the plan's rows.

  Jobs: the prefixes (one per first-stage shape) are shard j % N's; a candidate is shard i % N's
  and waits for its prefix (skipped, with a note, until that prefix finished).  Without
  sharding everything runs here, in order."""
  probe = probe_flops_for(candidates, budget, lag_share)
  check_plan(base, candidates, budget, probe)
  shapes: dict[tuple, list[Candidate]] = {}
  for c in candidates:
    shapes.setdefault(c.operator.first, []).append(c)
  prefixes: dict[tuple, dict] = {}
  for j, (first, group) in enumerate(shapes.items()):
    wd = os.path.join(workdir, prefix_dirname(group[0].operator))
    steps = [first_steps(base, c, budget) for c in group]
    cfg = prefix_config(base, group[0].operator, max(steps), keep=len(set(steps)) + 2)
    if j % shard[1] == shard[0]:
      log(f'plan-growth: prefix {os.path.basename(wd)} to step {max(steps)} '
          f'(branch points {sorted(set(steps))})')
      prefixes[first] = run_prefix(base, group[0].operator, steps, wd)
    else:
      summary = read_finished(wd, cfg)
      if summary is not None:
        prefixes[first] = {'flops': summary['growth_flops'], 'workdir': wd}
  rows, waiting = [], []
  for i, c in enumerate(candidates):
    if i % shard[1] != shard[0]:
      continue
    if c.operator.first not in prefixes:
      waiting.append(c.name)
      continue
    wd = os.path.join(workdir, c.dirname)
    cfg = probe_config(base, c, budget, probe)
    summary = read_finished(wd, cfg)
    t = first_steps(base, c, budget)
    if summary is None:
      if branch(prefixes[c.operator.first]['workdir'], t, wd):
        log(f'plan-growth: {c.name}: branched from step {t} of the prefix')
      train(cfg, wd)
      summary = read_finished(wd, cfg)
    stages = plan.stage_plan(cfg)
    rows.append({'candidate': c.name, 'operator': c.operator.name, 'width': c.operator.width,
                 'depth': c.operator.depth, 'first_model': c.operator.first_model(),
                 'share': c.share, 'growth_step': t, 'probe_loss': final_loss(summary, wd),
                 'probe_flops': summary['growth_flops'],
                 'cost_flops': stages[1].flops,  # the prefix is shared: counted once, below
                 'workdir': wd})
  prefix_cost = sum(p['flops'] for p in prefixes.values())
  return {'rows': rank(rows), 'probe_flops': probe, 'budget_flops': budget,
          'prefix_flops': prefix_cost,
          'probe_cost_flops': prefix_cost + sum(r['cost_flops'] for r in rows),
          'sweep_flops': budget * len(candidates), 'waiting': waiting}


# ---- ranking and reporting -----------------------------------------------------------------

def rank(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Rows best first: lowest validation loss at C_probe (all probes end at the same FLOPs, so
  the loss compares like with like); a diverged probe (inf / nan) ranks last; ties go to the
  later growth point (less of the budget in the big model: the cheaper schedule in wall time
  when small models run at lower MFU), then to the candidate's name."""
  def key(r):
    loss = float(r['probe_loss'])
    return (loss if math.isfinite(loss) else math.inf, -float(r['share']), r['candidate'])
  out = [dict(r) for r in sorted(rows, key=key)]
  for i, r in enumerate(out):
    r['rank'] = i + 1
  return out


def pod_seconds_per_flop(pod_plan: Mapping[str, Any]) -> dict[int, float]:
  """{params: seconds per model FLOP} of each train row of a `flmjax compile --output` plan,
  and {0: the slice's rate at its MFU} for models the plan did not compile."""
  out = {0: 1.0 / (float(pod_plan['chips']) * float(pod_plan['peak_bf16_flops'])
                   * float(pod_plan['mfu']))}
  for r in pod_plan.get('rows', []):
    if r.get('kind') == 'train' and r.get('flops_per_step') and r.get('step_s'):
      out[int(r['params'])] = float(r['step_s']) / float(r['flops_per_step'])
  return out


def config_days(config: ml_collections.ConfigDict, rate: Mapping[int, float]) -> float:
  """Days the config's stages take at the pod plan's seconds per FLOP."""
  return sum(s.flops * rate.get(s.model.param_count(), rate[0])
             for s in plan.stage_plan(config)) / 86400


def format_table(result: Mapping[str, Any], days: Optional[Mapping[str, float]] = None) -> str:
  budget = result['budget_flops']
  head = f"{'rank':>4} {'candidate':<22} {'grow@step':>9} {'probe loss':>10} {'cost FLOPs':>11}"
  head += f" {'days':>8}" if days else ''
  lines = [head]
  for r in result['rows']:
    line = (f"{r['rank']:>4} {r['candidate']:<22} {r['growth_step']:>9} "
            f"{r['probe_loss']:>10.4f} {r['cost_flops']:>11.3e}")
    if days:
      line += f" {days.get(r['candidate'], math.nan):>8.2f}"
    lines.append(line)
  cost = result['probe_cost_flops']
  lines.append(f"C_probe {result['probe_flops']:.3e} FLOPs ({result['probe_flops'] / budget:.3f} "
               f"of the budget); prefixes {result['prefix_flops']:.3e} FLOPs")
  lines.append(f"probe cost {cost:.3e} FLOPs = {cost / budget:.2f}x the budget {budget:.3e} = "
               f"{100 * cost / result['sweep_flops']:.1f}% of the full sweep "
               f"({result['sweep_flops'] / budget:.0f} runs x the budget)")
  return '\n'.join(lines)


def experiment_file_text(config: ml_collections.ConfigDict, comment: str) -> str:
  """A self-contained experiment file for `flmjax train --config` that returns `config`."""
  body = json.dumps(json.loads(config.to_json()), indent=1, sort_keys=True)
  doc = '\n'.join(comment.strip().splitlines())
  return (f'"""{doc}\n\nWritten by `flmjax plan-growth`."""\n\nimport json\n\n'
          f'import ml_collections\n\nCONFIG = json.loads(r\'\'\'\n{body}\n\'\'\')\n\n\n'
          f'def get_config():\n  return ml_collections.ConfigDict(CONFIG)\n')
