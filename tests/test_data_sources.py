"""TFDS corpora (a tiny dataset prepared locally, never downloaded), the benchmark's smoke mode and
the default embedded-corpus mixture end to end."""

from __future__ import annotations

import os

import pytest

import flmjax.data as D
from flmjax.data import corpus


def _tiny_builder():
  import tensorflow_datasets as tfds

  class FlmTinyText(tfds.core.GeneratorBasedBuilder):
    """Ten short English and Chinese sentences."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(0, 40),
              'validation': self._generate_examples(40, 50)}

    def _generate_examples(self, lo, hi):
      for i in range(lo, hi):
        yield i, {'text': f'Sentence number {i} talks about the river. 第{i}句话讲的是河流。'}

  return FlmTinyText


def test_tfds_corpus_is_read_from_a_prepared_dataset(tmp_path):
  builder_cls = _tiny_builder()
  data_dir = str(tmp_path / 'tfds')
  builder_cls(data_dir=data_dir).download_and_prepare()
  spec = D.default_data_config().en
  spec.kind, spec.tfds_name, spec.tfds_data_dir = 'tfds', 'flm_tiny_text', data_dir
  spec.tfds_validation_split = 'validation'
  cfg = D.default_data_config()
  cfg.en = spec
  train = corpus.language_documents(cfg, 'en', 'train', corpus.ReadStats())
  val = corpus.language_documents(cfg, 'en', 'validation', corpus.ReadStats())
  assert len(train) == 40 and len(val) == 10
  assert 'Sentence number 45' in ' '.join(d.text for d in val)
  spec.tfds_name = 'no_such_dataset_xyz'
  with pytest.raises(D.DataError, match=r"data\.en\.tfds_name: cannot read prepared TFDS "
                                        r"dataset 'no_such_dataset_xyz'"):
    corpus.language_documents(cfg, 'en', 'train', corpus.ReadStats())


@pytest.mark.slow
def test_benchmark_smoke_meets_the_10x_bar(capsys):
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'benchmarks'))
  import data_throughput
  data_throughput.main(['--smoke', '--batches', '50', '--steps', '3'])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  ratio = float(last.split(':')[1].split('x')[0])
  assert ratio >= 10, last


@pytest.mark.slow
def test_default_bilingual_mixture_end_to_end():
  """The default vocabulary on the embedded corpus decodes a batch of both languages.  It shares
  the user cache with experiments/tiny.py's runs (test_cli, the notebook): one of them trains the
  vocabulary on a fresh machine (~1 min), the others reuse it."""
  cfg = D.default_data_config()
  it = D.make_train_iterator(cfg, seq_len=256, global_batch_size=8)
  v = D.get_vocabulary(cfg)
  assert v.vocab_size == cfg.vocab.size
  b = next(it)
  text = ' '.join(v.decode(b['targets'][r][b['segment_ids'][r] == s].tolist())
                  for r in range(8) for s in range(1, b['segment_ids'][r].max() + 1))
  assert sum('\u4e00' <= ch <= '\u9fff' for ch in text) > 50
  assert sum(w in text.split() for w in ('the', 'of', 'is', 'a')) >= 3
  ev = D.make_eval_batches(cfg, seq_len=256, batch_size=4)
  assert set(ev) == {'en', 'zh'} and all(len(x) == cfg.eval_batches for x in ev.values())
  assert it.stats()['skipped_lines'] == 0
