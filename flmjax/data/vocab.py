"""The data config's vocabulary: `data.vocab.kind` 'sentencepiece' (below) or 'tiktoken'
(FLM-101B's cl100k_base, `flmjax.data.tiktoken_vocab`); both are seqio Vocabularies.

Bilingual SentencePiece vocabulary: trained on the configured corpus, cached, reproducible.

Ids follow seqio's convention (0 pad, 1 eos, 2 unk, no bos) and the unified-objective special
tokens are user-defined symbols, so seqio's own tokenizers (python and tf_text) produce them from
the formatted strings of `flmjax.data.instruct`. Byte fallback and split digits keep every string
encodable and numbers digit-by-digit. The cache key hashes the corpus identity and the settings,
and training is single-threaded on a fixed, deterministically sampled input, so the same corpus and
settings give a byte-identical model file.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import sentencepiece as spm

from flmjax.data import corpus
from flmjax.data.config import validate_data_config
from flmjax.data.corpus import SPECIAL_TOKENS, DataError
from flmjax.storage import paths

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_VERSION = 2   # bump when training inputs or flags change: old cached models are not reused
# The trainer's random seed is a constant, not data.seed: the cache key (`vocab_key`) leaves the
# data order out, so a seed taken from it would let whichever run trained first decide the file.
# 1 is what data.seed + 1 gave for the default data.seed 0, so default models keep their bytes.
_SENTENCEPIECE_SEED = 1
_IN_MEMORY_CHARS = 64 << 20   # a corpus's lines kept from the counting pass up to this size
log = logging.getLogger(__name__)


def cache_root(cfg: Any) -> str:
  """cfg.cache_dir, else $FLMJAX_CACHE, else ~/.cache/flmjax (a local folder or a `gs://`
  prefix: every cache file goes through `flmjax.storage.paths`)."""
  root = cfg.cache_dir or os.environ.get('FLMJAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'flmjax')
  root = paths.absolute(root) if paths.is_remote(root) else root
  paths.makedirs(root)
  return root


def atomic_write(path: str, data: bytes) -> None:
  """Whole or not at all, so concurrent builders never see half a file (one PUT on gs://)."""
  paths.makedirs(paths.dirname(path))
  paths.write_atomic(path, data)


def vocab_key(cfg: Any) -> str:
  v = cfg.vocab
  ident = {
      'version': _VERSION, 'size': v.size, 'model_type': v.model_type,
      'character_coverage': v.character_coverage, 'max_sentences': v.max_sentences,
      'validation_fraction': cfg.validation_fraction, 'max_chars_per_doc': cfg.max_chars_per_doc,
      'corpora': {lang: [cfg[lang].to_dict(), corpus.language_fingerprint(cfg, lang)]
                  for lang in ('en', 'zh')},
  }
  return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _lines(cfg: Any, lang: str) -> Iterator[str]:
  """The non-blank lines (cut at 2000 characters) of a language's train documents, streamed."""
  for d in corpus.iter_language_documents(cfg, lang, 'train', corpus.ReadStats()):
    for line in d.text.split('\n'):
      line = line.strip()
      if line:
        yield line[:2000]


def _training_lines(cfg: Any) -> list[str]:
  """Up to vocab.max_sentences lines, half per language, sampled at an even stride.

  One pass counts the lines (keeping them while they fit in `_IN_MEMORY_CHARS`), a second pass,
  only for a larger corpus, takes every stride-th: memory is bounded by the sample, not the
  corpus.
  """
  out = []
  per_lang = cfg.vocab.max_sentences // 2
  for lang in ('en', 'zh'):
    t0 = time.time()
    kept: list[str] | None = []
    chars = total = 0
    for line in _lines(cfg, lang):
      total += 1
      if kept is not None:
        chars += len(line)
        kept.append(line)
        if chars > _IN_MEMORY_CHARS:
          kept = None
    stride = max(1, total // per_lang) if per_lang else 1
    source = kept if kept is not None else _lines(cfg, lang)
    sample = list(itertools.islice(itertools.islice(source, 0, None, stride), per_lang))
    log.info('vocabulary: %s: %d lines, every %d-th taken: %d lines (%.1fs)', lang, total,
             stride, len(sample), time.time() - t0)
    out.extend(sample)
  if not out:
    raise DataError('data.vocab: the configured corpus has no text to train a vocabulary on')
  return out


def progress(message: str) -> None:
  """A line on stderr while a cache is built once (vocabulary, token stores): without it a first
  run is silent for minutes before its first training step."""
  print(f'data: {message}', file=sys.stderr, flush=True)


def train_model_bytes(cfg: Any) -> bytes:
  """Trains the SentencePiece model on the configured corpus and returns the model file bytes."""
  lines = _training_lines(cfg)
  log.info('vocabulary: training SentencePiece (%d pieces) on %d lines, %d characters', cfg.vocab.size,
           len(lines), sum(map(len, lines)))
  try:
    return _train_in_child(cfg, lines)
  except RuntimeError as e:
    if 'required_chars' in str(e):  # more distinct characters to cover than pieces allowed
      raise DataError(
          f'data.vocab.size = {cfg.vocab.size} is too small for data.vocab.character_coverage = '
          f'{cfg.vocab.character_coverage}: SentencePiece says "{str(e).split("] ")[-1]}". '
          f'Raise data.vocab.size or lower data.vocab.character_coverage (e.g. 0.98: rarer '
          f'characters then fall back to bytes).') from None
    raise


def _child_train(cfg_dict: dict, lines_in: Any, conn: Any) -> None:
  try:
    lines = lines_in.recv()
    buf = io.BytesIO()
    spm.set_random_generator_seed(_SENTENCEPIECE_SEED)
    _train_sentencepiece(validate_data_config(cfg_dict), lines, buf)
    conn.send(('ok', buf.getvalue()))
  except RuntimeError as e:
    conn.send(('error', str(e)))


def _train_in_child(cfg: Any, lines: list[str]) -> bytes:
  """SentencePiece's trainer in a child process: it is C++ that ignores Python's signal handlers
  for its whole run, so the parent waits, and a SIGTERM (or Ctrl-C) stops the child at once and
  ends with a one-line error instead of after the trainer returns."""
  # fork starts the child at once (nothing re-imported); a process running JAX's threads is not
  # safe to fork, so there (training's first use) the child is spawned.
  ctx = multiprocessing.get_context('spawn' if 'jax' in sys.modules else 'fork')
  parent, child = ctx.Pipe(duplex=False)
  lines_in, lines_out = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=_child_train, args=(cfg.to_dict(), lines_in, child), daemon=True)

  stopped: list[int] = []

  def stop(signum, frame):
    del frame
    stopped.append(signum)

  main = threading.current_thread() is threading.main_thread()
  old = signal.signal(signal.SIGTERM, stop) if main else None
  t0 = time.time()
  try:
    proc.start()
    child.close()
    lines_in.close()
    # The sample goes over a pipe from a thread, not as the child's start-up arguments: a child
    # that dies while starting would leave the parent blocked in that write, deaf to SIGTERM;
    # here the loop below sees the death (and a signal) while the thread is still writing.
    threading.Thread(target=_send_quietly, args=(lines_out, lines), daemon=True,
                     name='flmjax-vocab-sample').start()
    while not stopped and not parent.poll(0.2):
      if not proc.is_alive():
        raise DataError(f'data.vocab: the SentencePiece trainer died (exit status '
                        f'{proc.exitcode})')
      if time.time() - t0 > 60:
        log.info('vocabulary: SentencePiece still training (%.0fs)', time.time() - t0)
        t0 = time.time()
    if stopped:
      raise DataError(f'data.vocab: stopped by signal {stopped[0]} while training the '
                      'vocabulary; nothing was written')
    try:
      status, payload = parent.recv()
    except EOFError:  # it closed its end without an answer: it died (e.g. while starting)
      proc.join(5)
      raise DataError(f'data.vocab: the SentencePiece trainer died (exit status '
                      f'{proc.exitcode})') from None
  finally:
    if proc.pid is not None:  # started
      if proc.is_alive():
        proc.kill()
      proc.join()
    if main:
      signal.signal(signal.SIGTERM, old)
  if status == 'error':
    raise RuntimeError(payload)
  return payload


def _send_quietly(conn: Any, payload: Any) -> None:
  """Send `payload` and close; a child already gone (the caller reports it) is not an error."""
  try:
    conn.send(payload)
  except (BrokenPipeError, EOFError, OSError):
    pass
  finally:
    conn.close()


def _train_sentencepiece(cfg: Any, lines: list[str], buf: io.BytesIO) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=buf,
      vocab_size=cfg.vocab.size, model_type=cfg.vocab.model_type,
      character_coverage=cfg.vocab.character_coverage,
      byte_fallback=True, split_digits=True, add_dummy_prefix=False,
      # Keep newlines and runs of spaces: few-shot prompts and answers are line-structured.
      normalization_rule_name='nfkc', remove_extra_whitespaces=False,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      user_defined_symbols=list(SPECIAL_TOKENS),
      shuffle_input_sentence=False, input_sentence_size=0, num_threads=1,
      max_sentence_length=8192, hard_vocab_limit=False, minloglevel=2)


