"""Tokenize once, then mix, pack and batch in numpy with an exact, O(1) resumable state.

Each source (en, zh, instruct, teacher) is tokenized once per split into the sharded token store
(`flmjax.data.store`, built by `flmjax.data.store_build` in-process on first use or by `flmjax data
build` with Beam) and read from it document by document. The iterator then
  * mixes by token share: the next document comes from the source furthest below its target share
    (deterministic stride scheduling, so every batch holds each source in proportion - the teacher
    signal is mixed into every batch, not alternated);
  * orders each source by a seeded permutation per epoch, computed one index at a time
    (`permuted_index`, a Feistel network), so over an epoch every document is used exactly once;
  * packs documents into rows with segment ids and per-document positions. A document's first
    input is BOS (`flmjax.config.BOS_ID`, as in evaluation and sampling). Plain text is cut at row
    ends and continues in the next row (its first input is then the real previous token);
    instruction/teacher examples are never cut (the row is padded instead) and are truncated from
    the left only if longer than a row, keeping the response/label;
  * teacher-signal label tokens are marked in `teacher_weights` (their own loss term in the
    trainer, `optim.teacher_loss`), not in `loss_weights`.
The state is a few integers per source plus the document left half-placed, so set_state resumes
exactly. All processes plan the same global rows; each materialises only its own rows.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from flmjax.config import BOS_ID
from flmjax.data import store_build
from flmjax.data.config import validate_data_config
from flmjax.data.corpus import DataError
from flmjax.data.store import SourceReader, Store, open_sources
from flmjax.data.store_build import LM_SOURCES, SOURCES, source_examples, tokenize
from flmjax.synthetic_data import batch_rows

Batch = dict[str, np.ndarray]
__all__ = ['DataIterator', 'Store', 'load_stores', 'make_eval_batches', 'make_train_iterator',
           'mixture_rates', 'open_stores', 'permuted_index', 'source_examples', 'tokenize']


class Documents(Protocol):
  """What the packer reads of a source: `Store` (in memory) or `SourceReader` (a token store)."""
  num_docs: int

  def doc_len(self, d: int) -> int: ...
  def doc_prompt_len(self, d: int) -> int: ...
  def doc_tokens(self, d: int, lo: int, hi: int) -> np.ndarray: ...


# ---- opening the token store ---------------------------------------------------------------

def open_stores(cfg: Any, split: str, sources: Sequence[str] = SOURCES
                ) -> tuple[dict[str, SourceReader], dict[str, Any]]:
  """Readers of a split's sources in the experiment's token store (built on first use unless
  data.store_dir names one) and its build metadata (key, skipped lines)."""
  root, manifest = store_build.cached_store(cfg)
  meta = {'key': manifest['key'], 'skipped_lines': manifest['skipped_lines'],
          'skipped_reasons': manifest['skipped_reasons']}
  return open_sources(root, manifest, split, sources), meta


def load_stores(cfg: Any, split: str,
                sources: Sequence[str] = SOURCES) -> tuple[dict[str, Store], dict[str, Any]]:
  """A split's sources read whole into memory (small corpora, tests): training uses open_stores."""
  readers, meta = open_stores(cfg, split, sources)
  return {s: r.read_all() for s, r in readers.items()}, meta


# ---- the lazy document order ---------------------------------------------------------------

def _mix64(x: int) -> int:
  """splitmix64's finaliser: a 64-bit bijective hash."""
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
  return x ^ (x >> 31)


def permutation_key(seed: int, source: int, epoch: int) -> int:
  digest = hashlib.blake2b(f'{seed}/{source}/{epoch}'.encode(), digest_size=8).digest()
  return int.from_bytes(digest, 'little')


def permuted_index(i: int, n: int, key: int) -> int:
  """The i-th element of a keyed pseudo-random permutation of range(n), computed alone: a
  4-round Feistel network on the next even power of two >= n, cycle-walking back into range
  (fewer than 4 rounds of walking on average). No array of n ids is ever built."""
  if n <= 1:
    return i
  bits = max(2, (n - 1).bit_length())
  bits += bits & 1
  half = bits // 2
  mask = (1 << half) - 1
  x = i
  while True:
    left, right = x >> half, x & mask
    for r in range(4):
      left, right = right, left ^ (_mix64(key + r * 0x9E3779B97F4A7C15 + right) & mask)
    x = (left << half) | right
    if x < n:
      return x


