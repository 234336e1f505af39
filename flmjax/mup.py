"""µP (Maximal Update Parametrisation) rules in one place: init stds, per-parameter Adam learning
rate multipliers, and width scaling of a config.

The table (Yang et al. 2022, Tensor Programs V, Table 3 for Adam; FLM-101B uses the same), with
width_mult = d_model / mup_base_width:

  group       parameters                          init std                 Adam LR   forward
  embedding   embed (VxD; tied: also the readout) init_std                 1         × input_mult
  hidden      wq wk wv wo wi wo_mlp               init_std/√width_mult     1/width_mult
  output      unembed (DxV, untied only)          init_std                 1         logits × output_mult/width_mult
  vector      biases, LayerNorm scales/biases     0 / 1                    1
  attention   q·k scaled by 1/d_head (µP) instead of 1/√d_head

The readout's 1/width_mult sits in the forward pass (`ModelConfig.logit_scale`, mup's MuReadout)
rather than in its learning rate, so the readout and the tied embedding share LR multiplier 1.
d_ff and n_heads are assumed to grow with d_model, so one width_mult serves every hidden matrix.
Under standard parametrisation (use_mup=False) width_mult is 1 and every multiplier is 1.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax

from flmjax.config import ModelConfig
from flmjax.params import EMBEDDING, HIDDEN, OUTPUT, RESIDUAL_OUT, leaf_name


def param_group(name: str) -> str:
  """µP group of a parameter by its leaf name (see the module table)."""
  if name in HIDDEN:
    return 'hidden'
  if name in EMBEDDING:
    return 'embedding'
  if name in OUTPUT:
    return 'output'
  return 'vector'


# ---- init ------------------------------------------------------------------------------------

def init_std(cfg: ModelConfig, name: str) -> float:
  """Initial std of weight `name` (biases and LayerNorm are constants: 0 and 1)."""
  group = param_group(name)
  if group == 'hidden':
    std = cfg.init_std / cfg.width_mult ** 0.5  # fan-in scaling relative to the base width
    return std / (2 * cfg.n_layers) ** 0.5 if name in RESIDUAL_OUT else std
  if group in ('embedding', 'output'):
    return cfg.init_std
  raise ValueError(f'mup.init_std: {name!r} is a {group} parameter, not a weight matrix')


# ---- learning rates ----------------------------------------------------------------------------

def lr_multiplier(cfg: ModelConfig, name: str) -> float:
  """Adam learning-rate multiplier of parameter `name`: 1/width_mult for hidden matrices."""
  return 1.0 / cfg.width_mult if param_group(name) == 'hidden' else 1.0


def lr_scales(cfg: ModelConfig) -> Optional[Callable[[Any], Any]]:
  """The `lr_scales` argument of `optimizer.make_optimizer` for this model: a function of the
  updates pytree giving each leaf its multiplier; None under standard parametrisation."""
  if not cfg.use_mup:
    return None

  def scales(updates: Any) -> Any:
    return jax.tree.map_with_path(lambda p, _: lr_multiplier(cfg, leaf_name(p)), updates)
  return scales


# ---- width scaling -------------------------------------------------------------------------------

def at_width(cfg: ModelConfig, width: int) -> ModelConfig:
  """`cfg` at d_model = width: heads = width / head_dim, d_ff keeps its ratio to d_model; depth,
  head_dim, vocabulary and the µP base width stay.  The proxy/target family of a µP sweep."""
  if width % cfg.head_dim:
    raise ValueError(f'width {width} is not a multiple of model.head_dim={cfg.head_dim}')
  d_ff = cfg.d_ff * width // cfg.d_model
  if d_ff * cfg.d_model != cfg.d_ff * width:
    raise ValueError(f'width {width}: d_ff={cfg.d_ff} · {width} / d_model={cfg.d_model} is not '
                     f'an integer')
  return cfg.replace(d_model=width, n_heads=width // cfg.head_dim, d_ff=d_ff)


def model_at_width(model_section: Mapping[str, Any], width: int) -> dict[str, Any]:
  """`at_width` on an experiment's `model` section (a dict/ConfigDict), returning a dict."""
  return at_width(ModelConfig.from_dict(model_section), width).to_dict()


def with_hparams(config: Any, *, width: Optional[int] = None, lr: Optional[float] = None,
                 init_std: Optional[float] = None, output_mult: Optional[float] = None) -> Any:
  """A copy of an experiment config at `width` with the three µP-transferable hyperparameters."""
  c = config.copy_and_resolve_references()
  if width is not None:
    c.model.update(model_at_width(c.model, width))
  if lr is not None:
    end_ratio = c.optim.end_lr / c.optim.lr if c.optim.lr else 0.0
    c.optim.lr = float(lr)
    c.optim.end_lr = float(lr) * end_ratio  # keep the schedule's shape
  if init_std is not None:
    c.model.init_std = float(init_std)
  if output_mult is not None:
    c.model.output_mult = float(output_mult)
  return c
