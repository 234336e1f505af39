"""The train state: everything a step needs and a checkpoint keeps."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
from flax import struct

Array = jax.Array


@struct.dataclass
class TrainState:
  """Everything a step needs and a checkpoint keeps.  `mask_base` is the growth mask pytree
  (1 = old unit, 0 = new) while masks ramp in after a growth at `grow_step`, else None."""
  step: Array
  params: Any
  opt_state: Any
  rng: Array
  grow_step: Array
  ramp_steps: Array
  mask_base: Any = None

  def to_dict(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    if d['mask_base'] is None:
      del d['mask_base']
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'TrainState':
    return cls(**{**d, 'mask_base': d.get('mask_base')})

