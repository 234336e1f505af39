"""Batches: each process's numpy rows, made into one global jax.Array per field.

Which rows a process feeds is asked of the batch sharding, not assumed: a process feeds exactly
the global rows its own devices hold.  When a model axis (tensor) or a batch shard spans hosts,
several processes hold the same rows and feed the same rows; `global_batch // process_count`
would then build a smaller global batch (or fail to split), silently training on the wrong data.
The data iterators plan the global stream (order and resume state are global) and hand a process
only its rows.  The trainer does not care whether the rows come from the synthetic task or from
`flmjax.data`.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from flmjax import data, synthetic_data
from flmjax.config import ConfigError

Array = jax.Array
Batch = dict[str, np.ndarray]
BATCH_KEYS = ('inputs', 'targets', 'loss_weights', 'segment_ids', 'positions')
# Present when the data has FreeLM teacher-signal samples: 1.0 on their label tokens (a loss term
# of its own, `flmjax.training.step`); synthetic and held-out batches have none.
OPTIONAL_KEYS = ('teacher_weights',)


def batch_axes_of(sharding_: NamedSharding) -> tuple[tuple[str, ...], int]:
  """(mesh axes the batch dimension is split over, how many shards that makes)."""
  entry = sharding_.spec[0] if len(sharding_.spec) else None
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return axes, math.prod(sharding_.mesh.shape[a] for a in axes)


def host_key(device: Any) -> tuple[int, int]:
  """A host: (slice, process); libtpu's compile-only devices number processes per slice."""
  return getattr(device, 'slice_index', 0) or 0, device.process_index


def host_rows(sharding_: NamedSharding, global_rows: int, *, grad_accum: int = 1,
              what: str = 'global_batch_size', devices: Optional[Iterable[Any]] = None
              ) -> dict[Hashable, np.ndarray]:
  """The global rows of a [global_rows, ·] batch that each host's devices hold under `sharding_`
  (sorted indices), keyed by `host_key`; only the hosts of `devices` when given.

  Refuses, naming `what` and the mesh axes, a batch (or its `grad_accum` micro-batches: micro-batch
  i is rows i, i + grad_accum, … of every shard) that does not split evenly over the batch shards.
  """
  axes, shards = batch_axes_of(sharding_)
  mesh = ', '.join(f'{a}={n}' for a, n in sharding_.mesh.shape.items())
  if global_rows < 1 or global_rows % (shards * grad_accum):
    acc = f' / optim.grad_accum={grad_accum}' if grad_accum > 1 else ''
    raise ConfigError(f'{what}={global_rows}{acc} does not split evenly over the batch shards '
                      f'{"×".join(axes) or "(none)"} = {shards} (mesh {mesh}): it must be a '
                      f'multiple of {shards * grad_accum}')
  index = sharding_.devices_indices_map((global_rows, 1))
  wanted = None if devices is None else set(devices)
  out: dict[Hashable, set[int]] = {}
  for device, idx in index.items():
    if wanted is None or device in wanted:
      out.setdefault(host_key(device), set()).update(range(*idx[0].indices(global_rows)))
  return {h: np.array(sorted(r), np.int64) for h, r in out.items()}


def process_rows(sharding_: NamedSharding, global_rows: int, *, grad_accum: int = 1,
                 what: str = 'global_batch_size') -> np.ndarray:
  """The global rows this process feeds: those its addressable devices hold (sorted)."""
  rows = host_rows(sharding_, global_rows, grad_accum=grad_accum, what=what,
                   devices=sharding_.addressable_devices)
  if len(rows) != 1:
    raise ValueError(f'batch sharding: this process\'s devices belong to {len(rows)} hosts')
  return next(iter(rows.values()))


def make_train_iterator(data_cfg: Any, *, seq_len: int, global_batch_size: int,
                        rows: Sequence[int]) -> Iterator[Batch]:
  """Synthetic batches, or `flmjax.data`'s iterator: the trainer does not care which.  Each
  batch holds global rows `rows` (sorted) of the global batch, in that order."""
  kw = dict(seq_len=seq_len, global_batch_size=global_batch_size, rows=rows)
  if data_cfg.source == 'synthetic':
    return synthetic_data.make_synthetic_iterator(data_cfg, **kw)
  return data.make_train_iterator(data_cfg, **kw)


def make_eval_batches(data_cfg: Any, *, seq_len: int, batch_size: int,
                      num_batches: int) -> dict[str, list[Batch]]:
  """Held-out batches per language (full global batches), at most `num_batches` each."""
  if num_batches <= 0:
    return {}
  if data_cfg.source == 'synthetic':
    out = synthetic_data.make_synthetic_eval_batches(data_cfg, seq_len=seq_len,
                                                     batch_size=batch_size,
                                                     num_batches=num_batches)
  else:
    out = data.make_eval_batches(data_cfg, seq_len=seq_len, batch_size=batch_size)
  return {name: list(batches)[:num_batches] for name, batches in out.items()}


def check_batch(batch: Mapping[str, np.ndarray], rows: int, seq_len: int) -> None:
  for k in BATCH_KEYS:
    if k not in batch:
      raise ValueError(f'data: batch has no {k!r} (keys: {sorted(batch)})')
  for k in BATCH_KEYS + tuple(k for k in OPTIONAL_KEYS if k in batch):
    if tuple(batch[k].shape) != (rows, seq_len):
      raise ValueError(f'data: batch[{k!r}] has shape {tuple(batch[k].shape)}, expected '
                       f'{(rows, seq_len)} (the rows this process feeds × train.seq_len)')


def to_global(batch: Mapping[str, np.ndarray], sharding_: NamedSharding,
              global_rows: Optional[int] = None) -> dict[str, Array]:
  """This process's rows (`process_rows`, in that order) → one [global_rows, ·] jax.Array per
  field; `global_rows` None: `batch` is the whole global batch.  The global shape is given, never
  inferred from the local rows: JAX lays the sorted local rows onto the devices' slices of it (and
  a process holding every row feeds them all)."""
  out = {}
  for k in BATCH_KEYS + OPTIONAL_KEYS:
    if k in batch:
      x = np.asarray(batch[k])
      shape = (x.shape[0] if global_rows is None else global_rows, *x.shape[1:])
      out[k] = jax.make_array_from_process_local_data(sharding_, x, shape)
  return out