# ---- planning and packing ------------------------------------------------------------------

class _Span(NamedTuple):
  source: int
  doc: int
  start: int
  length: int


class DataIterator:
  """Infinite iterator of packed [B, L] batches (the trainer's batch contract) with exact resume.

  Batches: inputs/targets/segment_ids/positions int32, loss_weights float32, all [B, L] with
  B = global_batch_size // process_count; this process gets rows [index * B, (index + 1) * B),
  or, given `rows` (distinct global row indices: those its devices hold), exactly those rows.
  Every process plans all the global rows (document lengths only), so the stream and its
  resume state are global; it reads the tokens of its own rows alone.
  """

  def __init__(self, stores: Mapping[str, Documents], rates: dict[str, float], *, seq_len: int,
               global_batch_size: int, seed: int, prompt_loss: bool = False,
               process_index: int = 0, process_count: int = 1,
               rows: Sequence[int] | None = None, shuffle: bool = True,
               finite: bool = False, fingerprint: str = '', stats: dict[str, Any] | None = None):
    if seq_len < 2:
      raise DataError(f'seq_len must be >= 2, got {seq_len}')
    if process_count < 1 or not 0 <= process_index < process_count:
      raise DataError(f'process_index {process_index} must be in [0, process_count='
                      f'{process_count})')
    if rows is None and (global_batch_size < 1 or global_batch_size % process_count):
      raise DataError(f'global_batch_size {global_batch_size} must be a positive multiple of '
                      f'process_count {process_count}')
    self._names = [s for s in stores if rates.get(s, 0) > 0]
    if not self._names:
      raise DataError('data: every mixture rate is 0')
    for s in self._names:
      if stores[s].num_docs == 0:
        raise DataError(f'data: source {s!r} has rate {rates[s]} but no documents in this split')
    self._stores = [stores[s] for s in self._names]
    total = sum(rates[s] for s in self._names)
    self._rates = np.array([rates[s] / total for s in self._names])
    self._splittable = [s in LM_SOURCES for s in self._names]
    self._prompt_loss = [prompt_loss and s == 'instruct' or s in LM_SOURCES for s in self._names]
    self._teacher = [s == 'teacher' for s in self._names]
    self.seq_len, self.global_batch_size = seq_len, global_batch_size
    try:
      rows = batch_rows(global_batch_size, process_index, process_count, rows)
    except ValueError as e:
      raise DataError(f'data iterator: {e}') from None
    self.batch_size = len(rows)
    self._slot = np.full(global_batch_size, -1, np.int64)  # global row -> row of this batch
    self._slot[rows] = np.arange(len(rows))
    self._seed, self._shuffle, self._finite = seed, shuffle, finite
    self._fingerprint = fingerprint
    self._static_stats = dict(stats or {})
    self._exhausted = False
    self.set_state(None)

  # -- state --
  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position in the stream (goes into the checkpoint)."""
    return {
        'version': 1, 'fingerprint': self._fingerprint, 'batches': self._batches,
        'sources': {n: [int(e), int(c), int(t)] for n, e, c, t in
                    zip(self._names, self._epoch, self._cursor, self._emitted)},
        'pending': None if self._pending is None else [self._names[self._pending[0]],
                                                        *map(int, self._pending[1:])],
    }

  def set_state(self, state: dict[str, Any] | None) -> None:
    """Restores get_state()'s position; None rewinds to the start."""
    n = len(self._names)
    self._epoch, self._cursor, self._emitted = [0] * n, [0] * n, [0] * n
    self._pending: tuple[int, int, int] | None = None
    self._batches = 0
    if state is None:
      return
    if not isinstance(state, dict) or state.get('version') != 1:
      raise DataError(f'data iterator state: unknown format {str(state)[:200]}')
    if state['fingerprint'] != self._fingerprint:
      raise DataError('data iterator state: the checkpoint was written for other data (corpus, '
                      f'vocabulary or seed changed): {state["fingerprint"]} != {self._fingerprint}')
    for name, (e, c, t) in state['sources'].items():
      if name not in self._names:
        continue   # a source whose rate is now 0 keeps no position
      i = self._names.index(name)
      if not 0 <= c <= self._stores[i].num_docs:
        raise DataError(f'data iterator state: cursor {c} of {name!r} out of range')
      self._epoch[i], self._cursor[i], self._emitted[i] = int(e), int(c), int(t)
    if state['pending'] is not None:
      name, d, off = state['pending']
      if name in self._names:
        self._pending = (self._names.index(name), int(d), int(off))
    self._batches = int(state['batches'])

  def stats(self) -> dict[str, float]:
    """Numbers for the metrics log: skipped bad lines, batches and epochs per source."""
    out = {'skipped_lines': float(self._static_stats.get('skipped_lines', 0)),
           'batches': float(self._batches)}
    for n, e, c, st in zip(self._names, self._epoch, self._cursor, self._stores):
      out[f'epoch_{n}'] = e + c / st.num_docs
    return out

  @property
  def skipped_reasons(self) -> list[str]:
    """'file:line: why' of the first skipped lines."""
    return list(self._static_stats.get('skipped_reasons', []))

  # -- planning --
  def _next_doc(self, s: int) -> int | None:
    st = self._stores[s]
    if self._cursor[s] >= st.num_docs:
      if self._finite:
        return None
      self._epoch[s] += 1
      self._cursor[s] = 0
    c = self._cursor[s]
    self._cursor[s] += 1
    if not self._shuffle:
      return c
    return permuted_index(c, st.num_docs, permutation_key(self._seed, s, self._epoch[s]))

  def _pick_source(self) -> int:
    if len(self._names) == 1:
      return 0
    return int(np.argmin(np.asarray(self._emitted, np.float64) / self._rates))

  def _plan_row(self) -> list[_Span]:
    L, rem, spans = self.seq_len, self.seq_len, []
    while rem > 0:
      if self._pending is not None:
        s, d, off = self._pending
        self._pending = None
      else:
        s = self._pick_source()
        d = self._next_doc(s)
        if d is None:
          self._exhausted = True
          break
        off = 0
      n = self._stores[s].doc_len(d)
      if not self._splittable[s]:
        off = max(off, n - L)            # keep the end: the response or the label
        if n - off > rem:
          self._pending = (s, d, off)    # not cut: pad this row, place it first in the next
          break
      take = min(n - off, rem)
      spans.append(_Span(s, d, off, take))
      self._emitted[s] += take
      rem -= take
      if off + take < n:
        self._pending = (s, d, off + take)
    return spans

  def _fill_row(self, spans: list[_Span], out: Batch, r: int) -> None:
    c = 0
    for k, (s, d, off, take) in enumerate(spans):
      st = self._stores[s]
      seg = st.doc_tokens(d, max(off - 1, 0), off + take)   # with the token before, if any
      out['targets'][r, c:c + take] = seg[-take:]
      out['inputs'][r, c] = seg[0] if off > 0 else BOS_ID
      out['inputs'][r, c + 1:c + take] = seg[-take:-1]
      out['segment_ids'][r, c:c + take] = k + 1
      out['positions'][r, c:c + take] = np.arange(take, dtype=np.int32)
      weights = out['teacher_weights'] if self._teacher[s] else out['loss_weights']
      if self._prompt_loss[s]:
        weights[r, c:c + take] = 1.0
      else:
        first = max(0, st.doc_prompt_len(d) - off)
        weights[r, c + min(first, take):c + take] = 1.0
      c += take

  def empty_batch(self) -> Batch:
    shape = (self.batch_size, self.seq_len)
    b = {k: np.zeros(shape, np.int32) for k in ('inputs', 'targets', 'segment_ids', 'positions')}
    b['loss_weights'] = np.zeros(shape, np.float32)
    if any(self._teacher):
      b['teacher_weights'] = np.zeros(shape, np.float32)
    return b

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self._exhausted:
      raise StopIteration
    out = self.empty_batch()
    produced = 0
    for r in range(self.global_batch_size):
      spans = self._plan_row()
      if spans:
        produced += 1
      if self._slot[r] >= 0:
        self._fill_row(spans, out, int(self._slot[r]))
      if self._exhausted:
        break
    if not produced:
      raise StopIteration
    self._batches += 1
    return out


