"""`flmjax train`: the sharded training loop over one or more growth stages.

The run is a list of stages (`experiment.stage_plan`); stage 0 is initialised, each later stage
starts by growing the previous stage's params *and* Adam state (`flmjax.growth.grow_state`) and
saving the grown state in `W/stage_K/` before its first step, so a restart right after a growth
continues exactly.  Steps are global (they continue across stages), as does the LR schedule.

The train step is one `jax.jit` with explicit NamedSharding in/out shardings built from the mesh
and the logical rules; gradient accumulation is a scan over micro-batches.  While a growth's
masks ramp in, alpha is computed inside the step from the step counter (no recompiles); after
the ramp the masks are dropped (one recompile).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from tqdm import tqdm

from flmjax import checkpoint, experiment, faults, metrics as metrics_lib, optimizer, recovery
from flmjax import sharding, synthetic_data
from flmjax.config import ModelConfig
from flmjax.distributed import log0
from flmjax.experiment import Stage
from flmjax.model import Transformer, abstract_params

Array = jax.Array
Batch = dict[str, np.ndarray]
BATCH_KEYS = ('inputs', 'targets', 'loss_weights', 'segment_ids', 'positions')


@struct.dataclass
class TrainState:
  """Everything a step needs and a checkpoint keeps.  `mask_base` is the growth mask pytree
  (1 = old unit, 0 = new) while masks ramp in after a growth at `grow_step`, else None."""
  step: Array
  params: Any
  opt_state: Any
  rng: Array
  grow_step: Array
  ramp_steps: Array
  mask_base: Any = None

  def to_dict(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    if d['mask_base'] is None:
      del d['mask_base']
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'TrainState':
    return cls(**{**d, 'mask_base': d.get('mask_base')})


# ---- data --------------------------------------------------------------------------------

def make_train_iterator(data_cfg: Any, *, seq_len: int, global_batch_size: int,
                        process_index: int, process_count: int) -> Iterator[Batch]:
  """Synthetic batches, or `flmjax.data`'s iterator: the trainer does not care which."""
  kw = dict(seq_len=seq_len, global_batch_size=global_batch_size, process_index=process_index,
            process_count=process_count)
  if data_cfg.source == 'synthetic':
    return synthetic_data.make_synthetic_iterator(data_cfg, **kw)
  from flmjax import data
  return data.make_train_iterator(data_cfg, **kw)


def make_eval_batches(data_cfg: Any, *, seq_len: int, batch_size: int,
                      num_batches: int) -> dict[str, list[Batch]]:
  """Held-out batches per language (full global batches), at most `num_batches` each."""
  if num_batches <= 0:
    return {}
  if data_cfg.source == 'synthetic':
    out = synthetic_data.make_synthetic_eval_batches(data_cfg, seq_len=seq_len,
                                                     batch_size=batch_size,
                                                     num_batches=num_batches)
  else:
    from flmjax import data
    out = data.make_eval_batches(data_cfg, seq_len=seq_len, batch_size=batch_size)
  return {name: list(batches)[:num_batches] for name, batches in out.items()}


def check_batch(batch: Mapping[str, np.ndarray], rows: int, seq_len: int) -> None:
  for k in BATCH_KEYS:
    if k not in batch:
      raise ValueError(f'data: batch has no {k!r} (keys: {sorted(batch)})')
    if tuple(batch[k].shape) != (rows, seq_len):
      raise ValueError(f'data: batch[{k!r}] has shape {tuple(batch[k].shape)}, expected '
                       f'{(rows, seq_len)} (per-process batch × train.seq_len)')


