"""Will a run fit a TPU slice?  Compile every stage and every growth for it, on a CPU host.

A pod hour costs far more than a CPU compile, and the first OOM or divisibility error of a
101B run otherwise shows up after the job was scheduled.  libtpu (the `tpu` extra) compiles for a
*described* topology (`jax.experimental.topologies`) without any TPU attached, so for every stage
we lower the very jitted train / eval step the trainer runs (`StageRuntime.jitted_step`) on
abstract state and batch (ShapeDtypeStructs carrying the target NamedShardings), and for every
growth the jitted `grow_state` with the target shardings; XLA's memory analysis then gives each
chip's peak HBM.  Nothing is allocated and nothing is downloaded.

Slices are named as Google Cloud names them: `v5p-512` and `v4-512` count TensorCores (2 per v4 /
v5p chip, so 256 chips, topology 4x8x8), `v5litepod-16` / `v5e-16` / `v6e-16` count chips; or give
the topology itself, `v5p:8x8x8` (512 chips, = v5p-1024).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

GiB = 1024 ** 3


class PodPlanError(RuntimeError):
  """The plan cannot be made (unknown slice, libtpu missing); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation.  `hbm_usable` is what libtpu's compiler allows a program per device
  (its RESOURCE_EXHAUSTED message, libtpu 0.0.42): the capacity we compare against."""
  prefix: str                 # libtpu topology prefix: 'v4', 'v5p', 'v5e', 'v6e'
  names: tuple[str, ...]      # Cloud accelerator-type prefixes: 'v5p-512', 'v5litepod-16'
  hbm_spec: int               # bytes per chip, public spec
  hbm_usable: int             # bytes per device the compiler allows
  peak_bf16: float            # dense bf16 FLOP/s per chip, public spec
  cores_per_chip_in_name: int  # v4-N / v5p-N count TensorCores (2 per chip); v5e/v6e chips
  dims: int                   # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
  source: str
  # libtpu describes a v4 chip as two devices (one per TensorCore) unless asked for 'megacore',
  # the mode TPU VMs run v4 in (one device per chip, as v5p by default)
  chip_config: str = ''


CHIPS: dict[str, Chip] = {c.prefix: c for c in (
    Chip('v4', ('v4',), 32 * GiB, int(30.75 * GiB), 275e12, 2, 3,
         'cloud.google.com/tpu/docs/v4 (32 GiB HBM2, 275 bf16 TFLOP/s per chip)', 'megacore'),
    Chip('v5p', ('v5p',), 95 * 10 ** 9, int(95.74 * GiB), 459e12, 2, 3,
         'cloud.google.com/tpu/docs/v5p (95 GB HBM2e, 459 bf16 TFLOP/s per chip)'),
    Chip('v5e', ('v5e', 'v5litepod'), 16 * 10 ** 9, int(15.75 * GiB), 197e12, 1, 2,
         'cloud.google.com/tpu/docs/v5e (16 GB HBM2, 197 bf16 TFLOP/s per chip)'),
    Chip('v6e', ('v6e',), 32 * 10 ** 9, int(31.25 * GiB), 918e12, 1, 2,
         'cloud.google.com/tpu/docs/v6e (32 GB HBM, 918 bf16 TFLOP/s per chip)'),
)}

# FLM-101B (Li et al. 2023, Table 1): wall-clock days per growth stage on 24 DGX-A800 nodes
# (192 GPUs), keyed by (d_model, n_layers).  These are our reading of the paper: 9.63 / 5.37 /
# 6.54 days, summing to the 21.54 days it quotes for the whole run; they could not be checked
# against the PDF from this environment, so treat them as unverified.
PAPER_DAYS = {(4096, 80): 9.63, (7168, 80): 5.37, (10240, 80): 6.54}
PAPER_MFU = 0.52  # the paper reports ≈52% model FLOPs utilisation on its A800s


@dataclasses.dataclass(frozen=True)
class Slice:
  chip: Chip
  shape: tuple[int, ...]
  num_slices: int = 1

  @property
  def topology(self) -> str:
    return f'{self.chip.prefix}:' + 'x'.join(map(str, self.shape))

  @property
  def chips(self) -> int:
    return math.prod(self.shape) * self.num_slices

  def __str__(self) -> str:
    s = f'{self.topology} ({self.chips} chips'
    return s + (f', {self.num_slices} slices)' if self.num_slices > 1 else ')')


def standard_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The torus Cloud builds for a power-of-two chip count: 4x8x8 for 256 v5p chips."""
  if chips < 1 or chips & (chips - 1):
    raise PodPlanError(f'{chips} chips is not a power of two: give the topology itself, '
                       f'e.g. v5p:4x4x12')
  if dims == 3 and chips <= 4:  # one host: 1x1x1, 2x1x1, 2x2x1
    return {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1)}[chips]
  shape = [2, 2, 2] if dims == 3 else [1, 1]
  while math.prod(shape) < chips:  # double the last of the smallest dims: 2x2x2 → 2x2x4 → 2x4x4
    low = min(shape)
    shape[max(j for j, s in enumerate(shape) if s == low)] *= 2
  return tuple(shape)


