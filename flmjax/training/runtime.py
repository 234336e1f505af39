"""One stage's compiled pieces: model, optimizer, shardings and the jitted steps on one mesh.

`StageRuntime` is what the loop, `flmjax grow`, restore and `flmjax compile` share: the
abstract state with its target shardings, the train / eval steps jitted with explicit
in/out shardings, init, growth from the previous stage and restore.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from flmjax import growth, optimizer, plan, sharding
from flmjax.storage import checkpoint
from flmjax.config import ModelConfig
from flmjax.growth_ops import GrowthSpec
from flmjax.model import Transformer, abstract_params
from flmjax.params import flatten_paths, unflatten_paths
from flmjax.plan import Stage
from flmjax.training import faults
from flmjax.training.state import TrainState
from flmjax.training.step import make_step_fns

Array = jax.Array


def stage_optimizer(config: Any, stage: Stage, schedule: Callable) -> optax.GradientTransformation:
  """The stage's optimizer, with µP's per-parameter LR multipliers (None under standard
  parametrisation)."""
  return optimizer.model_optimizer(config.optim, schedule, stage.model)


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
    self.param_sh = sharding.param_shardings(self.cfg, mesh, rules)
    self.abstract_params = nn.meta.unbox(boxed)
    abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
    self.opt_sh = sharding.opt_state_shardings(abstract_opt, self.param_sh, mesh)
    self.repl = sharding.replicated(mesh)
    self.batch_sh = sharding.batch_sharding(mesh, rules)
    rewarm = None
    spec = self.stage.growth
    if spec is not None and spec.rewarmup_steps > 0:
      units = growth.growth_units(stages[k - 1].model, self.cfg, spec)
      n = spec.rewarmup_steps
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
                      jax.tree.map(lambda _: r, mask_base))

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
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, sh)

  def jitted_step(self, kind: str, has_masks: bool, mask_base: Any) -> Callable:
    """The jitted 'train' or 'eval' step (cached per kind and mask presence): the object the
    trainer calls and `flmjax compile` lowers for a TPU slice, so both see one program."""
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
    fn = self.jitted_step(kind, state.mask_base is not None, state.mask_base)
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

  def grow(self, src: ModelConfig, state: TrainState) -> TrainState:
    """`state` of a `src` model grown into this stage at its current step: params and Adam state
    by the stage's `growth` (rng split off the state's), masks ramping in from this step.

    The one grown-state builder: the trainer at a stage boundary (`grow_from`) and `flmjax grow`
    both call it, so an offline growth resumes exactly like the trainer's own."""
    rng, grow_rng = jax.random.split(state.rng)
    spec = self.stage.growth or GrowthSpec()
    params, opt_state, mask_base = growth.grow_state(
        state.params, state.opt_state, src, self.cfg, spec, grow_rng,
        mesh=self.mesh, rules=self.rules, optimizer=self.tx)
    ramp = spec.ramp_steps if mask_base is not None else 0
    new = TrainState(step=state.step, params=params, opt_state=opt_state, rng=rng,
                     grow_step=jnp.asarray(int(jax.device_get(state.step)), jnp.int32),
                     ramp_steps=jnp.asarray(ramp, jnp.int32), mask_base=mask_base)
    return jax.device_put(new, self.state_shardings(mask_base))

  def grow_from(self, prev: 'StageRuntime', state: TrainState) -> TrainState:
    """Grow the previous stage's final state into this stage (params, Adam state, masks)."""
    return self.grow(prev.cfg, state)

  def restore(self, ckptr: checkpoint.StageCheckpointer, step: int
              ) -> tuple[TrainState, dict, dict]:
    meta = ckptr.read_json(step, 'meta')
    target = self.abstract_state(meta.get('mask_shapes'))
    state = TrainState.from_dict(ckptr.restore_state(step, target.to_dict()))
    return state, meta, ckptr.read_json(step, 'data')


def stage_meta(stage: Stage, state: TrainState, step: int) -> dict[str, Any]:
  """The checkpoint meta of a state of `stage`: which stage and model, the step, and the shapes
  of the growth masks (the restore target needs them).  Callers add their own keys."""
  return {'stage': stage.index, 'stage_name': stage.name, 'model': stage.model.to_dict(),
          'step': step, 'mask_shapes': None if state.mask_base is None else
          {p: list(v.shape) for p, v in flatten_paths(state.mask_base).items()}}


def abstract_state_for(config: Any, meta: Mapping[str, Any], *, mesh: Optional[Mesh] = None,
                       rules=None) -> dict[str, Any]:
  """Restore target (dict) for a checkpoint written by this trainer (used by `load_state`)."""
  stages = plan.stage_plan(config)
  k = int(meta['stage'])
  if mesh is None:
    mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1])
  rules = rules or sharding.logical_rules(config.mesh)
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  rt = StageRuntime(config, stages, k, mesh, rules, schedule)
  return rt.abstract_state(meta.get('mask_shapes')).to_dict()


def scaled_schedule(schedule: Callable, lr_scale: float) -> Callable:
  """The schedule times `lr_scale` (lowered after a rollback when faults.rollback_lr_factor<1)."""
  if lr_scale == 1.0:
    return schedule
  return lambda step: lr_scale * schedule(step)


def load_state(path: str, *, mesh: Optional[Mesh] = None, rules=None,
               allow_unverified: bool = False
               ) -> tuple[ml_collections.ConfigDict, dict, dict, dict]:
  """(config, state, meta, data_state) of a checkpoint, restored like the trainer restores it
  (optimizer structure rebuilt from the saved config), on `mesh` or one device; verified
  against its manifest first (`allow_unverified`: see `checkpoint.verify_step`)."""
  step_dir = checkpoint.resolve_step_dir(path)
  meta = checkpoint.read_json(step_dir, 'meta')
  config = ml_collections.ConfigDict(checkpoint.read_json(step_dir, 'config'))
  data_state = checkpoint.read_json(step_dir, 'data')
  abstract = abstract_state_for(config, meta, mesh=mesh, rules=rules)
  state = checkpoint.restore_step(step_dir, abstract, allow_unverified=allow_unverified)
  return config, state, meta, data_state