def to_global(batch: Mapping[str, np.ndarray], sharding_: NamedSharding) -> dict[str, Array]:
  """Per-process numpy rows → one global jax.Array per field (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(sharding_, np.asarray(batch[k]))
          for k in BATCH_KEYS}


# ---- loss and steps ----------------------------------------------------------------------

def token_losses(logits_BxLxV: Array, targets_BxL: Array, weights_BxL: Array
                 ) -> tuple[Array, Array]:
  """(Σ w·CE, Σ w·logZ²) in float32 over the batch: sums, so micro-batches add up exactly."""
  logits = logits_BxLxV.astype(jnp.float32)
  logz_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  w = weights_BxL.astype(jnp.float32)
  return ((logz_BxL - target_logit) * w).sum(), (jnp.square(logz_BxL) * w).sum()


def current_masks(state: TrainState) -> Optional[dict[str, Array]]:
  """Growth masks for this step: alpha = clip((step − grow_step) / ramp_steps, 0, 1)."""
  if state.mask_base is None:
    return None
  from flmjax import growth
  ramp = state.ramp_steps.astype(jnp.float32)
  since = (state.step - state.grow_step).astype(jnp.float32)
  alpha = jnp.where(ramp > 0, jnp.clip(since / jnp.maximum(ramp, 1.0), 0.0, 1.0), 1.0)
  return growth.ramp_masks(state.mask_base, alpha)


def make_step_fns(model_cfg: ModelConfig, tx: optax.GradientTransformation,
                  schedule: Callable, optim_cfg: Any,
                  rewarmup: Optional[Callable] = None,
                  skip_nonfinite: bool = True) -> tuple[Callable, Callable]:
  """(train_step(state, batch) → (state, metrics), eval_step(state, batch) → (Σ CE, Σ w)).

  `skip_nonfinite`: a step whose loss or gradient norm is NaN/Inf keeps params and optimizer
  state (the step counter still advances) and reports `update_skipped` = 1."""
  model = Transformer(model_cfg)
  accum, z_loss = int(optim_cfg.grad_accum), float(optim_cfg.z_loss)

  def forward(params, batch, masks):
    return model.apply({'params': params}, batch['inputs'], positions=batch['positions'],
                       segment_ids=batch['segment_ids'], masks=masks)

  def train_step(state: TrainState, batch: dict[str, Array]):
    masks = current_masks(state)
    denom = jnp.maximum(batch['loss_weights'].astype(jnp.float32).sum(), 1.0)

    def micro_loss(params, mb):
      ce, zl = token_losses(forward(params, mb, masks), mb['targets'], mb['loss_weights'])
      return (ce + z_loss * zl) / denom, (ce, zl)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    if accum == 1:
      (_, (ce, zl)), grads = grad_fn(state.params, batch)
    else:  # micro-batch i = rows i, i+accum, …: each keeps its share of every batch shard
      mbs = jax.tree_util.tree_map(
          lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, mb):
        g_acc, ce_acc, zl_acc = carry
        (_, (ce, zl)), g = grad_fn(state.params, mb)
        return (jax.tree_util.tree_map(jnp.add, g_acc, g), ce_acc + ce, zl_acc + zl), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
      (grads, ce, zl), _ = jax.lax.scan(body, (zeros, jnp.zeros(()), jnp.zeros(())), mbs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if rewarmup is not None:
      updates = rewarmup(updates, state.step - state.grow_step)
    params = optax.apply_updates(state.params, updates)
    out = {'loss': ce / denom, 'grad_norm': optax.global_norm(grads),
           'learning_rate': schedule(state.step)}
    if z_loss:
      out['z_loss'] = zl / denom
    if skip_nonfinite:
      finite = jnp.isfinite(out['loss']) & jnp.isfinite(out['grad_norm'])
      params = faults.select_if_finite(finite, params, state.params)
      opt_state = faults.select_if_finite(finite, opt_state, state.opt_state)
      out['update_skipped'] = jnp.logical_not(finite).astype(jnp.int32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  def eval_step(state: TrainState, batch: dict[str, Array]):
    ce, _ = token_losses(forward(state.params, batch, current_masks(state)), batch['targets'],
                         batch['loss_weights'])
    return ce, batch['loss_weights'].astype(jnp.float32).sum()

  return train_step, eval_step


# ---- one stage's compiled pieces ------------------------------------------------------------

def stage_optimizer(config: Any, stage: Stage, schedule: Callable) -> optax.GradientTransformation:
  """The stage's optimizer, with µP's per-parameter LR multipliers (None under standard
  parametrisation)."""
  from flmjax import mup
  return optimizer.make_optimizer(config.optim, schedule, lr_scales=mup.lr_scales(stage.model))


class StageRuntime:
  """Model, optimizer, shardings and jitted functions of one stage on one mesh."""

  def __init__(self, config: Any, stages: list[Stage], k: int, mesh: Mesh, rules,
               schedule: Callable):
    self.config, self.stage, self.mesh, self.rules = config, stages[k], mesh, rules
    self.stages = stages
    self.cfg = self.stage.model
    self.schedule = schedule
    self.tx = stage_optimizer(config, self.stage, schedule)
    self.model = Transformer(self.cfg)
    boxed = abstract_params(self.cfg)
    self.param_sh = sharding.param_shardings(boxed, mesh, rules)
    self.abstract_params = nn.meta.unbox(boxed)
    abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
    self.opt_sh = sharding.opt_state_shardings(abstract_opt, self.param_sh, mesh)
    self.repl = sharding.replicated(mesh)
    self.batch_sh = sharding.batch_sharding(mesh, rules)
    rewarm = None
    spec = self.stage.growth
    if spec and int(spec.get('rewarmup_steps', 0) or 0) > 0:
      from flmjax import growth
      units = growth.growth_units(stages[k - 1].model, self.cfg, spec)
      n = int(spec['rewarmup_steps'])
      rewarm = lambda u, t: growth.rewarmup_updates(u, units, self.cfg, t, n)
    self._train_fn, self._eval_fn = make_step_fns(
        self.cfg, self.tx, schedule, config.optim, rewarm,
        skip_nonfinite=bool(faults.settings(config).skip_nonfinite))
    self._jitted: dict[tuple[str, bool], Callable] = {}

  def state_shardings(self, mask_base: Any = None) -> TrainState:
    r = self.repl
    return TrainState(step=r, params=self.param_sh, opt_state=self.opt_sh, rng=r, grow_step=r,
                      ramp_steps=r,
                      mask_base=None if mask_base is None else
                      jax.tree_util.tree_map(lambda _: r, mask_base))

  def abstract_state(self, mask_shapes: Optional[Mapping[str, list[int]]] = None) -> TrainState:
    """ShapeDtypeStructs with target shardings: the restore target on this mesh."""
    mask_base = None if not mask_shapes else unflatten_paths(
        {p: jax.ShapeDtypeStruct(tuple(s), jnp.float32) for p, s in mask_shapes.items()})
    sh = self.state_shardings(mask_base)
    i32 = lambda: jax.ShapeDtypeStruct((), jnp.int32)
    shapes = TrainState(step=i32(), params=self.abstract_params,
                        opt_state=jax.eval_shape(self.tx.init, self.abstract_params),
                        rng=jax.ShapeDtypeStruct((2,), jnp.uint32), grow_step=i32(),
                        ramp_steps=i32(), mask_base=mask_base)
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, sh)

  def _jit(self, kind: str, has_masks: bool, mask_base: Any) -> Callable:
    key = (kind, has_masks)
    if key not in self._jitted:
      ssh = self.state_shardings(mask_base)
      if kind == 'train':
        fn = jax.jit(self._train_fn, in_shardings=(ssh, self.batch_sh),
                     out_shardings=(ssh, self.repl), donate_argnums=(0,))
      else:
        fn = jax.jit(self._eval_fn, in_shardings=(ssh, self.batch_sh),
                     out_shardings=(self.repl, self.repl))
      self._jitted[key] = fn
    return self._jitted[key]

  def _call(self, kind: str, state: TrainState, batch: dict[str, Array]):
    fn = self._jit(kind, state.mask_base is not None, state.mask_base)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return fn(state, batch)

  def train_step(self, state: TrainState, batch: dict[str, Array]):
    return self._call('train', state, batch)

  def eval_step(self, state: TrainState, batch: dict[str, Array]):
    return self._call('eval', state, batch)

  def init_state(self, seed: int) -> TrainState:
    rng = jax.random.PRNGKey(seed)
    init_rng, rng = jax.random.split(rng)
    model = self.model

    def init(key):
      tokens = jnp.zeros((1, 8), jnp.int32)
      return nn.meta.unbox(model.init(key, tokens)['params'])

    params = jax.jit(init, out_shardings=self.param_sh)(init_rng)
    opt_state = jax.jit(self.tx.init, out_shardings=self.opt_sh)(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       rng=rng, grow_step=jnp.zeros((), jnp.int32),
                       ramp_steps=jnp.zeros((), jnp.int32))
    return jax.device_put(state, self.state_shardings())

  def grow_from(self, prev: 'StageRuntime', state: TrainState) -> TrainState:
    """Grow the previous stage's final state into this stage (params, Adam state, masks)."""
    from flmjax import growth
    rng, grow_rng = jax.random.split(state.rng)
    spec = growth.GrowthSpec.from_dict(self.stage.growth)
    params, opt_state, mask_base = growth.grow_state(
        state.params, state.opt_state, prev.cfg, self.cfg, self.stage.growth, grow_rng,
        mesh=self.mesh, rules=self.rules, optimizer=self.tx)
    ramp = spec.ramp_steps if mask_base is not None else 0
    new = TrainState(step=state.step, params=params, opt_state=opt_state, rng=rng,
                     grow_step=jnp.asarray(self.stage.start_step, jnp.int32),
                     ramp_steps=jnp.asarray(ramp, jnp.int32), mask_base=mask_base)
    return jax.device_put(new, self.state_shardings(mask_base))

  def restore(self, ckptr: checkpoint.StageCheckpointer, step: int
              ) -> tuple[TrainState, dict, dict]:
    meta = ckptr.read_json(step, 'meta')
    target = self.abstract_state(meta.get('mask_shapes'))
    state = TrainState.from_dict(ckptr.restore_state(step, target.to_dict()))
    return state, meta, ckptr.read_json(step, 'data')


