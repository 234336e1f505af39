"""Bilingual seqio data layer: config, corpus, vocabulary, mixing, packing, resume, bad input.

Every test builds its own small en/zh corpus under tmp_path and its own cache dir, so nothing
depends on (or writes to) the user's cache.
"""

from __future__ import annotations

import collections
import json
import os
import random

import numpy as np
import pytest
import sentencepiece as spm

import flmjax.data as D
from flmjax.config import BOS_ID, ConfigError
from flmjax.data import corpus, instruct, pipeline, vocab

EN_WORDS = ('river stone light garden winter market teacher window paper silver morning city '
            'music forest bridge letter summer island family story doctor kitchen village '
            'mountain student friend animal flower ocean travel number people change').split()
ZH_CHARS = '我们的人民国家经济发展新年世界和平学生老师朋友城市农村工作生活市场文化历史山水花草'


def _en_doc(rng: random.Random) -> str:
  sents = []
  for _ in range(rng.randint(2, 5)):
    words = [rng.choice(EN_WORDS) for _ in range(rng.randint(4, 10))] + [str(rng.randrange(99999))]
    sents.append(' '.join(words).capitalize() + '.')
  return ' '.join(sents)


def _zh_doc(rng: random.Random) -> str:
  return ''.join(''.join(rng.choice(ZH_CHARS) for _ in range(rng.randint(6, 14))) + '。'
                 for _ in range(rng.randint(2, 5)))


def write_corpus(root, n_docs: int = 300, seed: int = 0) -> dict[str, str]:
  rng = random.Random(seed)
  os.makedirs(root, exist_ok=True)
  en = os.path.join(root, 'en.txt')
  zh = os.path.join(root, 'zh.jsonl')
  with open(en, 'w', encoding='utf-8') as f:
    f.write('\n'.join(_en_doc(rng) for _ in range(n_docs)) + '\n')
  with open(zh, 'w', encoding='utf-8') as f:
    for _ in range(n_docs):
      f.write(json.dumps({'content': _zh_doc(rng)}, ensure_ascii=False) + '\n')
  return {'en': en, 'zh': zh}


def make_cfg(root, files: dict[str, str], **over):
  cfg = D.default_data_config()
  cfg.cache_dir = os.path.join(root, 'cache')
  cfg.en.kind, cfg.en.files = 'files', [files['en']]
  cfg.zh.kind, cfg.zh.files, cfg.zh.field = 'files', [files['zh']], 'content'
  cfg.vocab.size = 400
  cfg.validation_fraction = 0.1
  cfg.eval_batches = 3
  for k, v in over.items():
    node = cfg
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return cfg


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('corpus'))
  files = write_corpus(root)
  cfg = make_cfg(root, files)
  return root, files, cfg


@pytest.fixture(scope='module')
def sp(setup):
  _, _, cfg = setup
  return spm.SentencePieceProcessor(model_file=vocab.vocabulary_path(cfg))


def docs_of(batches):
  """Documents reconstructed from packed rows in stream order: a segment whose first input is 0
  starts a document; any other segment continues the previous one (cut at a row end)."""
  docs = []
  for b in batches:
    for r in range(b['targets'].shape[0]):
      seg, inp, tgt = b['segment_ids'][r], b['inputs'][r], b['targets'][r]
      for s in range(1, seg.max() + 1):
        idx = np.nonzero(seg == s)[0]
        if inp[idx[0]] == 0:
          docs.append([])
        docs[-1].extend(tgt[idx].tolist())
  return [tuple(d) for d in docs]


def store_docs(store):
  return [tuple(store.tokens[store.offsets[i]:store.offsets[i + 1]].tolist())
          for i in range(store.num_docs)]


# ---- config -------------------------------------------------------------------------------

def test_default_config_is_valid_and_documented():
  cfg = D.validate_data_config(D.default_data_config())
  assert cfg.rates.en == 53.5 and cfg.rates.zh == 46.5
  flat = D.default_data_config().to_dict()

  def leaves(d, p=''):
    for k, v in d.items():
      yield from (leaves(v, p + k + '.') if isinstance(v, dict) else [p + k])
  from flmjax.data.config import FIELD_DOCS
  assert set(leaves(flat)) == set(FIELD_DOCS)


