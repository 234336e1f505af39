"""Batches: each process's numpy rows, made into one global jax.Array per field.

The trainer does not care whether the rows come from the synthetic task or from `flmjax.data`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from flmjax import data, synthetic_data

Array = jax.Array
Batch = dict[str, np.ndarray]
BATCH_KEYS = ('inputs', 'targets', 'loss_weights', 'segment_ids', 'positions')


def make_train_iterator(data_cfg: Any, *, seq_len: int, global_batch_size: int,
                        process_index: int, process_count: int) -> Iterator[Batch]:
  """Synthetic batches, or `flmjax.data`'s iterator: the trainer does not care which."""
  kw = dict(seq_len=seq_len, global_batch_size=global_batch_size, process_index=process_index,
            process_count=process_count)
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
    if tuple(batch[k].shape) != (rows, seq_len):
      raise ValueError(f'data: batch[{k!r}] has shape {tuple(batch[k].shape)}, expected '
                       f'{(rows, seq_len)} (per-process batch × train.seq_len)')


def to_global(batch: Mapping[str, np.ndarray], sharding_: NamedSharding) -> dict[str, Array]:
  """Per-process numpy rows → one global jax.Array per field (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(sharding_, np.asarray(batch[k]))
          for k in BATCH_KEYS}