def flatten_paths(tree: Any) -> dict[str, Any]:
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_paths(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = out
    parts = path.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = leaf
  return out


def abstract_state_for(config: Any, meta: Mapping[str, Any], *, mesh: Optional[Mesh] = None,
                       rules=None) -> dict[str, Any]:
  """Restore target (dict) for a checkpoint written by this trainer (used by `load_state`)."""
  stages = experiment.stage_plan(config)
  k = int(meta['stage'])
  if mesh is None:
    mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1])
  rules = rules or sharding.logical_rules(config.mesh)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  rt = StageRuntime(config, stages, k, mesh, rules, schedule)
  return rt.abstract_state(meta.get('mask_shapes')).to_dict()


# ---- the run -------------------------------------------------------------------------------

def evaluate(rt: StageRuntime, state: TrainState,
             eval_sets: Mapping[str, list[Batch]]) -> dict[str, float]:
  """Mean per-token validation loss per language, `val_loss_<name>`."""
  out = {}
  pc, pi = jax.process_count(), jax.process_index()
  for name, batches in eval_sets.items():
    ce_total, n_total = 0.0, 0.0
    for b in batches:
      rows = b['inputs'].shape[0] // pc
      local = {k: np.asarray(b[k])[pi * rows:(pi + 1) * rows] for k in BATCH_KEYS}
      ce, n = rt.eval_step(state, to_global(local, rt.batch_sh))
      ce_total += float(ce)
      n_total += float(n)
    out[f'val_loss_{name}'] = ce_total / max(n_total, 1.0)
  return out


