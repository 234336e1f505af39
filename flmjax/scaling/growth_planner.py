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
  3. lag     — round 1: every candidate grows and trains a short lag (`LAG_SHARE` of the budget)
               at the peak LR; the candidates of one growth point then stand at equal FLOPs
               and the lowest validation loss there wins its growth point (LAG's rule);
  4. probe   — round 2: each growth point's winner goes on at the peak LR from its lag run's
               last checkpoint (another branch: the LR is constant, so the lag run is a prefix
               of the longer one) to one common FLOPs point C_probe = (latest growth point +
               lag) × budget; the winners are ranked by their validation loss there (`rank`).

Why a constant first-stage LR: only then is the first `t` steps of a run that grows at `t` the
same for every `t` (a schedule that decays towards the growth makes each growth point's prefix a
different run), so one first-stage run serves every growth point.  Why equal FLOPs: a candidate
that grows later has trained its cheap model longer, so losses at different FLOPs would rank
growth points by how much they had spent; every comparison here is at one FLOPs point.  Why two
rounds: taking all 16 candidates of the default grid to C_probe costs ~5.3× the budget on the
growth-evidence setting (27% of its 20-run sweep); the operators of one growth point are
compared at their lag for the price of the lag, and only three winners continue (the latest
point's lag already ends at C_probe), which brings the plan to ~3× the budget (≤ 15% of the
sweep; `planned_cost`).  Why the constant LR through the probe: the LR after growth is what
decides the grown model's early loss (issue 25); holding it at the peak in every probe removes
that from the comparison, and the chosen schedule then decays from the peak after the growth
(LEMON), as its probe predicted it would be trained.  Why a lag: LAG (Karp et al. 2024) found
that the loss a short lag after a growth ranks growth strategies far better than the loss at the
growth itself.

Two growths (issue 40; FLM-101B grows twice, progressive stacking goes L → 2L → 4L): a *chain*
operator grows the first stage into a middle stage at its first growth point and the middle
stage into the target at its second.  The middle stage is itself a shared prefix (`mid_*`,
branched from the first stage's prefix at the first growth point, checkpointed at every second
growth point), so a chain candidate costs its lag plus its share of one middle run; it joins the
candidates of its *second* growth point, which stand at the same FLOPs after the lag.

The LR after the growth (issue 25's open lead: a grown stage may want an LR above the scratch
arm's tuned optimum): after round 1, each growth point's winner is probed again with the LR
after each of its growths at `lr_after` × the peak (branched from the same prefix, so only the
lag — and for a chain the middle stage — is paid again); the lowest lag loss of the point, over
operators and LRs, goes on to C_probe at its own LR.  The trainer's `stage_schedule='rewarm'`
(each stage with its own LR, no warm-up after a growth) carries a jump; a plan at the peak
alone keeps 'continue', so its configs are those of the plans before.

The written schedule (`full_config`) spends the whole budget: warm-up, peak held through the
first stage (and held, at the probed LR, through a chain's middle stage), then a cosine from the
LR after the last growth to the experiment's `end_lr` over the grown stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from flmjax import experiment, plan
from flmjax.storage import checkpoint, paths
from flmjax.config import ConfigError, ModelConfig
from flmjax.growth_ops import GrowthSpec
from flmjax.scaling.sweep import final_loss
from flmjax.training.loop import train_to_end
from flmjax.training.summary import read_finished

DEFAULT_SHARES = (1 / 8, 1 / 4, 1 / 3, 1 / 2)  # the growth-evidence sweep's growth points
LAG_SHARE = 1 / 24  # the probes' lag after each growth, as a share of the budget


@dataclasses.dataclass(frozen=True)
class Operator:
  """How to grow: width / depth operator and the first stage's model (overrides of `model`)."""
  name: str
  width: str
  depth: str
  first: tuple[tuple[str, Any], ...]  # sorted (field, value) model overrides of the first stage
  # Two growths (a chain): the middle stage's model overrides and the operator that grows the
  # first stage into it; `width` / `depth` then grow the middle stage into the target.
  middle: tuple[tuple[str, Any], ...] = ()
  middle_width: str = ''
  middle_depth: str = ''

  def first_model(self) -> dict[str, Any]:
    return dict(self.first)

  def middle_model(self) -> dict[str, Any]:
    return dict(self.middle)

  @property
  def growths(self) -> int:
    return 2 if self.middle else 1


@dataclasses.dataclass(frozen=True)
class Candidate:
  operator: Operator
  share: float  # the (last) growth point: the share of the FLOPs budget spent before it
  first_share: float = 0.0  # a chain's first growth point (share of the budget)
  lr_after: float = 1.0  # the LR after each growth, as a multiple of the peak

  def shares(self) -> tuple[float, ...]:
    return (self.first_share, self.share) if self.operator.middle else (self.share,)

  @property
  def name(self) -> str:
    points = '>'.join(f'{s:.4g}' for s in self.shares())
    return f'{self.operator.name}@{points}' + (f':lr{self.lr_after:g}'
                                                if self.lr_after != 1.0 else '')

  @property
  def dirname(self) -> str:
    points = '-'.join(f'{s:.4g}' for s in self.shares())
    op = self.operator.name.replace(' ', '_').replace('>', '_then_')
    return f'cand_{op}_s{points}' + (f'_lr{self.lr_after:g}' if self.lr_after != 1.0 else '')

  def with_lr(self, lr_after: float) -> 'Candidate':
    return dataclasses.replace(self, lr_after=float(lr_after))


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
  lag_share: float = 1 / 24  # the probes' lag after a growth, as a share of the budget


def read_base(config: ml_collections.ConfigDict, lag_share: float = LAG_SHARE) -> Base:
  """The planner's view of `config`: it must have two stages (first, grown) of one batch size;
  `lag_share`: the probes' lag after each growth (a share of the budget)."""
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
              tokens_per_step=stages[0].tokens_per_step, seq_len=stages[0].seq_len,
              lag_share=lag_share)


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


DEFAULT_CHAINS = ('stack2>stack2', 'msg>stack2')


def chain_operators(base: Base) -> list[Operator]:
  """Every two-growth operator this target allows (its layers must divide by 4): progressive
  stacking at the target width (`stack2>stack2`: L/4 → L/2 → L, G_stack's ×2 twice); MSG width +
  depth into the middle stage, then a stack ×2 (`msg>stack2`: width/2 × L/4 → width × L/2 → L);
  and, where the width divides by 4, FLM-101B-style MSG twice (`msg>msg`: width/4 × L/4 →
  width/2 × L/2 → width × L) and a stack ×2 at half the width, then MSG (`stack2>msg`)."""
  final = _resolved(base, base.final)
  if final.n_layers % 4:
    return []
  shape = lambda div, layers: tuple(sorted({
      **base.final, 'n_layers': layers, 'd_model': final.d_model // div,
      'n_heads': final.n_heads // div, 'd_ff': final.d_ff // div}.items()))
  divides = lambda k: not (final.d_model % k or final.n_heads % k or final.d_ff % k)
  quarter, half = final.n_layers // 4, final.n_layers // 2
  out = [Operator('stack2>stack2', 'msg', 'stack', shape(1, quarter), shape(1, half), 'msg',
                  'stack')]
  if divides(2):
    out.append(Operator('msg>stack2', 'msg', 'stack', shape(2, quarter), shape(1, half), 'msg',
                        'msg'))
  if divides(4):
    out.append(Operator('msg>msg', 'msg', 'msg', shape(4, quarter), shape(2, half), 'msg',
                        'msg'))
  if divides(2):
    out.append(Operator('stack2>msg', 'msg', 'msg', shape(2, quarter), shape(2, half), 'msg',
                        'stack'))
  return out


def default_chains(base: Base) -> list[Operator]:
  """The chains of the default grid (`DEFAULT_CHAINS`, where the target allows them): the
  stacking that won at one growth, twice, and FLM-101B's width growth followed by it."""
  return [op for op in chain_operators(base) if op.name in DEFAULT_CHAINS]


def _check_share(s: float) -> None:
  if not 0 < s < 1:
    raise ConfigError(f'plan-growth: a growth point must be a share of the budget in (0, 1), '
                      f'got {s!r}')


def candidate_grid(operators: Sequence[Operator], shares: Sequence[float],
                   first_shares: Sequence[float] = ()) -> list[Candidate]:
  """operator × growth point, in that order; a chain (two growths) × every first growth point
  in `first_shares` × every later growth point in `shares`.  A share outside (0, 1) is an
  error."""
  for s in (*shares, *first_shares):
    _check_share(s)
  out = []
  for op in operators:
    if op.middle:
      out += [Candidate(op, float(s), float(f)) for f in first_shares for s in shares if s > f]
    else:
      out += [Candidate(op, float(s)) for s in shares]
  return out


def parse_candidates(text: str, operators: Sequence[Operator]) -> list[Candidate]:
  """'msg@0.25,stack2@0.5:lr2,stack2>stack2@0.125>0.5' -> those candidates (operator names
  from `operators`; a chain takes both growth points; ':lrM' = the LR after the growths at M
  × the peak)."""
  by_name = {op.name: op for op in operators}
  out = []
  for item in (x.strip() for x in text.split(',') if x.strip()):
    name, sep, rest = item.partition('@')
    if not sep or name not in by_name:
      raise ConfigError(f'--candidates: {item!r}: expected OPERATOR@SHARE[:lrM] with OPERATOR '
                        f'one of {sorted(by_name)}')
    op = by_name[name]
    points, _, lr_text = rest.partition(':')
    try:
      shares = [float(x) for x in points.split('>')]
      lr_after = float(lr_text[2:]) if lr_text.startswith('lr') else (1.0 if not lr_text
                                                                        else math.nan)
    except ValueError:
      raise ConfigError(f'--candidates: {item!r}: the shares and the LR must be numbers') \
          from None
    if len(shares) != op.growths or (len(shares) == 2 and not shares[0] < shares[1]):
      raise ConfigError(f'--candidates: {item!r}: {name} grows {op.growths} time(s): give '
                        + ('SHARE' if op.growths == 1 else 'FIRST>SECOND (FIRST < SECOND)'))
    if not lr_after > 0:
      raise ConfigError(f'--candidates: {item!r}: expected :lrM with M > 0 (the LR after the '
                        f'growths as a multiple of the peak)')
    for s in shares:
      _check_share(s)
    out.append(Candidate(op, shares[-1], shares[0] if len(shares) == 2 else 0.0, lr_after))
  return out


# ---- step counts and the configs of the plan's runs ----------------------------------------

def flops_per_step(base: Base, model: Mapping[str, Any]) -> float:
  return _resolved(base, model).flops_per_token(base.seq_len) * base.tokens_per_step


def growth_steps(base: Base, c: Candidate, budget: float) -> tuple[int, ...]:
  """The global step of each growth: each stage before it gets its share of the budget."""
  op = c.operator
  t = max(1, round(c.shares()[0] * budget / flops_per_step(base, op.first_model())))
  if not op.middle:
    return (t,)
  return (t, t + max(1, round((c.share - c.first_share) * budget
                              / flops_per_step(base, op.middle_model()))))


def first_steps(base: Base, c: Candidate, budget: float) -> int:
  """Steps of the first stage: its share of the budget, at least past the warm-up."""
  return growth_steps(base, c, budget)[0]


def last_growth_step(base: Base, c: Candidate, budget: float) -> int:
  return growth_steps(base, c, budget)[-1]


def _flops_before_last_growth(base: Base, c: Candidate, budget: float) -> float:
  steps = growth_steps(base, c, budget)
  models = [c.operator.first_model()] + ([c.operator.middle_model()] if c.operator.middle else [])
  starts = (0,) + steps[:-1]
  return sum((b - a) * flops_per_step(base, m) for a, b, m in zip(starts, steps, models))


def _steps_to(base: Base, c: Candidate, budget: float, total: float) -> int:
  """Steps of the grown stage that bring the candidate's FLOPs to `total`."""
  rest = total - _flops_before_last_growth(base, c, budget)
  return max(1, round(rest / flops_per_step(base, base.final)))


def _with_stages(base: Base, stages: list[dict], **train: Any) -> ml_collections.ConfigDict:
  """The experiment with these stages (each with its lr and end_lr).  One LR through the
  growths: 'continue' (a stage ends at the next one's LR; only the last keeps its end_lr), as
  every plan before issue 40.  An LR that jumps at a growth: 'rewarm' with no warm-up after the
  first stage, each stage ending at its own end_lr."""
  c = ml_collections.ConfigDict(base.config.to_dict())
  stages = [dict(s) for s in stages]
  if all(s['lr'] == stages[0]['lr'] for s in stages):
    c.optim.stage_schedule = 'continue'
    for s in stages[:-1]:
      s.pop('end_lr', None)
  else:
    c.optim.stage_schedule = 'rewarm'
    for s in stages[1:]:
      s['warmup_steps'] = 0
  c.stages = stages
  c.train.update(train)
  return c


def _first_stage(base: Base, model: Mapping[str, Any], steps: int) -> dict:
  return dict(name='first', model=dict(model), steps=steps, lr=base.lr,
              warmup_steps=base.warmup_steps, end_lr=base.lr)


def lag_steps(base: Base, budget: float) -> int:
  return max(1, round(base.lag_share * budget / flops_per_step(base, base.final)))


def growth_of(base: Base, c: Candidate, budget: float, width: str = '', depth: str = ''
              ) -> dict:
  """The experiment's growth settings with the candidate's operator (or `width` / `depth`: a
  chain's first growth); MSG's mask ramp capped at half the lag, so that every probe is
  measured after its ramp (a ramp still running at the probe would rank MSG by a half-grown
  model).  The chosen schedule uses the same ramp."""
  ramp = int(base.growth.get('ramp_steps', GrowthSpec().ramp_steps))
  return {**base.growth, 'width': width or c.operator.width, 'depth': depth or c.operator.depth,
          'ramp_steps': min(ramp, max(1, lag_steps(base, budget) // 2))}


def _stages_before_last_growth(base: Base, c: Candidate, budget: float) -> list[dict]:
  """The first stage (peak held) and a chain's middle stage (the LR after its growth held)."""
  steps = growth_steps(base, c, budget)
  out = [_first_stage(base, c.operator.first_model(), steps[0])]
  if c.operator.middle:
    lr = c.lr_after * base.lr
    out.append(dict(name='middle', model=c.operator.middle_model(), steps=steps[1] - steps[0],
                    lr=lr, end_lr=lr, growth=growth_of(base, c, budget, c.operator.middle_width,
                                                         c.operator.middle_depth)))
  return out


def _grown_stage(base: Base, c: Candidate, steps: int, end_lr: float, budget: float) -> dict:
  growth = growth_of(base, c, budget)
  return dict(name='final', model=dict(base.final), steps=steps, lr=c.lr_after * base.lr,
              end_lr=end_lr, growth=growth)


def prefix_config(base: Base, operator: Operator, steps: int, keep: int
                  ) -> ml_collections.ConfigDict:
  """The shared first-stage run: warm-up, then the peak LR held to `steps`."""
  stage = _first_stage(base, operator.first_model(), steps)
  return _with_stages(base, [stage], keep=keep, ckpt_every=0)


def middle_config(base: Base, c: Candidate, budget: float, end_step: int, keep: int
                  ) -> ml_collections.ConfigDict:
  """A chain's shared middle run: its first stage (the prefix's first steps), the first growth,
  then the LR after it held to the global step `end_step` (the latest second growth)."""
  first, middle = _stages_before_last_growth(base, c, budget)
  middle['steps'] = end_step - first['steps']
  return _with_stages(base, [first, middle], keep=keep, ckpt_every=0)


def probe_config(base: Base, c: Candidate, budget: float, probe_flops: float
                 ) -> ml_collections.ConfigDict:
  """The candidate's probe: its prefix, its growth(s), the LR after the growth held to
  `probe_flops`.  It keeps 2 checkpoints (its last one is what round 2 branches from), not the
  experiment's `keep`: 16 probes with the growth-evidence experiment's 20 each would fill a
  disk."""
  lr = c.lr_after * base.lr
  return _with_stages(base, _stages_before_last_growth(base, c, budget)
                      + [_grown_stage(base, c, _steps_to(base, c, budget, probe_flops), lr,
                                      budget)], keep=2)


def full_config(base: Base, c: Candidate, budget: float) -> ml_collections.ConfigDict:
  """The chosen schedule over the whole budget: warm-up, the peak through the first stage (a
  chain's middle stage at the LR its probe held), a cosine from the LR after the last growth
  to `end_lr`."""
  return _with_stages(base, _stages_before_last_growth(base, c, budget)
                      + [_grown_stage(base, c, _steps_to(base, c, budget, budget), base.end_lr,
                                      budget)])


def lag_flops_for(base: Base, c: Candidate, budget: float) -> float:
  """Where the candidate's round-1 probe ends: its (last) growth point plus the lag, as
  FLOPs."""
  return (c.share + base.lag_share) * budget


def probe_flops_for(base: Base, candidates: Sequence[Candidate], budget: float) -> float:
  """C_probe: the latest growth point plus the lag, as FLOPs."""
  return max(lag_flops_for(base, c, budget) for c in candidates)


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
    if c.operator.middle and not 0 < c.first_share < c.share:
      raise ConfigError(f'plan-growth: candidate {c.name}: its first growth point must come '
                        f'before its second')
    if t <= base.warmup_steps:
      raise ConfigError(f'plan-growth: candidate {c.name} grows at step {t}, within the warm-up '
                        f'({base.warmup_steps} steps): the first stage must reach the peak LR '
                        f'before any growth point (raise --budget_flops or lower '
                        f'optim.warmup_steps)')


# ---- running -------------------------------------------------------------------------------

def branch(source_workdir: str, stage: int, step: int, workdir: str) -> bool:
  """Put `source_workdir`'s stage-`stage` checkpoint of `step` into `workdir` (hard links where
  the file system allows, else a copy), for the trainer to resume from; False when `workdir`
  already holds checkpoints (a branch made before: resumed as is)."""
  if checkpoint.latest(workdir) is not None:
    return False
  src = paths.join(checkpoint.stage_dir(source_workdir, stage), str(step))
  if not paths.isdir(src):
    raise checkpoint.CheckpointError(f'{src}: the checkpoint to branch from is missing')
  dst_stage = checkpoint.stage_dir(workdir, stage)
  if paths.is_remote(dst_stage):
    # no rename: the manifest, the step's commit marker, is copied last, so a cut copy is a
    # step without one (uncounted by every reader, removed by the trainer) and is redone here
    paths.copytree(src, paths.join(dst_stage, str(step)), last=checkpoint.MANIFEST)
    return True
  paths.makedirs(dst_stage)
  tmp = paths.join(dst_stage, f'{step}.branching')
  if paths.exists(tmp):
    paths.rmtree(tmp)
  paths.copytree(src, tmp)
  paths.move(tmp, paths.join(dst_stage, str(step)))  # a rename: complete or absent, as orbax's
  return True


def prefix_dirname(operator: Operator) -> str:
  shape = '_'.join(f'{k}{v}' for k, v in operator.first)
  return f'prefix_{shape}' if shape else 'prefix'


def middle_dirname(c: Candidate) -> str:
  op = c.operator.name.replace(' ', '_').replace('>', '_then_')
  return f'mid_{op}_s{c.first_share:.4g}' + (f'_lr{c.lr_after:g}' if c.lr_after != 1.0 else '')


def middle_key(c: Candidate) -> tuple:
  """What a chain's middle run depends on (its second growth point does not)."""
  op = c.operator
  return (op.first, op.middle, op.middle_width, op.middle_depth, c.first_share, c.lr_after)


@dataclasses.dataclass(frozen=True)
class Job:
  """One run of the plan: its config, run dir, and the checkpoint it branches from."""
  kind: str                  # 'prefix' | 'lag' | 'probe'
  key: Any                   # the operator's first shape (prefix) or the candidate
  config: ml_collections.ConfigDict
  workdir: str
  source: Optional[tuple[str, int, int]] = None  # (workdir, stage, step) to branch from
  steps: tuple[int, ...] = ()                    # a prefix's branch points (global steps)

  def flops(self) -> float:
    """The FLOPs this job adds: a branch only pays for the steps after its source."""
    stages = plan.stage_plan(self.config)
    start = self.source[2] if self.source else 0
    return plan.cumulative(stages, stages[-1].end_step)[1] - plan.cumulative(stages, start)[1]


def prefix_jobs(base: Base, candidates: Sequence[Candidate], budget: float, workdir: str
                ) -> dict[tuple, Job]:
  """One prefix per first-stage shape, to its latest branch point (keyed by the shape), then
  one middle run per chain × first growth point × LR (keyed by `middle_key`), branched from
  its prefix at the first growth and trained to its latest second growth point."""
  shapes: dict[tuple, list[Candidate]] = {}
  for c in candidates:
    shapes.setdefault(c.operator.first, []).append(c)
  out = {}
  for first, group in shapes.items():
    steps = tuple(sorted({first_steps(base, c, budget) for c in group}))
    cfg = prefix_config(base, group[0].operator, steps[-1], keep=len(steps) + 2)
    out[first] = Job('prefix', first, cfg, paths.join(workdir, prefix_dirname(group[0].operator)),
                     steps=steps)
  middles: dict[tuple, list[Candidate]] = {}
  for c in candidates:
    if c.operator.middle:
      middles.setdefault(middle_key(c), []).append(c)
  for key, group in middles.items():
    steps = tuple(sorted({last_growth_step(base, c, budget) for c in group}))
    c = group[0]
    cfg = middle_config(base, c, budget, steps[-1], keep=len(steps) + 2)
    out[key] = Job('middle', key, cfg, paths.join(workdir, middle_dirname(c)),
                   (out[c.operator.first].workdir, 0, first_steps(base, c, budget)), steps)
  return out


def prefix_key(c: Candidate) -> tuple:
  """The key of the prefix job a candidate's lag run branches from."""
  return middle_key(c) if c.operator.middle else c.operator.first


def lag_job(base: Base, c: Candidate, budget: float, workdir: str, prefix: Job) -> Job:
  """Round 1: grow at the candidate's (last) point and train the lag at its LR."""
  cfg = probe_config(base, c, budget, lag_flops_for(base, c, budget))
  return Job('lag', c, cfg, paths.join(workdir, c.dirname),
             (prefix.workdir, c.operator.growths - 1, last_growth_step(base, c, budget)))


def probe_job(base: Base, c: Candidate, budget: float, probe_flops: float, lag: Job) -> Job:
  """Round 2: a growth point's winner goes on from its lag run to C_probe (its LR held)."""
  cfg = probe_config(base, c, budget, probe_flops)
  return Job('probe', c, cfg, lag.workdir + '_to_probe',
             (lag.workdir, c.operator.growths, plan.stage_plan(lag.config)[-1].end_step))


def _read(job: Job) -> Optional[dict]:
  return read_finished(job.workdir, job.config, experiment.default_config())


def _run(job: Job, log) -> dict:
  """Train `job` (branching first) unless it finished; its summary."""
  summary = _read(job)
  if summary is None:
    if job.kind in ('prefix', 'middle'):
      log(f'plan-growth: {job.kind} {paths.basename(job.workdir)} to step {job.steps[-1]} '
          f'(branch points {list(job.steps)})')
      if job.source and branch(*job.source, job.workdir):
        log(f'plan-growth: {paths.basename(job.workdir)} branched from '
            f'{paths.basename(job.source[0])} at step {job.source[2]}')
      train_prefix(job)
    else:
      if branch(*job.source, job.workdir):
        log(f'plan-growth: {job.key.name}: {job.kind} run branched from '
            f'{paths.basename(job.source[0])} at step {job.source[2]}')
      train_to_end(job.config, job.workdir)
    summary = _read(job)
  return summary


def train_prefix(job: Job) -> None:
  """The prefix (or middle) job: stop (checkpoint) at every branch point, then run to its end.
  The branch points are in its last stage."""
  last = checkpoint.stage_dir(job.workdir, len(plan.stage_plan(job.config)) - 1)
  for t in job.steps[:-1]:
    have = checkpoint.steps_in(last)
    if t in have:
      continue
    if have and have[-1] > t:  # a resumed run cannot go back for it
      raise checkpoint.CheckpointError(
          f'{last}: the branch point {t} is missing but the prefix is at step {have[-1]}: '
          f'remove {job.workdir} to train the prefix again')
    train_to_end(job.config, job.workdir, stop_at_step=t)
  train_to_end(job.config, job.workdir)


def lr_variants(base: Base, winner: Candidate, lr_after: Sequence[float], budget: float,
                workdir: str, prefixes: Mapping[tuple, Job]) -> dict[Candidate, list[Job]]:
  """The LR round's runs for one growth point's winner: the same candidate with the LR after
  each growth at m × the peak, for each m; a chain also retrains its middle stage at that LR
  (branched from the shared prefix at its first growth)."""
  out = {}
  for m in lr_after:
    v = winner.with_lr(m)
    jobs = []
    if v.operator.middle:
      t2 = last_growth_step(base, v, budget)
      mid = Job('middle', middle_key(v), middle_config(base, v, budget, t2, keep=3),
                paths.join(workdir, middle_dirname(v)),
                (prefixes[v.operator.first].workdir, 0, first_steps(base, v, budget)), (t2,))
      jobs.append(mid)
      jobs.append(lag_job(base, v, budget, workdir, mid))
    else:
      jobs.append(lag_job(base, v, budget, workdir, prefixes[v.operator.first]))
    out[v] = jobs
  return out


def with_lr_round(candidates: Sequence[Candidate], result: Mapping[str, Any]
                  ) -> list[Candidate]:
  """`candidates` and the LR round's variants that `result` holds rows of."""
  names = {r['candidate'] for r in result['rows']}
  out = list(candidates)
  for m in result.get('lr_after', []):
    out += [c.with_lr(m) for c in candidates if c.with_lr(m).name in names
            and c.with_lr(m) not in out]
  return out

def run_plan(base: Base, candidates: Sequence[Candidate], budget: float, workdir: str, *,
             shard: tuple[int, int] = (0, 1), dry_run: bool = False, sweep_runs: int = 0,
             lr_after: Sequence[float] = (), log=print) -> dict[str, Any]:
  """Train (or read back) this shard's runs of the plan; returns the candidates' rows, ranked.

  The plan (module doc): prefixes and chains' middle runs; round 1, every candidate grows and
  trains the lag; the LR round, each growth point's round-1 winner again with the LR after its
  growths at each of `lr_after` × the peak; round 2, each growth point's best (lowest loss at
  its lag, over operators and LRs: they are at equal FLOPs) goes on to C_probe, and those are
  ranked by the loss there.  Jobs are shard i % N's within each round; a job whose source has
  not finished waits (listed in 'waiting': run the shard again later, or once without
  sharding).  `dry_run`: train nothing, plan and cost only."""
  probe = probe_flops_for(base, candidates, budget)
  check_plan(base, candidates, budget, probe)
  lr_after = [float(m) for m in lr_after if float(m) != 1.0]
  prefixes = prefix_jobs(base, candidates, budget, workdir)
  lags = {c: lag_job(base, c, budget, workdir, prefixes[prefix_key(c)]) for c in candidates}
  groups: dict[float, list[Candidate]] = {}
  for c in candidates:
    groups.setdefault(c.share, []).append(c)
  mine = lambda i: i % shard[1] == shard[0] and not dry_run
  done: dict[str, Optional[dict]] = {}  # by run dir
  waiting: list[str] = []

  def get(job: Job, i: int) -> Optional[dict]:
    ready = job.source is None or done.get(job.source[0]) is not None
    if job.workdir not in done:
      done[job.workdir] = (_run(job, log) if mine(i) and ready else
                           None if dry_run else _read(job))
      if done[job.workdir] is None and mine(i) and not ready:
        waiting.append(f'{job.kind} {getattr(job.key, "name", paths.basename(job.workdir))}')
    return done[job.workdir]

  for kind in ('prefix', 'middle'):  # a middle run branches from a prefix
    for i, job in enumerate(j for j in prefixes.values() if j.kind == kind):
      get(job, i)
  rows: dict[Candidate, dict] = {}
  for i, c in enumerate(candidates):
    rows[c] = _row(base, c, budget, lags[c], get(lags[c], i))
  # the LR round: each growth point's round-1 winner with the LR after its growths changed
  finished = {}
  i = 0
  for share, group in sorted(groups.items()):
    if any(rows[c]['lag_loss'] is None for c in group):
      continue
    best = group_winners([rows[c] for c in group])[share]
    winner = next(c for c in group if c.name == best)
    for v, jobs in lr_variants(base, winner, lr_after, budget, workdir, prefixes).items():
      if v in rows:  # asked for in --candidates: already run in round 1
        continue
      for job in jobs:
        summary = get(job, i)
      i += 1
      lags[v] = jobs[-1]
      rows[v] = {**_row(base, v, budget, jobs[-1], summary), 'lr_round': True}
      group.append(v)
    finished[share] = all(rows[c]['lag_loss'] is not None for c in group)
  probes: dict[Candidate, Job] = {}
  for i, (share, group) in enumerate(sorted(groups.items())):
    if not finished.get(share):
      continue
    best = group_winners([rows[c] for c in group])[share]
    winner = next(c for c in group if c.name == best)
    for c in group:
      rows[c]['group_best'] = c is winner
    if lag_flops_for(base, winner, budget) >= probe:  # the latest point: its lag ends at C
      rows[winner]['probe_loss'] = rows[winner]['lag_loss']
      continue
    probes[winner] = probe_job(base, winner, budget, probe, lags[winner])
    summary = get(probes[winner], i)
    if summary is not None:
      rows[winner]['probe_loss'] = final_loss(summary, probes[winner].workdir)
      rows[winner]['probe_workdir'] = probes[winner].workdir
  cost = planned_cost(base, candidates, budget, workdir, lr_after)
  ranked = rank([r for r in rows.values() if r['probe_loss'] is not None])
  ranked += [r for r in rows.values() if r['probe_loss'] is None]
  return {'rows': ranked, 'probe_flops': probe, 'budget_flops': budget,
          'lag_share': base.lag_share, 'lr_after': lr_after, **cost,
          'sweep_flops': budget * (sweep_runs or len(candidates) * (1 + len(lr_after))),
          'waiting': waiting,
          'complete': sum(1 for r in ranked if r['probe_loss'] is not None) == len(groups)}


def _row(base: Base, c: Candidate, budget: float, lag: Job, summary: Optional[dict]) -> dict:
  steps = growth_steps(base, c, budget)
  return {'candidate': c.name, 'operator': c.operator.name, 'width': c.operator.width,
          'depth': c.operator.depth, 'first_model': c.operator.first_model(), 'share': c.share,
          'growth_step': steps[-1], 'growth_steps': list(steps), 'shares': list(c.shares()),
          'lr_after': c.lr_after, 'middle_model': c.operator.middle_model() or None,
          'lag_loss': None if summary is None else final_loss(summary, lag.workdir),
          'lag_flops': lag_flops_for(base, c, budget), 'group_best': None, 'probe_loss': None,
          'workdir': lag.workdir}


def planned_cost(base: Base, candidates: Sequence[Candidate], budget: float, workdir: str,
                 lr_after: Sequence[float] = ()) -> dict[str, float]:
  """The plan's FLOPs before any run: the prefixes and middle runs, every candidate's lag, the
  LR round (per growth point and LR, the dearest of its candidates: the winner is not known
  yet, so this is an upper bound) and the round-2 continuations of one candidate per growth
  point (but the latest) to C_probe."""
  probe = probe_flops_for(base, candidates, budget)
  prefixes = prefix_jobs(base, candidates, budget, workdir)
  lags = {c: lag_job(base, c, budget, workdir, prefixes[prefix_key(c)]) for c in candidates}
  shares = sorted({c.share for c in candidates})
  cont = lr_round = 0.0
  for s in shares:
    group = [c for c in candidates if c.share == s]
    c = group[0]  # every candidate of a point costs the same from its lag on
    if lag_flops_for(base, c, budget) < probe:
      cont += probe_job(base, c, budget, probe, lags[c]).flops()
    lr_round += max((sum(j.flops() for j in jobs) for c in group
                     for jobs in lr_variants(base, c, [m for m in lr_after if m != 1.0], budget,
                                             workdir, prefixes).values()), default=0.0)
  pre = sum(j.flops() for j in prefixes.values())
  lag = sum(j.flops() for j in lags.values())
  return {'prefix_flops': pre, 'lag_flops_total': lag, 'lr_round_flops': lr_round,
          'probe_continue_flops': cont, 'probe_cost_flops': pre + lag + lr_round + cont}


# ---- ranking and reporting -----------------------------------------------------------------

def rank(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Rows best first: lowest `probe_loss` (the rows' runs end at one FLOPs point, so the loss
  compares like with like); a diverged probe (inf / nan) ranks last; ties go to the
  later growth point (less of the budget in the big model: the cheaper schedule in wall time
  when small models run at lower MFU), then to the candidate's name."""
  def key(r):
    loss = float(r['probe_loss'])
    return (loss if math.isfinite(loss) else math.inf, -float(r['share']), r['candidate'])
  out = [dict(r) for r in sorted(rows, key=key)]
  for i, r in enumerate(out):
    r['rank'] = i + 1
  return out


def group_winners(rows: Sequence[Mapping[str, Any]]) -> dict[float, str]:
  """{growth point: the candidate with the lowest lag loss there} (round 1: the candidates of
  one growth point are at equal FLOPs at the end of their lag); ties as in `rank`."""
  groups: dict[float, list[dict]] = {}
  for r in rows:
    groups.setdefault(float(r['share']), []).append({**r, 'probe_loss': r['lag_loss']})
  return {s: rank(g)[0]['candidate'] for s, g in groups.items()}


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
  """Every candidate: rank (round-2 winners only), growth step(s), lag loss (round 1 and the LR
  round; * = best of its growth point), probe loss at C_probe (round 2), and days on a pod
  plan's slice."""
  budget = result['budget_flops']
  fmt = lambda x: '-' if x is None else f'{x:.4f}'
  width = max([22] + [len(r['candidate']) for r in result['rows']])
  head = (f"{'rank':>4} {'candidate':<{width}} {'grow@step':>9} {'lag loss':>10} "
          f"{'probe loss':>10}")
  head += f" {'days':>8}" if days else ''
  lines = [head]
  for r in result['rows']:
    star = '*' if r.get('group_best') else ' '
    steps = '>'.join(str(t) for t in r.get('growth_steps') or [r['growth_step']])
    line = (f"{r.get('rank') or '':>4} {r['candidate']:<{width}} {steps:>9} "
            f"{fmt(r['lag_loss']):>9}{star} {fmt(r['probe_loss']):>10}")
    if days:
      line += f" {days.get(r['candidate'], math.nan):>8.2f}"
    lines.append(line)
  cost = result['probe_cost_flops']
  lines.append(f"lag {result['lag_share']:.4g} of the budget; C_probe "
               f"{result['probe_flops']:.3e} FLOPs ({result['probe_flops'] / budget:.3f} of the "
               f"budget)")
  lr_round = result.get('lr_round_flops', 0.0)
  lines.append(f"probe cost {cost:.3e} FLOPs (prefixes {result['prefix_flops']:.3e}, lags "
               f"{result['lag_flops_total']:.3e}, "
               + (f"LR round {lr_round:.3e} at most (LR after growth x "
                  f"{', '.join(f'{m:g}' for m in result.get('lr_after', []))}), " if lr_round else '')
               + f"to C_probe {result['probe_continue_flops']:.3e}) "
               f"= {cost / budget:.2f}x the budget {budget:.3e} = "
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
