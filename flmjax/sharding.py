"""Device mesh (data, fsdp, tensor) and logical-axis → mesh-axis rules.

Parameters carry logical axis names (see `flmjax.model`); activations are constrained with
('act_batch', 'act_length', 'act_embed').  Rules are data in the experiment config
(`mesh.rules`: logical name → tuple of mesh axes, `()` = replicated), so changing the parallelism
of a run is a config change, not a code change.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from flmjax.config import AXIS_FIELDS, ConfigError, ModelConfig, check_section
from flmjax.model import abstract_params

MESH_AXES = ('data', 'fsdp', 'tensor')

# Order matters only when two logical axes of one array map to the same mesh axis (first wins).
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    'act_batch': ('data', 'fsdp'),
    'batch': ('data', 'fsdp'),
    'act_length': (),
    'length': (),
    'act_embed': (),
    'vocab': ('tensor',),
    'embed': ('fsdp',),
    'heads': ('tensor',),
    'mlp': ('tensor',),
    'kv': (),
    'layers': (),
}

LogicalRules = tuple[tuple[str, Any], ...]


def mesh_shape(mesh_cfg: Mapping[str, Any], num_devices: int) -> tuple[int, int, int]:
  """Resolve `mesh.{data,fsdp,tensor}` (one may be -1 = "the rest") against the device count."""
  sizes = {}
  for name in MESH_AXES:
    v = mesh_cfg[name]
    if not isinstance(v, int) or isinstance(v, bool) or (v <= 0 and v != -1):
      raise ConfigError(f'mesh.{name} must be a positive integer or -1, got {v!r}')
    sizes[name] = v
  rest = [n for n in MESH_AXES if sizes[n] == -1]
  if len(rest) > 1:
    raise ConfigError(f'only one mesh axis may be -1, got {", ".join("mesh." + n for n in rest)}')
  known = math.prod(v for v in sizes.values() if v != -1)
  if rest:
    if num_devices % known:
      raise ConfigError(
          f'mesh.{rest[0]}=-1: {num_devices} devices are not divisible by the other axes '
          f'({known})')
    sizes[rest[0]] = num_devices // known
  shape = tuple(sizes[n] for n in MESH_AXES)
  if math.prod(shape) != num_devices:
    raise ConfigError(
        f'mesh (data, fsdp, tensor) = {shape} has {math.prod(shape)} devices but '
        f'{num_devices} are available; set mesh.data/fsdp/tensor so their product is '
        f'{num_devices} (one may be -1)')
  return shape  # type: ignore[return-value]


def make_mesh(mesh_cfg: Mapping[str, Any], devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: parameters and activations are placed by the logical rules' annotations.
  auto = (AxisType.Auto,) * len(MESH_AXES)
  try:  # device order that follows the physical topology (TPU torus)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  except (NotImplementedError, ValueError):
    # A TPU topology this shape cannot map onto without splitting physical axes, or several
    # slices: plain row-major order (process-major on multi-host).
    return Mesh(np.array(devices).reshape(shape), MESH_AXES, axis_types=auto)


def validate_mesh_config(mesh_cfg: Mapping[str, Any]) -> LogicalRules:
  """Checks the `mesh` section (data/fsdp/tensor are integers; `rules` name mesh axes) and
  returns its logical rules.  The sizes are resolved against the devices by `mesh_shape`."""
  check_section({k: v for k, v in mesh_cfg.items() if k != 'rules'},
                {name: 1 for name in MESH_AXES}, 'mesh')
  return logical_rules(mesh_cfg)


def logical_rules(mesh_cfg: Optional[Mapping[str, Any]] = None) -> LogicalRules:
  """Flax axis rules: defaults overridden by `mesh.rules` (values: tuple of mesh axes)."""
  rules = dict(DEFAULT_RULES)
  given = (mesh_cfg or {}).get('rules') or {}
  if hasattr(given, 'to_dict'):
    given = given.to_dict()
  for name, axes in given.items():
    if axes is None:
      axes = ()
    if isinstance(axes, str):
      axes = tuple(a for a in axes.split(',') if a)
    axes = tuple(axes)
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ConfigError(f'mesh.rules.{name}: unknown mesh axis {bad}; mesh axes are {MESH_AXES}')
    rules[name] = axes
  out = []
  for name, axes in rules.items():
    out.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return tuple(out)


def _axis_size(mesh_shape: Mapping[str, int], spec_entry: Any) -> int:
  if spec_entry is None:
    return 1
  names = (spec_entry,) if isinstance(spec_entry, str) else spec_entry
  return math.prod(mesh_shape[n] for n in names)


def logical_specs(abstract_boxed_params: Any) -> Any:
  """Tree of logical PartitionSpecs (names) from boxed params (`model.abstract_params`)."""
  return nn.get_partition_spec(abstract_boxed_params)


@functools.lru_cache(maxsize=32)
def _specs_of(cfg: ModelConfig) -> Any:
  return logical_specs(abstract_params(cfg))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings of `cfg`'s (unboxed) parameters on `mesh`, after `check_divisible`.  The
  trainer and the sharded growth both place parameters with this."""
  check_divisible(cfg, mesh.shape, rules)
  return nn.logical_to_mesh_sharding(_specs_of(cfg), mesh, rules)


def check_divisible(cfg: ModelConfig, mesh_shape: Mapping[str, int], rules: LogicalRules,
                    stage: Optional[str] = None) -> None:
  """Every logical axis the rules shard must divide by the size of its mesh axes.

  The one divisibility check: config validation runs it per stage before anything compiles, and
  `param_shardings` runs it again for the trainer and growth.  The error names the config field
  (`config.AXIS_FIELDS`), the stage and the mesh axis.
  """
  for logical, dim in cfg.axis_sizes().items():
    entry = nn.logical_to_mesh_axes((logical,), rules)[0]
    size = _axis_size(mesh_shape, entry)
    if dim % size:
      field = AXIS_FIELDS[logical]
      where = f' (stage {stage!r})' if stage else ''
      raise ConfigError(
          f'{field}={dim}{where} is not divisible by mesh axis {entry!r} of size {size}; change '
          f'mesh.data/fsdp/tensor, mesh.rules.{logical} or {field}')


def batch_axes(rules: LogicalRules) -> Any:
  return nn.logical_to_mesh_axes(('batch',), rules)[0]


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
  """[B, L] arrays: batch over the 'batch' rule (data × fsdp by default), length replicated."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(('batch', 'length'), rules))


def batch_shards(mesh_shape: Mapping[str, int], rules: LogicalRules) -> int:
  """How many ways the batch dimension is split: global batches must be divisible by it."""
  return _axis_size(mesh_shape, batch_axes(rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def opt_state_shardings(abstract_opt_state: Any, params_shardings: Any, mesh: Mesh) -> Any:
  """Optimizer-state shardings: a leaf whose tree path ends with a parameter's path and has its
  shape (Adam mu/nu, …) takes that parameter's sharding; everything else is replicated.

  Path matching keeps this independent of the optimizer chain, so µP scales or a grown state
  need nothing new here.
  """
  by_path = {}
  for path, sh in jax.tree.flatten_with_path(params_shardings)[0]:
    by_path[tuple(path)] = sh

  def pick(path, leaf):
    path = tuple(path)
    for start in range(len(path)):
      sh = by_path.get(path[start:])
      if sh is not None and len(getattr(leaf, 'shape', ())) == len(sh.spec):
        return sh
    return replicated(mesh)

  return jax.tree.map_with_path(pick, abstract_opt_state)
