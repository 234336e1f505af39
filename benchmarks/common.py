"""Shared benchmark helpers: interleaved timing, the device's dense-matmul FLOP/s, tables.

Benchmarks run on shared, noisy machines, so every ratio is measured *interleaved*: the two (or
more) sides alternate repetition by repetition (rotating who goes first) and we compare medians.
A slow spell then hits both sides instead of skewing one of them.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from flmjax.cli import prepare_process  # noqa: E402  (light: imports no jax)

# Before any benchmark imports jax, as the `flmjax` command does: with the `tpu` extra on a CPU
# host, jax would otherwise load libtpu and print its TPU_WORKER_HOSTNAMES / accelerator-type
# lines into every benchmark's output; and on a CPU host freed step buffers stay in the process
# (flmjax.host_memory).  Both sides of a comparison run in this one process, so both get it.
prepare_process()


def interleaved(fns: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1
                ) -> dict[str, list[float]]:
  """Seconds per call of each fn, alternating calls; each fn must block until its work is done.

  `warmup` untimed rounds first (compiles, allocator warm-up).  The order rotates every round so
  no side always runs right after the same neighbour.
  """
  names = list(fns)
  for _ in range(warmup):
    for n in names:
      fns[n]()
  times: dict[str, list[float]] = {n: [] for n in names}
  for r in range(reps):
    k = r % len(names)
    for n in names[k:] + names[:k]:
      t0 = time.perf_counter()
      fns[n]()
      times[n].append(time.perf_counter() - t0)
  return times


def enable_compile_cache(root: str) -> None:
  """Runs that differ only in seed or data order compile to the same programs: cache them on
  disk under `root`/jax_cache, so a driver of many such runs compiles each shape once.  A cache
  the environment names ($JAX_COMPILATION_CACHE_DIR: the test suite's, shared by its runs) wins."""
  import jax
  jax.config.update('jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR')
                    or os.path.join(root, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
  """'median (min–max)' in ms: how noisy a side was."""
  return f'{1e3 * median(xs):.1f} ({1e3 * min(xs):.1f}-{1e3 * max(xs):.1f})'


def jax_matmul_fn(n: int = 2048, dtype: str = 'float32') -> tuple[Callable[[], object], float]:
  """(fn, flops): one jitted n×n @ n×n matmul, the dense-matmul yardstick for utilisation."""
  import jax
  import jax.numpy as jnp
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  return (lambda: f(a, b).block_until_ready()), 2.0 * n ** 3


def torch_matmul_fn(n: int = 2048, dtype: str = 'float32') -> tuple[Callable[[], object], float]:
  """The same matmul in torch: the peak is the best either library reaches on this device."""
  import torch
  dt = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]
  g = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=g).to(dt)
  b = torch.randn(n, n, generator=g).to(dt)
  return (lambda: a @ b), 2.0 * n ** 3


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
  try:
    import psutil
    return psutil.Process().memory_info().rss
  except ImportError:  # /proc fallback (Linux)
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def fmt_si(x: float, unit: str = '') -> str:
  for p, s in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= p:
      return f'{x / p:.3g}{s}{unit}'
  return f'{x:.3g}{unit}'


def table(headers: Sequence[str], rows: Sequence[Sequence[object]],
          title: Optional[str] = None) -> str:
  """A plain right-aligned text table (no dependency)."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  line = lambda r: '  '.join(c.rjust(w) for c, w in zip(r, widths))
  out = [title] if title else []
  out += [line(cells[0]), '  '.join('-' * w for w in widths)] + [line(r) for r in cells[1:]]
  return '\n'.join(out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                title: Optional[str] = None) -> None:
  print(table(headers, rows, title), flush=True)


# ---- the real flmjax training step ---------------------------------------------------------

def flmjax_config(model: Mapping[str, object], seq_len: int, batch: int,
                  stages: Optional[list] = None):
  """An experiment config (synthetic data, default AdamW) for `model` at this shape."""
  from flmjax import experiment
  c = experiment.default_config()
  c.model.update(dict(model))
  c.model.max_len = max(int(c.model.max_len), seq_len)
  c.data.source = 'synthetic'
  c.train.update(steps=1000, seq_len=seq_len, global_batch_size=batch)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  if stages:
    c.stages = stages
  return c


def flmjax_runtimes(config) -> list:
  """One `runtime.StageRuntime` per stage: the trainer's own jitted, sharded, donating step."""
  import jax
  from flmjax import experiment, optimizer, sharding
  from flmjax.training import runtime
  stages = experiment.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  return [runtime.StageRuntime(config, stages, k, mesh, rules, schedule)
          for k in range(len(stages))]


def random_batches(n: int, batch: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
  """`n` numpy batches in the trainer's format (one document per row): fed to every side."""
  import numpy as np
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    toks = rng.integers(0, vocab, size=(batch, seq_len + 1), dtype=np.int32)
    out.append({'inputs': toks[:, :-1], 'targets': toks[:, 1:],
                'loss_weights': np.ones((batch, seq_len), np.float32),
                'segment_ids': np.ones((batch, seq_len), np.int32),
                'positions': np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                             (batch, seq_len)).copy()})
  return out


class FlmjaxStepper:
  """Calls the trainer's train step on a cycle of batches; `__call__` blocks until done."""

  def __init__(self, rt, state, host_batches: list[dict]):
    from flmjax.training.batches import to_global
    self.rt, self.state, self.i = rt, state, 0
    self.batches = [to_global(b, rt.batch_sh) for b in host_batches]

  def compiled_text(self) -> str:
    """The compiled step's HLO text (with source metadata): what `op_profile` maps ops with."""
    import flax.linen as nn
    import jax
    fn = self.rt.jitted_step('train', self.state.mask_base is not None, self.state.mask_base)
    with jax.set_mesh(self.rt.mesh), nn.logical_axis_rules(self.rt.rules):
      return fn.lower(self.state, self.batches[0]).compile().as_text()

  def __call__(self) -> float:
    import jax
    b = self.batches[self.i % len(self.batches)]
    self.i += 1
    self.state, out = self.rt.train_step(self.state, b)
    jax.block_until_ready((self.state.params, out))
    return float(out['loss'])
