"""The sharded token store: its layout, its manifest, and reading it in constant memory.

A store is a directory (any `etils.epath` path, so object storage works through the same layer):
  manifest.json                          written last: a store without it is unfinished
  units/unit-00007.json                  one per finished build unit: resume marker and counts
  <split>/<source>/u00007.tokens.npy     int32, the unit's documents back to back
  <split>/<source>/u00007.offsets.npy    int64 [n + 1]: doc i is tokens[offsets[i]:offsets[i+1]]
  <split>/<source>/u00007.prompt.npy     int32 [n]: leading tokens that carry no (LM) loss
A source's documents are its shards' documents in unit order. `SourceReader` reads a document by
seeking into its shard (no mmap, nothing of the corpus kept): a process holds the offsets of at
most `_OPEN_SHARDS` shards and that many open files, whatever the corpus size.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import uuid
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
from etils import epath

from flmjax.data.corpus import DataError

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
SHARD_FILES = {'tokens': np.int32, 'offsets': np.int64, 'prompt': np.int32}
_OPEN_SHARDS = 32


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
  """Temp file + rename, so a killed build never leaves half a shard under its final name."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.tmp-{uuid.uuid4().hex}-{path.name}'
  tmp.write_bytes(data)
  tmp.rename(path)


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
  """The first identity field that differs, as 'field: store has X, the experiment Y'."""
  a, b = _flat(built), _flat(wanted)
  for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k):
      return f'{k}: the store has {str(a.get(k))[:160]}, the experiment {str(b.get(k))[:160]}'
  return None


def check_identity(root: epath.Path, manifest: Mapping[str, Any],
                   wanted: Mapping[str, Any]) -> None:
  """Refuses a store built from other sources, another vocabulary or other settings."""
  diff = identity_difference(manifest['identity'], wanted)
  if diff is None:
    return
  field = diff.split(':', 1)[0]
  if field.startswith('sources.') and field.endswith('.fingerprint'):
    raise DataError(f'data.{field.split(".")[1]}: a source changed after the store {root} was '
                    f'built ({diff}); rebuild it with `flmjax data build`')
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
  offsets: np.ndarray
  prompt: np.ndarray
  tokens_file: Any
  tokens_at: int


class SourceReader:
  """One (split, source) of a store: the packer's document interface (num_docs, doc_len,
  doc_prompt_len, doc_tokens) over its shards, opening a shard when a document of it is first
  needed and keeping at most `_OPEN_SHARDS` open (least recently used closed first)."""

  def __init__(self, root: epath.Path, shards: list[Mapping[str, Any]]):
    self._root = root
    self._shards = shards
    self._first_doc = np.zeros(len(shards) + 1, np.int64)
    np.cumsum([s['docs'] for s in shards], out=self._first_doc[1:])
    self.num_tokens = int(sum(s['tokens'] for s in shards))
    self._open: collections.OrderedDict[int, _OpenShard] = collections.OrderedDict()

  @property
  def num_docs(self) -> int:
    return int(self._first_doc[-1])

  def _locate(self, d: int) -> tuple[_OpenShard, int]:
    k = int(np.searchsorted(self._first_doc, d, side='right')) - 1
    shard = self._open.get(k)
    if shard is None:
      shard = self._open_shard(k)
      self._open[k] = shard
      while len(self._open) > _OPEN_SHARDS:
        self._open.popitem(last=False)[1].tokens_file.close()
    else:
      self._open.move_to_end(k)
    return shard, d - int(self._first_doc[k])

  def _open_shard(self, k: int) -> _OpenShard:
    rec = self._shards[k]
    name = rec['name']
    small = {}
    for kind in ('offsets', 'prompt'):
      path = self._root / f'{name}.{kind}.npy'
      data = self._read_checked(path, rec, kind)
      if hashlib.sha256(data).hexdigest() != rec['files'][kind]['sha256']:
        raise DataError(f'store {self._root}: shard file {name}.{kind}.npy is corrupt (sha256 '
                        f'differs from the manifest); rebuild the store')
      small[kind] = np.load(io.BytesIO(data), allow_pickle=False)
    path = self._root / f'{name}.tokens.npy'
    self._check_size(path, rec, 'tokens')
    f = path.open('rb')
    at, n = _npy_data_offset(f, path, np.int32)
    if n != rec['tokens'] or len(small['offsets']) != rec['docs'] + 1 or \
        int(small['offsets'][-1]) != n:
      f.close()
      raise DataError(f'store {self._root}: shard {name} does not match the manifest '
                      f'({n} tokens, manifest {rec["tokens"]}); rebuild the store')
    return _OpenShard(small['offsets'], small['prompt'], f, at)

  def _check_size(self, path: epath.Path, rec: Mapping[str, Any], kind: str) -> None:
    if not path.exists():
      raise DataError(f'store {self._root}: shard file {rec["name"]}.{kind}.npy is missing')
    size = path.stat().length
    if size != rec['files'][kind]['bytes']:
      raise DataError(f'store {self._root}: shard file {rec["name"]}.{kind}.npy is corrupt '
                      f'({size} bytes, the manifest says {rec["files"][kind]["bytes"]})')

  def _read_checked(self, path: epath.Path, rec: Mapping[str, Any], kind: str) -> bytes:
    self._check_size(path, rec, kind)
    return path.read_bytes()

  def doc_len(self, d: int) -> int:
    shard, i = self._locate(d)
    return int(shard.offsets[i + 1] - shard.offsets[i])

  def doc_prompt_len(self, d: int) -> int:
    shard, i = self._locate(d)
    return int(shard.prompt[i])

  def doc_tokens(self, d: int, lo: int, hi: int) -> np.ndarray:
    shard, i = self._locate(d)
    start = int(shard.offsets[i]) + lo
    n = max(0, min(hi, int(shard.offsets[i + 1] - shard.offsets[i])) - lo)
    shard.tokens_file.seek(shard.tokens_at + 4 * start)
    data = shard.tokens_file.read(4 * n)
    return np.frombuffer(data, np.int32)

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
      shard.tokens_file.close()
    self._open.clear()


def open_sources(root: epath.Path, manifest: Mapping[str, Any], split: str,
                 sources: Iterator[str] | list[str] | tuple[str, ...]) -> dict[str, SourceReader]:
  """Readers of a split's sources; nothing is read until a document is."""
  per_source = manifest['splits'].get(split, {})
  out = {}
  for s in sources:
    if s not in per_source:
      raise DataError(f'store {root}: has no source {s!r} in split {split!r}')
    out[s] = SourceReader(root, per_source[s]['shards'])
  return out
