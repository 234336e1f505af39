"""Keep freed host memory in the process, so XLA:CPU's per-step buffers are not re-faulted.

XLA:CPU allocates each step's temporaries (activations, gradients, the logits: about 1 GB for a
10M-parameter model at 512 × 8 tokens) with malloc and frees them when the step ends.  glibc
serves such large blocks with fresh `mmap`s (or per-thread heaps it trims) and hands them back to
the kernel on free, so every step faults the same gigabyte in again, page by page: 290k minor
faults and ~15% of a one-thread CPU step spent in the kernel (`benchmarks/train_throughput.py`,
BUILD.md › Performance).  Three `mallopt` settings stop the round trip: one arena (XLA's worker
threads would otherwise each get a heap that glibc trims), no `mmap` for large blocks, and no
trimming of the heap's top.  Freed blocks are then reused by the next step.  The price is host
memory: the process keeps its peak, and the one heap's fragmentation settles at about twice the
step's temporaries within a few steps (a 10M model's peak RSS 1.9 → 4.1 GB, then flat).  Nothing a
computation returns changes, only where its buffers live.

Applied by `flmjax.cli.prepare_process` (the `flmjax` command, the benchmarks) before JAX starts
its threads (the arena limit binds only threads created after it), and only where the steps run on
the CPU: an accelerator's step buffers live in device memory.  glibc only; elsewhere, or with
`FLMJAX_HOST_MALLOC=system`, nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = 'FLMJAX_HOST_MALLOC'
# glibc's <malloc.h> parameter numbers
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# (mallopt(3): a trim threshold of -1 disables trimming completely; a positive int would cap it
# at 2 GiB, below a 50M model's step temporaries)
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))

_applied = False


def retain_freed_memory() -> bool:
  """Apply `SETTINGS` once per process; True if they are in force.  Idempotent."""
  global _applied
  if _applied:
    return True
  if os.environ.get(ENV, '') == 'system' or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS)
  return _applied
