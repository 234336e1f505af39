"""`train()`: the sharded training loop over one or more growth stages.

The run is a list of stages (`flmjax.plan.stage_plan`); stage 0 is initialised, each later stage
starts by growing the previous stage's params *and* Adam state (`flmjax.growth.grow_state`) and
saving the grown state in `W/stage_K/` before its first step, so a restart right after a growth
continues exactly.  Steps are global (they continue across stages), as does the LR schedule.
After a growth's mask ramp the masks are dropped (one recompile).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from flmjax import experiment, optimizer, plan, sharding
from flmjax.storage import checkpoint, metrics as metrics_lib, paths
from flmjax.distributed import log0
from flmjax.training import batches, faults, recovery
from flmjax.training.runtime import StageRuntime, scaled_schedule, stage_meta
from flmjax.training.state import TrainState
from flmjax.training.summary import format_summary, run_summary


def evaluate(runtime: StageRuntime, state: TrainState,
             eval_sets: Mapping[str, list[batches.Batch]]) -> dict[str, float]:
  """Mean per-token validation loss per language, `val_loss_<name>`."""
  out = {}
  for name, held_out in eval_sets.items():
    ce_total, n_total = 0.0, 0.0
    for b in held_out:
      n_rows = b['inputs'].shape[0]
      rows = batches.process_rows(runtime.batch_sh, n_rows, what='eval batch')
      local = {k: np.asarray(b[k])[rows] for k in batches.BATCH_KEYS}
      ce, n = runtime.eval_step(state, batches.to_global(local, runtime.batch_sh, n_rows))
      ce_total += float(ce)
      n_total += float(n)
    out[f'val_loss_{name}'] = ce_total / max(n_total, 1.0)
  return out


def stage_rows(runtime: StageRuntime) -> np.ndarray:
  """The global rows of each of the stage's batches this process feeds (its devices' rows)."""
  stage = runtime.stage
  return batches.process_rows(runtime.batch_sh, stage.global_batch_size,
                              grad_accum=int(runtime.config.optim.grad_accum),
                              what=experiment.batch_field(runtime.config, stage.index))


class StopTraining(Exception):
  """Raised inside the loop to stop after a checkpointed step (`stop_at_step` or a signal)."""


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_at_step: Optional[int] = None) -> dict[str, Any]:
  """Run (or resume) all stages of `config` in `workdir`; returns the run summary.

  `stop_at_step`: checkpoint and stop after that global step (as a preempted job would); the
  same call later resumes.  Returns {'stopped_at': step} then.  SIGTERM/SIGINT do the same
  after the current step and return {'stopped_at': step, 'preempted': 'SIGTERM'}.
  Faults (damaged checkpoints, NaN/Inf steps, loss spikes, hangs) follow the `faults` config
  section; see `flmjax.training.faults`.  The workdir is locked for the run: a second writer is
  refused with the holder's pid and host.
  """
  stages = experiment.validate(config, jax.device_count())
  with recovery.workdir_lock(workdir, jax.process_index() == 0):
    return _train(config, workdir, stages, stop_at_step)


def train_to_end(config: ml_collections.ConfigDict, workdir: str, *,
                 stop_at_step: Optional[int] = None) -> dict[str, Any]:
  """`train` for drivers that run one training after another (sweeps, the growth planner,
  benchmarks): a SIGTERM/SIGINT ends the driver too, not just the current run, so a preempted
  sweep exits at once instead of starting (and at once stopping) every remaining run.  The
  preempted run's checkpoint is complete: the same command resumes it."""
  out = train(config, workdir, stop_at_step=stop_at_step)
  if 'preempted' in out:
    raise SystemExit(f"{workdir}: preempted by {out['preempted']} at step {out['stopped_at']} "
                     '(its checkpoint is complete); run the same command again to resume')
  return out


