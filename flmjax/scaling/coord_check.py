"""`flmjax mup-check`: the µP coordinate check (Yang et al. 2022, Tensor Programs V, §D.4).

Train the same model at several widths for a few steps and record, after each step, the typical
size (mean |x|) of every activation: embedding output, per layer the attention logits, attention
and MLP outputs and the residual stream, and the output logits.  Under µP these stay flat as the
width grows; under standard parametrisation the ones fed by hidden-matrix updates grow ∝ width.
A flat plot is the cheapest evidence that the µP implementation is right, before any sweep.

Training uses the trainer's own step (`train.make_step_fns`) with the µP-aware optimizer; the
statistics come from a forward pass with `mutable=['intermediates']` (the model sows them).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flmjax import mup, optimizer, plan
from flmjax.config import ModelConfig
from flmjax.model import Transformer
from flmjax.storage import paths
from flmjax.training.batches import BATCH_KEYS, make_eval_batches, make_train_iterator
from flmjax.training.state import TrainState
from flmjax.training.step import make_step_fns

DEFAULT_WIDTHS = (64, 128, 256, 512)
# Stats the check asserts on, and the plot shows: model-level and per-layer (layer-mean) ones.
STATS = ('embed_out', 'attn_logits', 'attn_out', 'mlp_out', 'residual', 'logits')


def activation_stats(cfg: ModelConfig, params: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
  """{stat: float or per-layer list} of mean |activation| on `batch` (see `STATS`)."""
  return _to_py(activation_stats_arrays(cfg, params, {k: jnp.asarray(v) for k, v in batch.items()}))


def _width_run(config: Any, width: int, steps: int, seed: int) -> list[dict[str, Any]]:
  """Stats after 0..steps training steps of `config` at `width` (one seed)."""
  c = mup.with_hparams(config, width=width)
  c.train.seed = seed
  stage = plan.stage_plan(c)[0]
  cfg = stage.model
  schedule = optimizer.make_schedule([stage.schedule_dict()], c.optim.schedule)
  tx = optimizer.model_optimizer(c.optim, schedule, cfg)
  train_step, _ = make_step_fns(cfg, tx, schedule, c.optim)
  train_step = jax.jit(train_step)
  key = jax.random.PRNGKey(seed)
  params = jax.jit(lambda k: nn.meta.unbox(
      Transformer(cfg).init(k, jnp.zeros((1, 8), jnp.int32))['params']))(key)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=tx.init(params), rng=key,
                     grow_step=zero, ramp_steps=zero)
  it = make_train_iterator(c.data, seq_len=stage.seq_len,
                           global_batch_size=stage.global_batch_size,
                           rows=range(stage.global_batch_size))
  probe = make_eval_batches(c.data, seq_len=stage.seq_len,
                            batch_size=stage.global_batch_size, num_batches=1)
  probe_batch = next(iter(probe.values()))[0]
  probe_batch = {k: jnp.asarray(v) for k, v in probe_batch.items() if k in BATCH_KEYS}
  stats_fn = jax.jit(lambda p, b: activation_stats_arrays(cfg, p, b))
  history = [_to_py(stats_fn(state.params, probe_batch))]
  for _ in range(steps):
    batch = {k: jnp.asarray(v) for k, v in next(it).items() if k in BATCH_KEYS}
    state, _ = train_step(state, batch)
    history.append(_to_py(stats_fn(state.params, probe_batch)))
  return history


def activation_stats_arrays(cfg: ModelConfig, params: Any, batch: Mapping[str, Any]
                            ) -> dict[str, Any]:
  """Jittable core of `activation_stats`: {stat: scalar or per-layer array}."""
  _, state = Transformer(cfg).apply({'params': params}, batch['inputs'],
                                    positions=batch['positions'],
                                    segment_ids=batch['segment_ids'],
                                    mutable=['intermediates'])
  inter = state['intermediates']
  layers = inter['layers']  # per-layer stats, stacked by the layer scan
  return {'embed_out': inter['embed_out'][0], 'logits': inter['logits'][0],
          'attn_logits': layers['attn_logits'][0], 'attn_out': layers['attn_out'][0],
          'mlp_out': layers['mlp_out'][0], 'residual': layers['residual'][0]}


def _to_py(stats: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in jax.device_get(stats).items():
    v = np.asarray(v)
    out[k] = float(v) if v.ndim == 0 else [float(x) for x in v]
  return out


def coord_check(config: Any, widths: Sequence[int] = DEFAULT_WIDTHS, steps: int = 4,
                seeds: int = 1) -> dict[str, Any]:
  """Run the check: {'widths', 'steps', 'use_mup', 'stats': {width: [per step: {stat: …}]}}.

  Stats are averaged over `seeds` (seed = train.seed + i)."""
  result: dict[str, Any] = {'widths': list(widths), 'steps': steps,
                            'use_mup': bool(config.model.use_mup), 'stats': {}}
  for w in widths:
    runs = [_width_run(config, w, steps, int(config.train.seed) + i) for i in range(seeds)]
    mean = []
    for t in range(steps + 1):
      row = {}
      for k in runs[0][t]:
        vals = np.mean([np.asarray(r[t][k]) for r in runs], axis=0)
        row[k] = float(vals) if np.ndim(vals) == 0 else [float(x) for x in vals]
      mean.append(row)
    result['stats'][int(w)] = mean
  return result


def summary_value(v: Any) -> float:
  """One number per stat: the value itself, or the mean over layers."""
  return float(np.mean(v))


def width_slopes(result: Mapping[str, Any], step: Optional[int] = None) -> dict[str, float]:
  """Least-squares slope of log(stat) against log(width) at `step` (default: the last).

  0 = flat (µP's promise); 1 = grows ∝ width (SP's blow-up of update-driven activations)."""
  step = result['steps'] if step is None else step
  widths = sorted(int(w) for w in result['stats'])
  lw = np.log(widths)
  out = {}
  for name in result['stats'][widths[0]][step]:
    ys = np.log([max(summary_value(result['stats'][w][step][name]), 1e-30) for w in widths])
    out[name] = float(np.polyfit(lw, ys, 1)[0])
  return out


def plot(results: Sequence[Mapping[str, Any]], path: str, labels: Sequence[str] = ()) -> str:
  """PNG: one row per result (µP / SP), one panel per stat; mean |x| vs width, a line per step
  (per-layer stats: one line per layer at the last step as well, dashed)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from flmjax.plot import save_figure  # matplotlib too: only when a figure is drawn
  names = STATS
  fig, axes = plt.subplots(len(results), len(names), figsize=(3.2 * len(names),
                                                               2.8 * len(results)), squeeze=False)
  for r, (res, row) in enumerate(zip(results, axes)):
    label = labels[r] if r < len(labels) else ('µP' if res['use_mup'] else 'SP')
    widths = sorted(int(w) for w in res['stats'])
    cmap = plt.get_cmap('viridis')
    for ax, name in zip(row, names):
      for t in range(res['steps'] + 1):
        ys = [summary_value(res['stats'][w][t][name]) for w in widths]
        ax.plot(widths, ys, marker='o', ms=3, color=cmap(t / max(res['steps'], 1)),
                label=f't={t}')
      last = res['stats'][widths[0]][res['steps']][name]
      if isinstance(last, list) and len(last) > 1:
        for layer in range(len(last)):
          ys = [res['stats'][w][res['steps']][name][layer] for w in widths]
          ax.plot(widths, ys, ls='--', lw=0.8, color='grey')
      ax.set_xscale('log', base=2)
      ax.set_yscale('log')
      ax.set_title(f'{label}: {name}', fontsize=9)
      ax.set_xlabel('width (d_model)', fontsize=8)
    row[0].set_ylabel('mean |x|')
    row[0].legend(fontsize=6)
  fig.tight_layout()
  paths.makedirs(paths.dirname(paths.absolute(path)))
  save_figure(fig, path)  # local or gs://
  return path


def format_table(result: Mapping[str, Any]) -> str:
  widths = sorted(int(w) for w in result['stats'])
  step = result['steps']
  slopes = width_slopes(result)
  head = f"{'stat':>12} " + ' '.join(f'{"w=" + str(w):>10}' for w in widths) + f" {'slope':>8}"
  lines = [f"{'µP' if result['use_mup'] else 'SP'}: mean |x| after {step} steps", head]
  for name in STATS:
    vals = [summary_value(result['stats'][w][step][name]) for w in widths]
    lines.append(f'{name:>12} ' + ' '.join(f'{v:10.4g}' for v in vals) + f' {slopes[name]:8.3f}')
  return '\n'.join(lines)
