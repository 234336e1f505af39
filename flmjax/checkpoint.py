"""Checkpoints with orbax: one CheckpointManager per stage directory `W/stage_K/`.

Each step directory holds four items: `state` (params, optimizer state, step, RNG, growth-mask
state; a PyTree restored straight onto any mesh via target shardings), `config` (the resolved
experiment config, JSON), `meta` (stage, model config, mask shapes, wall time; JSON) and `data`
(the data iterator's state, JSON).  Saves are async; orbax writes to a temporary directory and
renames it when complete, so a crash never leaves a checkpoint that looks complete.

A workdir that holds checkpoints of a *different* model is refused; with
`train.allow_overwrite=True` the old run is moved to `W/overwritten-<time>/`, never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from flmjax.config import ModelConfig

ITEMS = ('state', 'config', 'meta', 'data')
_STAGE_RE = re.compile(r'^stage_(\d+)$')


class CheckpointError(RuntimeError):
  """A checkpoint or workdir cannot be used; the message names the path."""


def stage_dir(workdir: str, stage: int) -> str:
  return os.path.join(os.path.abspath(workdir), f'stage_{stage}')


def stage_dirs(workdir: str) -> dict[int, str]:
  if not os.path.isdir(workdir):
    return {}
  out = {}
  for name in os.listdir(workdir):
    m = _STAGE_RE.match(name)
    if m and os.path.isdir(os.path.join(workdir, name)):
      out[int(m.group(1))] = os.path.join(os.path.abspath(workdir), name)
  return dict(sorted(out.items()))


def _steps_in(directory: str) -> list[int]:
  """Completed steps in a manager directory (orbax renames tmp dirs only when complete)."""
  if not os.path.isdir(directory):
    return []
  steps = []
  for name in os.listdir(directory):
    if name.isdigit() and os.path.isdir(os.path.join(directory, name, 'meta')):
      steps.append(int(name))
  return sorted(steps)


class StageCheckpointer:
  """Async orbax manager for one stage directory; keeps the last `keep` checkpoints."""

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self.mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def save(self, step: int, state: Mapping[str, Any], *, config: Mapping[str, Any],
           meta: Mapping[str, Any], data_state: Optional[Mapping[str, Any]]) -> None:
    self.mngr.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(dict(state)),
        config=ocp.args.JsonSave(_jsonable(config)),
        meta=ocp.args.JsonSave(_jsonable(meta)),
        data=ocp.args.JsonSave(_jsonable(data_state or {}))))

  def latest_step(self) -> Optional[int]:
    return self.mngr.latest_step()

  def read_json(self, step: int, item: str) -> dict:
    return read_json(os.path.join(self.directory, str(step)), item)

  def restore_state(self, step: int, abstract_state: Any, partial: bool = False) -> Any:
    """Restore `state` onto the shardings of `abstract_state` (ShapeDtypeStructs)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    try:
      out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract_state, restore_args=restore_args, partial_restore=partial)))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointError(
          f'cannot restore {os.path.join(self.directory, str(step), "state")}: {e}') from e
    return out['state']

  def wait(self) -> None:
    self.mngr.wait_until_finished()

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()


def _jsonable(x: Any) -> Any:
  if isinstance(x, ml_collections.ConfigDict):
    x = x.to_dict()
  return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, 'item') else str(o)))


def read_json(step_dir: str, item: str) -> dict:
  """Read a JSON item of a step directory directly (no manager, no devices)."""
  item_dir = os.path.join(step_dir, item)
  path = os.path.join(item_dir, 'metadata')  # where orbax's JsonCheckpointHandler writes
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint item missing: {path}')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f'cannot read {path}: {e}') from e


# ---- locating checkpoints ------------------------------------------------------------------

def latest(workdir: str) -> Optional[tuple[int, int]]:
  """(stage, step) of the newest complete checkpoint in a workdir, or None."""
  for k, d in reversed(list(stage_dirs(workdir).items())):
    steps = _steps_in(d)
    if steps:
      return k, steps[-1]
  return None