def parse_slice(text: str, num_slices: int = 1) -> Slice:
  """'v5p-512' (Cloud accelerator type) or 'v5p:4x8x8' (topology) → Slice."""
  text = text.strip().lower()
  if num_slices < 1:
    raise PodPlanError(f'--num_slices must be >= 1, got {num_slices}')
  m = re.fullmatch(r'([a-z0-9]+):(\d+(?:x\d+)+)', text)
  if m:
    chip = _chip(m.group(1), text)
    shape = tuple(int(x) for x in m.group(2).split('x'))
    if len(shape) != chip.dims:
      raise PodPlanError(f'{text}: a {chip.prefix} topology has {chip.dims} dimensions')
    return Slice(chip, shape, num_slices)
  m = re.fullmatch(r'([a-z0-9]+)-(\d+)', text)
  if not m:
    raise PodPlanError(f'--topology {text!r}: expected e.g. v5p-512 or v5p:4x8x8')
  chip = _chip(m.group(1), text)
  n = int(m.group(2))
  if n % chip.cores_per_chip_in_name:
    raise PodPlanError(f'{text}: {chip.prefix}-N counts TensorCores, {chip.cores_per_chip_in_name}'
                       f' per chip; N must be a multiple of {chip.cores_per_chip_in_name}')
  return Slice(chip, standard_shape(n // chip.cores_per_chip_in_name, chip.dims), num_slices)


def _chip(prefix: str, text: str) -> Chip:
  for chip in CHIPS.values():
    if prefix in chip.names or prefix == chip.prefix:
      return chip
  known = ', '.join(n for c in CHIPS.values() for n in c.names)
  raise PodPlanError(f'--topology {text!r}: unknown TPU generation {prefix!r}; known: {known} '
                     f'(add one to flmjax.training.aot.CHIPS with its HBM and peak FLOP/s)')


INSTALL_HINT = ("pip install -e '.[tpu]'   (the `tpu` extra: jax[tpu] pinned to our jax, i.e. "
                'libtpu from PyPI)')


def require_libtpu() -> None:
  if importlib.util.find_spec('libtpu') is None:
    raise PodPlanError('compiling for a TPU slice needs libtpu, which is not installed: '
                       + INSTALL_HINT)


def no_persistent_cache() -> None:
  """A persistent-cache entry of a compile-only program cannot be loaded (there is no TPU client)
  and only makes jax warn; these compiles are one-offs anyway.  Process-wide: commands only."""
  import jax
  jax.config.update('jax_enable_compilation_cache', False)


def topology_devices(sl: Slice) -> list[Any]:
  """Compile-only devices of the slice (no TPU needed)."""
  require_libtpu()
  # libtpu reads these when the plugin loads; without them it probes for a TPU VM's metadata and
  # prints pages of warnings.  They only describe *this* host, not the target slice.
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-1')
  # Compile-only: several processes (parallel tests, a background plan) may load libtpu at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  import jax
  from jax.experimental import topologies
  if not jax.config.jax_platforms:  # compiling needs no TPU backend: don't let jax probe for one
    jax.config.update('jax_platforms', 'cpu')
  kw = {'num_slices': sl.num_slices} if sl.num_slices > 1 else {}
  if sl.chip.chip_config:
    kw['chip_config_name'] = sl.chip.chip_config
  return list(topologies.get_topology_desc(sl.topology, 'tpu', **kw).devices)


# ---- the plan ------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
  """One compiled program: a stage's train / eval step or a growth."""
  kind: str                    # 'train', 'train (ramp masks)', 'eval', 'growth'
  name: str                    # stage name, or 'A -> B'
  mesh: tuple[int, int, int]
  params: int
  param_bytes: int = 0         # per chip
  opt_bytes: int = 0           # per chip
  peak_bytes: int = 0          # per chip: arguments + temporaries + outputs - aliased
  capacity: int = 0
  flops_per_step: float = 0.0  # model FLOPs of one optimizer step (the trainer's count)
  steps: int = 0
  step_s: float = 0.0          # at the stated MFU
  days: float = 0.0
  paper_days: Optional[float] = None
  compile_s: float = 0.0
  error: str = ''
  global_batch: int = 0        # the stage's global batch (an eval step takes 1/grad_accum)
  batch_shards: int = 0
  rows_per_host: int = 0       # train rows: global batch rows each host feeds per step
  hosts_per_shard: int = 0     # train rows: hosts that feed the same batch shard (model axes
                               # spanning hosts)

  @property
  def ratio(self) -> float:
    return self.peak_bytes / self.capacity if self.capacity else float('nan')

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), 'ratio': self.ratio}


