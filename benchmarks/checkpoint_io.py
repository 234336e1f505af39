"""Checkpoint save and restore time, local disk vs a GCS server (gs://), for the 50M model.

  python benchmarks/checkpoint_io.py            # 50M params + AdamW moments, 3 reps
  python benchmarks/checkpoint_io.py --smoke    # a tiny model, 1 rep (CI: tests/test_benchmarks_smoke.py)

The checkpoint is the trainer's: `flmjax.storage.checkpoint.StageCheckpointer` (orbax +
TensorStore, our manifest written after the save: the commit marker on gs://), saved
synchronously; restore is what every reader does: `verify_step` (size + CRC32 of every file)
then orbax's restore onto one device.  The state is the params plus two Adam moments of the same
shapes (3× the parameter bytes, float32), random values (nothing compresses).  The server is
fake-gcs-server on 127.0.0.1 (tests/gcs_server.py), so "gs://" here measures the object-store
protocol (HTTP requests, no rename, the manifest read back over HTTP), not a network.  Sides are
interleaved (benchmarks/common.py).  The last line is the headline: gs:// time / local time for
save + restore.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

sys.path.insert(0, os.path.join(common.ROOT, 'tests'))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# d_model 640, 8 layers, vocab 16384: 50.6M parameters (benchmarks/train_throughput.py's 50m)
MODEL_50M = dict(vocab_size=16384, d_model=640, n_heads=10, head_dim=64, d_ff=2560, n_layers=8)
MODEL_SMOKE = dict(vocab_size=256, d_model=64, n_heads=2, head_dim=32, d_ff=256, n_layers=2)


def make_state(fields: dict):
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from flmjax.config import ModelConfig
  from flmjax.model import abstract_params
  cfg = ModelConfig(**fields)
  shapes = nn.meta.unbox(abstract_params(cfg))
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(0), 3 * len(leaves))
  def fill(i):
    return jax.tree.unflatten(tree, [jax.random.normal(keys[i * len(leaves) + j], x.shape,
                                                       jnp.float32)
                                     for j, x in enumerate(leaves)])
  state = {'params': fill(0), 'mu': fill(1), 'nu': fill(2), 'step': jnp.int32(0)}
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  return cfg, state, n_params


def runner(root: str, state):
  """(save, restore) closures writing a new step under `root` each time."""
  import jax

  from flmjax.storage import checkpoint, paths
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
      state)
  counter = {'step': 0}

  def save():
    counter['step'] += 1
    ckptr = checkpoint.StageCheckpointer(root, keep=1, async_save=False)
    try:
      ckptr.save(counter['step'], state, config={}, meta={'stage': 0}, data_state={})
    finally:
      ckptr.close()

  def restore():
    step_dir = paths.join(root, str(counter['step']))
    checkpoint.verify_step(step_dir)
    ckptr = checkpoint.StageCheckpointer(root, read_only=True)
    try:
      out = ckptr.restore_state(counter['step'], abstract)
    finally:
      ckptr.close()
    jax.block_until_ready(out)

  return save, restore


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='a tiny model, 1 rep (CI)')
  ap.add_argument('--reps', type=int, default=3)
  args = ap.parse_args()
  from gcs_server import GcsServer

  fields, reps = (MODEL_SMOKE, 1) if args.smoke else (MODEL_50M, args.reps)
  cfg, state, n_params = make_state(fields)
  nbytes = 4 * 3 * n_params
  with tempfile.TemporaryDirectory() as tmp:
    server = GcsServer(tmp).start()
    os.environ.update(server.env)
    try:
      bucket = server.bucket('checkpoint-io')
      save_l, restore_l = runner(os.path.join(tmp, 'local', 'stage_0'), state)
      save_g, restore_g = runner(f'{bucket}/bench/stage_0', state)
      pairs = {'local': (save_l, restore_l), 'gs://': (save_g, restore_g)}
      times = common.interleaved(
          {f'{side} {what}': fn for side, fns in pairs.items()
           for what, fn in zip(('save', 'restore'), fns)}, reps=reps, warmup=1)
    finally:
      server.stop()
  print(f'checkpoint I/O, {n_params / 1e6:.1f}M params + 2 Adam moments = '
        f'{nbytes / 2**20:.0f} MiB per checkpoint; median (min-max) ms over {reps} rep(s)')
  rows = []
  for side in pairs:
    s, r = times[f'{side} save'], times[f'{side} restore']
    total = common.median(s) + common.median(r)
    rows.append((side, common.spread(s), common.spread(r), f'{1e3 * total:.0f}',
                 f'{nbytes / 2**20 / total:.1f}'))
  print(f'{"storage":<8}  {"save ms":>24}  {"restore ms":>24}  {"total ms":>9}  {"MiB/s":>6}')
  for row in rows:
    print(f'{row[0]:<8}  {row[1]:>24}  {row[2]:>24}  {row[3]:>9}  {row[4]:>6}')
  local = common.median(times['local save']) + common.median(times['local restore'])
  remote = common.median(times['gs:// save']) + common.median(times['gs:// restore'])
  print(f'headline: gs:// / local save+restore time ({cfg.param_count() / 1e6:.1f}M model) = '
        f'{remote / local:.2f}x')


if __name__ == '__main__':
  main()
