"""Scored examples/s of the flmjax evaluation engine against the Hugging Face backend.

  python benchmarks/eval_throughput.py            # GPT-2-small-shaped models (124M), 256 examples
  python benchmarks/eval_throughput.py --smoke    # tiny models, few examples (CI)

Both backends score the same (prompt, answer) pairs, generated IQ items tokenised by one shared
byte-level tokenizer, with equally shaped decoders (width, depth, heads, FFN, context; random
weights: the architectures differ only in position encoding, xPos vs learned).  Each backend runs
once to warm up (jit compilation, torch allocator), then is timed on the same inputs.  Prints a
table, then on the last line the headline ratio: flmjax examples/s / HF examples/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import common  # first: it keeps libtpu quiet on a host without a TPU  # noqa: F401
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from flmjax.config import ModelConfig  # noqa: E402
from flmjax.evaluation import iq_patterns, iq_rules  # noqa: E402
from flmjax.evaluation.engine import FlmEngine  # noqa: E402
from flmjax.model import Transformer  # noqa: E402


class ByteTokenizer:
  """Bytes 0..255 are ids 0..255; 256 is end of text (the layout of a byte-level GPT-2 vocab)."""

  eos_id = 256
  vocab_size = 257

  def encode(self, s):
    return list(s.encode('utf-8'))

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode('utf-8', errors='replace')


SHAPES = {  # d_model, n_layers, n_heads, d_ff, context
    'full': (768, 12, 12, 3072, 1024),
    'smoke': (64, 2, 2, 256, 256),
}


def requests(n: int) -> list[tuple[str, str]]:
  """(prompt, gold answer) pairs from generated IQ tasks: a mix of lengths."""
  per = -(-n // 4)
  tasks = [iq_rules.make_task('replace_word', per, seed=0, k_shot=2),
           iq_rules.make_task('counting', per, seed=0),
           iq_patterns.make_task('head_tail', per, seed=0, k_shot=3),
           iq_patterns.make_task('full_repeating', per, seed=0, k_shot=3)]
  return [(it.prompt, it.answer) for t in tasks for it in t.items][:n]


def timed(fn, reqs) -> float:
  fn(reqs)  # warm-up: compilation and allocation are not throughput
  t0 = time.perf_counter()
  fn(reqs)
  return time.perf_counter() - t0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--smoke', action='store_true', help='tiny models and few examples (CI)')
  p.add_argument('--examples', type=int, default=None)
  p.add_argument('--batch_size', type=int, default=16)
  args = p.parse_args(argv)
  try:
    import torch
    import transformers
    from flmjax.evaluation.hf_backend import HFBackend
  except ImportError:
    print('eval_throughput: needs the hf extra (pip install "flmjax[hf]")', file=sys.stderr)
    return 1
  d, layers, heads, ff, ctx = SHAPES['smoke' if args.smoke else 'full']
  n = args.examples or (32 if args.smoke else 256)
  reqs = requests(n)
  tok = ByteTokenizer()

  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=d, n_heads=heads, head_dim=d // heads,
                    d_ff=ff, n_layers=layers, max_len=ctx)
  params = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  flm = FlmEngine(params['params'], cfg, tok, batch_size=args.batch_size)

  torch.manual_seed(0)
  gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=tok.vocab_size, n_positions=ctx, n_embd=d, n_layer=layers, n_head=heads,
      n_inner=ff, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id))
  hf = HFBackend('', batch_size=args.batch_size, tokenizer=tok, model=gpt2)

  n_tokens = sum(len(tok.encode(a + b)) for a, b in reqs)
  rows = []
  for name, backend in (('flmjax', flm), ('hf', hf)):
    sec = timed(backend.loglikelihood, reqs)
    rows.append((name, sec, len(reqs) / sec, n_tokens / sec))
  print(f'device: jax {jax.devices()[0].platform}, torch {hf.device}; model d={d} L={layers} '
        f'H={heads} F={ff} ctx={ctx}; {len(reqs)} examples, {n_tokens} tokens, '
        f'batch {args.batch_size}')
  print(f"{'backend':8}  {'seconds':>8}  {'examples/s':>10}  {'tokens/s':>10}")
  for name, sec, eps, tps in rows:
    print(f'{name:8}  {sec:8.3f}  {eps:10.2f}  {tps:10.0f}')
  print(f'flmjax examples/s / HF examples/s: {rows[0][2] / rows[1][2]:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
