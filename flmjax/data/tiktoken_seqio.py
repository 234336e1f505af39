"""cl100k_base (`flmjax.data.tiktoken_vocab`) as a `seqio.Vocabulary`, for the seqio Tasks and
any seqio consumer.  A module of its own because seqio imports TensorFlow: the numpy pipeline,
sampling and evaluation use `TiktokenTokenizer` directly and never load it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import seqio
import tensorflow as tf

from flmjax.data import tiktoken_vocab


class TiktokenVocabulary(seqio.Vocabulary):
  """seqio's view of a `.tiktoken` rank file; the tokenizer is built on first use, so
  registering Tasks stays free."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path
    self._tok = None

  @property
  def tokenizer(self) -> Any:
    if self._tok is None:
      self._tok = tiktoken_vocab.tokenizer(self._path)
    return self._tok

  @property
  def eos_id(self) -> Optional[int]:
    return self.tokenizer.eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return None

  @property
  def bos_id(self) -> Optional[int]:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s)

  def _decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    out = tf.py_function(lambda x: tf.constant(self._encode(x.numpy().decode('utf-8')), tf.int32),
                         [s], tf.int32)
    out.set_shape([None])
    return out

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.py_function(lambda x: tf.constant(self._decode(x.numpy().tolist())), [ids],
                          tf.string)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, TiktokenVocabulary) and other._path == self._path

  def __hash__(self) -> int:
    return hash(self._path)