# ---- public entry points -------------------------------------------------------------------

def _source_note(cfg: Any, source: str, meta: Mapping[str, Any]) -> str:
  """Where an empty split's documents should have come from, and what was skipped there."""
  spec = cfg.get(source)
  files = list(spec.get('files') or []) if spec is not None else []
  note = ''
  if files and (source not in LM_SOURCES or spec.get('kind') == 'files'):
    note = f' from {", ".join(str(f) for f in files)}'
  if meta.get('skipped_lines'):
    note += (f'; {meta["skipped_lines"]} unreadable line(s) skipped, first: '
             f'{(meta.get("skipped_reasons") or ["?"])[0]} — is it a text or JSONL file?')
  elif files:
    note += ' (none of its lines gave a document of this split: too few lines, or not text?)'
  return note


def mixture_rates(cfg: Any) -> dict[str, float]:
  """Token shares: instruct_rate and teacher_rate of all tokens, the rest en:zh by rates."""
  lm = 1.0 - cfg.instruct_rate - cfg.teacher_rate
  en_zh = cfg.rates.en + cfg.rates.zh
  return {'en': lm * cfg.rates.en / en_zh, 'zh': lm * cfg.rates.zh / en_zh,
          'instruct': cfg.instruct_rate, 'teacher': cfg.teacher_rate}


