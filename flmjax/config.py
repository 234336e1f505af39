"""Model configuration: a frozen dataclass so it can be a static argument under `jax.jit`.

Experiment files are ml-collections ConfigDicts (configs as data); `ModelConfig.from_dict` turns
their `model` section into this typed, validated, hashable value.  Every error names the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_dtypes  # noqa: F401  registers bfloat16 & co. as numpy dtype names
import numpy as np   # (jax.numpy.dtype is numpy.dtype): the data layer loads no JAX through here

VOCAB_MULTIPLE = 128
# The first input of every document, in training, evaluation and sampling alike: seqio's id 0
# (pad), which seqio / T5X decoders already use as the start token and every checkpoint so far
# was trained with.  The SentencePiece vocabulary has no BOS piece of its own (bos_id = -1).
BOS_ID = 0

# Logical parameter axis -> the config field that sets its size (named in sharding and growth
# errors).  `ModelConfig.axis_sizes` gives the sizes themselves.
AXIS_FIELDS = {'vocab': 'model.vocab_size (padded)', 'embed': 'model.d_model',
               'heads': 'model.n_heads', 'mlp': 'model.d_ff', 'kv': 'model.head_dim',
               'layers': 'model.n_layers'}


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field and the value."""


def check_section(cfg: Any, defaults: Any, section: str) -> None:
  """A config section against its defaults: unknown fields are rejected and each field must have
  its default's type.  Every module that owns a section validates it with this."""
  d_keys, keys = set(defaults.keys()), set(cfg.keys())
  unknown = sorted(keys - d_keys)
  if unknown:
    raise ConfigError(f'{section}: unknown field(s) {unknown}; known fields: {sorted(d_keys)}')
  for k in sorted(keys):
    v, dv = cfg[k], defaults[k]
    if isinstance(dv, bool):
      ok = isinstance(v, bool)
    elif isinstance(dv, int):
      ok = isinstance(v, int) and not isinstance(v, bool)
    elif isinstance(dv, float):
      ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    elif isinstance(dv, str):
      ok = isinstance(v, str)
    else:
      ok = True
    if not ok:
      raise ConfigError(f'{section}.{k} must be a {type(dv).__name__}, got {v!r}')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of the FLM decoder (GPT-3 style FreeLM backbone with xPos)."""

  vocab_size: int = 8192          # tokenizer vocabulary; padded to a multiple of 128 in the model
  d_model: int = 256
  n_heads: int = 4
  head_dim: int = 64
  d_ff: int = 1024                # 4 * d_model in FLM-101B (GeLU, not gated)
  n_layers: int = 2
  max_len: int = 256
  param_dtype: str = 'float32'
  compute_dtype: str = 'float32'  # 'bfloat16' on accelerators
  tie_embeddings: bool = True
  ln_eps: float = 1e-5
  rope_theta: float = 10000.0
  xpos_scale_base: float = 512.0
  use_xpos: bool = True           # False: plain rotary (RoPE)
  init_std: float = 0.02
  remat: str = 'none'             # 'none' | 'full' | 'dots' (rematerialisation policy per layer)
  attention_impl: str = 'xla'     # 'xla' (einsum) | 'cudnn' (jax.nn.dot_product_attention)
  # µP fields, named after the released FLM-101B config.  Defaults = standard parametrisation.
  use_mup: bool = False
  mup_base_width: int = 256
  input_mult: float = 1.0
  output_mult: float = 1.0        # FLM-101B uses 2.0 under µP
  attn_scale: str = '1/sqrt(d_head)'  # or '1/d_head' (µP)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'ModelConfig':
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ConfigError(f'model: unknown field(s) {unknown}; known fields: {sorted(names)}')
    cfg = cls(**d)
    cfg.validate()
    return cfg

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw: Any) -> 'ModelConfig':
    cfg = dataclasses.replace(self, **kw)
    cfg.validate()
    return cfg

  @property
  def padded_vocab(self) -> int:
    return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

  @property
  def dtype(self):
    return np.dtype(self.compute_dtype)

  @property
  def pdtype(self):
    return np.dtype(self.param_dtype)

  def validate(self) -> None:
    for name in ('vocab_size', 'd_model', 'n_heads', 'head_dim', 'd_ff', 'n_layers', 'max_len',
                 'mup_base_width'):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f'model.{name} must be a positive integer, got {v!r}')
    if self.n_heads * self.head_dim != self.d_model:
      raise ConfigError(
          f'model.n_heads * model.head_dim must equal model.d_model: '
          f'{self.n_heads} * {self.head_dim} = {self.n_heads * self.head_dim} != {self.d_model}')
    if self.head_dim % 2:
      raise ConfigError(f'model.head_dim must be even for rotary/xPos, got {self.head_dim}')
    for name in ('param_dtype', 'compute_dtype'):
      v = getattr(self, name)
      if v not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f'model.{name} must be float32, bfloat16 or float16, got {v!r}')
    if self.remat not in ('none', 'full', 'dots'):
      raise ConfigError(f"model.remat must be 'none', 'full' or 'dots', got {self.remat!r}")
    if self.attention_impl not in ('xla', 'cudnn'):
      raise ConfigError(f"model.attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}")
    if self.attn_scale not in ('1/sqrt(d_head)', '1/d_head'):
      raise ConfigError(
          f"model.attn_scale must be '1/sqrt(d_head)' or '1/d_head', got {self.attn_scale!r}")
    for name in ('ln_eps', 'init_std', 'rope_theta', 'xpos_scale_base', 'input_mult', 'output_mult'):
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f'model.{name} must be a positive number, got {v!r}')

  # ---- derived quantities -------------------------------------------------------------
  def axis_sizes(self) -> dict[str, int]:
    """Size of every logical parameter axis (the names in `flmjax.model`'s declarations)."""
    return {'vocab': self.padded_vocab, 'embed': self.d_model, 'heads': self.n_heads,
            'mlp': self.d_ff, 'kv': self.head_dim, 'layers': self.n_layers}

  @property
  def width_mult(self) -> float:
    """d_model / mup_base_width: the µP width multiplier (1.0 under standard parametrisation)."""
    return self.d_model / self.mup_base_width if self.use_mup else 1.0

  @property
  def attention_scale(self) -> float:
    return 1.0 / self.head_dim if self.attn_scale == '1/d_head' else self.head_dim ** -0.5

  @property
  def logit_scale(self) -> float:
    """Multiplier on the output logits: output_mult, divided by the width multiplier under µP."""
    return self.output_mult / self.width_mult

  def param_count(self, include_embedding: bool = True) -> int:
    """Exact number of parameters of `flmjax.model.Transformer` (padded vocabulary)."""
    d, f, L, V = self.d_model, self.d_ff, self.n_layers, self.padded_vocab
    per_layer = (2 * d                       # ln1
                 + 3 * (d * d + d)           # q, k, v (+ bias)
                 + d * d + d                 # out proj (+ bias)
                 + 2 * d                     # ln2
                 + d * f + f + f * d + d)    # mlp
    n = L * per_layer + 2 * d               # final ln
    if include_embedding:
      n += V * d * (1 if self.tie_embeddings else 2)
    return n

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), matmuls only.

    6·N for the non-embedding weights and the output projection, plus 12·L·seq·d for attention
    scores and values (causal attention counted in full, as in the PaLM paper's appendix B).
    """
    n_matmul = self.n_layers * (4 * self.d_model ** 2 + 2 * self.d_model * self.d_ff)
    n_matmul += self.d_model * self.padded_vocab
    return 6.0 * n_matmul + 12.0 * self.n_layers * seq_len * self.d_model
