"""Building the sharded token store (`flmjax.data.store`): read sources, tokenize, write shards.

The work is cut into units: a `files` source into byte ranges of at most `unit_bytes` of text
(lines that begin in the range), every other source (embedded text, TFDS, a `max_documents` cap)
into one unit, and the instruction and teacher-signal tasks into one more. A unit reads its
documents, splits them into train / validation by hash, tokenizes them with the experiment's
vocabulary and writes one shard per split and source, then a marker `units/unit-NNNNN.json`; the manifest is assembled from the markers
once every unit is done. The same `build_unit` runs in-process (`build_store` without a runner:
the embedded default on first use) and inside Beam's workers (`flmjax.data.beam_build`), so a
killed build of either kind resumes from its markers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections
import numpy as np
from etils import epath

from flmjax.data import corpus, instruct, store, vocab
from flmjax.data.config import validate_data_config
from flmjax.data.corpus import DataError, ReadStats
from flmjax.storage import paths

SOURCES = ('en', 'zh', 'instruct', 'teacher')
LM_SOURCES = ('en', 'zh')
SPLITS = ('train', 'validation')
TASKS = 'tasks'   # the unit of the instruction and teacher-signal sources (one read of en/zh)
UNIT_BYTES = 64 << 20   # text per build unit: bounds a shard (~4 bytes of int32 per ~4 chars)
log = logging.getLogger(__name__)


class Unit(NamedTuple):
  """One build unit: a source (en, zh, or `TASKS`: instruct and teacher), and for a `files`
  source a file and a byte range (end -1: to its end; path '': the whole source)."""
  index: int
  source: str
  path: str = ''
  start: int = 0
  end: int = -1


# ---- examples and tokenizing -----------------------------------------------------------------

def source_examples(cfg: Any, split: str, sources: Sequence[str], stats: ReadStats,
                    docs_stats: ReadStats | None = None) -> dict[str, list[instruct.Example]]:
  """The (inputs, targets) examples of each requested source for one split (`docs_stats`, if
  given, counts the bad lines of the en/zh corpora read for the generated tasks instead)."""
  lang_stats = stats if docs_stats is None else docs_stats
  docs = {lang: corpus.language_documents(cfg, lang, split, lang_stats) for lang in LM_SOURCES
          if lang in sources or (cfg.instruct.generated and 'instruct' in sources)
          or (cfg.teacher.generated and 'teacher' in sources)}
  out = {}
  for lang in LM_SOURCES:
    if lang in sources:
      out[lang] = [instruct.Example('', d.text, True) for d in docs[lang]]
  if 'instruct' in sources:
    ex = instruct.generated_instructions(docs, cfg.seed) if cfg.instruct.generated else []
    if cfg.instruct.files:
      ex.extend(instruct.file_instructions(cfg, stats))
    out['instruct'] = ex
  if 'teacher' in sources:
    ex = instruct.generated_teacher(docs, cfg.seed) if cfg.teacher.generated else []
    if cfg.teacher.files:
      ex.extend(instruct.file_teacher(cfg, stats))
    out['teacher'] = ex
  return out


def tokenize(sp: Any, examples: Sequence[instruct.Example], threads: int = 1,
             eos_id: int = vocab.EOS_ID) -> store.Store:
  """`sp`: a SentencePieceProcessor, or any `encode(texts, threads) -> ids per text`."""
  encode = sp if callable(sp) else (
      lambda texts, n: sp.encode(list(texts), num_threads=n))
  ins = encode([e.inputs for e in examples], threads) if examples else []
  tgs = encode([e.targets for e in examples], threads) if examples else []
  lens = np.fromiter((len(a) + len(b) + e.add_eos for a, b, e in zip(ins, tgs, examples)),
                     dtype=np.int64, count=len(examples))
  offsets = np.zeros(len(examples) + 1, np.int64)
  np.cumsum(lens, out=offsets[1:])
  tokens = np.empty(int(offsets[-1]), np.int32)
  for i, (a, b, e) in enumerate(zip(ins, tgs, examples)):
    o = offsets[i]
    tokens[o:o + len(a)] = a
    tokens[o + len(a):o + len(a) + len(b)] = b
    if e.add_eos:
      tokens[offsets[i + 1] - 1] = eos_id
  prompt_len = np.fromiter((len(a) for a in ins), dtype=np.int32, count=len(examples))
  return store.Store(tokens, offsets, prompt_len)


# ---- identity and units ----------------------------------------------------------------------

def _sha256_file(path: str) -> str:
  return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


def store_identity(cfg: Any, vocab_path: str) -> dict[str, Any]:
  """What a store holds: a store is reused only for an experiment with the same identity."""
  return {
      'format': store.FORMAT_VERSION,
      'vocab': {'kind': cfg.vocab.kind, 'sha256': _sha256_file(vocab_path)},
      'settings': {'seed': cfg.seed, 'validation_fraction': cfg.validation_fraction,
                   'max_chars_per_doc': cfg.max_chars_per_doc, 'strict': cfg.strict},
      'sources': {
          **{l: {'spec': cfg[l].to_dict(), 'fingerprint': corpus.language_fingerprint(cfg, l)}
             for l in LM_SOURCES},
          **{p: {'spec': cfg[p].to_dict(),
                 'fingerprint': corpus.files_fingerprint(cfg[p].files, f'data.{p}.files')}
             for p in ('instruct', 'teacher')}},
  }


def identity_key(identity: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def plan_units(cfg: Any, unit_bytes: int = UNIT_BYTES) -> list[Unit]:
  """The build's units, in the order their documents take in each source."""
  units: list[Unit] = []
  for lang in LM_SOURCES:
    spec = cfg[lang]
    if spec.kind != 'files' or spec.max_documents:
      units.append(Unit(len(units), lang))
      continue
    for path in corpus.expand_globs(spec.files, f'data.{lang}.files'):
      size = paths.getsize(path)
      if size <= unit_bytes:
        units.append(Unit(len(units), lang, path))
        continue
      for start in range(0, size, unit_bytes):
        units.append(Unit(len(units), lang, path, start, min(size, start + unit_bytes)))
  units.append(Unit(len(units), TASKS))
  return units