class StopTraining(Exception):
  """Raised inside the loop to stop after a checkpointed step (`stop_at_step` or a signal)."""


def scaled_schedule(schedule: Callable, lr_scale: float) -> Callable:
  """The schedule times `lr_scale` (lowered after a rollback when faults.rollback_lr_factor<1)."""
  if lr_scale == 1.0:
    return schedule
  return lambda step: lr_scale * schedule(step)


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_at_step: Optional[int] = None) -> dict[str, Any]:
  """Run (or resume) all stages of `config` in `workdir`; returns the run summary.

  `stop_at_step`: checkpoint and stop after that global step (as a preempted job would); the
  same call later resumes.  Returns {'stopped_at': step} then.  SIGTERM/SIGINT do the same
  after the current step and return {'stopped_at': step, 'preempted': 'SIGTERM'}.
  Faults (damaged checkpoints, NaN/Inf steps, loss spikes, hangs) follow the `faults` config
  section; see `flmjax.faults`.
  """
  stages = experiment.validate(config, jax.device_count(), jax.process_count())
  fcfg = faults.settings(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  t = config.train
  primary = jax.process_index() == 0
  recovery.prepare_workdir(workdir, stages, fcfg, allow_overwrite=bool(t.allow_overwrite),
                           primary=primary)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  make_rt = lambda k, lr_scale: StageRuntime(config, stages, k, mesh, rules,
                                             scaled_schedule(schedule, lr_scale))
  restored = recovery.restore_newest(workdir, make_rt, primary,
                                     bool(fcfg.verify_checksums))
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary,
                                     resume_step=restored.step if restored else 0)
  config_json = json.loads(config.to_json())
  run_info: dict[str, dict] = {}
  state: Optional[TrainState] = None
  data_state: Optional[dict] = None
  prev_rt: Optional[StageRuntime] = None
  start_stage = restored.stage if restored else 0
  guard = faults.Guard(fcfg, restored.meta.get('faults') if restored else None)
  if restored:
    log0(f'resuming from {checkpoint.stage_dir(workdir, restored.stage)}/{restored.step}')
  watchdog = faults.Watchdog(fcfg.hang_timeout_s)
  ckptr = None
  try:
    with faults.Preemption() as preempt:
      for k in range(start_stage, len(stages)):
        st = stages[k]
        resuming = restored is not None and k == restored.stage
        rt = restored.rt if resuming else make_rt(k, guard.lr_scale)
        ckptr = checkpoint.StageCheckpointer(checkpoint.stage_dir(workdir, k), keep=t.keep)
        info = run_info.setdefault(st.name, {'wall_time': 0.0, 'val_loss': {}})
        last_saved = None

        def save(state: TrainState, step: int, it) -> None:
          nonlocal last_saved
          meta = {'stage': k, 'stage_name': st.name, 'model': st.model.to_dict(), 'step': step,
                  'mask_shapes': None if state.mask_base is None else
                  {p: list(v.shape) for p, v in flatten_paths(state.mask_base).items()},
                  'run': run_info, 'faults': guard.state_dict()}
          ckptr.save(step, state.to_dict(), config=config_json, meta=meta,
                     data_state=it.get_state() if it is not None else data_state)
          last_saved = step
          watchdog.beat(step)

        if resuming:
          state, data_state = restored.state, restored.data_state
          run_info.update(restored.meta.get('run', {}))
          info = run_info.setdefault(st.name, {'wall_time': 0.0, 'val_loss': {}})
          last_saved = restored.step
        elif k == 0:
          state = rt.init_state(t.seed)
        else:
          t0 = time.time()
          state = rt.grow_from(prev_rt, state)
          info['grow_time'] = time.time() - t0
          log0(f'grew stage {stages[k - 1].name!r} -> {st.name!r} at step {st.start_step} '
               f'({st.model.param_count() / 1e6:.2f}M params)')
          save(state, st.start_step, None)
        step = int(jax.device_get(state.step))
        if step < st.end_step:
          it = make_train_iterator(config.data, seq_len=st.seq_len,
                                   global_batch_size=st.global_batch_size,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
          if data_state:
            it.set_state(data_state)
          eval_sets = make_eval_batches(config.data, seq_len=st.seq_len,
                                        batch_size=st.global_batch_size // config.optim.grad_accum,
                                        num_batches=t.eval_batches)
          loop = _Loop(guard=guard, preempt=preempt, watchdog=watchdog, fcfg=fcfg)
          while True:
            try:
              state, data_state = _run_stage(rt, state, it, eval_sets, stages, writer, info,
                                             save, lambda: last_saved, primary, stop_at_step,
                                             loop)
              break
            except StopTraining as stop:
              ckptr.close()
              ckptr = None
              out = {'stopped_at': stop.args[0]}
              if preempt.signum is not None:
                out['preempted'] = signal_name(preempt.signum)
                log0(f'preempted: checkpoint of step {stop.args[0]} is complete; exiting')
              return out
            except faults.Rollback as rb:
              rt, ckptr, state = recovery.roll_back(rb, k, rt, ckptr, workdir, make_rt, guard,
                                                   writer, fcfg, primary, t)
              last_saved = int(jax.device_get(state.step))
        if last_saved != st.end_step:
          save(state, st.end_step, None)
        ckptr.close()
        ckptr = None
        prev_rt = rt
  except BaseException:
    if ckptr is not None:  # let an in-flight save of a good step finish (a hang: watchdog)
      try:
        ckptr.close()
      except Exception:  # pylint: disable=broad-except
        pass
    raise
  finally:
    watchdog.close()
    writer.close()
  summary = run_summary(stages, run_info)
  if primary:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=1)
    print(format_summary(summary), flush=True)
  return summary


