"""seqio registration: Tasks flm_en, flm_zh, flm_instruct, flm_teacher and Mixture flm_bilingual.

The Tasks read the same documents and examples as the numpy pipeline (flmjax.data.pipeline) and
tokenize with the same vocabulary, so any seqio consumer (feature converters, caching, evaluation)
sees the same data. Every Task has the features 'inputs' (no loss: empty for plain text, the
prompt for instructions, `text <|sep|> proposition` for the teacher signal) and 'targets'. Seqio
mixes by example counts with these rates; flmjax's own iterator uses them as token shares.
Registration is cheap: the vocabulary is trained and the corpus read only when a dataset is built.
As seqio's convention has it (T5X and gin files import a tasks module by name), importing this
module registers them, for the default data settings; `register_tasks(data_cfg)` re-registers
them for other settings (idempotent: each call replaces the previous registration).  Only this
module imports seqio and with it TensorFlow: the numpy pipeline, vocabulary training, sampling
and synthetic runs never load it.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import seqio
import tensorflow as tf

from flmjax.data import pipeline, vocab
from flmjax.data.config import default_data_config, validate_data_config
from flmjax.data.corpus import ReadStats
from flmjax.data.tiktoken_seqio import TiktokenVocabulary

TASKS = {'en': 'flm_en', 'zh': 'flm_zh', 'instruct': 'flm_instruct', 'teacher': 'flm_teacher'}
MIXTURE = 'flm_bilingual'
_SPLITS = ('train', 'validation')


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *, cfg: Any,
                source: str) -> tf.data.Dataset:
  del shuffle_files, seed   # one deterministic order; shuffle downstream if wanted

  def gen():
    examples = pipeline.source_examples(cfg, split, [source], ReadStats())[source]
    for ex in examples:
      yield {'inputs': ex.inputs, 'targets': ex.targets}

  spec = {'inputs': tf.TensorSpec([], tf.string), 'targets': tf.TensorSpec([], tf.string)}
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


class LazyVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary whose model is built on first use, so registering Tasks costs
  nothing; afterwards it behaves exactly like the eager one."""

  def __init__(self, cfg: Any):
    self._cfg = cfg
    super().__init__('')

  def _model_context(self):
    if not self._sentencepiece_model_file:
      self._sentencepiece_model_file = vocab.vocabulary_path(self._cfg)
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    self._model_context()
    return self._sentencepiece_model_file


def register_tasks(data_cfg: Any = None) -> None:
  """(Re-)registers the Tasks and the Mixture for a data config (default: the package default)."""
  cfg = validate_data_config(data_cfg if data_cfg is not None else default_data_config())
  if vocab.is_tiktoken(cfg):
    voc = TiktokenVocabulary(vocab.vocabulary_path(cfg))
  else:
    voc = LazyVocabulary(cfg)
  rates = pipeline.mixture_rates(cfg)
  for source, name in TASKS.items():
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, cfg=cfg, source=source), splits=_SPLITS),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            'inputs': seqio.Feature(voc, add_eos=False, required=False),
            'targets': seqio.Feature(voc, add_eos=source != 'teacher'),
        })
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.MixtureRegistry.add(MIXTURE, [(TASKS[s], rates[s]) for s in TASKS if rates[s] > 0])


register_tasks()  # on import, as seqio users expect of a tasks module
