"""The growth benchmark's three arms on one FLOPs budget (benchmarks/growth_evidence.py).

  growth   the first-stage model (d_model 16, 2 layers) for a third of the budget, then grown
           to the final size (d_model 32, 4 layers) for the rest;
  scratch  the final size trained from scratch for the whole budget;
  small    the first-stage size trained alone for the whole budget.

The argument is comma-separated: the arm, then key=value options, e.g.
  flmjax train --config 'experiments/growth_evidence.py:growth,width=tile,depth=stack,seed=1'
Options: width (msg | tile), depth (msg | identity | stack | interleave), seed (init and data
order), lr (peak learning rate, the same for every arm and stage), preset (full | double |
first_run | d64x8 | smoke | smoke_d64x8), and for the growth arm (issue 25's diagnosis and sweep; defaults = the protocol of
issue 17):
  lr_after    the LR the grown stage starts at, from which it decays to lr/10 over its steps:
              steps (default: where one cosine over all *steps* stands at the growth), flops
              (where one cosine over the *FLOPs budget* stands: the scratch arm's LR at the
              same FLOPs), peak (LEMON: the first stage holds the peak LR, the grown stage
              decays from it), or a number (that fraction of the peak);
  share       the first stage's share of the FLOPs budget (default 1/3);
  first       the first stage's shape as DxL (default the preset's, 16x2); e.g. 32x1 with
              depth=stack is G_stack's depth-only ×4 growth;
  ramp        the MSG mask ramp as a share of the grown stage's steps (default 0.1; 0 = none);
  new_init    new weights' init std as a multiple of the model's init_std (default: the
              target model's own init);
  new_layers  fresh | copy; rewarmup: growth.rewarmup_steps as a share of the grown stage;
  adam        map (default: Adam's moments follow the parameter map, its count goes on) | reset
              (zero moments and count at the growth: bias correction starts again);
  mup_after   target (default: the grown stage takes the target width's µP multipliers) | first
              (it keeps the first stage's: µP base width scaled with the width, so width_mult,
              the hidden LR and init multipliers stay as before the growth; the growth absorbs
              the logit multiplier, so the function is preserved either way);
  continuation 1: no growth — the second stage keeps the first stage's shape, so the small
              model goes on over the same batches with the same LR (the growth arm's control
              in the diagnosis: does the grown model learn faster than the model it came from?).

Why this setting (issue 17): a 2048-piece vocabulary (as in benchmarks/loss_prediction.py, where
each doubling of width lowered the loss clearly) so the two sizes differ in their transformer
blocks, not their embedding; µP with base width = the first stage's width, so the learning rate
swept on the final size transfers to the first stage and one LR serves every arm and stage; and
a budget of 4M tokens for the final size (34 per parameter) so that the small model has run out
of capacity before the budget ends (the regime where size matters; the old tiny_growth setting
gave the final size 0.4 tokens per parameter, where any smaller model wins, and this benchmark's
first run, at 1.3M tokens, still ended with the small model ahead).
"""

from __future__ import annotations

import math
import re

import ml_collections

from flmjax import experiment
from flmjax.config import ModelConfig

ARMS = ('growth', 'scratch', 'small')
PRESETS = {
    # first stage (d_model, layers), final (d_model, layers), seq, batch, final-size tokens,
    # evals per run, eval batches
    'full': dict(first=(16, 2), final=(32, 4), seq=128, batch=32, final_tokens=4_000_000,
                 evals=16, eval_batches=4),
    # The benchmark's first run (1.3M tokens, still the small-model regime), kept so that its
    # numbers, measured before issue 14's training conventions, can be re-measured like for like.
    # Issue 25's second budget: the same setting on twice the tokens (the trend with scale).
    'double': dict(first=(16, 2), final=(32, 4), seq=128, batch=32, final_tokens=8_000_000,
                   evals=16, eval_batches=4),
    'first_run': dict(first=(16, 2), final=(32, 4), seq=128, batch=32, final_tokens=1_300_000,
                      evals=16, eval_batches=4),
    # Issue 40's second size: twice the width and depth of 'full' (8x its blocks' matrices; 7.86x
    # its block parameters with biases and norms, 4.6x in all), the first stage d32×L4 (the
    # 'full' preset's final size, so µP's base width is 32), and the same tokens per parameter
    # (18M tokens on 531k parameters: 33.9, 'full' has 34.4).  Scratch and small runs take hours
    # on one core here, so they checkpoint every 200 steps and resume.
    'd64x8': dict(first=(32, 4), final=(64, 8), seq=128, batch=32, final_tokens=18_000_000,
                  evals=16, eval_batches=4, ckpt_every=200),
    'smoke': dict(first=(16, 1), final=(32, 2), seq=16, batch=8, final_tokens=2_048,
                  evals=4, eval_batches=1),
    # d64x8's code paths in seconds (CI): its shape ratios (twice the width and depth of the
    # first stage, 8 = 2 × 4 layers at full size: 4 here, so chains of two stacks fit), its
    # checkpointing, on the smoke's synthetic data.
    'smoke_d64x8': dict(first=(16, 2), final=(32, 4), seq=16, batch=8, final_tokens=4_096,
                        evals=4, eval_batches=1, ckpt_every=4),
}
HEAD_DIM = 8
FIRST_STAGE_FLOPS_SHARE = 1 / 3  # fixed before any run; FLM-101B spent ~45% in its first stage
RAMP_SHARE = 0.1                 # MSG masks ramp over this share of the final stage's steps
LR = 3e-3                        # the default; the benchmark sweeps it on the scratch arm