def resolve_step_dir(path: str) -> str:
  """A step dir from: a step dir, a stage dir (latest step), or a workdir (latest stage)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'meta')) and os.path.isdir(os.path.join(path, 'state')):
    return path
  steps = _steps_in(path)
  if steps:
    return os.path.join(path, str(steps[-1]))
  found = latest(path)
  if found:
    return os.path.join(stage_dir(path, found[0]), str(found[1]))
  raise CheckpointError(f'no complete checkpoint found under {path}')


# ---- workdir ownership -----------------------------------------------------------------

def check_workdir(workdir: str, stage_models: list[ModelConfig], *, allow_overwrite: bool,
                  is_primary: bool = True) -> Optional[str]:
  """Refuse a workdir whose checkpoints belong to a different model; returns the directory the
  old run was moved to when `allow_overwrite` (else None)."""
  mismatch = None
  for k, d in stage_dirs(workdir).items():
    steps = _steps_in(d)
    if not steps:
      continue
    step_dir = os.path.join(d, str(steps[-1]))
    saved = read_json(step_dir, 'meta').get('model', {})
    if k >= len(stage_models):
      mismatch = f'{step_dir} is stage {k} but this config has {len(stage_models)} stage(s)'
      break
    want = stage_models[k].to_dict()
    diffs = [f'{f}: saved {saved.get(f)!r} != config {want[f]!r}' for f in want
             if saved.get(f) != want[f]]
    if diffs:
      mismatch = f'{step_dir} holds a different model ({"; ".join(diffs)})'
      break
  if mismatch is None:
    return None
  if not allow_overwrite:
    raise CheckpointError(
        f'refusing workdir {workdir}: {mismatch}. Use another --workdir, or pass '
        f'--config.train.allow_overwrite=True to move the old run aside (nothing is deleted).')
  dest = os.path.join(workdir, time.strftime('overwritten-%Y%m%d-%H%M%S'))
  if is_primary:
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(workdir):
      if _STAGE_RE.match(name) or name in ('metrics.jsonl', 'tb', 'summary.json'):
        shutil.move(os.path.join(workdir, name), os.path.join(dest, name))
  return dest


# ---- offline helpers (`flmjax grow`, evaluation, sampling) ---------------------------------

def _model_from_meta(meta: Mapping[str, Any], step_dir: str) -> ModelConfig:
  if 'model' not in meta:
    raise CheckpointError(f'{step_dir}/meta has no "model" entry')
  return ModelConfig.from_dict(meta['model'])


def _abstract_params(model_cfg: ModelConfig, sharding_fn=None) -> Any:
  from flax import linen as nn
  from flmjax.model import abstract_params
  tree = nn.meta.unbox(abstract_params(model_cfg))
  if sharding_fn is None:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    sharding_fn = lambda _: dev
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), tree)


def load_params(path: str, shardings: Any = None
                ) -> tuple[ModelConfig, Any, ml_collections.ConfigDict]:
  """(ModelConfig, params, experiment config) of the checkpoint at `path` (step, stage or
  workdir).  Params land on the first device unless `shardings` (a tree like params) is given."""
  step_dir = resolve_step_dir(path)
  meta = read_json(step_dir, 'meta')
  model_cfg = _model_from_meta(meta, step_dir)
  config = ml_collections.ConfigDict(read_json(step_dir, 'config'))
  abstract = _abstract_params(model_cfg)
  if shardings is not None:
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  mngr = StageCheckpointer(os.path.dirname(step_dir), read_only=True)
  try:
    state = mngr.restore_state(int(os.path.basename(step_dir)), {'params': abstract},
                               partial=True)
  finally:
    mngr.close()
  return model_cfg, state['params'], config


def load_state(path: str, *, mesh=None, rules=None) -> tuple[ml_collections.ConfigDict, dict,
                                                             dict, dict]:
  """(config, state, meta, data_state) of a checkpoint, restored like the trainer restores it
  (optimizer structure rebuilt from the saved config), on `mesh` or one device."""
  from flmjax import train  # the trainer owns the state layout
  step_dir = resolve_step_dir(path)
  meta = read_json(step_dir, 'meta')
  config = ml_collections.ConfigDict(read_json(step_dir, 'config'))
  data_state = read_json(step_dir, 'data')
  mngr = StageCheckpointer(os.path.dirname(step_dir), read_only=True)
  try:
    abstract = train.abstract_state_for(config, meta, mesh=mesh, rules=rules)
    state = mngr.restore_state(int(os.path.basename(step_dir)), abstract)
  finally:
    mngr.close()
  return config, state, meta, data_state


def save_state(path: str, config: Mapping[str, Any], state: Mapping[str, Any], *,
               meta: Mapping[str, Any], data_state: Optional[Mapping[str, Any]] = None) -> str:
  """Write `state` (the trainer's state dict) as a checkpoint at `path` (a stage directory) at
  step `state['step']`; synchronous.  `meta` needs at least 'model' and 'stage'.  Refuses to
  replace an existing step."""
  for key in ('model', 'stage'):
    if key not in meta:
      raise CheckpointError(f'save_state: meta needs {key!r}')
  step = int(np.asarray(jax.device_get(state['step'])))
  if step in _steps_in(path):
    raise CheckpointError(f'save_state: {os.path.join(path, str(step))} already exists')
  mngr = StageCheckpointer(path, keep=1 << 30, async_save=False)
  try:
    mngr.save(step, state, config=config, meta=meta, data_state=data_state)
  finally:
    mngr.close()
  return os.path.join(os.path.abspath(path), str(step))