def check_special_tokens(path: str) -> spm.SentencePieceProcessor:
  """Loads a model file and checks it has seqio's ids and every special token as one piece."""
  sp = spm.SentencePieceProcessor()
  try:
    sp.Load(path)
  except (OSError, RuntimeError) as e:
    raise DataError(f'data.vocab.model_file: cannot load SentencePiece model {path}: {e}') from None
  if (sp.pad_id(), sp.eos_id(), sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
    raise DataError(f'{path}: SentencePiece model must use pad=0, eos=1, unk=2 (seqio), has '
                    f'pad={sp.pad_id()}, eos={sp.eos_id()}, unk={sp.unk_id()}')
  missing = [t for t in SPECIAL_TOKENS if sp.EncodeAsIds(t) != [sp.PieceToId(t)]
             or sp.PieceToId(t) == sp.unk_id()]
  if missing:
    raise DataError(f'{path}: SentencePiece model lacks the special token(s) {missing} '
                    f'(train it with `flmjax vocab`, which adds them as user_defined_symbols)')
  return sp


def train_vocabulary(cfg: Any, out_dir: str) -> str:
  """Trains the vocabulary for a data config into out_dir/spm.model; returns the path.

  Called by `flmjax vocab --config ... --out DIR`.
  """
  cfg = validate_data_config(cfg)
  if is_tiktoken(cfg):
    raise DataError("data.vocab.kind='tiktoken' uses a fixed rank file "
                    f'({vocabulary_path(cfg)}); there is nothing to train')
  path = paths.join(out_dir, 'spm.model')
  atomic_write(path, train_model_bytes(cfg))
  check_special_tokens(paths.local_copy(path))
  return path


def is_tiktoken(cfg: Any) -> bool:
  return cfg.vocab.get('kind', 'sentencepiece') == 'tiktoken'


def vocabulary_path(cfg: Any) -> str:
  """Path of the model for cfg: the configured file, else the cached one (trained on first use);
  for kind 'tiktoken' the rank file."""
  if is_tiktoken(cfg):
    from flmjax.data import tiktoken_vocab  # pylint: disable=g-import-not-at-top
    return tiktoken_vocab.tiktoken_path(cfg.vocab)
  if cfg.vocab.model_file:
    if not paths.isfile(cfg.vocab.model_file):
      raise DataError(f'data.vocab.model_file: no such file {cfg.vocab.model_file}')
    local = paths.local_copy(cfg.vocab.model_file)
    check_special_tokens(local)
    return local
  path = paths.join(cache_root(cfg), 'vocab', vocab_key(cfg), 'spm.model')
  if not paths.isfile(path):  # minutes on the full corpus: say what the wait is for
    t0 = time.time()
    progress(f'training the {cfg.vocab.size}-piece SentencePiece vocabulary (first run only; '
             f'cached at {path}) ...')
    atomic_write(path, train_model_bytes(cfg))
    progress(f'vocabulary trained in {time.time() - t0:.0f} s')
  local = paths.local_copy(path)  # SentencePiece opens local files only; gs:// is the truth
  check_special_tokens(local)
  return local


def require_vocabulary(cfg: Any, config: str = 'X') -> None:
  """Refuses, in one line, a run that would train a vocabulary on the user's own corpus (files,
  TFDS): that is its own step (`flmjax vocab` or `flmjax data build`), never hidden inside
  `train`. The embedded default still trains its small one on first use."""
  cfg = validate_data_config(cfg)
  if cfg.source != 'bilingual' or is_tiktoken(cfg) or cfg.vocab.model_file:
    return
  own = [lang for lang in ('en', 'zh') if cfg[lang].kind != 'embedded']
  if not own or paths.isfile(paths.join(cache_root(cfg), 'vocab', vocab_key(cfg), 'spm.model')):
    return
  raise DataError(
      f'data.vocab.model_file is not set and data.{own[0]} is a {cfg[own[0]].kind} corpus: '
      f'`train` does not train its vocabulary; run `flmjax data build --config {config} --out '
      f'DIR` (then --config.data.store_dir=DIR) or `flmjax vocab --config {config} --out DIR` '
      f'(then --config.data.vocab.model_file=DIR/spm.model)')


def get_vocabulary(cfg: Any) -> Any:
  """The seqio vocabulary (`seqio.SentencePieceVocabulary`) of a data config, for seqio consumers
  (Tasks, feature converters).  seqio is imported here, not at module level, because it imports
  TensorFlow (seconds and log lines): sampling and evaluation use `get_tokenizer` instead."""
  cfg = validate_data_config(cfg)
  if is_tiktoken(cfg):
    from flmjax.data import tiktoken_seqio  # pylint: disable=g-import-not-at-top
    return tiktoken_seqio.TiktokenVocabulary(vocabulary_path(cfg))
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.SentencePieceVocabulary(vocabulary_path(cfg))


class Tokenizer:
  """A data config's SentencePiece model with seqio's id conventions and `decode` (ids past the
  vocabulary read as unk; the text ends at the first eos), without importing seqio."""

  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def __init__(self, model_file: str):
    self.model_file = model_file
    self.sp = check_special_tokens(model_file)
    self.vocab_size = self.sp.GetPieceSize()

  def encode(self, text: str) -> list[int]:
    return self.sp.EncodeAsIds(text)

  def decode(self, ids: Any) -> str:
    clean = [self.unk_id if int(i) >= self.vocab_size else int(i) for i in ids]
    if self.eos_id in clean:
      clean = clean[:clean.index(self.eos_id) + 1]
    return self.sp.DecodeIds(clean)


def get_tokenizer(cfg: Any) -> Any:
  """The text tokenizer of a data config (a SentencePiece vocabulary is trained and cached on
  first use; kind 'tiktoken' gives `tiktoken_vocab.TiktokenTokenizer`, the same interface)."""
  cfg = validate_data_config(cfg)
  if is_tiktoken(cfg):
    from flmjax.data import tiktoken_vocab  # pylint: disable=g-import-not-at-top
    return tiktoken_vocab.tokenizer(vocabulary_path(cfg))
  return Tokenizer(vocabulary_path(cfg))


def batch_encoder(cfg: Any) -> tuple[Callable[[Sequence[str], int], list[list[int]]], int]:
  """(encode(texts, threads) -> ids per text, eos id) for tokenizing a corpus once."""
  if is_tiktoken(cfg):
    tok = get_tokenizer(cfg)
    return tok.encode_batch, tok.eos_id
  sp = spm.SentencePieceProcessor(model_file=vocabulary_path(cfg))
  return lambda texts, threads: sp.encode(list(texts), num_threads=threads), EOS_ID


def vocab_size(cfg: Any) -> int:
  """Number of ids of cfg's vocabulary; set model.vocab_size from it."""
  return get_tokenizer(cfg).vocab_size
