"""Bilingual (en/zh) data for FLM training: embedded corpus, SentencePiece vocabulary,
instruction data and FreeLM teacher signal in LM form, packing, exact resume.

The numpy pipeline, the vocabulary and the tokenizer need neither seqio nor TensorFlow.  The seqio
Tasks flm_en, flm_zh, flm_instruct, flm_teacher and the Mixture flm_bilingual are registered by
importing `flmjax.data.tasks` (which imports seqio and with it TensorFlow), and again for other
data settings by its `register_tasks(data_cfg)`; `TASKS`, `MIXTURE` and `register_tasks` load that
module on first use.
"""

from flmjax.data.config import default_data_config, validate_data_config
from flmjax.data.corpus import SPECIAL_TOKENS, DataError
from flmjax.data.pipeline import DataIterator, make_eval_batches, make_train_iterator
from flmjax.data.vocab import (Tokenizer, get_tokenizer, get_vocabulary, train_vocabulary,
                               vocab_size)

_SEQIO_NAMES = ('MIXTURE', 'TASKS', 'register_tasks')


def __getattr__(name: str):
  if name in _SEQIO_NAMES:
    from flmjax.data import tasks  # pylint: disable=g-import-not-at-top
    return getattr(tasks, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'DataError', 'DataIterator', 'MIXTURE', 'SPECIAL_TOKENS', 'TASKS', 'Tokenizer',
    'default_data_config', 'get_tokenizer', 'get_vocabulary', 'make_eval_batches',
    'make_train_iterator', 'register_tasks', 'train_vocabulary', 'validate_data_config',
    'vocab_size',
]
