"""Multi-host start-up: `jax.distributed.initialize` from flags or environment variables.

Flags win over env vars (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`,
`JAX_LOCAL_DEVICE_IDS`); `auto=True` lets JAX detect the cluster (TPU pods, SLURM, Open MPI, …).
Must run before anything touches a JAX device.  CPU processes use gloo collectives.

Also the three things the trainer needs every process to agree on: log once (`log0`), wait for
each other (`sync`), and decide together (`all_processes`).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from flmjax.config import ConfigError


def _env_int(name: str) -> Optional[int]:
  v = os.environ.get(name)
  if v in (None, ''):
    return None
  try:
    return int(v)
  except ValueError:
    raise ConfigError(f'environment variable {name} must be an integer, got {v!r}') from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               local_device_ids: Optional[Sequence[int]] = None, auto: bool = False,
               heartbeat_timeout_s: Optional[int] = None) -> bool:
  """Join the process group when configured; returns True when JAX runs multi-process.

  `heartbeat_timeout_s` (or env JAX_HEARTBEAT_TIMEOUT_SECONDS; JAX's default is 100): a process
  silent this long is declared dead and the others exit with an error naming it (no hang)."""
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes if num_processes is not None else _env_int('JAX_NUM_PROCESSES')
  process_id = process_id if process_id is not None else _env_int('JAX_PROCESS_ID')
  if local_device_ids is None and os.environ.get('JAX_LOCAL_DEVICE_IDS'):
    local_device_ids = [int(x) for x in os.environ['JAX_LOCAL_DEVICE_IDS'].split(',')]
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f'multi-host: --num_processes must be >= 1, got {num_processes}')
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f'multi-host: --process_id {process_id} must be in [0, {num_processes}) '
                      f'for --num_processes {num_processes}')
  if not (auto or coordinator_address):
    if (num_processes or 1) > 1 or process_id:  # would silently train as one process
      raise ConfigError(
          f'multi-host: --num_processes {num_processes} / --process_id {process_id} need '
          f'--coordinator_address host:port of process 0 (or JAX_COORDINATOR_ADDRESS), or '
          f'--distributed to detect the cluster')
    return False
  if coordinator_address and (num_processes is None or process_id is None):
    raise ConfigError('multi-host: --coordinator_address needs --num_processes and --process_id '
                      '(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  if local_device_ids is not None:
    kwargs['local_device_ids'] = list(local_device_ids)
  heartbeat = (heartbeat_timeout_s if heartbeat_timeout_s is not None
               else _env_int('JAX_HEARTBEAT_TIMEOUT_SECONDS'))
  if heartbeat is not None:
    kwargs['heartbeat_timeout_seconds'] = heartbeat
  jax.distributed.initialize(**kwargs)
  return jax.process_count() > 1


def log0(msg: str) -> None:
  """Print on process 0 only (one line per event in a multi-host log)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def sync(name: str) -> None:
  """Barrier across processes (a no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def all_processes(ok: bool) -> bool:
  """True iff `ok` on every process, so all raise or none do (instead of some hanging)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))