def _train(config: ml_collections.ConfigDict, workdir: str, stages: list[Stage],
           stop_at_step: Optional[int]) -> dict[str, Any]:
  fault_cfg = faults.settings(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  t = config.train
  primary = jax.process_index() == 0
  recovery.prepare_workdir(workdir, stages, fault_cfg, allow_overwrite=bool(t.allow_overwrite),
                           primary=primary, keep=int(t.keep))
  schedule = optimizer.make_schedule([s.schedule_dict() for s in stages], config.optim.schedule)
  make_runtime = lambda k, lr_scale: StageRuntime(config, stages, k, mesh, rules,
                                             scaled_schedule(schedule, lr_scale))
  restored = recovery.restore_newest(workdir, make_runtime, primary,
                                     bool(fault_cfg.verify_checksums),
                                     bool(fault_cfg.allow_unverified))
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary,
                                     resume_step=restored.step if restored else 0)
  config_json = json.loads(config.to_json())
  run_info: dict[str, dict] = {}
  state: Optional[TrainState] = None
  data_state: Optional[dict] = None
  prev_runtime: Optional[StageRuntime] = None
  start_stage = restored.stage if restored else 0
  guard = faults.Guard(fault_cfg, restored.meta.get('faults') if restored else None)
  if restored:
    log0(f'resuming from {checkpoint.stage_dir(workdir, restored.stage)}/{restored.step}')
  watchdog = faults.Watchdog(fault_cfg.hang_timeout_s)
  ckptr = None

  def check_save(step: int) -> None:
    """A failed async save stops the run at the next step.  One process only: processes see a
    save end at different steps, so a multi-host run learns of it at its next save (together)."""
    if ckptr is not None and jax.process_count() == 1:
      ckptr.check(step)

  preempt = faults.Preemption(fault_cfg.stop_timeout_s)  # its deadline outlives the handlers
  try:
    with preempt:
      for k in range(start_stage, len(stages)):
        stage = stages[k]
        resuming = restored is not None and k == restored.stage
        runtime = restored.runtime if resuming else make_runtime(k, guard.lr_scale)
        ckptr = checkpoint.StageCheckpointer(checkpoint.stage_dir(workdir, k), keep=t.keep)
        info = run_info.setdefault(stage.name, {'wall_time': 0.0, 'val_loss': {}})
        last_saved = None

        def save(state: TrainState, step: int, it) -> None:
          nonlocal last_saved
          meta = {**stage_meta(stage, state, step), 'run': run_info, 'faults': guard.state_dict()}
          writer.sync()  # object stores: the bucket's metrics never lag behind a checkpoint
          ckptr.save(step, state.to_dict(), config=config_json, meta=meta,
                     data_state=it.get_state() if it is not None else data_state)
          last_saved = step
          watchdog.beat(step)

        if resuming:
          state, data_state = restored.state, restored.data_state
          run_info.update(restored.meta.get('run', {}))
          info = run_info.setdefault(stage.name, {'wall_time': 0.0, 'val_loss': {}})
          last_saved = restored.step
        elif k == 0:
          state = runtime.init_state(t.seed)
        else:
          t0 = time.time()
          state = runtime.grow_from(prev_runtime, state)
          info['grow_time'] = time.time() - t0
          log0(f'grew stage {stages[k - 1].name!r} -> {stage.name!r} at step {stage.start_step} '
               f'({stage.model.param_count() / 1e6:.2f}M params)')
          save(state, stage.start_step, None)
        grew_now = k > 0 and not resuming
        step = int(jax.device_get(state.step))
        if step < stage.end_step:
          it = batches.make_train_iterator(config.data, seq_len=stage.seq_len,
                                           global_batch_size=stage.global_batch_size,
                                           rows=stage_rows(runtime))
          if data_state:
            it.set_state(data_state)
          if getattr(it, 'skipped_reasons', None):
            log0(f'data: {int(it.stats()["skipped_lines"])} bad line(s) skipped, first: '
                 f'{it.skipped_reasons[0]}')
          eval_sets = batches.make_eval_batches(
              config.data, seq_len=stage.seq_len,
              batch_size=stage.global_batch_size // config.optim.grad_accum,
              num_batches=t.eval_batches)
          if grew_now and eval_sets:  # the grown model, before its first step: equals the last
            val = evaluate(runtime, state, eval_sets)  # eval of the previous stage (exact growth)
            tokens, flops = plan.cumulative(stages, step)
            writer.write(step, {'stage': k, 'tokens': tokens, 'flops': flops, 'after_growth': 1.0,
                                **val})
          loop = LoopControls(guard=guard, preempt=preempt, watchdog=watchdog, fault_cfg=fault_cfg,
                              check_save=check_save)
          while True:
            try:
              state, data_state = _run_stage(runtime, state, it, eval_sets, stages, writer, info,
                                             save, lambda: last_saved, primary, stop_at_step,
                                             loop)
              break
            except StopTraining as stop:
              if writer.failed:
                closing, ckptr = ckptr, None
                raise _metrics_stop(writer.failed, closing, stop.args[0]) from None
              ckptr.close()
              ckptr = None
              out = {'stopped_at': stop.args[0]}
              if preempt.signum is not None:
                out['preempted'] = signal_name(preempt.signum)
                log0(f'preempted: checkpoint of step {stop.args[0]} is complete; exiting')
              return out
            except faults.Rollback as rb:
              runtime, ckptr, state = recovery.roll_back(rb, k, runtime, ckptr, workdir, make_runtime, guard,
                                                   writer, fault_cfg, primary, t)
              last_saved = int(jax.device_get(state.step))
        if last_saved != stage.end_step:
          save(state, stage.end_step, None)
        ckptr.close()
        ckptr = None
        prev_runtime = runtime
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
    preempt.cancel_deadline()
  summary = run_summary(stages, run_info)
  if primary:
    # the config rides along, so a tool reading a finished run back can check it is the run
    # it asked for (`flmjax.training.summary.read_finished`)
    paths.write_atomic(paths.join(workdir, 'summary.json'),
                       json.dumps({**summary, 'config': config_json}, indent=1))
    print(format_summary(summary), flush=True)
  return summary