@pytest.mark.parametrize('change, field', [
    ({'vocb': {'size': 10}}, 'data.vocb.size'),
    ({'rates': {'en': 1.0, 'fr': 2.0}}, 'data.rates.fr'),
    ({'en': {'kind': 'web'}}, 'data.en.kind'),
    ({'rates': {'en': -1.0}}, 'data.rates.en'),
    ({'instruct_rate': 0.6, 'teacher_rate': 0.5}, 'data.instruct_rate'),
    ({'zh': {'kind': 'files'}}, 'data.zh.files'),
    ({'en': {'files': 'a/*.txt'}}, 'data.en.files'),
    ({'vocab': {'model_type': 'word'}}, 'data.vocab.model_type'),
    ({'prompt_loss': 1}, 'data.prompt_loss'),
])
def test_bad_config_names_the_field(change, field):
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    D.validate_data_config(change)


def test_partial_config_takes_defaults():
  cfg = D.validate_data_config({'seed': 3, 'rates': {'zh': 10.0}})
  assert cfg.seed == 3 and cfg.rates.zh == 10.0 and cfg.rates.en == 53.5


# ---- seqio registration -------------------------------------------------------------------

def test_register_tasks_registers_tasks_and_mixture():
  import seqio
  D.register_tasks()
  mix = seqio.get_mixture_or_task('flm_bilingual')
  names = {t.name for t in mix.tasks}
  assert {'flm_en', 'flm_zh', 'flm_instruct', 'flm_teacher'} == names
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates['flm_en'] / rates['flm_zh'] == pytest.approx(53.5 / 46.5)
  for t in ('flm_en', 'flm_zh', 'flm_instruct'):
    assert set(seqio.get_mixture_or_task(t).output_features) == {'inputs', 'targets'}


def test_seqio_task_tokens_match_pipeline(setup):
  import seqio
  _, _, cfg = setup
  D.register_tasks(cfg)
  try:
    stores, _ = pipeline.load_stores(cfg, 'train', ('en', 'instruct'))
    ds = seqio.get_mixture_or_task('flm_en').get_dataset(
        None, split='train', shuffle=False, use_cached=False)
    first = [ex['targets'].tolist() for _, ex in zip(range(5), ds.as_numpy_iterator())]
    assert [tuple(d) for d in first] == store_docs(stores['en'])[:5]
    ds = seqio.get_mixture_or_task('flm_instruct').get_dataset(
        None, split='train', shuffle=False, use_cached=False)
    ex = next(ds.as_numpy_iterator())
    st = stores['instruct']
    assert ex['inputs'].tolist() + ex['targets'].tolist() == list(store_docs(st)[0])
    assert len(ex['inputs']) == st.prompt_len[0]
  finally:
    D.register_tasks()


# ---- embedded corpus ----------------------------------------------------------------------

def test_pos_tags_are_stripped():
  line = '迈向/v  充满/v  希望/n  的/u  [中国/ns  政府/n]nt  １２月/t  ，/w\n'
  assert corpus._strip_pos_tags(line) == '迈向充满希望的中国政府１２月，'


def test_embedded_chinese_is_megabytes_of_plain_text():
  docs = list(corpus.embedded_zh())
  size = sum(len(d.text.encode('utf-8')) for d in docs)
  assert size > 5e6
  sample = ''.join(d.text for d in docs[:2000])
  assert '/n' not in sample and '/v' not in sample and '人民' in sample
  assert {d.tag for d in docs} == {'', 'pos', 'neg'}


def test_embedded_english_is_megabytes_of_prose():
  docs = list(corpus.embedded_en())
  text = ' '.join(d.text for d in docs)
  assert len(text) > 2.5e6
  assert not any(l.lstrip().startswith('>>>') for d in docs for l in d.text.splitlines())
  words = collections.Counter(text.split())
  assert words['the'] > 10000 and words['is'] > 3000


# ---- vocabulary ---------------------------------------------------------------------------

