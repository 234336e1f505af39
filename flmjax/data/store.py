"""The sharded token store: its layout, its manifest, and reading it in constant memory.

A store is a directory (any `etils.epath` path, so object storage works through the same layer):
  manifest.json                          written last: a store without it is unfinished
  units/unit-00007.json                  one per finished build unit: resume marker and counts
  <split>/<source>/u00007.tokens.npy     int32, the unit's documents back to back
  <split>/<source>/u00007.offsets.npy    int64 [n + 1]: doc i is tokens[offsets[i]:offsets[i+1]]
  <split>/<source>/u00007.prompt.npy     int32 [n]: leading tokens that carry no (LM) loss
A source's documents are its shards' documents in unit order. `SourceReader` reads a document by
seeking into its shard's files (no mmap, nothing of the corpus kept): a process holds at most
`_OPEN_SHARDS` shards' files open and a few thousand documents' offsets, whatever the corpus size.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from etils import epath

from flmjax.data.corpus import DataError
from flmjax.storage import paths  # also picks gcsfs, not tf.io.gfile, for gs:// paths

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
SHARD_FILES = {'tokens': np.int32, 'offsets': np.int64, 'prompt': np.int32}
_OPEN_SHARDS = 64
_MEMO = 4096


class Store(NamedTuple):
  """One tokenized source in memory: doc i is tokens[offsets[i]:offsets[i+1]]."""
  tokens: np.ndarray       # int32 [T]
  offsets: np.ndarray      # int64 [N+1]
  prompt_len: np.ndarray   # int32 [N]: leading tokens that carry loss only if prompt_loss

  @property
  def num_docs(self) -> int:
    return len(self.offsets) - 1

  @property
  def num_tokens(self) -> int:
    return int(self.offsets[-1])

  def doc_len(self, d: int) -> int:
    return int(self.offsets[d + 1] - self.offsets[d])

  def doc_prompt_len(self, d: int) -> int:
    return int(self.prompt_len[d])

  def doc_tokens(self, d: int, lo: int, hi: int) -> np.ndarray:
    o = int(self.offsets[d])
    return self.tokens[o + lo:o + hi]


# ---- writing ---------------------------------------------------------------------------------

def npy_bytes(a: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a, allow_pickle=False)
  return buf.getvalue()


def atomic_write(path: epath.Path, data: bytes) -> None:
  """Whole or not at all, so a killed build never leaves half a shard under its final name
  (`storage.paths.write_atomic`: temp file + rename locally, one PUT on an object store)."""
  paths.makedirs(os.fspath(path.parent))
  paths.write_atomic(os.fspath(path), data)


def shard_name(split: str, source: str, unit: int) -> str:
  return f'{split}/{source}/u{unit:05d}'


def write_shard(root: epath.Path, name: str, store: Store) -> dict[str, Any]:
  """Writes one shard's three arrays; returns its manifest record (counts, bytes, sha256)."""
  record: dict[str, Any] = {'name': name, 'docs': store.num_docs, 'tokens': store.num_tokens,
                            'files': {}}
  arrays = {'tokens': store.tokens, 'offsets': store.offsets, 'prompt': store.prompt_len}
  for kind, dtype in SHARD_FILES.items():
    data = npy_bytes(np.ascontiguousarray(arrays[kind], dtype))
    atomic_write(root / f'{name}.{kind}.npy', data)
    record['files'][kind] = {'bytes': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
  return record


# ---- the manifest ----------------------------------------------------------------------------

def read_manifest(root: epath.Path) -> dict[str, Any] | None:
  path = root / MANIFEST
  if not path.exists():
    return None
  try:
    manifest = json.loads(path.read_text())
  except ValueError as e:
    raise DataError(f'{path}: not a store manifest (invalid JSON: {e})') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT_VERSION:
    raise DataError(f'{path}: store format {manifest.get("format") if isinstance(manifest, dict) else "?"}'
                    f' is not {FORMAT_VERSION}; rebuild the store with `flmjax data build`')
  return manifest


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(d, Mapping):
    out = {}
    for k, v in d.items():
      out.update(_flat(v, f'{prefix}{k}.'))
    return out or {prefix[:-1]: {}}
  return {prefix[:-1]: d}


def identity_difference(built: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
  """The first identity field that differs, as 'field: store has X, the experiment Y' (a
  source's settings before its fingerprint: other files is not 'the same files changed')."""
  a, b = _flat(built), _flat(wanted)
  for k in sorted(set(a) | set(b), key=lambda k: (k.endswith('.fingerprint'), k)):
    if a.get(k) != b.get(k):
      return f'{k}: the store has {str(a.get(k))[:160]}, the experiment {str(b.get(k))[:160]}'
  return None


def check_identity(root: epath.Path, manifest: Mapping[str, Any],
                   wanted: Mapping[str, Any]) -> None:
  """Refuses a store built from other sources, another vocabulary or other settings; a source
  with the same settings whose files changed is named first (a vocabulary trained on the
  changed files differs too, as a consequence)."""
  built = manifest['identity']
  for name, source in wanted.get('sources', {}).items():
    old = built.get('sources', {}).get(name, {})
    if old.get('spec') == source['spec'] and old.get('fingerprint') != source['fingerprint']:
      diff = identity_difference(old, source)
      raise DataError(f'data.{name}: a source changed after the store {root} was built '
                      f'(sources.{name}.{diff}); rebuild it with `flmjax data build`')
  diff = identity_difference(built, wanted)
  if diff is not None:
    raise DataError(f'store {root} was built for other data, field {diff}; build one for this '
                    f'experiment with `flmjax data build --config X --out DIR`')


def verify_checksums(root: epath.Path, manifest: Mapping[str, Any]) -> None:
  """Reads every shard file and checks its size and sha256 (a reused store's full check)."""
  for per_source in manifest['splits'].values():
    for entry in per_source.values():
      for shard in entry['shards']:
        for kind, want in shard['files'].items():
          path = root / f'{shard["name"]}.{kind}.npy'
          if not path.exists():
            raise DataError(f'store {root}: shard file {shard["name"]}.{kind}.npy is missing')
          if hashlib.sha256(path.read_bytes()).hexdigest() != want['sha256']:
            raise DataError(f'store {root}: shard file {shard["name"]}.{kind}.npy is corrupt '
                            f'(sha256 differs from the manifest); rebuild the store')


# ---- reading ---------------------------------------------------------------------------------

def _npy_data_offset(f: Any, path: epath.Path, dtype: Any) -> tuple[int, int]:
  """(byte offset of the data, number of elements) of an open .npy file, checked."""
  try:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                   np.lib.format.read_array_header_2_0)
    shape, fortran, got = read_header(f)
  except (ValueError, OSError) as e:
    raise DataError(f'store shard {path}: not a .npy array ({e})') from None
  if got != np.dtype(dtype) or fortran or len(shape) != 1:
    raise DataError(f'store shard {path}: holds {got}{list(shape)}, expected a 1-d {np.dtype(dtype)}')
  return f.tell(), shape[0]


class _OpenShard(NamedTuple):
  index: int
  files: dict[str, tuple[Any, int]]   # kind -> (open file, byte offset of its data), when needed
  tokens: int


class SourceReader:
  """One (split, source) of a store: the packer's document interface (num_docs, doc_len,
  doc_prompt_len, doc_tokens) over its shards. A document costs three small reads (its two
  offsets, its prompt length, its tokens) in files opened when first needed; at most
  `_OPEN_SHARDS` shards stay open (least recently used closed first) and the last `_MEMO`
  documents' offsets are remembered, so memory does not grow with the corpus."""

  def __init__(self, root: epath.Path, shards: list[Mapping[str, Any]]):
    self._root = root
    self._shards = shards
    self._first_doc = np.zeros(len(shards) + 1, np.int64)
    np.cumsum([s['docs'] for s in shards], out=self._first_doc[1:])
    self.num_tokens = int(sum(s['tokens'] for s in shards))
    self._open: collections.OrderedDict[int, _OpenShard] = collections.OrderedDict()
    self._memo: collections.OrderedDict[int, tuple[int, int, int]] = collections.OrderedDict()

  @property
  def num_docs(self) -> int:
    return int(self._first_doc[-1])

  def _shard(self, k: int) -> _OpenShard:
    shard = self._open.get(k)
    if shard is None:
      shard = self._open_shard(k)
      self._open[k] = shard
      while len(self._open) > _OPEN_SHARDS:
        for f, _ in self._open.popitem(last=False)[1].files.values():
          f.close()
    else:
      self._open.move_to_end(k)
    return shard

  def _open_shard(self, k: int) -> _OpenShard:
    """A shard's files checked against the manifest (presence, size); each is opened, and its
    array header checked, when first read, so a process opens the token files of its own rows
    only. The full sha256 check is `verify_checksums`, run when a build reuses a store."""
    rec = self._shards[k]
    for kind in SHARD_FILES:
      path = self._root / f'{rec["name"]}.{kind}.npy'
      if not path.exists():
        raise DataError(f'store {self._root}: shard file {rec["name"]}.{kind}.npy is missing')
      size = path.stat().length
      if size != rec['files'][kind]['bytes']:
        raise DataError(f'store {self._root}: shard file {rec["name"]}.{kind}.npy is corrupt '
                        f'({size} bytes, the manifest says {rec["files"][kind]["bytes"]})')
    return _OpenShard(k, {}, rec['tokens'])

  def _file(self, shard: _OpenShard, kind: str) -> tuple[Any, int]:
    opened = shard.files.get(kind)
    if opened is None:
      rec = self._shards[shard.index]
      want = {'tokens': rec['tokens'], 'offsets': rec['docs'] + 1, 'prompt': rec['docs']}[kind]
      path = self._root / f'{rec["name"]}.{kind}.npy'
      f = path.open('rb')
      at, n = _npy_data_offset(f, path, SHARD_FILES[kind])
      if n != want:
        f.close()
        raise DataError(f'store {self._root}: shard file {rec["name"]}.{kind}.npy is corrupt '
                        f'({n} entries, the manifest says {want})')
      shard.files[kind] = opened = (f, at)
    return opened

  def _read(self, shard: _OpenShard, kind: str, first: int, count: int) -> np.ndarray:
    f, at = self._file(shard, kind)
    dtype = np.dtype(SHARD_FILES[kind])
    f.seek(at + dtype.itemsize * first)
    return np.frombuffer(f.read(dtype.itemsize * count), dtype)

  def _doc(self, d: int) -> tuple[_OpenShard, int, int]:
    """(shard, start, end) of document d in its shard's tokens."""
    hit = self._memo.get(d)
    if hit is not None:
      return self._shard(hit[0]), hit[1], hit[2]   # reopened if closed since
    if not 0 <= d < self.num_docs:
      raise IndexError(f'document {d} of {self.num_docs}')
    k = int(np.searchsorted(self._first_doc, d, side='right')) - 1
    shard = self._shard(k)
    i = d - int(self._first_doc[k])
    start, end = (int(x) for x in self._read(shard, 'offsets', i, 2))
    if not 0 <= start <= end <= shard.tokens:
      raise DataError(f'store {self._root}: shard {self._shards[k]["name"]} is corrupt (document '
                      f'{i} spans tokens {start}:{end} of {shard.tokens}); rebuild the store')
    self._memo[d] = (k, start, end)
    if len(self._memo) > _MEMO:
      self._memo.popitem(last=False)
    return shard, start, end

  def doc_len(self, d: int) -> int:
    _, start, end = self._doc(d)
    return end - start

  def doc_prompt_len(self, d: int) -> int:
    k = int(np.searchsorted(self._first_doc, d, side='right')) - 1
    return int(self._read(self._shard(k), 'prompt', d - int(self._first_doc[k]), 1)[0])

  def doc_tokens(self, d: int, lo: int, hi: int) -> np.ndarray:
    shard, start, end = self._doc(d)
    hi = min(hi, end - start)
    return self._read(shard, 'tokens', start + lo, max(0, hi - lo))

  def read_all(self) -> Store:
    """The whole source in memory (small stores, tests): not for training at scale."""
    tokens = [self.doc_tokens(d, 0, self.doc_len(d)) for d in range(self.num_docs)]
    lens = np.array([len(t) for t in tokens], np.int64)
    offsets = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    prompt = np.array([self.doc_prompt_len(d) for d in range(self.num_docs)], np.int32)
    return Store(np.concatenate(tokens) if tokens else np.zeros(0, np.int32), offsets, prompt)

  def close(self) -> None:
    for shard in self._open.values():
      for f, _ in shard.files.values():
        f.close()
    self._open.clear()
    self._memo.clear()


def open_sources(root: epath.Path, manifest: Mapping[str, Any], split: str,
                 sources: Sequence[str]) -> dict[str, SourceReader]:
  """Readers of a split's sources; nothing is read until a document is."""
  per_source = manifest['splits'].get(split, {})
  out = {}
  for s in sources:
    if s not in per_source:
      raise DataError(f'store {root}: has no source {s!r} in split {split!r}')
    out[s] = SourceReader(root, per_source[s]['shards'])
  return out
