"""Loads an flmjax checkpoint for evaluation, sharded over the devices present.

A model too big for one device must be restored straight onto a mesh: the checkpoint's own
experiment mesh (`mesh.data/fsdp/tensor` and `mesh.rules`) over the devices of this machine, so
the parameters are split the way they were in training.  When that mesh does not fit the devices
present (trained on 256 chips, evaluated on 8), the parameters are split over all devices on the
fsdp axis with the same rules; on one device nothing is sharded.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import ml_collections

from flmjax import sharding
from flmjax.storage import checkpoint
from flmjax.config import ConfigError, ModelConfig
from flmjax.data import get_tokenizer
from flmjax.evaluation.engine import FlmEngine
from flmjax.evaluation.tasks import EvalDataError


def _mesh_config(config: Any) -> dict[str, Any]:
  mesh = config.get('mesh') if hasattr(config, 'get') else None
  mesh = mesh.to_dict() if hasattr(mesh, 'to_dict') else dict(mesh or {})
  return {'data': 1, 'fsdp': -1, 'tensor': 1, **mesh}


def eval_shardings(cfg: ModelConfig, config: Any, devices: Optional[list] = None
                   ) -> tuple[Optional[Any], dict[str, Any]]:
  """(param shardings or None, a description of the placement for the report)."""
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) == 1:
    return None, {'devices': 1, 'mesh': None}
  mesh_cfg = _mesh_config(config)
  fallback = {'data': 1, 'fsdp': -1, 'tensor': 1, 'rules': mesh_cfg.get('rules') or {}}
  why = ''
  for attempt, cfg_try in (('experiment', mesh_cfg), ('fsdp over all devices', fallback)):
    try:
      mesh = sharding.make_mesh(cfg_try, devices)
      rules = sharding.logical_rules(cfg_try)
      shardings = sharding.param_shardings(cfg, mesh, rules)
    except ConfigError as e:
      why = f'{why}; {attempt} mesh: {e}' if why else f'{attempt} mesh: {e}'
      continue
    return shardings, {'devices': len(devices), 'mesh': dict(mesh.shape), 'mesh_from': attempt,
                       **({'mesh_note': why} if why else {})}
  return None, {'devices': len(devices), 'mesh': None, 'mesh_note': f'{why}; loaded on one device'}


def load_checkpoint(path: str, *, allow_unverified: bool = False
                    ) -> tuple[ModelConfig, Any, ml_collections.ConfigDict, dict[str, Any]]:
  """(model config, params, experiment config, placement) of the checkpoint at `path`,
  verified against its manifest (`allow_unverified`: see `checkpoint.verify_step`)."""
  step_dir = checkpoint.resolve_step_dir(path)
  meta = checkpoint.read_json(step_dir, 'meta')
  if 'model' not in meta:
    raise checkpoint.CheckpointError(f'{step_dir}/meta has no "model" entry')
  config = ml_collections.ConfigDict(checkpoint.read_json(step_dir, 'config'))
  shardings, placement = eval_shardings(ModelConfig.from_dict(meta['model']), config)
  cfg, params, config = checkpoint.load_params(step_dir, shardings,
                                               allow_unverified=allow_unverified)
  return cfg, params, config, placement


def vocabulary(config: Any, where: str):
  """The text vocabulary of a checkpoint's saved config (its `data` section)."""
  data_cfg = config['data'] if 'data' in config else config
  if data_cfg.get('source') == 'synthetic':
    raise EvalDataError(f'--checkpoint {where}: trained on synthetic token data, which has no text '
                        f'tokenizer; the evaluation suites need a model trained on text')
  return get_tokenizer(data_cfg)


def load_engine(path: str, batch_size: int = 8, max_len: Optional[int] = None, *,
                allow_unverified: bool = False) -> tuple[FlmEngine, dict[str, Any]]:
  """(engine, description for the report) of the checkpoint at `path`: the one way both
  `flmjax eval --checkpoint` and the lm-evaluation-harness model open a checkpoint."""
  try:
    cfg, params, config, placement = load_checkpoint(path, allow_unverified=allow_unverified)
  except checkpoint.CheckpointError as e:
    raise EvalDataError(f'--checkpoint {path}: {e}') from None
  engine = FlmEngine(params, cfg, vocabulary(config, path), batch_size=batch_size,
                     max_len=max_len)
  return engine, {'backend': 'flmjax', 'checkpoint': path, 'params': cfg.param_count(),
                  'config': cfg.to_dict(), 'placement': placement}