def test_vocabulary_is_reproducible_cached_and_has_special_tokens(setup, tmp_path):
  _, _, cfg = setup
  path = vocab.vocabulary_path(cfg)
  mtime = os.stat(path).st_mtime_ns
  again = D.train_vocabulary(cfg, str(tmp_path / 'out'))
  assert open(again, 'rb').read() == open(path, 'rb').read()       # same input -> same bytes
  assert vocab.vocabulary_path(cfg) == path and os.stat(path).st_mtime_ns == mtime  # cached
  # the data order is not in the cache key, so it must not change the trained file either
  reordered = cfg.copy_and_resolve_references()
  reordered.seed = cfg.seed + 7
  assert vocab.vocab_key(reordered) == vocab.vocab_key(cfg)
  assert vocab.train_model_bytes(reordered) == open(path, 'rb').read()
  v = D.get_vocabulary(cfg)
  assert v.vocab_size == D.vocab_size(cfg) == spm.SentencePieceProcessor(model_file=path).get_piece_size()
  sp = v.tokenizer
  for t in D.SPECIAL_TOKENS:
    assert len(sp.encode('x' + t + 'y')) >= 3 and sp.piece_to_id(t) in sp.encode('x' + t + 'y')
  assert [p for p in sp.encode('2024', out_type=str) if p != '▁'] == ['2', '0', '2', '4']
  odd = 'zebra 🦓 龘'        # not in the corpus: byte fallback keeps it lossless
  assert sp.decode(sp.encode(odd)) == odd and sp.unk_id() not in sp.encode(odd)


def test_vocabulary_changes_with_settings(setup):
  root, files, cfg = setup
  other = make_cfg(root, files)
  other.vocab.size = 420
  assert vocab.vocab_key(other) != vocab.vocab_key(cfg)


def test_vocabulary_too_small_for_its_characters_names_the_fields(setup):
  root, files, _ = setup
  tight = make_cfg(root, files, **{'vocab.size': 64, 'vocab.character_coverage': 1.0})
  with pytest.raises(D.DataError, match=r'data\.vocab\.size = 64 .*data\.vocab\.character_coverage'):
    vocab.vocabulary_path(tight)


def test_model_without_special_tokens_is_rejected(setup, tmp_path):
  _, files, cfg = setup
  prefix = str(tmp_path / 'plain')
  spm.SentencePieceTrainer.train(input=files['en'], model_prefix=prefix, vocab_size=120,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  bad = cfg.copy_and_resolve_references()
  bad.vocab.model_file = prefix + '.model'
  with pytest.raises(D.DataError, match=r'plain\.model.*lacks the special token'):
    D.get_vocabulary(bad)


# ---- the batch contract and packing --------------------------------------------------------

def test_batch_contract(setup):
  _, _, cfg = setup
  it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=6)
  for _ in range(5):
    b = next(it)
    assert set(b) == {'inputs', 'targets', 'loss_weights', 'segment_ids', 'positions',
                      'teacher_weights'}
    for k, x in b.items():
      assert x.shape == (6, 64)
      assert x.dtype == (np.float32 if k.endswith('_weights') else np.int32)
    assert not np.any((b['loss_weights'] > 0) & (b['teacher_weights'] > 0))
    seg, pos = b['segment_ids'], b['positions']
    assert np.all(b['loss_weights'][seg == 0] == 0) and np.all(b['targets'][seg == 0] == 0)
    for r in range(6):
      segs = seg[r][seg[r] > 0]
      assert segs[0] == 1 and np.all(np.diff(segs) >= 0) and np.all(np.diff(segs) <= 1)
      assert np.all(np.nonzero(seg[r])[0] == np.arange(len(segs)))     # padding only at the end
      for s in np.unique(segs):
        idx = np.nonzero(seg[r] == s)[0]
        np.testing.assert_array_equal(pos[r, idx], np.arange(len(idx)))
        np.testing.assert_array_equal(b['inputs'][r, idx[1:]], b['targets'][r, idx[:-1]])