def _unit_documents(cfg: Any, unit: Unit, stats: ReadStats) -> dict[str, list[corpus.Doc]]:
  """An en/zh unit's documents per split, in corpus order, read once (a TFDS source with its own
  validation split is read once per split)."""
  lang, spec = unit.source, cfg[unit.source]
  if spec.kind == 'tfds' and spec.tfds_validation_split:
    return {s: corpus.language_documents(cfg, lang, s, stats if s == 'train' else ReadStats())
            for s in SPLITS}
  if spec.kind == 'embedded':
    raw = corpus.embedded_en() if lang == 'en' else corpus.embedded_zh()
  elif spec.kind == 'files' and unit.path:
    raw = corpus.file_range_documents(unit.path, spec.field, stats, cfg.strict, unit.start,
                                      None if unit.end < 0 else unit.end)
  elif spec.kind == 'files':
    raw = corpus.file_documents(spec.files, spec.field, stats, cfg.strict, f'data.{lang}.files')
  else:
    raw = corpus.tfds_documents(spec, spec.tfds_train_split, stats, f'data.{lang}')
  out: dict[str, list[corpus.Doc]] = {s: [] for s in SPLITS}
  cap = spec.max_documents
  for doc in raw:
    open_splits = [s for s in SPLITS if not cap or len(out[s]) < cap]
    if not open_splits:
      break
    for split, piece in corpus.split_chunks(cfg, doc):
      if split in open_splits:
        out[split].append(piece)
  return out


def unit_examples(cfg: Any, unit: Unit,
                  stats: ReadStats) -> dict[str, dict[str, list[instruct.Example]]]:
  """A unit's examples per split and source (bad lines counted once, in `stats`)."""
  if unit.source in LM_SOURCES:
    docs = _unit_documents(cfg, unit, stats)
    return {s: {unit.source: [instruct.Example('', d.text, True) for d in docs[s]]}
            for s in SPLITS}
  return {s: source_examples(cfg, s, ['instruct', 'teacher'],
                             stats if s == 'train' else ReadStats(), docs_stats=ReadStats())
          for s in SPLITS}


def _marker(root: epath.Path, index: int) -> epath.Path:
  return root / 'units' / f'unit-{index:05d}.json'


def build_unit(cfg: Any, root: epath.Path, unit: Unit, key: str,
               encoder: tuple[Callable[[Sequence[str], int], list[list[int]]], int]) -> dict:
  """Reads, tokenizes and writes one unit's shards, then its marker; returns the marker."""
  t0, cpu0 = time.time(), time.process_time()
  stats = ReadStats()
  examples = unit_examples(cfg, unit, stats)
  encode, eos_id = encoder
  shards: dict[str, dict[str, Any]] = {}
  for split in SPLITS:
    for source, ex in examples[split].items():
      tokens = tokenize(encode, ex, cfg.tokenize_threads, eos_id)
      shards.setdefault(split, {})[source] = store.write_shard(
          root, store.shard_name(split, source, unit.index), tokens)
  marker = {'key': key, 'unit': unit._asdict(), 'shards': shards,
            'skipped_lines': stats.skipped_lines, 'skipped_reasons': stats.reasons,
            'seconds': time.time() - t0, 'cpu_seconds': time.process_time() - cpu0,
            'started': t0, 'pid': os.getpid()}
  store.atomic_write(_marker(root, unit.index), json.dumps(marker).encode())
  return marker


def unit_tokens(marker: dict[str, Any]) -> int:
  return sum(r['tokens'] for per in marker['shards'].values() for r in per.values())


def _read_marker(root: epath.Path, index: int) -> dict[str, Any] | None:
  path = _marker(root, index)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    return None   # a marker is written atomically; an unreadable one is redone