# The growth arm's recipe options and their defaults (the issue-17 protocol).
GROWTH_OPTIONS = dict(lr_after='steps', share='', first='', ramp=str(RAMP_SHARE), new_init='',
                      new_layers='fresh', rewarmup='0', continuation='0', adam='map',
                      mup_after='target')
LR_AFTER = ('steps', 'flops', 'peak')
CHOICES = dict(continuation=('0', '1'), adam=('map', 'reset'), mup_after=('target', 'first'),
               new_layers=('fresh', 'copy'))


def parse_arg(arg: str) -> dict:
  """'growth,width=tile,seed=1' -> {'arm': 'growth', 'width': 'tile', 'seed': '1', ...}."""
  parts = [p.strip() for p in (arg or 'growth').split(',') if p.strip()]
  out = {'arm': parts[0], 'width': 'msg', 'depth': 'msg', 'seed': '0', 'lr': str(LR),
         'preset': 'full', **GROWTH_OPTIONS}
  if out['arm'] not in ARMS:
    raise ValueError(f'arm must be one of {ARMS}, got {out["arm"]!r}')
  for p in parts[1:]:
    k, sep, v = p.partition('=')
    if not sep or k not in out or k == 'arm':
      raise ValueError(f'option {p!r}: expected key=value with key in {sorted(set(out) - {"arm"})}')
    out[k] = v
  if out['preset'] not in PRESETS:
    raise ValueError(f'preset must be one of {sorted(PRESETS)}, got {out["preset"]!r}')
  if out['lr_after'] not in LR_AFTER:
    _number(out, 'lr_after', 0.0, 1.0)
  for k, lo, hi in (('share', 0.0, 1.0), ('ramp', 0.0, 1.0), ('new_init', 0.0, math.inf),
                    ('rewarmup', 0.0, 1.0)):
    if out[k]:
      _number(out, k, lo, hi)
  for k, allowed in CHOICES.items():
    if out[k] not in allowed:
      raise ValueError(f'option {k}={out[k]!r}: expected one of {allowed}')
  if out['first'] and not re.fullmatch(r'\d+x\d+', out['first']):
    raise ValueError(f"option first={out['first']!r}: expected DxL, e.g. 32x1")
  return out


def _number(o: dict, key: str, lo: float, hi: float) -> float:
  try:
    v = float(o[key])
  except ValueError:
    v = math.nan
  if not lo <= v <= hi:
    raise ValueError(f'option {key}={o[key]!r}: expected a number in [{lo}, {hi}]'
                     + (f' or one of {LR_AFTER}' if key == 'lr_after' else ''))
  return v


def first_shape(o: dict) -> tuple[int, int]:
  """The first stage's (d_model, n_layers)."""
  if o['first']:
    d, n = o['first'].split('x')
    return int(d), int(n)
  return PRESETS[o['preset']]['first']