def test_packed_logits_equal_documents_run_alone(setup):
  import jax
  from flmjax.config import ModelConfig
  from flmjax.model import Transformer
  _, _, cfg = setup
  L = 256
  b = next(D.make_train_iterator(cfg, seq_len=L, global_batch_size=4))
  row = int(np.argmax(b['segment_ids'].max(axis=1)))
  assert b['segment_ids'][row].max() >= 3, 'the test needs a row packing several documents'
  mcfg = ModelConfig(vocab_size=D.vocab_size(cfg), d_model=32, n_heads=2, head_dim=16, d_ff=64,
                     n_layers=2, max_len=L)
  model = Transformer(mcfg)
  tokens = b['inputs'][row:row + 1]
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  packed = model.apply({'params': params}, tokens, positions=b['positions'][row:row + 1],
                       segment_ids=b['segment_ids'][row:row + 1])
  # Each document alone, at the start of its own row (causal: the zeros after it are unseen).
  n_docs = b['segment_ids'][row].max()
  alone_tokens = np.zeros((n_docs, L), np.int32)
  spans = [np.nonzero(b['segment_ids'][row] == s)[0] for s in range(1, n_docs + 1)]
  for i, idx in enumerate(spans):
    alone_tokens[i, :len(idx)] = tokens[0, idx]
  alone = model.apply({'params': params}, alone_tokens)
  for i, idx in enumerate(spans):
    np.testing.assert_allclose(packed[0, idx], alone[i, :len(idx)], atol=2e-5, rtol=1e-5)
  assert not np.allclose(packed[0, spans[1]], model.apply(   # the test can fail: without the
      {'params': params}, tokens)[0, spans[1]], atol=1e-3)    # segment ids, logits differ


def test_decoded_batch_shows_english_and_chinese(setup):
  _, _, cfg = setup
  b = next(D.make_train_iterator(cfg, seq_len=256, global_batch_size=4))
  v = D.get_vocabulary(cfg)
  text = ' '.join(v.decode(b['targets'][r][b['segment_ids'][r] == s].tolist())
                  for r in range(4) for s in range(1, b['segment_ids'][r].max() + 1))
  assert any(w in text for w in EN_WORDS) and any(c in text for c in '我们人民国家')


# ---- order, resume, epochs, processes ------------------------------------------------------

def _take(it, n):
  return [next(it) for _ in range(n)]


def _eq(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_order_is_deterministic_from_the_seed(setup):
  root, files, cfg = setup
  a = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=4), 4)
  b = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=4), 4)
  assert _eq(a, b)
  other = make_cfg(root, files, seed=1)
  c = _take(D.make_train_iterator(other, seq_len=64, global_batch_size=4), 4)
  assert not _eq(a, c)


def test_resume_gives_exactly_the_uninterrupted_batches(setup):
  _, _, cfg = setup
  ref = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=4), 30)
  it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=4)
  _take(it, 17)
  state = json.loads(json.dumps(it.get_state()))      # as it goes through a checkpoint
  fresh = D.make_train_iterator(cfg, seq_len=64, global_batch_size=4)
  fresh.set_state(state)
  assert _eq(_take(fresh, 13), ref[17:])
  assert fresh.stats()['batches'] == 30


def test_state_from_other_data_is_rejected(setup):
  root, files, cfg = setup
  state = D.make_train_iterator(cfg, seq_len=64, global_batch_size=4).get_state()
  other = D.make_train_iterator(make_cfg(root, files, seed=5), seq_len=64, global_batch_size=4)
  with pytest.raises(D.DataError, match='other data'):
    other.set_state(state)