def _chip_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  import jax
  import numpy as np
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def peak_bytes(compiled: Any) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes)


_OOM = re.compile(r'RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT]?)\).*?available HBM '
                  r'\(([\d.]+)([KMGT]?)\)', re.S)


def describe_error(e: BaseException) -> str:
  """One line: XLA's out-of-memory figures, else the exception's first line."""
  msg = str(e)
  m = _OOM.search(msg)
  if m:
    return f'out of HBM: needs {m.group(1)}{m.group(2)}iB of temporaries, {m.group(3)}' \
           f'{m.group(4)}iB available'
  return (msg.strip().splitlines() or [type(e).__name__])[0][:300]


def next_grad_accum(global_batch: int, batch_shards: int, grad_accum: int) -> Optional[int]:
  """The smallest grad_accum above `grad_accum` whose micro-batch still divides the batch shards
  (None when the micro-batch is already one row per shard)."""
  per_shard = global_batch // batch_shards if batch_shards else 0
  return next((a for a in range(grad_accum + 1, per_shard + 1)
               if global_batch % (batch_shards * a) == 0), None)


def oom_advice(config: Any, row: Row) -> str:
  """What can make `row`'s program fit, and only that, most effective first.  When the state alone
  (params, gradients of a train step, optimizer state) fills the chip, nothing that shrinks
  activations helps: only more chips do."""
  if row.kind == 'growth':
    return ('the growth holds the old and the new state at once: use more chips (a larger slice '
            'or mesh.fsdp) or shard more of the state (mesh.rules)')
  train = row.kind.startswith('train')
  state = row.param_bytes * (2 if train else 1) + row.opt_bytes
  if row.capacity and state >= 0.9 * row.capacity:
    what = 'parameters, gradients and optimizer state' if train else 'parameters and optimizer state'
    return (f'{what} alone need {_gib(state)} per chip of {_gib(row.capacity)}: use more chips '
            f'(a larger slice; mesh.fsdp=-1 takes them), which shards the state further; '
            f'optim.grad_accum, remat and sequence parallelism only shrink activations')
  rules = config.mesh.get('rules') or {}
  sp = tuple(rules.get('act_length') or ()) == ('tensor',)
  accum = int(config.optim.grad_accum)
  tips = []
  more = next_grad_accum(row.global_batch, row.batch_shards, accum)
  if more:
    tips.append(f'raise optim.grad_accum (now {accum}) to {more} or more (activations shrink with '
                f'the micro-batch; global_batch_size / grad_accum must still divide the '
                f'{row.batch_shards} batch shards)')
  if train and config.model.get('remat', 'none') != 'full':
    tips.append(f"set model.remat='full' (now {config.model.get('remat')!r})")
  if not sp and config.mesh.get('tensor', 1) != 1:
    tips.append("shard the residual stream over tensor (sequence parallelism): "
                "--config.mesh.rules.act_length=tensor")
  tips.append('use more chips' + ('' if more else ' or a smaller global_batch_size (the '
                                  'micro-batch is already one sequence per batch shard)'))
  return '; '.join(tips)