def signal_name(signum: int) -> str:
  import signal
  return signal.Signals(signum).name


@dataclasses.dataclass
class _Loop:
  """The fault-handling pieces one stage's loop consults."""
  guard: 'faults.Guard'
  preempt: 'faults.Preemption'
  watchdog: 'faults.Watchdog'
  fcfg: Any


def _run_stage(rt: StageRuntime, state: TrainState, it, eval_sets, stages, writer, info, save,
               last_saved, primary, stop_at_step=None, loop: Optional[_Loop] = None
               ) -> tuple[TrainState, dict]:
  st, t = rt.stage, rt.config.train
  if loop is None:
    fcfg = faults.settings(rt.config)
    loop = _Loop(faults.Guard(fcfg), faults.Preemption(), faults.Watchdog(0), fcfg)
  guard = loop.guard
  inject = bool(loop.fcfg.inject_nan_batches or loop.fcfg.inject_spike_batches)
  step = int(jax.device_get(state.step))
  ramp_end = None
  if state.mask_base is not None:
    ramp_end = int(jax.device_get(state.grow_step)) + int(jax.device_get(state.ramp_steps))
  local_rows = st.global_batch_size // jax.process_count()
  bar = tqdm(total=st.steps, initial=step - st.start_step, desc=f'stage {st.name}',
             disable=not primary, dynamic_ncols=True, file=sys.stderr)
  t_start = t_log = time.time()
  tokens_since = 0
  pending = None  # (step, outputs) not yet checked by the guard: checked one step late, so
                  # the host never waits on the device before dispatching the next step

  def check_pending() -> None:
    nonlocal pending
    if pending is None:
      return
    s, out = pending
    pending = None
    vals = jax.device_get({k: out[k] for k in ('loss', 'update_skipped') if k in out})
    guard.check(s, float(vals['loss']), bool(vals.get('update_skipped', 0)),
                lambda rec: writer.write(s, {'stage': st.index, **rec}))

  try:
    while step < st.end_step:
      if ramp_end is not None and step >= ramp_end:
        state = state.replace(mask_base=None)  # ramp done: masks are all ones, drop them
        ramp_end = None
      batch = next(it)
      guard.batches += 1
      if inject:
        batch = faults.inject(batch, guard.batches, loop.fcfg, rt.cfg.vocab_size)
      check_batch(batch, local_rows, st.seq_len)
      state, out = rt.train_step(state, to_global(batch, rt.batch_sh))
      step += 1
      check_pending()
      pending = (step, out)
      loop.watchdog.beat(step)
      tokens_since += st.tokens_per_step
      bar.update(1)
      record = {}
      last = step == st.end_step
      if step % t.log_every == 0 or last:
        out = jax.device_get(out)
        now = time.time()
        tok_s = tokens_since / max(now - t_log, 1e-9)
        t_log, tokens_since = now, 0
        record.update({k: float(v) for k, v in out.items()})
        record['tokens_per_sec'] = tok_s
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f'{tok_s:,.0f}')
      if eval_sets and ((t.eval_every and step % t.eval_every == 0) or last):
        val = evaluate(rt, state, eval_sets)
        record.update(val)
        info['val_loss'] = val
      if record:
        tokens, flops = experiment.cumulative(stages, step)
        writer.write(step, {'stage': st.index, 'tokens': tokens, 'flops': flops, **record})
      preempted = loop.preempt.should_stop(step)
      stopping = preempted or (stop_at_step is not None and step >= stop_at_step)
      if (t.ckpt_every and step % t.ckpt_every == 0) or last or stopping:
        check_pending()  # never checkpoint a step the guard would reject
        if last_saved() != step:
          info['wall_time'] += time.time() - t_start
          t_start = time.time()
          save(state, step, it)
      if stopping:
        raise StopTraining(step)
    check_pending()
  finally:
    bar.close()
  return state, it.get_state()