def test_one_epoch_uses_every_document_exactly_once(setup):
  root, files, _ = setup
  cfg = make_cfg(root, files, **{'rates.zh': 0.0, 'instruct_rate': 0.0, 'teacher_rate': 0.0})
  stores, _ = pipeline.load_stores(D.validate_data_config(cfg), 'train', ('en',))
  expected = store_docs(stores['en'])
  L, B = 64, 4
  n_batches = -(-stores['en'].num_tokens // (L * B))
  it = D.make_train_iterator(cfg, seq_len=L, global_batch_size=B)
  got = docs_of(_take(it, n_batches))
  first_epoch = got[:len(expected)]
  assert collections.Counter(first_epoch) == collections.Counter(expected)
  assert it.get_state()['sources']['en'][0] == 1 or it.get_state()['sources']['en'][1] == len(expected)


def test_mixture_shares_and_no_document_lost_or_repeated(setup, sp):
  root, files, _ = setup
  cfg = make_cfg(root, files, teacher_rate=0.1)   # ~400 teacher tokens per 4096-token batch
  it = D.make_train_iterator(cfg, seq_len=512, global_batch_size=8)   # no example > a row
  batches = _take(it, 20)
  stores, _ = pipeline.load_stores(D.validate_data_config(cfg), 'train')
  # Token shares follow the configured rates.
  owner = {}
  for s in pipeline.SOURCES:
    for d in store_docs(stores[s]):
      owner[d] = s
  got = docs_of(batches)[:-1]                    # the last one may be cut by the stream end
  counts = collections.Counter(got)
  tokens = collections.Counter()
  for d in got:
    tokens[owner[d]] += len(d)
  total = sum(tokens.values())
  rates = pipeline.mixture_rates(D.validate_data_config(cfg))
  for s in pipeline.SOURCES:
    assert tokens[s] / total == pytest.approx(rates[s], abs=0.02)
  # Within each source, documents are used evenly: epoch e for all, e + 1 for some.
  for s in pipeline.SOURCES:
    c = [counts[d] for d in store_docs(stores[s])]
    assert max(c) - min(c) <= 1, s
  # The teacher signal is in every batch (not alternated) once a batch is longer than the widest
  # gap between two samples (longest sample / rate, plus one row of delay for an unsplit one).
  assert max(np.diff(stores['teacher'].offsets)) / 0.1 + 512 < 4096
  true_false = {sp.piece_to_id('<|true|>'), sp.piece_to_id('<|false|>')}
  for b in batches:  # the labels carry the teacher loss, not the LM loss
    assert np.isin(b['targets'][b['teacher_weights'] > 0], list(true_false)).all()
    assert not np.isin(b['targets'][b['loss_weights'] > 0], list(true_false)).any()


def test_processes_split_the_global_batch(setup):
  _, _, cfg = setup
  whole = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=6), 3)
  parts = [_take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=6, process_index=p,
                                       process_count=3), 3) for p in range(3)]
  for i in range(3):
    for k in whole[i]:
      assert parts[0][i][k].shape == (2, 64)
      np.testing.assert_array_equal(np.concatenate([p[i][k] for p in parts]), whole[i][k])
  with pytest.raises(D.DataError, match='multiple of process_count'):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=5, process_count=3)
  # any sorted rows (those a process's devices hold, `flmjax.training.batches.process_rows`)
  some = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=6, rows=[1, 2, 5]), 3)
  for i in range(3):
    for k in whole[i]:
      np.testing.assert_array_equal(some[i][k], whole[i][k][[1, 2, 5]])
  with pytest.raises(D.DataError, match='sorted, distinct'):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=6, rows=[2, 1])


# ---- instruction data and teacher signal ---------------------------------------------------

def test_instruction_loss_and_prompt_loss_switch(setup, sp):
  root, files, _ = setup
  only = {'rates.en': 0.0, 'rates.zh': 1e-9, 'instruct_rate': 0.999, 'teacher_rate': 0.0}
  inst, resp = sp.piece_to_id('<|inst|>'), sp.piece_to_id('<|resp|>')
  for prompt_loss in (False, True):
    cfg = make_cfg(root, files, prompt_loss=prompt_loss, **only)
    b = next(D.make_train_iterator(cfg, seq_len=512, global_batch_size=2))
    checked = 0
    for r in range(2):
      for s in range(1, b['segment_ids'][r].max() + 1):
        idx = np.nonzero(b['segment_ids'][r] == s)[0]
        tgt, w = b['targets'][r, idx], b['loss_weights'][r, idx]
        if tgt[0] != inst:
          continue
        k = list(tgt).index(resp)                # target '<|resp|>' ends the prompt
        assert b['inputs'][r, idx[0]] == BOS_ID
        assert np.all(w[k + 1:] == 1) and np.all(w[:k + 1] == (1.0 if prompt_loss else 0.0))
        assert tgt[-1] == vocab.EOS_ID
        checked += 1
    assert checked >= 2