def _metrics_stop(failed: str, ckptr: checkpoint.StageCheckpointer, step: int
                  ) -> metrics_lib.MetricsError:
  """The error a run ends with when metrics.jsonl cannot be written: that, and whether the
  checkpoint of the step it stopped at is complete."""
  try:
    ckptr.close()
    how = (f'the checkpoint of step {step} is complete: free space, then rerun the same command '
           'to resume')
  except checkpoint.CheckpointError as e:
    how = f'the checkpoint attempt of step {step} failed too: {e}'
  return metrics_lib.MetricsError(f'{failed}; training stopped; {how}')


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


@dataclasses.dataclass
class LoopControls:
  """The fault-handling pieces one stage's loop consults."""
  guard: 'faults.Guard'
  preempt: 'faults.Preemption'
  watchdog: 'faults.Watchdog'
  fault_cfg: Any
  check_save: Callable[[int], None] = lambda step: None


def _run_stage(runtime: StageRuntime, state: TrainState, it, eval_sets, stages, writer, info, save,
               last_saved, primary, stop_at_step: Optional[int], loop: LoopControls
               ) -> tuple[TrainState, dict]:
  stage, t = runtime.stage, runtime.config.train
  guard = loop.guard
  inject = bool(loop.fault_cfg.inject_nan_batches or loop.fault_cfg.inject_spike_batches)
  step = int(jax.device_get(state.step))
  ramp_end = None
  if state.mask_base is not None:
    ramp_end = int(jax.device_get(state.grow_step)) + int(jax.device_get(state.ramp_steps))
  local_rows = len(stage_rows(runtime))
  bar = tqdm(total=stage.steps, initial=step - stage.start_step, desc=f'stage {stage.name}',
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
                lambda rec: writer.write(s, {'stage': stage.index, **rec}))

  try:
    while step < stage.end_step:
      if ramp_end is not None and step >= ramp_end:
        state = state.replace(mask_base=None)  # ramp done: masks are all ones, drop them
        ramp_end = None
      batch = next(it)
      guard.batches += 1
      if inject:
        batch = faults.inject(batch, guard.batches, loop.fault_cfg, runtime.cfg.vocab_size)
      batches.check_batch(batch, local_rows, stage.seq_len)
      state, out = runtime.train_step(
          state, batches.to_global(batch, runtime.batch_sh, stage.global_batch_size))
      step += 1
      check_pending()
      pending = (step, out)
      loop.watchdog.beat(step)
      loop.check_save(step)
      tokens_since += stage.tokens_per_step
      bar.update(1)
      record = {}
      last = step == stage.end_step
      if step % t.log_every == 0 or last:
        out = jax.device_get(out)
        now = time.time()
        tok_s = tokens_since / max(now - t_log, 1e-9)
        t_log, tokens_since = now, 0
        record.update({k: float(v) for k, v in out.items()})
        record['tokens_per_sec'] = tok_s
        if hasattr(it, 'stats'):  # text data: bad lines skipped while reading (cached too)
          record['skipped_lines'] = float(it.stats().get('skipped_lines', 0))
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f'{tok_s:,.0f}')
      if eval_sets and ((t.eval_every and step % t.eval_every == 0) or last):
        val = evaluate(runtime, state, eval_sets)
        record.update(val)
        info['val_loss'] = val
      if record:
        tokens, flops = plan.cumulative(stages, step)
        writer.write(step, {'stage': stage.index, 'tokens': tokens, 'flops': flops, **record})
      if writer.failed:  # a full disk: stop like a preemption, after a checkpoint attempt
        loop.preempt.request()
      preempted = loop.preempt.should_stop(step)
      stopping = preempted or (stop_at_step is not None and step >= stop_at_step)
      if (t.ckpt_every and step % t.ckpt_every == 0) or last or stopping:
        check_pending()  # never checkpoint a step the guard would reject
        if last_saved() != step:
          info['wall_time'] += time.time() - t_start
          t_start = time.time()
          try:
            save(state, step, it)
          except checkpoint.CheckpointError as e:
            if not writer.failed:
              raise
            raise metrics_lib.MetricsError(f'{writer.failed}; training stopped; the checkpoint '
                                           f'attempt of step {step} failed too: {e}') from e
      if stopping:
        raise StopTraining(step)
    check_pending()
  finally:
    bar.close()
  return state, it.get_state()

