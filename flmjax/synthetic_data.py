"""A deterministic, learnable synthetic language for tests and smoke runs (no seqio, no files).

Documents are walks on a fixed random Markov chain over `vocab_size` tokens where every token has
`branching` possible successors, so a model can push the loss from log(vocab) towards
log(branching).  Documents of random length are packed into rows (segment ids, positions restart
per document, a too-short tail is padding with weight 0).

Row r of the stream depends only on (seed, r): the global batch at a stream position is the same
for any number of processes, which the multi-host and resume tests rely on.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import ml_collections
import numpy as np

EVAL_OFFSET = 1 << 40  # eval rows come from a disjoint part of the stream


def synthetic_config() -> ml_collections.ConfigDict:
  """The `data.synthetic` section."""
  return ml_collections.ConfigDict(dict(vocab_size=64, branching=2, min_doc_len=8,
                                        max_doc_len=48, eval_name='synthetic'))


def _syn(data_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
  syn = data_cfg.get('synthetic') if hasattr(data_cfg, 'get') else None
  return syn if syn is not None else synthetic_config()


def successor_table(seed: int, vocab_size: int, branching: int) -> np.ndarray:
  rng = np.random.default_rng([seed, 7919])
  return rng.integers(0, vocab_size, size=(vocab_size, branching), dtype=np.int64)


def make_row(seed: int, row: int, seq_len: int, table: np.ndarray, min_doc: int,
             max_doc: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([seed, row])
  vocab, branching = table.shape
  inputs = np.zeros(seq_len, np.int32)
  targets = np.zeros(seq_len, np.int32)
  weights = np.zeros(seq_len, np.float32)
  segments = np.zeros(seq_len, np.int32)
  positions = np.zeros(seq_len, np.int32)
  a, doc = 0, 0
  while seq_len - a >= min_doc:
    n = int(rng.integers(min_doc, max_doc + 1))
    n = min(n, seq_len - a)
    choices = rng.integers(0, branching, size=n)
    tok = int(rng.integers(0, vocab))
    walk = np.empty(n + 1, np.int64)
    walk[0] = tok
    for i in range(n):
      tok = int(table[tok, choices[i]])
      walk[i + 1] = tok
    doc += 1
    inputs[a:a + n] = walk[:n]
    targets[a:a + n] = walk[1:]
    weights[a:a + n] = 1.0
    segments[a:a + n] = doc
    positions[a:a + n] = np.arange(n)
    a += n
  return {'inputs': inputs, 'targets': targets, 'loss_weights': weights, 'segment_ids': segments,
          'positions': positions}


def make_rows(data_cfg: Mapping[str, Any], rows: Sequence[int],
              seq_len: int) -> dict[str, np.ndarray]:
  """Stream rows `rows` (global indices), stacked in that order."""
  syn = _syn(data_cfg)
  seed = int(data_cfg['seed'])
  table = successor_table(seed, int(syn['vocab_size']), int(syn['branching']))
  made = [make_row(seed, int(r), seq_len, table, int(syn['min_doc_len']),
                   int(syn['max_doc_len'])) for r in rows]
  return {k: np.stack([r[k] for r in made]) for k in made[0]}


def make_batch(data_cfg: Mapping[str, Any], first_row: int, batch_size: int,
               seq_len: int) -> dict[str, np.ndarray]:
  return make_rows(data_cfg, range(first_row, first_row + batch_size), seq_len)


def batch_rows(global_batch_size: int, process_index: int, process_count: int,
               rows: Optional[Sequence[int]]) -> np.ndarray:
  """The global rows of each batch an iterator yields: `rows` (sorted, distinct, in range), or
  else process `process_index`'s contiguous 1/process_count of the batch."""
  if rows is None:
    if global_batch_size % process_count:
      raise ValueError(f'train.global_batch_size={global_batch_size} is not divisible by the '
                       f'process count {process_count}')
    local = global_batch_size // process_count
    return np.arange(process_index * local, (process_index + 1) * local)
  out = np.asarray(rows, np.int64).reshape(-1)
  if not len(out) or (np.diff(out) <= 0).any() or out[0] < 0 or out[-1] >= global_batch_size:
    raise ValueError(f'rows must be sorted, distinct global rows in [0, {global_batch_size}), '
                     f'got {out.tolist()[:8]}')
  return out


class SyntheticIterator:
  """Yields this process's rows of each global batch (`rows`, or its contiguous share); state =
  global stream position (rows)."""

  def __init__(self, data_cfg: Mapping[str, Any], *, seq_len: int, global_batch_size: int,
               process_index: int = 0, process_count: int = 1,
               rows: Optional[Sequence[int]] = None):
    self.rows = batch_rows(global_batch_size, process_index, process_count, rows)
    syn = _syn(data_cfg)
    if syn['min_doc_len'] < 1 or syn['max_doc_len'] < syn['min_doc_len']:
      raise ValueError(f"data.synthetic: need 1 <= min_doc_len <= max_doc_len, got "
                       f"{syn['min_doc_len']}, {syn['max_doc_len']}")
    self.data_cfg = data_cfg
    self.seq_len = seq_len
    self.global_batch_size = global_batch_size
    self.row = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = make_rows(self.data_cfg, self.row + self.rows, self.seq_len)
    self.row += self.global_batch_size
    return batch

  def get_state(self) -> dict[str, Any]:
    return {'row': self.row}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if 'row' not in state:
      raise ValueError(f'synthetic iterator state needs a "row" entry, got {dict(state)!r}')
    self.row = int(state['row'])


def make_synthetic_iterator(data_cfg: Mapping[str, Any], *, seq_len: int, global_batch_size: int,
                            process_index: int = 0, process_count: int = 1,
                            rows: Optional[Sequence[int]] = None) -> SyntheticIterator:
  return SyntheticIterator(data_cfg, seq_len=seq_len, global_batch_size=global_batch_size,
                           process_index=process_index, process_count=process_count, rows=rows)


def make_synthetic_eval_batches(data_cfg: Mapping[str, Any], *, seq_len: int, batch_size: int,
                                num_batches: int = 2) -> dict[str, list[dict[str, np.ndarray]]]:
  """Held-out batches (full global batches; the trainer slices per process)."""
  name = _syn(data_cfg).get('eval_name', 'synthetic')
  return {name: [make_batch(data_cfg, EVAL_OFFSET + i * batch_size, batch_size, seq_len)
                 for i in range(num_batches)]}