def test_teacher_signal_has_loss_only_on_the_label(setup, sp):
  root, files, _ = setup
  cfg = make_cfg(root, files, prompt_loss=True, **{'rates.en': 0.0, 'rates.zh': 1e-9,
                                                   'instruct_rate': 0.0, 'teacher_rate': 0.999})
  b = next(D.make_train_iterator(cfg, seq_len=128, global_batch_size=4))
  labels = {sp.piece_to_id('<|true|>'), sp.piece_to_id('<|false|>')}
  seen = collections.Counter()
  for r in range(4):
    for s in range(1, b['segment_ids'][r].max() + 1):
      idx = np.nonzero(b['segment_ids'][r] == s)[0]
      w, t = b['teacher_weights'][r, idx], b['targets'][r, idx]
      if t[-1] in labels:
        assert w.sum() == 1 and w[-1] == 1 and sp.piece_to_id('<|sep|>') in t
        assert b['loss_weights'][r, idx].sum() == 0
        seen[int(t[-1])] += 1
  assert set(seen) == labels                     # both labels occur


def test_generated_examples_are_sensible():
  docs = {'en': [corpus.Doc('The river is cold. The stone is grey. The light is warm.')] * 4,
          'zh': [corpus.Doc('这家酒店很好。服务也不错。', 'pos')] * 4}
  inst = instruct.generated_instructions(docs, seed=0, every=1)
  assert any(e.targets in ('English', '英文') for e in inst)
  assert any(e.targets == '正面' for e in inst)
  assert all(e.inputs.startswith('<|inst|>') and e.inputs.endswith('<|resp|>') for e in inst)
  teach = instruct.generated_teacher(docs, seed=0, every=1)
  for e in teach:
    assert '<|sep|>' in e.inputs and e.targets in ('<|true|>', '<|false|>') and not e.add_eos
    if '正面的' in e.inputs:
      assert e.targets == '<|true|>'
    if '负面的' in e.inputs:
      assert e.targets == '<|false|>'


def test_user_instruction_and_teacher_files(setup, tmp_path, sp):
  root, files, _ = setup
  inst = tmp_path / 'oig.jsonl'
  inst.write_text('\n'.join([
      json.dumps({'q': 'What is two plus two?', 'a': 'Four.'}),
      json.dumps({'q': 'no answer here'}),                               # bad line: counted
      json.dumps({'q': '一加一等于几？', 'a': '二。'}, ensure_ascii=False)]) + '\n',
      encoding='utf-8')
  teach = tmp_path / 'teacher.jsonl'
  teach.write_text(json.dumps({'text': 'Snow is cold.', 'proposition': 'Snow is hot.',
                               'label': False}) + '\n', encoding='utf-8')
  cfg = make_cfg(root, files, **{
      'instruct.generated': False, 'instruct.files': [str(inst)], 'instruct.prompt_field': 'q',
      'instruct.response_field': 'a', 'teacher.generated': False,
      'teacher.files': [str(teach)]})
  it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=4)
  assert it.stats()['skipped_lines'] == 1
  assert any('oig.jsonl:2' in r and "'a'" in r for r in it.skipped_reasons)
  stores, _ = pipeline.load_stores(D.validate_data_config(cfg), 'train')
  assert stores['instruct'].num_docs == 2 and stores['teacher'].num_docs == 1
  t = store_docs(stores['teacher'])[0]
  assert t[-1] == sp.piece_to_id('<|false|>') and stores['teacher'].prompt_len[0] == len(t) - 1
  cfg.strict = True
  with pytest.raises(D.DataError, match=r'oig\.jsonl:2: .*lacks field'):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=4)


# ---- validation batches --------------------------------------------------------------------

def test_eval_batches_are_finite_deterministic_and_held_out(setup):
  _, _, cfg = setup
  ev = D.make_eval_batches(cfg, seq_len=64, batch_size=2)
  assert set(ev) == {'en', 'zh'}
  again = D.make_eval_batches(cfg, seq_len=64, batch_size=2)
  for lang in ev:
    assert 1 <= len(ev[lang]) <= cfg.eval_batches and _eq(ev[lang], again[lang])
    assert ev[lang][0]['loss_weights'].sum() > 0
  train, _ = pipeline.load_stores(D.validate_data_config(cfg), 'train', ('en', 'zh'))
  val, _ = pipeline.load_stores(D.validate_data_config(cfg), 'validation', ('en', 'zh'))
  for lang in ('en', 'zh'):
    assert not set(store_docs(train[lang])) & set(store_docs(val[lang]))
    assert val[lang].num_docs > 0