def run_summary(stages: list[Stage], run_info: Mapping[str, Any]) -> dict[str, Any]:
  rows = []
  for s in stages:
    info = run_info.get(s.name, {})
    rows.append({'stage': s.name, 'params': s.model.param_count(), 'tokens': s.tokens,
                 'flops': s.flops, 'wall_time_s': info.get('wall_time', 0.0),
                 'val_loss': info.get('val_loss', {})})
  return {'stages': rows, **experiment.flops_summary(stages)}


def format_summary(summary: Mapping[str, Any]) -> str:
  langs = sorted({k for r in summary['stages'] for k in r['val_loss']})
  head = ['stage', 'params', 'tokens', 'FLOPs', 'wall s'] + [k.replace('val_loss_', 'val ')
                                                             for k in langs]
  lines = ['run summary', '  '.join(f'{h:>12}' for h in head)]
  for r in summary['stages']:
    cells = [r['stage'], f"{r['params']:.4g}", f"{r['tokens']:.4g}", f"{r['flops']:.4g}",
             f"{r['wall_time_s']:.1f}"] + [f"{r['val_loss'].get(k, float('nan')):.4f}"
                                          for k in langs]
    lines.append('  '.join(f'{c:>12}' for c in cells))
  lines.append(
      f"growth FLOPs {summary['growth_flops']:.4g} vs final model from scratch on the same "
      f"{summary['tokens']:.4g} tokens {summary['scratch_flops']:.4g}: "
      f"{100 * summary['saved_fraction']:.1f}% saved")
  return '\n'.join(lines)
