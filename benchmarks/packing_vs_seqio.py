"""Packing the same token documents: flmjax's numpy packer against seqio's DecoderFeatureConverter.

  python benchmarks/packing_vs_seqio.py            # 20000 documents, seq_len 512, batch 16
  python benchmarks/packing_vs_seqio.py --smoke    # 2000 documents (seconds)

Both sides pack one pass over the same documents (random token ids, lengths drawn from a long-
tailed distribution, some longer than a row) into [batch, seq_len] rows with segment ids and
positions; interleaved repetitions, medians.  Reported per side: batches/s, loss-bearing tokens/s,
the fill (loss-bearing share of all row slots) and the share of document tokens that never reach
a row (seqio trims an example to the feature length; flmjax continues it in the next row).
The numbers go into BUILD.md's "Why not the library".
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import common
from flmjax.data.pipeline import DataIterator, Store


def make_documents(n: int, seq_len: int, seed: int = 0) -> list[np.ndarray]:
  """Token documents with log-normal lengths (median ~ seq_len / 3, ~5% longer than a row)."""
  rng = np.random.default_rng(seed)
  lengths = np.clip(rng.lognormal(np.log(seq_len / 3), 1.0, n).astype(int), 4, 8 * seq_len)
  return [rng.integers(3, 8000, size=k, dtype=np.int32) for k in lengths]


def flmjax_pass(docs: list[np.ndarray], seq_len: int, batch: int) -> tuple[int, int]:
  """(batches, loss-bearing tokens) of one pass of the numpy packer."""
  offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
  store = Store(np.concatenate(docs), offsets, np.zeros(len(docs), np.int32))
  it = DataIterator({'en': store}, {'en': 1.0}, seq_len=seq_len, global_batch_size=batch, seed=0,
                    shuffle=False, finite=True)
  n_batches = n_tokens = 0
  for b in it:
    n_batches += 1
    n_tokens += int(b['loss_weights'].sum())
  return n_batches, n_tokens


def seqio_pass(docs: list[np.ndarray], seq_len: int, batch: int) -> tuple[int, int]:
  """(batches, loss-bearing tokens) of one pass of seqio's packing decoder feature converter."""
  import seqio  # imports TensorFlow
  import tensorflow as tf
  # From in-memory tensors (no Python generator), trimmed as a Task trims its output features.
  ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(docs), [len(d) for d in docs])
  ds = tf.data.Dataset.from_tensor_slices({'targets': ragged[:, :seq_len]})
  packed = seqio.DecoderFeatureConverter(pack=True)(ds, {'targets': seq_len})
  n_batches = n_tokens = 0
  for b in packed.batch(batch).as_numpy_iterator():
    n_batches += 1
    n_tokens += int(b['decoder_loss_weights'].sum())
  return n_batches, n_tokens


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--docs', type=int, default=20000)
  p.add_argument('--seq_len', type=int, default=512)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--smoke', action='store_true', help='2000 documents, 2 repetitions')
  args = p.parse_args(argv)
  if args.smoke:
    args.docs, args.reps = 2000, 2
  docs = make_documents(args.docs, args.seq_len)
  total = sum(len(d) for d in docs)
  sides = {'flmjax numpy packer': flmjax_pass, 'seqio DecoderFeatureConverter': seqio_pass}
  t0 = time.time()
  seqio_pass(docs[:10], args.seq_len, args.batch)  # import TensorFlow outside the timing
  print(f'seqio + TensorFlow import and first pipeline: {time.time() - t0:.1f} s')
  counts = {name: fn(docs, args.seq_len, args.batch) for name, fn in sides.items()}
  times = common.interleaved({name: (lambda fn=fn: fn(docs, args.seq_len, args.batch))
                              for name, fn in sides.items()}, reps=args.reps, warmup=0)
  rows, tok_s = [], {}
  for name, (n_batches, n_tokens) in counts.items():
    sec = common.median(times[name])
    tok_s[name] = n_tokens / sec
    slots = n_batches * args.batch * args.seq_len
    rows.append([name, f'{n_batches / sec:,.0f}', common.fmt_si(n_tokens / sec),
                 f'{100 * n_tokens / slots:.1f}%', f'{100 * (1 - n_tokens / total):.1f}%',
                 common.spread(times[name])])
  common.print_table(['packer', 'batches/s', 'tokens/s', 'fill', 'tokens dropped', 'ms/pass'],
                     rows, title=f'{args.docs} documents, {total:,} tokens, seq_len '
                                 f'{args.seq_len}, batch {args.batch}')
  ours, theirs = tok_s.values()
  print(f'headline: packed tokens/s, flmjax numpy packer / seqio DecoderFeatureConverter = '
        f'{ours / theirs:.1f}x')


if __name__ == '__main__':
  main()