def test_eval_batches_stop_at_the_end_of_the_split(setup):
  _, _, cfg = setup
  cfg = cfg.copy_and_resolve_references()
  cfg.eval_batches = 1000
  ev = D.make_eval_batches(cfg, seq_len=64, batch_size=2)
  val, _ = pipeline.load_stores(D.validate_data_config(cfg), 'validation', ('en',))
  assert collections.Counter(docs_of(ev['en'])) == collections.Counter(store_docs(val['en']))


# ---- bad input -----------------------------------------------------------------------------

def test_missing_glob_and_empty_file(setup, tmp_path):
  root, files, _ = setup
  cfg = make_cfg(root, {**files, 'en': str(tmp_path / 'nothing' / '*.txt')})
  with pytest.raises(D.DataError, match=r"data\.en\.files: glob .*nothing.* matches no file"):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=2)
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  cfg = make_cfg(root, {**files, 'en': str(empty)})
  with pytest.raises(D.DataError, match=r'empty\.txt is empty'):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=2)


def test_invalid_utf8_is_counted_or_an_error(setup, tmp_path):
  root, files, _ = setup
  bad = tmp_path / 'bad.txt'
  good = open(files['en'], 'rb').read()
  bad.write_bytes(b'\xff\xfe broken line\n' + good)
  cfg = make_cfg(root, {**files, 'en': str(bad)})
  it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=2)
  assert it.stats()['skipped_lines'] == 1
  assert 'bad.txt:1: invalid UTF-8' in it.skipped_reasons[0]
  cfg.strict = True
  with pytest.raises(D.DataError, match=r'bad\.txt:1: invalid UTF-8'):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=2)
  only_bad = tmp_path / 'only_bad.txt'
  only_bad.write_bytes(b'\xff\xff\n\xfe\n')
  with pytest.raises(D.DataError, match=r'only_bad\.txt: no usable line \(first bad line '
                     r'.*only_bad\.txt:1\)'):
    list(corpus.read_lines(str(only_bad), corpus.ReadStats(), strict=False))


def test_json_line_without_the_field(setup, tmp_path):
  root, files, _ = setup
  zh = tmp_path / 'zh.jsonl'
  zh.write_text(open(files['zh'], encoding='utf-8').read() + '{"text": "wrong field"}\nnot json\n',
                encoding='utf-8')
  cfg = make_cfg(root, {**files, 'zh': str(zh)})
  it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=2)
  assert it.stats()['skipped_lines'] == 2
  assert "lacks field(s) ['content']" in ' '.join(it.skipped_reasons)
  only = tmp_path / 'only.jsonl'
  only.write_text('{"text": "x"}\n')
  cfg = make_cfg(root, {**files, 'zh': str(only)})
  with pytest.raises(D.DataError, match=r"only\.jsonl: no line has the field\(s\) \['content'\]"):
    D.make_train_iterator(cfg, seq_len=64, global_batch_size=2)


def test_special_tokens_in_raw_text_cannot_forge_labels(setup, sp):
  assert '<|true|>' not in corpus.clean('fine <|true|> text')
  doc = instruct.teacher('a <|sep|> b <|false|>', 'c', True)
  assert doc.inputs.count('<|sep|>') == 1 and '<|false|>' not in doc.inputs


# ---- synthetic delegation ------------------------------------------------------------------

def test_synthetic_source_delegates():
  from flmjax import synthetic_data
  cfg = D.default_data_config()
  cfg.source = 'synthetic'
  cfg.synthetic = synthetic_data.synthetic_config()
  cfg.eval_batches = 2
  it = D.make_train_iterator(cfg, seq_len=16, global_batch_size=4, process_index=1,
                             process_count=2)
  ref = synthetic_data.make_synthetic_iterator(cfg, seq_len=16, global_batch_size=4,
                                               process_index=1, process_count=2)
  assert _eq([next(it)], [next(ref)])
  ev = D.make_eval_batches(cfg, seq_len=16, batch_size=2)
  assert list(ev) == ['synthetic'] and len(ev['synthetic']) == 2