def config_fix(config: Any, sl: Slice) -> str:
  """'To fix' for a config error of `compile_stages`, naming only the knobs that can help: a mesh
  that does not tile the slice's chips, or a batch that does not split over the batch shards."""
  from flmjax import experiment, plan, sharding
  from flmjax.config import ConfigError
  try:
    shape = sharding.mesh_shape(config.mesh, sl.chips)
  except ConfigError:
    return (f'set mesh.data × mesh.fsdp × mesh.tensor to the slice\'s {sl.chips} chips (one may '
            f'be -1; mesh.tensor must divide {sl.chips})')
  try:
    shards = sharding.batch_shards(dict(zip(sharding.MESH_AXES, shape)),
                                   sharding.logical_rules(config.mesh))
    stages = plan.stage_plan(config)
  except ConfigError:
    return ''
  accum = int(config.optim.grad_accum)
  for s in stages:
    b = s.global_batch_size
    if b % accum == 0 and (b // accum) % shards == 0:
      continue
    step = shards * accum
    lo, hi = b // step * step, (b // step + 1) * step
    field = experiment.batch_field(config, s.index)
    tips = []
    accums = [a for a in range(1, b // shards + 1) if b % (shards * a) == 0] if b % shards == 0 \
        else []
    if accums:
      tips.append(f'optim.grad_accum one of {accums[:8]}')
    tips.append(f'{field} a multiple of {step} ({", ".join(str(x) for x in (lo, hi) if x)})')
    tips.append(f'fewer batch shards (mesh.data × mesh.fsdp dividing {b // accum if b % accum == 0 else b}, '
                f'mesh.tensor taking the rest)')
    return '; or '.join(tips)
  return ''


def compile_stages(config: Any, sl: Slice, *, stage: Optional[str] = None,
                   mfu: float = PAPER_MFU, eval_step: bool = True,
                   log: Callable[[str], None] = print) -> list[Row]:
  """Compile every stage (or only `stage` and the growth into it) for `sl`; one Row each.

  Config errors (divisibility, unknown fields) raise ConfigError before anything compiles."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from flmjax import experiment, growth, optimizer, sharding
  from flmjax.params import flatten_paths
  from flmjax.training import batches
  from flmjax.training.runtime import StageRuntime

  devices = topology_devices(sl)
  stages = experiment.validate(config, len(devices))
  names = [s.name for s in stages]
  if stage is not None and stage not in names:
    from flmjax.config import ConfigError
    raise ConfigError(f'--stage {stage!r}: the experiment has stages {names}')
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.mesh)
  mesh_shape = tuple(mesh.shape[a] for a in sharding.MESH_AXES)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  accum = int(config.optim.grad_accum)
  rows: list[Row] = []
  feeds = {}  # before compiling anything: each host's rows, as the trainer will feed them
  for k, st in enumerate(stages):
    if stage is None or st.name == stage:
      feed = feeds[k] = host_feeding(sharding.batch_sharding(mesh, rules), st.global_batch_size,
                                     accum, experiment.batch_field(config, k))
      log(f'feeding {st.name}: {feed["hosts"]} hosts × {feed["chips_per_host"]} chips; each '
          f'host feeds {feed["rows_per_host"]} of the {st.global_batch_size} rows of a step '
          f'({feed["hosts_per_shard"]} host(s) feed each of the {feed["shards"]} batch shards)')

  def compile_row(row: Row, fn: Callable, *args) -> None:
    t0 = time.time()
    log(f'compiling {row.kind} {row.name} for {sl} ...')
    try:
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = fn.lower(*args).compile()
      row.peak_bytes = peak_bytes(compiled)
    except Exception as e:  # pylint: disable=broad-except
      row.error = describe_error(e)
      if 'RESOURCE_EXHAUSTED' in str(e):
        row.error += '. To fit: ' + oom_advice(config, row)
    row.compile_s = time.time() - t0
    rows.append(row)
    log(format_row(row) if not row.error else f'  {row.kind} {row.name}: {row.error}')

  for k, st in enumerate(stages):
    if stage is not None and st.name != stage:
      continue
    rt = StageRuntime(config, stages, k, mesh, rules, schedule)
    abstract = rt.abstract_state()
    base = dict(mesh=mesh_shape, params=st.model.param_count(), capacity=sl.chip.hbm_usable,
                global_batch=st.global_batch_size,
                batch_shards=batches.batch_axes_of(rt.batch_sh)[1])
    mask_shapes = None
    if k > 0:  # the growth into this stage, from the previous stage's final state
      prev = StageRuntime(config, stages, k - 1, mesh, rules, schedule)
      src = prev.abstract_state()
      rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rt.repl)
      grow = growth.make_grow_fn(prev.cfg, rt.cfg, st.growth, src.opt_state, mesh=mesh,
                                 rules=rules)
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        _, _, masks = jax.eval_shape(grow, src.params, src.opt_state, rng)
      if masks is not None and st.growth.ramp_steps > 0:
        mask_shapes = {p: list(v.shape) for p, v in flatten_paths(masks).items()}
      compile_row(Row('growth', f'{stages[k - 1].name} -> {st.name}', **base,
                      param_bytes=_chip_bytes(abstract.params),
                      opt_bytes=_chip_bytes(abstract.opt_state)),
                  grow, src.params, src.opt_state, rng)
    flops = st.model.flops_per_token(st.seq_len) * st.tokens_per_step
    step_s = flops / (sl.chips * sl.chip.peak_bf16 * mfu)
    step = dict(base, param_bytes=_chip_bytes(abstract.params),
                opt_bytes=_chip_bytes(abstract.opt_state), flops_per_step=flops,
                steps=st.steps, step_s=step_s, days=st.steps * step_s / 86400,
                paper_days=PAPER_DAYS.get((st.model.d_model, st.model.n_layers)))
    step.update(rows_per_host=feeds[k]['rows_per_host'],
                hosts_per_shard=feeds[k]['hosts_per_shard'])
    batch = _abstract_batch(st.global_batch_size, st.seq_len, rt.batch_sh)
    variants = [(None, 'train')]
    if mask_shapes:  # the first ramp_steps steps after a growth carry the masks
      variants.insert(0, (mask_shapes, 'train (ramp masks)'))
    for shapes, kind in variants:
      state = rt.abstract_state(shapes)
      jitted = rt.jitted_step('train', shapes is not None, state.mask_base)
      compile_row(Row(kind, st.name, **step), jitted, state, batch)
    if eval_step:
      eval_batch = _abstract_batch(st.global_batch_size // accum, st.seq_len, rt.batch_sh)
      jitted = rt.jitted_step('eval', False, None)
      compile_row(Row('eval', st.name, **base, param_bytes=step['param_bytes'],
                      opt_bytes=step['opt_bytes']), jitted, abstract, eval_batch)
  return rows


def host_feeding(sharding_: Any, global_rows: int, grad_accum: int, what: str) -> dict[str, int]:
  """How the slice's hosts (its devices' processes) feed one stage's batches: the trainer's own
  rule (`batches.host_rows`: each host feeds the rows its chips hold).  Refuses (ConfigError,
  naming `what` and the batch axes) a batch that does not split over the batch shards, and a
  layout that would leave a row unfed or feed hosts unequal shares."""
  import numpy as np
  from flmjax.config import ConfigError
  from flmjax.training import batches
  rows = batches.host_rows(sharding_, global_rows, grad_accum=grad_accum, what=what)
  fed = np.unique(np.concatenate(list(rows.values())))
  counts = sorted({len(r) for r in rows.values()})
  if len(fed) != global_rows or len(counts) != 1:
    raise ConfigError(f'{what}={global_rows}: the hosts would feed {len(fed)} distinct rows in '
                      f'shares of {counts} rows: the batch sharding does not tile the hosts')
  chips: dict[Any, int] = {}
  for d in sharding_.mesh.devices.flat:
    chips[batches.host_key(d)] = chips.get(batches.host_key(d), 0) + 1
  _, shards = batches.batch_axes_of(sharding_)
  first = global_rows // shards  # hosts feeding shard 0 (rows [0, first))
  return {'hosts': len(rows), 'chips_per_host': max(chips.values()), 'rows_per_host': counts[0],
          'shards': shards, 'hosts_per_shard': sum(1 for r in rows.values() if r[0] < first)}


def _abstract_batch(rows: int, seq_len: int, sharding_: Any) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  from flmjax.training.batches import BATCH_KEYS
  dtypes = {'loss_weights': jnp.float32}
  return {k: jax.ShapeDtypeStruct((rows, seq_len), dtypes.get(k, jnp.int32), sharding=sharding_)
          for k in BATCH_KEYS}


# ---- report --------------------------------------------------------------------------------

HEADER = ('program', 'stage', 'mesh d,f,t', 'params', 'params/chip', 'opt/chip', 'peak HBM/chip',
          'of HBM', 'FLOPs/step', 'step s', 'days', 'paper days', 'compile s')


def _gib(b: float) -> str:
  return f'{b / GiB:.2f} GiB' if b >= GiB / 10 else f'{b / 2 ** 20:.2f} MiB'


def _count(n: int) -> str:
  return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.2f}M'


def row_cells(r: Row) -> tuple[str, ...]:
  step = bool(r.flops_per_step)
  return (r.kind, r.name, ','.join(map(str, r.mesh)), _count(r.params),
          _gib(r.param_bytes), _gib(r.opt_bytes),
          'FAILED' if r.error else f'{_gib(r.peak_bytes)} / {_gib(r.capacity)}',
          '' if r.error else f'{100 * r.ratio:.1f}%',
          f'{r.flops_per_step:.3e}' if step else '', f'{r.step_s:.2f}' if step else '',
          f'{r.days:.2f}' if step else '',
          '' if r.paper_days is None or not step else f'{r.paper_days:.2f}',
          f'{r.compile_s:.0f}')


def format_row(r: Row) -> str:
  return '  ' + '  '.join(f'{h}={c}' for h, c in zip(HEADER, row_cells(r)) if c)


def days_footer(rows: Sequence[Row], mfu: float, all_stages: bool = True) -> str:
  """The summed training days, naming the stages summed (a `--stage` plan is one stage, not the
  run).  A stage one of whose programs (or the growth into it) failed does not fit: its days
  would be a plan that cannot run, so they are not summed ("n/a" when no stage fits)."""
  train = [r for r in rows if r.kind == 'train']
  failed = {r.name.split(' -> ')[-1] for r in rows if r.error}
  names = ', '.join(r.name for r in train)
  what = (f'all stages: {names}' if all_stages else
          f"stage{'s' if len(train) > 1 else ''} {names} only")
  fit = [r for r in train if r.name not in failed]
  bad = [r.name for r in train if r.name in failed]
  paper = [r.paper_days for r in train if r.paper_days is not None]
  if not bad:
    days = f'{sum(r.days for r in fit):.2f}'
  else:
    n = f"{len(bad)} stage{'s' if len(bad) > 1 else ''}"
    days = (f"n/a: {n} ({', '.join(bad)}) do{'' if len(bad) > 1 else 'es'} not fit"
            + (f"; {', '.join(r.name for r in fit)}, which fit{'' if len(fit) > 1 else 's'}: "
               f'{sum(r.days for r in fit):.2f}' if fit else ''))
  return (f'training days ({what}; at {100 * mfu:.0f}% MFU): {days}'
          + (f'; paper: {sum(paper):.2f} on 192 A800s' if paper else ''))


def format_table(rows: Sequence[Row], sl: Slice, mfu: float, all_stages: bool = True) -> str:
  cells = [HEADER] + [row_cells(r) for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
  line = lambda c: '  '.join(x.rjust(w) if i > 1 else x.ljust(w)
                             for i, (x, w) in enumerate(zip(c, widths)))
  out = [f'pod plan for {sl}: {sl.chip.prefix} {_gib(sl.chip.hbm_usable)} usable HBM and '
         f'{sl.chip.peak_bf16 / 1e12:.0f} bf16 TFLOP/s per chip ({sl.chip.source}); step time '
         f'and days at {100 * mfu:.0f}% MFU']
  out += [line(cells[0]), line(['-' * w for w in widths])] + [line(c) for c in cells[1:]]
  out.append(days_footer(rows, mfu, all_stages))
  for r in rows:
    if r.error:
      out.append(f'FAILED {r.kind} {r.name}: {r.error}')
  return '\n'.join(out)
