"""The stage plan of an experiment: each stage's model, steps, LR, batch and growth, and the
FLOPs / tokens they add up to.

`stage_plan(config)` resolves the `stages` section (or the single implicit stage) once into
frozen `Stage`s; the trainer, the growth command, the µP tools and `flmjax compile` all read
the plan, never the raw section.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from flmjax.config import ConfigError, ModelConfig
from flmjax.growth_ops import GrowthSpec

STAGE_FIELDS = ('name', 'model', 'steps', 'tokens', 'lr', 'warmup_steps', 'end_lr',
                'global_batch_size', 'growth')
# How the LR goes on across a growth (`optim.stage_schedule`):
#   continue  one schedule over the run, as FLM-101B: a stage decays from its `lr` to the next
#             stage's `lr` (where the next stage starts), only the last stage anneals to `end_lr`,
#             and only the first stage warms up;
#   rewarm    each stage warms up from the previous stage's final LR to its `lr`, then decays to
#             its own `end_lr`.
STAGE_SCHEDULES = ('continue', 'rewarm')


# ---- stages ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  model: ModelConfig
  steps: int
  start_step: int
  lr: float
  warmup_steps: int
  end_lr: float
  global_batch_size: int
  seq_len: int
  growth: Optional[GrowthSpec] = None  # how to grow into this stage (None: no growth)

  @property
  def end_step(self) -> int:
    return self.start_step + self.steps

  @property
  def tokens_per_step(self) -> int:
    return self.global_batch_size * self.seq_len

  @property
  def tokens(self) -> int:
    return self.steps * self.tokens_per_step

  @property
  def flops(self) -> float:
    return self.model.flops_per_token(self.seq_len) * self.tokens

  def schedule_dict(self) -> dict:
    return dict(start_step=self.start_step, steps=self.steps, lr=self.lr,
                warmup_steps=self.warmup_steps, end_lr=self.end_lr)


def as_dict(x: Any) -> dict:
  """A ConfigDict, dict or None as a plain dict."""
  return dict(x.to_dict() if hasattr(x, 'to_dict') else (x or {}))


MAX_STEPS = 2**31 - 1  # the step counters (TrainState.step, optax's count) are int32


def _steps_from(where: str, steps: Any, tokens: Any, tokens_per_step: int) -> int:
  steps = steps or 0
  tokens = tokens or 0
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
    raise ConfigError(f'{where}.steps must be a non-negative integer, got {steps!r}')
  if not isinstance(tokens, (int, float)) or isinstance(tokens, bool) or tokens < 0:
    raise ConfigError(f'{where}.tokens must be a non-negative number, got {tokens!r}')
  if bool(steps) == bool(tokens):
    raise ConfigError(f'{where}: set exactly one of steps or tokens (got steps={steps!r}, '
                      f'tokens={tokens!r})')
  n = steps or math.ceil(tokens / tokens_per_step)
  if n > MAX_STEPS:
    field = 'steps' if steps else f'tokens={tokens!r} / {tokens_per_step} tokens per step'
    raise ConfigError(f'{where}.{field} = {n} steps is more than a run can count (the step '
                      f'counter is int32: at most {MAX_STEPS})')
  return n


def stage_plan(cfg: ml_collections.ConfigDict) -> list[Stage]:
  """Resolve the run into stages (one implicit stage when `stages` is empty)."""
  base_model = as_dict(cfg.model)
  t, o = cfg.train, cfg.optim
  stages_cfg = list(cfg.get('stages') or [])
  mode = o.get('stage_schedule', 'continue')
  if mode not in STAGE_SCHEDULES:  # checked for one stage too: a typo is never silently ignored
    raise ConfigError(f'optim.stage_schedule must be one of {STAGE_SCHEDULES}, got {mode!r}')
  if not stages_cfg:
    model = _model(base_model, 'model')
    steps = _steps_from('train', t.steps, t.tokens, t.global_batch_size * t.seq_len)
    return [Stage(0, 'main', model, steps, 0, float(o.lr), int(o.warmup_steps), float(o.end_lr),
                  int(t.global_batch_size), int(t.seq_len), None)]
  out, start, names = [], 0, set()
  for k, s in enumerate(stages_cfg):
    where = f'stages[{k}]'
    s = as_dict(s)
    unknown = sorted(set(s) - set(STAGE_FIELDS))
    if unknown:
      raise ConfigError(f'{where}: unknown field(s) {unknown}; known fields: {list(STAGE_FIELDS)}')
    name = s.get('name') or f'stage_{k}'
    if name in names:
      raise ConfigError(f'{where}.name={name!r} is used twice')
    names.add(name)
    overrides = as_dict(s.get('model'))
    model = _model({**base_model, **overrides}, f'{where}.model')
    batch = s.get('global_batch_size') or t.global_batch_size
    steps = _steps_from(where, s.get('steps'), s.get('tokens'), batch * t.seq_len)
    growth = s.get('growth')
    if k == 0 and growth:
      raise ConfigError(f'{where}.growth: the first stage has nothing to grow from')
    if k and growth is None and model != out[-1].model:
      raise ConfigError(f'{where}.growth is required: the model differs from stage '
                        f'{out[-1].name!r}')
    if k:
      _check_growable(out[-1].model, model, where)
    get = lambda f, d: d if s.get(f) is None else s.get(f)
    warmup, end_lr = int(get('warmup_steps', o.warmup_steps)), float(get('end_lr', o.end_lr))
    if mode == 'continue':
      warmup, end_lr = _continued(where, k, len(stages_cfg), s, warmup, end_lr)
    out.append(Stage(k, name, model, steps, start, float(get('lr', o.lr)), warmup, end_lr,
                     int(batch), int(t.seq_len), _growth_spec(growth, where)))
    start += steps
    if start > MAX_STEPS:
      raise ConfigError(f'{where}: the run would end at step {start}, more than the int32 step '
                        f'counter holds ({MAX_STEPS})')
  _check_ramps(out)
  if mode == 'continue':  # a stage ends where the next one starts
    out = [dataclasses.replace(s, end_lr=nxt.lr) for s, nxt in zip(out, out[1:])] + out[-1:]
  return out


def _check_ramps(stages: Sequence[Stage]) -> None:
  """A growth inside the previous growth's mask ramp is not function-preserving (`flmjax grow`
  refuses such a checkpoint), so a ramp must end within its stage when another growth follows."""
  for s, nxt in zip(stages, stages[1:]):
    if s.growth and nxt.growth and s.growth.ramp_steps > s.steps:
      raise ConfigError(f'stages[{s.index}].growth.ramp_steps={s.growth.ramp_steps} is longer '
                        f'than the stage {s.name!r} ({s.steps} steps): stage {nxt.name!r} would '
                        f'grow mid-ramp, which is not function-preserving; use at most '
                        f'{s.steps} ramp steps')


def _continued(where: str, k: int, n: int, s: Mapping[str, Any], warmup: int,
               end_lr: float) -> tuple[int, float]:
  """(warmup_steps, end_lr) of stage k under stage_schedule='continue' (end_lr of all but the
  last stage is then set to the next stage's lr).  Settings that would break the one schedule
  are errors rather than silently ignored."""
  if k and s.get('warmup_steps'):
    raise ConfigError(
        f"{where}.warmup_steps={s['warmup_steps']!r}: with optim.stage_schedule='continue' a "
        f"grown stage starts at the LR the previous one ended with (no warm-up); ramp new units "
        f"with growth.rewarmup_steps, or set optim.stage_schedule='rewarm'")
  if k < n - 1 and s.get('end_lr') is not None:
    raise ConfigError(
        f"{where}.end_lr={s['end_lr']!r}: with optim.stage_schedule='continue' a stage ends at "
        f"the next stage's lr; set end_lr on the last stage only, or set "
        f"optim.stage_schedule='rewarm'")
  return (warmup if k == 0 else 0), end_lr


def _growth_spec(growth: Any, where: str) -> Optional[GrowthSpec]:
  if growth is None:
    return None
  try:
    return GrowthSpec.from_dict(as_dict(growth))
  except ValueError as e:
    raise ConfigError(f'{where}.{e}') from None


def _model(d: Mapping[str, Any], where: str) -> ModelConfig:
  try:
    return ModelConfig.from_dict(d)
  except ConfigError as e:
    msg = str(e)
    raise ConfigError(msg.replace('model.', where + '.', 1) if msg.startswith('model') else
                      f'{where}: {msg}') from None
  except TypeError as e:
    raise ConfigError(f'{where}: {e}') from None


def _check_growable(src: ModelConfig, dst: ModelConfig, where: str) -> None:
  for f in ('d_model', 'n_heads', 'd_ff', 'n_layers'):
    if getattr(dst, f) < getattr(src, f):
      raise ConfigError(f'{where}.model.{f}={getattr(dst, f)} is smaller than the previous '
                        f"stage's {getattr(src, f)}; growth only enlarges")
  for f in ('head_dim', 'vocab_size', 'tie_embeddings'):
    if getattr(dst, f) != getattr(src, f):
      raise ConfigError(f'{where}.model.{f}={getattr(dst, f)!r} must equal the previous '
                        f"stage's {getattr(src, f)!r} (growth keeps it fixed)")


# ---- FLOPs accounting ------------------------------------------------------------------

def flops_summary(stages: Sequence[Stage]) -> dict[str, float]:
  """Growth FLOPs vs the final model trained from scratch on the same total tokens.

  FLM-101B's "72% saved" compares wall time of the growth run with the 101B model from scratch
  on the same tokens; we compare model FLOPs the same way.
  """
  growth_flops = sum(s.flops for s in stages)
  tokens = sum(s.tokens for s in stages)
  scratch = stages[-1].model.flops_per_token(stages[-1].seq_len) * tokens
  return {'growth_flops': growth_flops, 'scratch_flops': scratch, 'tokens': tokens,
          'saved_fraction': 1.0 - growth_flops / scratch if scratch else 0.0}


def cumulative(stages: Sequence[Stage], step: int) -> tuple[int, float]:
  """(tokens, model FLOPs) after `step` global steps of this plan."""
  tokens, flops = 0, 0.0
  for s in stages:
    n = min(max(step - s.start_step, 0), s.steps)
    tokens += n * s.tokens_per_step
    flops += n * s.tokens_per_step * s.model.flops_per_token(s.seq_len)
  return tokens, flops
