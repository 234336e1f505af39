"""Data pipeline tokens/s against the tokens/s the tiny training config consumes, in one run.

  python benchmarks/data_throughput.py            # default bilingual corpus (builds the cache once)
  python benchmarks/data_throughput.py --smoke    # small generated corpus, a few steps (CI)

Prints a table, then on the last line the headline ratio: pipeline tokens/s / training tokens/s.
The pipeline must be >= 10x faster than training consumes so it is never the bottleneck. The
training side is a jitted AdamW step (forward + backward + update) of the model in
experiments/tiny.py with its seq_len and global batch, the vocabulary set from the data config.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import common  # first: it keeps libtpu quiet on a host without a TPU  # noqa: F401
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import flmjax.data as D  # noqa: E402
from flmjax import experiment  # noqa: E402
from flmjax.config import ModelConfig  # noqa: E402
from flmjax.model import Transformer  # noqa: E402


def smoke_data_config(root: str):
  """A small generated en/zh corpus so CI measures the pipeline without the 1-minute vocab build."""
  rng = random.Random(0)
  words = 'river stone light garden winter market teacher window paper city music'.split()
  chars = '我们的人民国家经济发展新年世界和平学生老师朋友城市农村工作生活'
  en, zh = os.path.join(root, 'en.txt'), os.path.join(root, 'zh.txt')
  with open(en, 'w', encoding='utf-8') as f:
    for _ in range(2000):
      f.write(' '.join(rng.choice(words) for _ in range(rng.randint(20, 80))) + '.\n')
  with open(zh, 'w', encoding='utf-8') as f:
    for _ in range(2000):
      f.write(''.join(rng.choice(chars) for _ in range(rng.randint(20, 80))) + '。\n')
  cfg = D.default_data_config()
  cfg.cache_dir = os.path.join(root, 'cache')
  cfg.en.kind, cfg.en.files = 'files', [en]
  cfg.zh.kind, cfg.zh.files = 'files', [zh]
  cfg.vocab.size = 400
  return cfg


def time_pipeline(it, n: int) -> float:
  for _ in range(3):
    next(it)
  t0 = time.perf_counter()
  tokens = 0
  for _ in range(n):
    b = next(it)
    tokens += b['inputs'].size
  return tokens / (time.perf_counter() - t0)


def time_training(mcfg: ModelConfig, batch: dict, n: int) -> float:
  model = Transformer(mcfg)
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(batch['inputs']))['params']
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)

  def loss_fn(p, b):
    logits = model.apply({'params': p}, b['inputs'], positions=b['positions'],
                         segment_ids=b['segment_ids'])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, b['targets'])
    return (ce * b['loss_weights']).sum() / jnp.maximum(b['loss_weights'].sum(), 1.0)

  @jax.jit
  def step(p, s, b):
    loss, g = jax.value_and_grad(loss_fn)(p, b)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  b = {k: jnp.asarray(v) for k, v in batch.items()}
  params, opt_state, loss = step(params, opt_state, b)   # compile
  loss.block_until_ready()
  t0 = time.perf_counter()
  for _ in range(n):
    params, opt_state, loss = step(params, opt_state, b)
  loss.block_until_ready()
  return n * batch['inputs'].size / (time.perf_counter() - t0)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='small generated corpus, few steps (CI)')
  ap.add_argument('--config', default=os.path.join(os.path.dirname(__file__), '..',
                                                   'experiments', 'tiny.py'))
  ap.add_argument('--batches', type=int, default=None, help='pipeline batches to time')
  ap.add_argument('--steps', type=int, default=None, help='training steps to time')
  args = ap.parse_args(argv)
  exp = experiment.load_config(args.config)
  seq_len, gbs = int(exp.train.seq_len), int(exp.train.global_batch_size)

  tmp = tempfile.TemporaryDirectory()
  cfg = smoke_data_config(tmp.name) if args.smoke else D.default_data_config()
  t0 = time.perf_counter()
  it = D.make_train_iterator(cfg, seq_len=seq_len, global_batch_size=gbs)
  setup_s = time.perf_counter() - t0
  n_batches = args.batches or (200 if args.smoke else 2000)
  n_steps = args.steps or (5 if args.smoke else 30)
  pipe_tps = time_pipeline(it, n_batches)

  model = dict(exp.model.to_dict())
  model['vocab_size'] = D.vocab_size(cfg)
  model['max_len'] = max(model.get('max_len', seq_len), seq_len)
  mcfg = ModelConfig.from_dict(model)
  train_tps = time_training(mcfg, next(it), n_steps)
  ratio = pipe_tps / train_tps

  rows = [
      ('corpus', 'smoke (generated)' if args.smoke else 'embedded en+zh'),
      ('device', jax.devices()[0].platform),
      ('seq_len x global batch', f'{seq_len} x {gbs}'),
      ('model', f'd_model {mcfg.d_model}, layers {mcfg.n_layers}, vocab {mcfg.vocab_size}'),
      ('iterator setup s (cache build on first use)', f'{setup_s:.2f}'),
      ('pipeline tokens/s', f'{pipe_tps:,.0f}'),
      ('training tokens/s (jitted AdamW step)', f'{train_tps:,.0f}'),
  ]
  width = max(len(k) for k, _ in rows)
  for k, v in rows:
    print(f'{k:<{width}}  {v}')
  print(f'pipeline/training tokens/s ratio: {ratio:.1f}x (must be >= 10x)')


if __name__ == '__main__':
  main()