def model_shape(d_model: int, n_layers: int) -> dict:
  return dict(d_model=d_model, n_heads=d_model // HEAD_DIM, d_ff=4 * d_model, n_layers=n_layers)


def base_config(preset: str, seed: int, lr: float) -> ml_collections.ConfigDict:
  """Everything the arms share: data, µP model family, optimizer family, batch, logging."""
  p = PRESETS[preset]
  c = experiment.default_config()
  c.model.update(vocab_size=2048, head_dim=HEAD_DIM, max_len=p['seq'], use_mup=True,
                 mup_base_width=p['first'][0], attn_scale='1/d_head', output_mult=2.0,
                 init_std=1.6e-2, **model_shape(*p['final']))
  if preset.startswith('smoke'):
    c.data.source = 'synthetic'
    c.data.synthetic.update(vocab_size=64, min_doc_len=4, max_doc_len=12)
    c.model.vocab_size = 128
  else:
    c.data.source = 'bilingual'
    c.data.vocab.update(size=2048, character_coverage=0.98)
  c.data.seed = seed
  c.data.eval_batches = p['eval_batches']
  c.optim.update(lr=lr, warmup_steps=0, schedule='cosine', end_lr=lr / 10, weight_decay=0.0,
                 clip=1.0)
  c.train.update(seq_len=p['seq'], global_batch_size=p['batch'], seed=seed, log_every=10,
                 eval_every=0, eval_batches=p['eval_batches'], ckpt_every=0, keep=1)
  if p.get('ckpt_every'):  # (only where the preset asks: configs of earlier runs stay as they were)
    c.train.update(ckpt_every=p['ckpt_every'], keep=2)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c


def flops_per_token(c: ml_collections.ConfigDict, shape: tuple[int, int]) -> float:
  return ModelConfig.from_dict({**c.model.to_dict(), **model_shape(*shape)}).flops_per_token(
      int(c.train.seq_len))


def budget(preset: str) -> float:
  """The FLOPs budget every arm spends: the final size on `final_tokens` tokens."""
  c = base_config(preset, 0, LR)
  p = PRESETS[preset]
  return flops_per_token(c, p['final']) * p['final_tokens']


def get_config(arg: str = 'growth') -> ml_collections.ConfigDict:
  o = parse_arg(arg)
  preset, p = o['preset'], PRESETS[o['preset']]
  c = base_config(preset, int(o['seed']), float(o['lr']))
  tokens_per_step = p['seq'] * p['batch']
  flops = budget(preset)
  steps_for = lambda f, shape: max(1, round(f / flops_per_token(c, shape) / tokens_per_step))
  warmup = lambda steps: max(1, steps // 20)
  if o['arm'] in ('scratch', 'small'):
    shape = p['final'] if o['arm'] == 'scratch' else p['first']
    c.model.update(model_shape(*shape))
    steps = steps_for(flops, shape)
    c.train.steps = steps
    c.optim.warmup_steps = warmup(steps)
    c.train.eval_every = max(1, steps // p['evals'])
    return c
  share = float(o['share']) if o['share'] else FIRST_STAGE_FLOPS_SHARE
  shape0 = first_shape(o)
  first = steps_for(flops * share, shape0)
  final = steps_for(flops * (1 - share), p['final'])
  lr = float(o['lr'])
  growth = dict(width=o['width'], depth=o['depth'], new_layers=o['new_layers'],
                ramp_steps=max(1, round(float(o['ramp']) * final)) if float(o['ramp']) else 0,
                rewarmup_steps=round(float(o['rewarmup']) * final))
  if o['adam'] != 'map':  # (only when asked: configs of earlier runs stay as they were)
    growth['adam'] = o['adam']
  if o['new_init']:
    growth['new_init_std'] = float(o['new_init']) * float(c.model.init_std)
  # One schedule over the run, as the other arms': warm-up, then a cosine to lr/10; the grown
  # stage starts at `boundary_lr` (the trainer's optim.stage_schedule='continue': the first
  # stage decays from lr to it).  By default the growth falls where it falls on a cosine over
  # all steps.
  boundary_lr = {'steps': lambda: cosine_lr(lr, first / (first + final)),
                 'flops': lambda: cosine_lr(lr, share),
                 'peak': lambda: lr}.get(o['lr_after'], lambda: float(o['lr_after']) * lr)()
  c.stages = [
      dict(name='first', model=model_shape(*shape0), steps=first, lr=lr,
           warmup_steps=warmup(first + final)),
      dict(name='final', model=model_shape(*p['final']), steps=final, lr=boundary_lr,
           warmup_steps=0, end_lr=lr / 10, growth=growth),
  ]
  if o['mup_after'] == 'first':  # the same width_mult as the first stage
    base = c.model.mup_base_width * p['final'][0] / shape0[0]
    if base != int(base):
      raise ValueError(f'option mup_after=first: base width {base} is not an integer')
    c.stages[1]['model']['mup_base_width'] = int(base)
  if o['continuation'] == '1':
    c.stages[1].update(model=model_shape(*shape0), growth=None)
  if 'stage_schedule' not in c.optim:  # a trainer without the option: spell the same schedule out
    c.stages[0]['end_lr'] = boundary_lr
  c.train.eval_every = max(1, (first + final) // p['evals'])
  c.train.log_every = 1  # the loss right before and after the growth shows function preservation
  # A checkpoint at every evaluation: the benchmark's --diagnose probe reads the grown stage's
  # gradients and updates from them (a few MB each at these sizes).
  c.train.update(ckpt_every=c.train.eval_every, keep=p['evals'] + 4)
  return c


def cosine_lr(lr: float, fraction: float) -> float:
  """The LR of a cosine from lr to lr/10 after `fraction` of its steps."""
  return lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * fraction))
