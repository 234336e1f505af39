"""The token store at scale: build throughput (Beam, 1 vs 2 workers), train-time host RSS and time
to the first batch against the corpus size, read throughput against the 101B stage's need, and the
arithmetic for FLM-101B's 311.54B tokens.

  python benchmarks/data_scale.py                          # 0.1, 1 and 4 GB of generated text
  python benchmarks/data_scale.py --sizes_mb 10,40,160     # moderate sizes
  python benchmarks/data_scale.py --smoke                  # CI: tiny sizes, numbers mean nothing

The text is generated here (random English-like words and CJK characters), never downloaded. One
vocabulary is trained on a 1 MB sample first and reused, so only the store build is timed. Each
size's store is read in a fresh process (`make_train_iterator` on `data.store_dir`, seq 2048,
global batch 8) whose peak RSS (VmHWM) is reported. Headline on the last line: RSS at the largest
corpus ÷ RSS at the smallest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import flmjax.data as D  # noqa: E402
from flmjax.data import store_build  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLM101B_TOKENS = 311.54e9
# experiments/flm101b.py's 101B stage on v5p-1024 (BUILD.md, `flmjax compile`): 2176 sequences of
# 2048 tokens per 22.98 s step; v5p has 4 chips per host, so 128 hosts.
NEED_BATCH, NEED_SEQ, NEED_STEP_S, NEED_HOSTS = 2176, 2048, 22.98, 128
SEQ, BATCH = 2048, 8


def generate(path: str, megabytes: float, lang: str, seed: int) -> None:
  """Writes ~megabytes of one-document-per-line synthetic text: words (en) or characters (zh)
  drawn with Zipf-like frequencies, so a 2000-piece vocabulary compresses it about as it would
  real text."""
  rng = np.random.default_rng(seed)
  target = int(megabytes * 1e6)
  if lang == 'en':
    letters = np.array(list('etaoinshrdlucmfwypvbgkjqxz'))
    words = [''.join(rng.choice(letters, rng.integers(2, 9))) for _ in range(2000)]
  else:
    words = [chr(0x4E00 + int(c)) for c in rng.permutation(3000)[:1500]]
  p = 1.0 / np.arange(1, len(words) + 1)
  p /= p.sum()
  sep = ' ' if lang == 'en' else ''
  written = 0
  with open(path, 'w', encoding='utf-8') as f:
    while written < target:
      lens = rng.integers(30, 200, 50)
      ids = rng.choice(len(words), int(lens.sum()), p=p)
      cuts = np.cumsum(lens)[:-1]
      block = '\n'.join(sep.join(words[j] for j in line) for line in np.split(ids, cuts)) + '\n'
      f.write(block)
      written += len(block.encode('utf-8'))


def corpus_config(root: str, megabytes: float, model_file: str = ''):
  """A data section over en/zh files of megabytes in all (made once per size)."""
  d = os.path.join(root, f'corpus-{megabytes:g}mb')
  os.makedirs(d, exist_ok=True)
  for lang, seed in (('en', 1), ('zh', 2)):
    path = os.path.join(d, f'{lang}.txt')
    if not os.path.exists(path):
      generate(path, megabytes / 2, lang, seed)
  cfg = D.default_data_config()
  cfg.cache_dir = os.path.join(root, 'cache')
  cfg.en.kind, cfg.en.files = 'files', [os.path.join(d, 'en.txt')]
  cfg.zh.kind, cfg.zh.files = 'files', [os.path.join(d, 'zh.txt')]
  cfg.instruct_rate = cfg.teacher_rate = 0.0
  cfg.instruct.generated = cfg.teacher.generated = False
  cfg.vocab.size, cfg.vocab.max_sentences, cfg.vocab.model_file = 2000, 20000, model_file
  return cfg


def beam_build(cfg, out: str, workers: int, unit_bytes: int) -> tuple[float, dict]:
  from flmjax.data import beam_build as bb  # noqa: PLC0415 - Beam is the optional extra
  t0 = time.perf_counter()
  manifest = store_build.build_store(
      cfg, out, unit_bytes=unit_bytes, run_units=bb.beam_runner(
          ['--runner', 'DirectRunner', '--direct_num_workers', str(workers),
           '--direct_running_mode', 'multi_processing']))
  return time.perf_counter() - t0, manifest


def tokens_of(manifest: dict) -> int:
  return sum(e['tokens'] for per in manifest['splits'].values() for e in per.values())


def unit_seconds(out: str) -> float:
  units = os.path.join(out, 'units')
  return sum(json.load(open(os.path.join(units, f)))['seconds'] for f in os.listdir(units))


_READER = '''
import json, sys, time, ml_collections
import flmjax.data as D
cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))
n = int(sys.argv[2])
t0 = time.perf_counter()
it = D.make_train_iterator(cfg, seq_len={seq}, global_batch_size={batch})
next(it)
first = time.perf_counter() - t0
t1 = time.perf_counter()
for _ in range(n):
  next(it)
rate = n * {seq} * {batch} / (time.perf_counter() - t1)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({{'first_s': first, 'tokens_per_s': rate, 'rss_mb': int(hwm) / 1024}}))
'''.format(seq=SEQ, batch=BATCH)


def read_in_fresh_process(cfg, batches: int) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', _READER, json.dumps(cfg.to_dict()), str(batches)],
                        env=env, capture_output=True, text=True, timeout=3600)
  if proc.returncode:
    raise SystemExit(f'reader failed:\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true')
  ap.add_argument('--sizes_mb', default='100,1000,4000', help='corpus sizes (MB of text)')
  ap.add_argument('--build_mb', type=float, default=0,
                  help='corpus of the 1 vs 2 worker build (default: the smallest size)')
  ap.add_argument('--unit_mb', type=float, default=16, help='text per build unit (MiB)')
  ap.add_argument('--batches', type=int, default=200, help='batches read per size')
  ap.add_argument('--workdir', default='')
  args = ap.parse_args()
  if args.smoke:
    args.sizes_mb, args.unit_mb, args.batches = '0.5,2', 0.25, 5
  sizes = [float(s) for s in args.sizes_mb.split(',')]
  build_mb = args.build_mb or sizes[0]
  unit_bytes = int(args.unit_mb * (1 << 20))
  root = args.workdir or tempfile.mkdtemp(prefix='data_scale-')
  print(f'work dir {root}; sizes {sizes} MB of text; units of {args.unit_mb:g} MiB; '
        f'{os.cpu_count()} CPUs')

  sample = corpus_config(root, 1.0)
  model = D.train_vocabulary(sample, os.path.join(root, 'vocab'))

  # (1) build throughput, 1 vs 2 DirectRunner workers, on the same corpus
  cfg = corpus_config(root, build_mb, model)
  build = {}
  for workers in (1, 2):
    out = os.path.join(root, f'build-{build_mb:g}mb-{workers}w')
    seconds, manifest = beam_build(cfg, out, workers, unit_bytes)
    build[workers] = (seconds, tokens_of(manifest), unit_seconds(out), manifest['units'])
  print(f'\n(1) build of {build_mb:g} MB ({build[1][3]} units), Beam DirectRunner '
        'multi_processing, wall clock including Beam start-up')
  print(f'{"workers":>8} {"seconds":>9} {"tokens":>12} {"tokens/s":>10} {"unit s":>8}')
  for w, (s, t, us, _) in build.items():
    print(f'{w:>8} {s:>9.1f} {t:>12d} {t / s:>10.0f} {us:>8.1f}')
  speedup = build[1][0] / build[2][0]
  per_worker = build[1][1] / build[1][2]     # tokens per second of unit work, one worker
  tokens_per_byte = build[1][1] / (build_mb * 1e6)
  print(f'2 workers / 1 worker: {speedup:.2f}x; one worker tokenizes {per_worker:.0f} tokens/s '
        f'of unit work; {tokens_per_byte:.3f} tokens per byte of this text')

  # (2)+(3) train-time RSS, time to the first batch and read rate per corpus size
  rows = []
  for mb in sizes:
    c = corpus_config(root, mb, model)
    out = os.path.join(root, f'store-{mb:g}mb')
    if args.smoke:   # CI: the same units built in-process, one Beam start-up less per size
      t0 = time.perf_counter()
      manifest = store_build.build_store(c, out, unit_bytes=unit_bytes)
      seconds = time.perf_counter() - t0
    else:
      seconds, manifest = beam_build(c, out, 2, unit_bytes)
    c.store_dir = out
    r = read_in_fresh_process(c, args.batches)
    rows.append((mb, tokens_of(manifest), sum(len(e['shards']) for e in
                                              manifest['splits']['train'].values()), seconds, r))
  need = NEED_BATCH * NEED_SEQ / NEED_STEP_S / NEED_HOSTS
  print(f'\n(2, 3) each store built with 2 Beam workers{" (smoke: in-process)" if args.smoke else ""}'
        f', then read in a fresh process (seq {SEQ}, global batch {BATCH}, '
        f'{args.batches} batches after the first)')
  print(f'{"text MB":>8} {"tokens":>12} {"shards":>7} {"build s":>8} {"peak RSS MB":>12} '
        f'{"1st batch s":>12} {"read tok/s":>11} {"÷ 101B need":>12}')
  for mb, toks, shards, bs, r in rows:
    print(f'{mb:>8g} {toks:>12d} {shards:>7d} {bs:>8.1f} {r["rss_mb"]:>12.1f} '
          f'{r["first_s"]:>12.2f} {r["tokens_per_s"]:>11.0f} {r["tokens_per_s"] / need:>11.1f}x')
  print(f'101B stage need per host: {NEED_BATCH} x {NEED_SEQ} tokens / {NEED_STEP_S} s / '
        f'{NEED_HOSTS} hosts (v5p-1024) = {need:.0f} tokens/s')

  # (4) FLM-101B's corpus
  text_bytes = FLM101B_TOKENS / tokens_per_byte
  shards = math.ceil(text_bytes / (64 << 20))
  print(f'\n(4) FLM-101B: {FLM101B_TOKENS / 1e9:.2f}B tokens = {FLM101B_TOKENS * 4 / 1e12:.2f} TB '
        f'of int32 ids; at this text\'s {tokens_per_byte:.3f} tokens/byte, {text_bytes / 1e12:.2f}'
        f' TB of text in {shards} units of 64 MiB (one shard per unit and split)')
  for n in (1, 64, 512, 2048):
    print(f'  build on {n:>5d} workers at {per_worker:.0f} tokens/s each: '
          f'{FLM101B_TOKENS / (per_worker * n) / 3600:10.1f} h')
  ratio = rows[-1][4]['rss_mb'] / rows[0][4]['rss_mb']
  print(f'headline: train-time peak RSS at {sizes[-1]:g} MB of text / at {sizes[0]:g} MB = '
        f'{ratio:.2f}x')


if __name__ == '__main__':
  main()
