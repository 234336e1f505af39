"""Names of parameters: the one place that turns a tree path into a string, and the one table
of what each parameter `flmjax.model` declares is for.

Growth, µP, the optimizer's decay mask and checkpoint metadata all key parameters by name
('layers/wq' or its leaf 'wq'); they must agree on how a path is spelt and on which names are
weights, biases or LayerNorm parameters, so they share these (tests/test_params.py checks the
tables against the model's own declarations).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

# ---- the model's parameters by role (leaf names) -----------------------------------------------
EMBEDDING = ('embed',)                                # V×D input table (tied: also the readout)
OUTPUT = ('unembed',)                                 # D×V readout, untied models only
HIDDEN = ('wq', 'wk', 'wv', 'wo', 'wi', 'wo_mlp')     # matrices inside the blocks
WEIGHTS = EMBEDDING + OUTPUT + HIDDEN                 # random init (std from `flmjax.mup`)
BIASES = ('bq', 'bk', 'bv', 'bo', 'bi', 'bo_mlp')     # init 0
FINAL_LN = ('final_ln_scale', 'final_ln_bias')
LAYER_NORM = ('ln1_scale', 'ln1_bias', 'ln2_scale', 'ln2_bias') + FINAL_LN  # init 1 / 0
# Leaves whose output is added to the residual stream (attention and MLP output projections
# with their biases): GPT-2's 1/√(2·n_layers) init applies to the matrices, and a new
# `identity` layer zeroes all four so it adds nothing.
RESIDUAL_OUT = ('wo', 'bo', 'wo_mlp', 'bo_mlp')
# No weight decay: LayerNorm scales/biases and biases (vectors); every weight matrix decays.
NO_DECAY = frozenset(BIASES + LAYER_NORM)


def key_name(key: Any) -> str:
  """One path entry as text: a dict key, an attribute name or a sequence index."""
  return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))


def leaf_name(path: Any) -> str:
  """The last entry of a tree path ('wq' for params/layers/wq)."""
  return key_name(path[-1])


def path_name(path: Any) -> str:
  """A tree path joined with '/' ('layers/wq')."""
  return '/'.join(key_name(k) for k in path)


def flatten_paths(tree: Any) -> dict[str, Any]:
  """{'a/b': leaf} for every leaf of `tree`."""
  return {path_name(path): leaf for path, leaf in jax.tree.flatten_with_path(tree)[0]}


def unflatten_paths(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `flatten_paths` for trees of nested dicts."""
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = out
    parts = path.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = leaf
  return out
