"""Experiment configs: defaults, loading `experiments/X.py`, `--config.a.b=v` overrides and
validation.  The stage plan the config resolves to lives in `flmjax.plan`.

An experiment file defines `get_config()` returning a ConfigDict with sections `model`
(ModelConfig fields), `data` (owned by `flmjax.data`), `optim`, `train`, `mesh` and optionally
`stages`.  Everything is checked before any compile; errors name the field and the value.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from flmjax import sharding, synthetic_data
from flmjax.config import ConfigError, ModelConfig, check_section
from flmjax.data import config as data_config
from flmjax.data.corpus import DataError
from flmjax.data.vocab import vocab_size
from flmjax.optimizer import MUP_WEIGHT_DECAY
from flmjax.plan import Stage, as_dict, stage_plan
from flmjax.storage import paths
from flmjax.training import faults

SECTIONS = ('model', 'data', 'optim', 'train', 'mesh', 'stages', 'faults')


def default_data_config() -> ml_collections.ConfigDict:
  """`flmjax.data`'s defaults plus the `synthetic` subsection (flmjax.synthetic_data's)."""
  cfg = data_config.default_data_config()
  cfg.synthetic = synthetic_data.synthetic_config()
  return cfg


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(ModelConfig().to_dict())
  c.data = default_data_config()
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-4, warmup_steps=0, schedule='cosine', end_lr=0.0, stage_schedule='continue',
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mup_weight_decay='width_invariant', clip=1.0,
      grad_accum=1, z_loss=0.0, teacher_loss=0.1))
  c.train = ml_collections.ConfigDict(dict(
      steps=0, tokens=0, seq_len=128, global_batch_size=8, log_every=10, eval_every=0,
      eval_batches=2, ckpt_every=0, keep=2, seed=0, allow_overwrite=False))
  c.mesh = ml_collections.ConfigDict(dict(
      data=1, fsdp=-1, tensor=1, rules=ml_collections.ConfigDict(dict(sharding.DEFAULT_RULES))))
  c.stages = []
  c.faults = faults.default_faults_config()
  return c


# ---- loading and overrides ---------------------------------------------------------------

def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`path` is a python file with `get_config()` (or `path:arg` → `get_config(arg)`)."""
  arg = None
  if ':' in os.path.basename(path):
    path, arg = path.rsplit(':', 1)
  if paths.is_remote(path) and paths.isfile(path):  # e.g. plan-growth's schedule in a bucket
    path = paths.local_copy(path)
  if not paths.isfile(path):
    raise ConfigError(f'--config: no such file {path!r}')
  spec = importlib.util.spec_from_file_location(
      'flmjax_experiment_' + os.path.splitext(os.path.basename(path))[0], path)
  if spec is None:  # importlib knows no loader for the suffix (README.md, a .json, ...)
    raise ConfigError(f'--config {path}: not a Python file; an experiment is a .py file that '
                      f'defines get_config()')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'--config {path}: the file defines no get_config()')
    cfg = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(cfg, ml_collections.ConfigDict):
      cfg = ml_collections.ConfigDict(cfg)
  except ConfigError:
    raise
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except  (the user's code: any
    raise ConfigError(_user_code_error(path, e)) from e  # error; sys.exit(0) would end with 0)
  apply_overrides(cfg, overrides)
  return cfg


def _user_code_error(path: str, e: BaseException) -> str:
  """'FILE:LINE: Type: message' at the innermost line of the experiment file itself (not ours)."""
  where = path
  if isinstance(e, SyntaxError) and e.filename and os.path.samefile(e.filename, path):
    where = f'{path}:{e.lineno}'
  tb = e.__traceback__
  while tb is not None:
    try:
      if os.path.samefile(tb.tb_frame.f_code.co_filename, path):
        where = f'{path}:{tb.tb_lineno}'
    except OSError:
      pass
    tb = tb.tb_next
  if isinstance(e, SystemExit):
    return (f'error in the experiment file {where}: it called sys.exit({e.code!r}) while being '
            f'loaded; an experiment file must only define get_config()')
  msg = e.msg if isinstance(e, SyntaxError) else str(e)
  return f'error in the experiment file {where}: {type(e).__name__}: {msg}'


def load_tool_config(path: str, overrides: Sequence[str], section: str,
                     defaults: Mapping[str, Any], what: str) -> ml_collections.ConfigDict:
  """A µP tool's file (sweep, loss prediction): an `experiment` section (a training config)
  plus the tool's own `section`, whose fields must be among `defaults`."""
  cfg = load_config(path, overrides)
  for name in ('experiment', section):
    if name not in cfg:
      raise ConfigError(f'{path}: {what} needs sections experiment and {section} '
                        f'(missing {name!r})')
  unknown = sorted(set(cfg[section].keys()) - set(defaults))
  if unknown:
    raise ConfigError(f'{section}: unknown field(s) {unknown}; known: {sorted(defaults)}')
  return cfg


_DECIMAL = re.compile(r'[+-]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d+)?')


def _parse_value(text: str, old: Any, field: str) -> Any:
  """Parse `text` as the type of the existing value `old`."""
  def literal():
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if isinstance(old, bool):
    low = text.lower()
    if low in ('true', '1', 'yes'):
      return True
    if low in ('false', '0', 'no'):
      return False
    raise ConfigError(f'--config.{field}: expected a bool, got {text!r}')
  if isinstance(old, int):
    v = literal()
    if isinstance(v, float) and v.is_integer():
      v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
      raise ConfigError(f'--config.{field}: expected an int, got {text!r}')
    return v
  if isinstance(old, float):
    v = literal()
    if (not isinstance(v, (int, float)) or isinstance(v, bool)
        or not _DECIMAL.fullmatch(text.strip())):  # 0x10 would be 16.0: a typo, not an LR
      raise ConfigError(f'--config.{field}: expected a float, got {text!r}')
    return float(v)
  if isinstance(old, str):
    return text
  if isinstance(old, (tuple, list)):
    v = literal()
    if isinstance(v, str):
      v = tuple(x for x in v.split(',') if x)
    if not isinstance(v, (tuple, list)):
      v = (v,)
    return type(old)(v)
  if old is None:
    v = literal()
    return None if text == 'None' else v
  if isinstance(old, (dict, ml_collections.ConfigDict)):
    v = literal()
    if not isinstance(v, dict):
      raise ConfigError(f'--config.{field}: expected a dict, got {text!r}')
    return v
  raise ConfigError(f'--config.{field}: cannot override a value of type {type(old).__name__}')


def _child(node: Any, key: str, path: str) -> Any:
  if isinstance(node, (list, tuple)):
    try:
      return node[int(key)]
    except (ValueError, IndexError):
      raise ConfigError(f'--config.{path}: no element {key!r} (length {len(node)})') from None
  if isinstance(node, (dict, ml_collections.ConfigDict)) and key in node:
    return node[key]
  known = sorted(node.keys()) if hasattr(node, 'keys') else []
  raise ConfigError(f'--config.{path}: unknown field {key!r}; known fields: {known}')


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Apply `a.b.c=value` strings (list elements by index: `stages.1.lr=1e-4`), type-checked
  against the existing field; an unknown field is an error naming it.  Each stage gets its own
  copy of what experiment files share between stages (one `growth` dict), so an override of one
  stage changes that stage only."""
  if overrides and isinstance(cfg.get('stages'), (list, tuple)):
    with cfg.ignore_type():
      cfg.stages = [copy.deepcopy(s) for s in cfg.stages]
  for item in overrides:
    if '=' not in item:
      raise ConfigError(f'--config override {item!r} must look like --config.field=value')
    key, text = item.split('=', 1)
    key = key[len('--config.'):] if key.startswith('--config.') else key
    if key in ('train.steps', 'train.tokens') and cfg.get('stages'):
      raise ConfigError(f'--config.{key}={text} would have no effect: this experiment has '
                        f'{len(cfg.stages)} stages, each with its own length; use '
                        f'--config.stages.K.{key.split(".")[1]}=... (K = 0..{len(cfg.stages) - 1})')
    parts = key.split('.')
    node = cfg
    for i, p in enumerate(parts[:-1]):
      node = _child(node, p, '.'.join(parts[:i + 1]))
    old = _child(node, parts[-1], key)
    new = _parse_value(text, old, key)
    if isinstance(node, list):
      node[int(parts[-1])] = new
    elif isinstance(node, ml_collections.ConfigDict):
      with node.ignore_type():
        setattr(node, parts[-1], new)
    else:
      node[parts[-1]] = new


# ---- validation ------------------------------------------------------------------------

def validate(cfg: ml_collections.ConfigDict, num_devices: Optional[int] = None) -> list[Stage]:
  """Check the whole experiment config; returns the stage plan.  Device checks need
  `num_devices` (skipped when None, e.g. for a config meant for a pod)."""
  defaults = default_config()
  unknown = sorted(set(cfg.keys()) - set(SECTIONS))
  if unknown:
    raise ConfigError(f'config: unknown section(s) {unknown}; known sections: {list(SECTIONS)}')
  for name in ('model', 'data', 'optim', 'train', 'mesh', 'faults'):
    if name not in cfg:
      raise ConfigError(f'config: missing section {name!r}')
  # Each section's owner checks it; optim and train are checked here, then the stage plan
  # (which validates the model of every stage) and the checks that span sections.
  for name in ('optim', 'train'):
    check_section(cfg[name], defaults[name], name)
  faults.validate_faults_config(cfg.faults)
  rules = sharding.validate_mesh_config(cfg.mesh)
  data_config.validate_data_config(cfg.data)

  o, t = cfg.optim, cfg.train
  for name in ('optim', 'train'):
    for f, v in cfg[name].items():
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f'{name}.{f} must be a finite number, got {v!r}')
  if o.lr <= 0:
    raise ConfigError(f'optim.lr must be > 0, got {o.lr!r}')
  if o.schedule not in ('cosine', 'constant'):
    raise ConfigError(f"optim.schedule must be 'cosine' or 'constant', got {o.schedule!r}")
  for f in ('b1', 'b2'):
    if not 0 <= o[f] < 1:
      raise ConfigError(f'optim.{f} must be in [0, 1), got {o[f]!r}')
  for f in ('warmup_steps', 'end_lr', 'weight_decay', 'clip', 'z_loss', 'teacher_loss'):
    if o.get(f, 0) < 0:
      raise ConfigError(f'optim.{f} must be >= 0, got {o[f]!r}')
  if o.get('mup_weight_decay', MUP_WEIGHT_DECAY[0]) not in MUP_WEIGHT_DECAY:
    raise ConfigError(f'optim.mup_weight_decay must be one of {MUP_WEIGHT_DECAY}, got '
                      f'{o.mup_weight_decay!r}')
  if o.eps <= 0:
    raise ConfigError(f'optim.eps must be > 0, got {o.eps!r}')
  if o.grad_accum < 1:
    raise ConfigError(f'optim.grad_accum must be >= 1, got {o.grad_accum!r}')
  for f in ('seq_len', 'global_batch_size', 'log_every', 'keep'):
    if t[f] <= 0:
      raise ConfigError(f'train.{f} must be > 0, got {t[f]!r}')
  for f in ('eval_every', 'eval_batches', 'ckpt_every'):
    if t[f] < 0:
      raise ConfigError(f'train.{f} must be >= 0, got {t[f]!r}')

  stages = stage_plan(cfg)
  vocab_file_size = _vocab_file_size(cfg.data)
  for s in stages:
    where = 'model' if s.name == 'main' and not cfg.get('stages') else f'stages[{s.index}]'
    if not (math.isfinite(s.lr) and s.lr > 0):
      raise ConfigError(f'{"optim" if where == "model" else where}.lr must be a finite number '
                        f'> 0, got {s.lr!r}')
    if s.seq_len > s.model.max_len:
      raise ConfigError(f'train.seq_len={s.seq_len} exceeds {where}.max_len={s.model.max_len}')
    if cfg.data.source == 'synthetic':
      vs, field = cfg.data.synthetic.vocab_size, 'data.synthetic.vocab_size'
    elif cfg.data.vocab.get('kind') == 'tiktoken':
      vs, field = vocab_file_size, "the size of the data.vocab.kind='tiktoken' vocabulary"
    elif not cfg.data.vocab.get('model_file'):
      vs, field = cfg.data.vocab.size, 'data.vocab.size'
    else:
      vs, field = vocab_file_size, f'the size of data.vocab.model_file {cfg.data.vocab.model_file}'
    if vs > s.model.vocab_size:
      raise ConfigError(f'{field}={vs} exceeds {where}.vocab_size={s.model.vocab_size}: ids past '
                        f'it would index padding rows; raise {where}.vocab_size to at least {vs}')
    _check_batch(s, o.grad_accum, where)
    _check_schedule(cfg, s, where)

  if num_devices is not None:
    shape = sharding.mesh_shape(cfg.mesh, num_devices)
    mesh_sizes = dict(zip(sharding.MESH_AXES, shape))
    batch_axes = sharding.batch_axes(rules)
    names = () if batch_axes is None else (
        (batch_axes,) if isinstance(batch_axes, str) else batch_axes)
    shards = sharding.batch_shards(mesh_sizes, rules)
    for s in stages:
      micro = s.global_batch_size // o.grad_accum
      field = batch_field(cfg, s.index)
      if micro % shards:
        raise ConfigError(
            f'{field}={s.global_batch_size} / optim.grad_accum={o.grad_accum} = {micro} is not '
            f'divisible by the batch shards {"×".join(names) or "1"} = {shards} '
            f'(mesh {shape})')
    for s in stages:
      sharding.check_divisible(s.model, mesh_sizes, rules,
                               stage=s.name if len(stages) > 1 else None)
  return stages


def batch_field(cfg: ml_collections.ConfigDict, k: int) -> str:
  """The config field that sets stage k's global batch (for error messages)."""
  own = cfg.get('stages') and as_dict(cfg.stages[k]).get('global_batch_size')
  return f'stages[{k}].global_batch_size' if own else 'train.global_batch_size'


def _vocab_file_size(data: Any) -> int:
  """Pieces in `data.vocab.model_file`, or ids of the tiktoken vocabulary (0 when none is given
  or it cannot be read: the data layer then reports the file itself)."""
  if data.get('source') != 'synthetic' and data.get('vocab', {}).get('kind') == 'tiktoken':
    try:
      return vocab_size(data)
    except DataError:
      return 0
  path = data.get('vocab', {}).get('model_file') if data.get('source') != 'synthetic' else None
  try:
    if not path or not paths.isfile(path):
      return 0
    local = paths.local_copy(path)  # SentencePiece opens only local files
  except OSError:
    return 0
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor()
  try:
    sp.Load(local)
  except (OSError, RuntimeError):
    return 0
  return int(sp.GetPieceSize())


def _check_schedule(cfg: ml_collections.ConfigDict, s: Stage, where: str) -> None:
  """A warm-up longer than its stage never reaches the peak LR nor decays, and an end_lr above
  the LR makes the cosine climb: both train on silently with the wrong LR, so both are errors."""
  own = as_dict(cfg.stages[s.index]) if cfg.get('stages') else {}
  field = lambda f: f'{where}.{f}' if own.get(f) is not None else f'optim.{f}'
  if s.warmup_steps > s.steps:
    raise ConfigError(f'{field("warmup_steps")}={s.warmup_steps} is longer than the stage '
                      f'{s.name!r} ({s.steps} steps): the LR would never reach its peak nor '
                      f'decay to end_lr; use at most {s.steps} warm-up steps')
  last = s.index == len(cfg.get('stages') or [None]) - 1
  user_end_lr = last or cfg.optim.get('stage_schedule', 'continue') != 'continue'
  if cfg.optim.schedule == 'cosine' and user_end_lr and s.end_lr > s.lr:
    lr_field = f'{where}.lr' if own.get('lr') is not None else 'optim.lr'
    raise ConfigError(f'{field("end_lr")}={s.end_lr} is above {lr_field}={s.lr}: the cosine '
                      f'schedule would climb to it instead of decaying; set end_lr <= lr')


def _check_batch(s: Stage, grad_accum: int, where: str) -> None:
  """(No process-count rule: a process feeds the rows its devices hold, however many that is.)"""
  b = s.global_batch_size
  if b % grad_accum:
    raise ConfigError(f'global_batch_size={b} ({where}) is not divisible by '
                      f'optim.grad_accum={grad_accum}')