def pending_units(root: epath.Path, units: Sequence[Unit], key: str) -> list[Unit]:
  """The units without a marker of this build; refuses a directory holding another build."""
  todo = []
  for u in units:
    marker = _read_marker(root, u.index)
    if marker is None:
      todo.append(u)
    elif marker.get('key') != key:
      raise DataError(f'{root} holds an unfinished store of other data (units/unit-'
                      f'{u.index:05d}.json is of build {marker.get("key")}, this one is {key}); '
                      f'remove it or choose another --out')
    elif marker['unit'] != u._asdict():
      todo.append(u)   # the same data cut into other units: redo this one
  return todo


def finish_store(root: epath.Path, units: Sequence[Unit], identity: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
  """Assembles the manifest from the units' markers and writes it (the store is then complete)."""
  splits: dict[str, dict[str, Any]] = {s: {src: {'docs': 0, 'tokens': 0, 'shards': []}
                                           for src in SOURCES} for s in SPLITS}
  skipped, reasons = 0, []
  for u in units:
    marker = _read_marker(root, u.index)
    if marker is None:
      raise DataError(f'{root}: build unit {u.index} has no marker: the build did not finish')
    for split, per_source in marker['shards'].items():
      for source, rec in per_source.items():
        entry = splits[split][source]
        entry['docs'] += rec['docs']
        entry['tokens'] += rec['tokens']
        entry['shards'].append(rec)
    skipped += marker['skipped_lines']
    reasons.extend(marker['skipped_reasons'])
  manifest = {'format': store.FORMAT_VERSION, 'key': identity_key(identity),
              'identity': identity, 'units': len(units), 'splits': splits,
              'skipped_lines': skipped, 'skipped_reasons': reasons[:10],
              'build_seconds': seconds}
  store.atomic_write(root / store.MANIFEST, json.dumps(manifest, indent=1).encode())
  return manifest


# ---- building --------------------------------------------------------------------------------

def resolved_config(cfg: Any) -> tuple[ml_collections.ConfigDict, str]:
  """(cfg with its vocabulary file made explicit, that file): workers then load, never train."""
  cfg = validate_data_config(cfg)
  path = vocab.vocabulary_path(cfg)
  if not vocab.is_tiktoken(cfg):
    cfg.vocab.model_file = path
  return cfg, path


RunUnits = Callable[[ml_collections.ConfigDict, epath.Path, list[Unit], str], None]


def run_in_process(cfg: Any, root: epath.Path, units: list[Unit], key: str) -> None:
  """Builds the units one after the other in this process, logging progress."""
  encoder = vocab.batch_encoder(cfg)
  for i, u in enumerate(units):
    marker = build_unit(cfg, root, u, key, encoder)
    vocab.progress(f'token store unit {i + 1}/{len(units)} ({u.source}'
                   f'{f" {u.path}[{u.start}:{u.end}]" if u.path else ""}): '
                   f'{unit_tokens(marker):,} tokens in {marker["seconds"]:.1f} s')


def build_store(cfg: Any, out: str | os.PathLike, *, run_units: RunUnits = run_in_process,
                unit_bytes: int = UNIT_BYTES, verify: bool = True) -> dict[str, Any]:
  """Builds (or resumes, or reuses) the store of a data config in `out`; returns its manifest.

  An existing complete store is reused only if its identity matches (then, with `verify`, every
  shard's checksum is checked); any other store there is refused, naming the field that differs.
  """
  cfg, vocab_path = resolved_config(cfg)
  root = epath.Path(out)
  identity = store_identity(cfg, vocab_path)
  key = identity_key(identity)
  manifest = store.read_manifest(root)
  if manifest is not None:
    store.check_identity(root, manifest, identity)
    if verify:
      store.verify_checksums(root, manifest)
    return manifest
  t0 = time.time()
  units = plan_units(cfg, unit_bytes)
  todo = pending_units(root, units, key)
  if len(todo) < len(units):
    log.info('data store %s: resuming, %d of %d units already built', root,
             len(units) - len(todo), len(units))
  if todo:
    run_units(cfg, root, todo, key)
  return finish_store(root, units, identity, time.time() - t0)


def cached_store(cfg: Any) -> tuple[epath.Path, dict[str, Any]]:
  """The store training reads: `data.store_dir` if set (built beforehand by `flmjax data build`,
  checked against the experiment), else one in the cache dir, built in-process on first use."""
  cfg, vocab_path = resolved_config(cfg)
  identity = store_identity(cfg, vocab_path)
  if cfg.store_dir:
    root = epath.Path(cfg.store_dir)
    manifest = store.read_manifest(root)
    if manifest is None:
      raise DataError(f'data.store_dir: {root} holds no finished store (no {store.MANIFEST}); '
                      f'build it with `flmjax data build --config X --out {root}`')
    store.check_identity(root, manifest, identity)
    return root, manifest
  root = epath.Path(vocab.cache_root(cfg)) / 'stores' / identity_key(identity)
  manifest = store.read_manifest(root)
  if manifest is None:
    t0 = time.time()
    vocab.progress(f'building the token store (first run only; {root}) ...')
    manifest = build_store(cfg, root, verify=False)
    vocab.progress(f'token store built in {time.time() - t0:.0f} s')
  return root, manifest