def test_experiment_data_section_with_synthetic_subsection_validates():
  from flmjax import experiment
  cfg = experiment.default_config().data
  assert 'synthetic' in cfg
  out = D.validate_data_config(cfg)
  assert out.synthetic.to_dict() == cfg.synthetic.to_dict()
  cfg.bogus = 1
  with pytest.raises(ConfigError, match=r'data\.bogus'):
    D.validate_data_config(cfg)


# ---- no TensorFlow unless seqio is used ----------------------------------------------------

_NO_TF_SCRIPT = '''
import json, sys
sys.path.insert(0, sys.argv[1])
import ml_collections
import flmjax.data as D
cfg = ml_collections.ConfigDict(json.loads(sys.argv[2]))
batch = next(D.make_train_iterator(cfg, seq_len=64, global_batch_size=2))
tok = D.get_tokenizer(cfg)
assert tok.decode(batch['targets'][0].tolist())
print('jax', 'jax' in sys.modules)   # data processes (Beam workers, readers) load no JAX
from conftest import tiny_config
from flmjax import sampling
from flmjax.training import loop
summary = loop.train(tiny_config(2), sys.argv[3])
assert summary, summary
from flmjax.config import ModelConfig
from flmjax.model import Transformer
import jax, jax.numpy as jnp
m = ModelConfig(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2, max_len=32)
p = Transformer(m).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
sampling.generate(p, m, [[3, 4]], 2)
print('before', 'tensorflow' in sys.modules)
D.register_tasks(cfg)
print('after', 'tensorflow' in sys.modules)
'''


def test_pipeline_training_and_sampling_do_not_import_tensorflow(setup, tmp_path):
  """seqio (and with it TensorFlow, seconds and log lines) loads only when Tasks are registered;
  reading and tokenizing data loads no JAX."""
  import subprocess
  import sys
  _, _, cfg = setup
  vocab.vocabulary_path(cfg)  # trained here, so the child only loads it
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  r = subprocess.run([sys.executable, '-c', _NO_TF_SCRIPT, tests_dir, cfg.to_json(),
                      str(tmp_path / 'w')], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  assert 'before False' in r.stdout and 'after True' in r.stdout, r.stdout
  assert 'jax False' in r.stdout, r.stdout


def test_tokenizer_matches_seqio_vocabulary(setup):
  _, _, cfg = setup
  tok, voc = D.get_tokenizer(cfg), D.get_vocabulary(cfg)
  assert tok.vocab_size == voc.vocab_size and tok.eos_id == voc.eos_id
  for text in ('river stone 2024', '我们的人民', 'zebra 🦓 龘', ''):
    assert tok.encode(text) == list(voc.encode(text))
  ids = tok.encode('music forest bridge') + [tok.eos_id] + tok.encode('letter')
  for case in (ids, ids[:3], [5, tok.vocab_size + 7, 6]):  # past-the-vocab id, eos cut
    assert tok.decode(case) == voc.decode(case)
  assert 'letter' not in tok.decode(ids)


_IMPORT_REGISTERS = '''
import importlib, json, seqio
before = 'flm_bilingual' in seqio.MixtureRegistry.names()
import flmjax.data.tasks as T
mix = seqio.get_mixture_or_task('flm_bilingual')
tasks = sorted(t.name for t in mix.tasks)
importlib.reload(T)  # idempotent: a second import (or register_tasks) replaces, never clashes
T.register_tasks()
print(json.dumps({'before': before, 'tasks': tasks,
                  'after': sorted(t.name for t in seqio.get_mixture_or_task(T.MIXTURE).tasks)}))
'''


def test_importing_the_tasks_module_registers_them():
  """seqio's convention (T5X, gin): `import flmjax.data.tasks` registers its Tasks and Mixture."""
  import json
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-c', _IMPORT_REGISTERS], capture_output=True, text=True,
                     timeout=600, env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 0, r.stderr[-4000:]
  got = json.loads(r.stdout.strip().splitlines()[-1])
  names = ['flm_en', 'flm_instruct', 'flm_teacher', 'flm_zh']
  assert got == {'before': False, 'tasks': names, 'after': names}
