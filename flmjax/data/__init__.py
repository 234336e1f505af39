"""Bilingual (en/zh) seqio data for FLM training: embedded corpus, SentencePiece vocabulary,
instruction data and FreeLM teacher signal in LM form, packing, exact resume.

Importing this package registers the seqio Tasks flm_en, flm_zh, flm_instruct, flm_teacher and the
Mixture flm_bilingual (cheaply: nothing is read or trained until data is requested).
"""

from flmjax.data.config import default_data_config, validate_data_config
from flmjax.data.corpus import SPECIAL_TOKENS, DataError
from flmjax.data.pipeline import DataIterator, make_eval_batches, make_train_iterator
from flmjax.data.tasks import MIXTURE, TASKS, register_tasks
from flmjax.data.vocab import get_vocabulary, train_vocabulary, vocab_size

register_tasks()

__all__ = [
    'DataError', 'DataIterator', 'MIXTURE', 'SPECIAL_TOKENS', 'TASKS', 'default_data_config',
    'get_vocabulary', 'make_eval_batches', 'make_train_iterator', 'register_tasks',
    'train_vocabulary', 'validate_data_config', 'vocab_size',
]
