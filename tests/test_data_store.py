"""The sharded token store: same batches as tokenizing in memory, a killed build resumes, exact
iterator resume across a kill, processes read disjoint rows, bad stores refused in one line, and
the Beam build (DirectRunner, 2 worker processes) writes the same shards as the in-process one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_data import make_cfg, write_corpus

import flmjax.data as D
from flmjax.data import pipeline, store_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = 6000   # bytes of text per build unit: the small corpus becomes many units (byte ranges)


def _env() -> dict:
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, 'tests'))


def _run(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', code], env=_env(), capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('store'))
  files = write_corpus(root, n_docs=400)
  cfg = make_cfg(root, files)
  D.vocab_size(cfg)   # trains the vocabulary once, into the shared cache dir
  return root, files, cfg


def _stored(cfg, out, **kw):
  cfg = D.validate_data_config(cfg)
  cfg.store_dir = out
  store_build.build_store(cfg, out, unit_bytes=UNIT, **kw)
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_store_feeds_the_same_batches_as_tokenizing_in_memory(setup, tmp_path):
  root, _, cfg = setup
  cfg = _stored(cfg, str(tmp_path / 'st'))
  manifest = json.loads((tmp_path / 'st' / 'manifest.json').read_text())
  assert len(manifest['splits']['train']['en']['shards']) > 3   # byte-range units
  encode, eos = D.vocab.batch_encoder(cfg)
  rates = pipeline.mixture_rates(cfg)
  for split in ('train', 'validation'):
    examples = store_build.source_examples(cfg, split, pipeline.SOURCES, D.corpus.ReadStats())
    memory = {s: store_build.tokenize(encode, examples[s], 1, eos) for s in pipeline.SOURCES}
    readers, meta = pipeline.open_stores(cfg, split)
    for s in pipeline.SOURCES:
      got = readers[s].read_all()
      for f in ('tokens', 'offsets', 'prompt_len'):
        np.testing.assert_array_equal(getattr(got, f), getattr(memory[s], f), err_msg=f'{s}.{f}')
  examples = store_build.source_examples(cfg, 'train', pipeline.SOURCES, D.corpus.ReadStats())
  memory = {s: store_build.tokenize(encode, ex, 1, eos) for s, ex in examples.items()}
  ref = pipeline.DataIterator(memory, rates, seq_len=64, global_batch_size=4, seed=cfg.seed,
                              fingerprint=meta['key'])
  _same(_take(ref, 12), _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=4), 12))


def test_permutation_is_lazy_and_a_bijection():
  for n in (1, 2, 3, 17, 64, 1000, 4099):
    key = pipeline.permutation_key(7, 1, 3)
    got = [pipeline.permuted_index(i, n, key) for i in range(n)]
    assert sorted(got) == list(range(n))
  a = [pipeline.permuted_index(i, 1000, pipeline.permutation_key(0, 0, 0)) for i in range(1000)]
  b = [pipeline.permuted_index(i, 1000, pipeline.permutation_key(0, 0, 1)) for i in range(1000)]
  assert a != b and a != list(range(1000))


def test_killed_build_resumes_keeping_finished_units(setup, tmp_path):
  root, _, cfg = setup
  out = str(tmp_path / 'killed')
  code = f'''
import os, signal
from flmjax.data import store_build
from test_data import make_cfg
cfg = make_cfg({root!r}, {{'en': {os.path.join(root, 'en.txt')!r},
                           'zh': {os.path.join(root, 'zh.jsonl')!r}}})
def two_then_die(cfg, root, units, key):
  store_build.run_in_process(cfg, root, units[:2], key)
  os.kill(os.getpid(), signal.SIGKILL)
store_build.build_store(cfg, {out!r}, run_units=two_then_die, unit_bytes={UNIT})
'''
  proc = _run(code)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert not os.path.exists(os.path.join(out, 'manifest.json'))
  done = sorted(os.listdir(os.path.join(out, 'units')))
  assert done == ['unit-00000.json', 'unit-00001.json']
  kept = os.path.join(out, 'train', 'en', 'u00000.tokens.npy')
  mtime = os.stat(kept).st_mtime_ns
  built = []

  def counting(c, r, units, key):
    built.extend(u.index for u in units)
    store_build.run_in_process(c, r, units, key)

  resumed = _stored(cfg, out, run_units=counting)
  assert 0 not in built and 1 not in built and built
  assert os.stat(kept).st_mtime_ns == mtime
  fresh = _stored(cfg, str(tmp_path / 'fresh'))
  a, _ = pipeline.load_stores(resumed, 'train')
  b, _ = pipeline.load_stores(fresh, 'train')
  for s in a:
    np.testing.assert_array_equal(a[s].tokens, b[s].tokens)


def test_iterator_resumes_exactly_across_a_kill(setup, tmp_path):
  root, _, cfg = setup
  cfg = _stored(cfg, str(tmp_path / 'st'))
  state_file = tmp_path / 'state.json'
  code = f'''
import json, os, signal
import flmjax.data as D
import ml_collections
cfg = ml_collections.ConfigDict({cfg.to_dict()!r})
it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=4)
for _ in range(5):
  next(it)
open({str(state_file)!r}, 'w').write(json.dumps(it.get_state()))
next(it)
os.kill(os.getpid(), signal.SIGKILL)
'''
  proc = _run(code)
  assert proc.returncode == -9, proc.stderr[-2000:]
  ref = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=4), 9)
  it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=4)
  it.set_state(json.loads(state_file.read_text()))
  _same(_take(it, 4), ref[5:])


def test_two_processes_read_disjoint_rows(setup, tmp_path):
  root, _, cfg = setup
  cfg = _stored(cfg, str(tmp_path / 'st'))
  whole = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=6), 3)
  procs = []
  for p in range(2):
    code = f'''
import numpy as np, ml_collections
import flmjax.data as D
cfg = ml_collections.ConfigDict({cfg.to_dict()!r})
it = D.make_train_iterator(cfg, seq_len=64, global_batch_size=6, process_index={p},
                           process_count=2)
b = [next(it) for _ in range(3)]
np.savez({str(tmp_path / f'p{p}.npz')!r}, **{{f'{{i}}.{{k}}': v for i, x in enumerate(b)
                                            for k, v in x.items()}})
'''
    procs.append(subprocess.Popen([sys.executable, '-c', code], env=_env(), cwd=ROOT,
                                  stderr=subprocess.PIPE, text=True))
  for pr in procs:
    assert pr.wait(600) == 0, pr.stderr.read()[-2000:]
  parts = [np.load(tmp_path / f'p{p}.npz') for p in range(2)]
  for i, b in enumerate(whole):
    for k, v in b.items():
      np.testing.assert_array_equal(v[:3], parts[0][f'{i}.{k}'])
      np.testing.assert_array_equal(v[3:], parts[1][f'{i}.{k}'])
  rows = _take(D.make_train_iterator(cfg, seq_len=64, global_batch_size=6, rows=[1, 4]), 3)
  for b, r in zip(whole, rows):
    np.testing.assert_array_equal(r['targets'], b['targets'][[1, 4]])


def test_bad_stores_are_refused_naming_the_field_or_shard(setup, tmp_path):
  root, files, cfg = setup
  out = str(tmp_path / 'st')
  good = _stored(cfg, out)
  other_vocab = D.validate_data_config(good)
  other_vocab.vocab.size = 450
  with pytest.raises(D.DataError, match=r'field vocab\.sha256'):
    D.make_train_iterator(other_vocab, seq_len=64, global_batch_size=4)
  other_seed = D.validate_data_config(good)
  other_seed.seed = 3
  with pytest.raises(D.DataError, match=r'field settings\.seed'):
    D.make_train_iterator(other_seed, seq_len=64, global_batch_size=4)
  with pytest.raises(D.DataError, match='holds no finished store'):
    D.make_train_iterator(dict(good.to_dict(), store_dir=str(tmp_path / 'none')), seq_len=64,
                          global_batch_size=4)
  with pytest.raises(D.DataError, match=r'holds no finished store|built for other data'):
    store_build.build_store(other_vocab, out)   # `data build` into it: refused too

  shard = os.path.join(out, 'train', 'en', 'u00001.tokens.npy')
  saved = open(shard, 'rb').read()
  with open(shard, 'r+b') as f:
    f.truncate(len(saved) - 4)
  with pytest.raises(D.DataError, match=r'shard file train/en/u00001\.tokens\.npy is corrupt'):
    _take(D.make_train_iterator(good, seq_len=64, global_batch_size=16), 40)
  os.remove(shard)
  with pytest.raises(D.DataError, match=r'shard file train/en/u00001\.tokens\.npy is missing'):
    _take(D.make_train_iterator(good, seq_len=64, global_batch_size=16), 40)
  with open(shard, 'wb') as f:
    f.write(saved[:-4] + bytes([saved[-4] ^ 1]) + saved[-3:])
  with pytest.raises(D.DataError, match=r'train/en/u00001\.tokens\.npy is corrupt \(sha256'):
    store_build.build_store(good, out)   # a reused store's checksums are all checked
  with open(shard, 'wb') as f:
    f.write(saved)

  text, st = open(files['en'], encoding='utf-8').read(), os.stat(files['en'])
  with open(files['en'], 'a', encoding='utf-8') as f:
    f.write('A line added after the build.\n')
  try:
    with pytest.raises(D.DataError, match=r'data\.en: a source changed after the store'):
      D.make_train_iterator(good, seq_len=64, global_batch_size=4)
  finally:   # the module's other tests keep their corpus (and its cached vocabulary)
    with open(files['en'], 'w', encoding='utf-8') as f:
      f.write(text)
    os.utime(files['en'], ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cli_refuses_a_store_of_other_data_in_one_line(setup, tmp_path):
  root, _, cfg = setup
  out = str(tmp_path / 'st')
  _stored(cfg, out)
  exp = tmp_path / 'exp.py'
  data = D.validate_data_config(cfg).to_dict()
  data['seed'] = 9
  exp.write_text('import ml_collections\nfrom flmjax import experiment\n'
                 'def get_config():\n  c = experiment.default_config()\n'
                 f'  c.data = ml_collections.ConfigDict({data!r})\n  return c\n')
  proc = subprocess.run([sys.executable, '-m', 'flmjax.cli', 'data', 'build', '--config',
                         str(exp), '--out', out], env=_env(), capture_output=True, text=True,
                        timeout=600, cwd=ROOT)
  if importlib.util.find_spec('apache_beam') is None:
    assert 'needs Apache Beam' in proc.stderr
    return
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()
  assert len(last) == 1 and 'field settings.seed' in last[0], proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('apache_beam') is None,
                    reason='the Beam build needs the extra flmjax[beam]')
def test_beam_build_with_two_workers_writes_the_in_process_shards(setup, tmp_path):
  root, _, cfg = setup
  exp = tmp_path / 'exp.py'
  exp.write_text('import ml_collections\nfrom flmjax import experiment\n'
                 'def get_config():\n  c = experiment.default_config()\n'
                 f'  c.data = ml_collections.ConfigDict({D.validate_data_config(cfg).to_dict()!r})'
                 '\n  return c\n')
  out = str(tmp_path / 'beam')
  proc = subprocess.run([sys.executable, '-m', 'flmjax.cli', 'data', 'build', '--config',
                         str(exp), '--out', out, '--direct_num_workers', '2'], env=_env(),
                        capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train on it with --config.data.store_dir=' in proc.stdout
  local = str(tmp_path / 'local')
  store_build.build_store(cfg, local, unit_bytes=64 << 20)
  a = json.loads(open(os.path.join(out, 'manifest.json')).read())
  b = json.loads(open(os.path.join(local, 'manifest.json')).read())
  assert a['key'] == b['key'] and a['splits'] == b['splits']


def test_vocabulary_training_stops_at_sigterm_in_one_line(tmp_path):
  """SentencePiece's C++ trainer ignores Python's handlers: it runs in a child, so SIGTERM during
  `flmjax vocab` (or `train`'s first use) ends it at once, in one line."""
  import signal   # noqa: PLC0415
  import time   # noqa: PLC0415
  files = write_corpus(str(tmp_path), n_docs=20000)
  cfg = make_cfg(str(tmp_path), files, **{'vocab.size': 3000, 'vocab.max_sentences': 40000})
  code = f'''
import logging, ml_collections
logging.basicConfig(level=logging.INFO)
import flmjax.data as D
D.train_vocabulary(ml_collections.ConfigDict({cfg.to_dict()!r}), {str(tmp_path / 'v')!r})
'''
  proc = subprocess.Popen([sys.executable, '-c', code], env=_env(), cwd=ROOT,
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if 'training SentencePiece' in line:
      break
  time.sleep(1.0)
  t0 = time.time()
  proc.send_signal(signal.SIGTERM)
  rest = proc.stderr.read()
  assert proc.wait(60) != 0, 'the trainer finished before the signal: make the corpus bigger'
  assert time.time() - t0 < 10
  assert 'stopped by signal 15 while training the vocabulary' in rest, rest[-2000:]
  assert not (tmp_path / 'v' / 'spm.model').exists()


def test_vocabulary_sample_is_the_same_streamed(setup, monkeypatch):
  """A corpus too big to keep is read twice instead: the same lines, so the same model bytes."""
  _, _, cfg = setup
  cfg = D.validate_data_config(cfg)
  kept = D.vocab._training_lines(cfg)
  monkeypatch.setattr(D.vocab, '_IN_MEMORY_CHARS', 100)
  assert D.vocab._training_lines(cfg) == kept and len(kept) > 100