def make_train_iterator(data_cfg: Any, *, seq_len: int, global_batch_size: int,
                        process_index: int = 0, process_count: int = 1,
                        rows: Sequence[int] | None = None):
  """The training batch iterator for an experiment's data section (see DataIterator): fed by the
  token store, read per document (host memory does not grow with the corpus)."""
  if data_cfg.get('source', 'bilingual') == 'synthetic':
    from flmjax import synthetic_data
    return synthetic_data.make_synthetic_iterator(
        data_cfg, seq_len=seq_len, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count, rows=rows)
  cfg = validate_data_config(data_cfg)
  rates = mixture_rates(cfg)
  sources = [s for s in SOURCES if rates[s] > 0]
  stores, meta = open_stores(cfg, 'train', sources)
  for s in sources:
    if stores[s].num_docs == 0:
      raise DataError(f'data.{s}: the train split has no documents{_source_note(cfg, s, meta)}')
  return DataIterator(stores, rates, seq_len=seq_len, global_batch_size=global_batch_size,
                      seed=cfg.seed, prompt_loss=cfg.prompt_loss, process_index=process_index,
                      process_count=process_count, rows=rows, fingerprint=meta['key'],
                      stats=meta)


def make_eval_batches(data_cfg: Any, *, seq_len: int, batch_size: int,
                      split: str = 'validation') -> dict[str, list[Batch]]:
  """Finite, deterministic batches per language ('en', 'zh'): the split's documents in corpus
  order, at most data.eval_batches batches, the last one padded (loss_weights 0)."""
  if data_cfg.get('source', 'bilingual') == 'synthetic':
    from flmjax import synthetic_data
    return synthetic_data.make_synthetic_eval_batches(
        data_cfg, seq_len=seq_len, batch_size=batch_size,
        num_batches=int(data_cfg.get('eval_batches', 2)))
  cfg = validate_data_config(data_cfg)
  if split not in ('train', 'validation'):
    raise DataError(f"split must be 'train' or 'validation', got {split!r}")
  stores, meta = open_stores(cfg, split, LM_SOURCES)
  out = {}
  for lang in LM_SOURCES:
    if stores[lang].num_docs == 0:
      raise DataError(f'data.{lang}: the {split} split has no documents'
                      f'{_source_note(cfg, lang, meta)} (raise data.validation_fraction or use a '
                      f'larger corpus)')
    it = DataIterator({lang: stores[lang]}, {lang: 1.0}, seq_len=seq_len,
                      global_batch_size=batch_size, seed=cfg.seed, shuffle=False, finite=True)
    out[lang] = [b for _, b in zip(range(cfg.eval_batches), it)]
  return out
