"""Names of parameters in a pytree: the one place that turns a tree path into a string.

Growth, µP, the optimizer's decay mask and checkpoint metadata all key parameters by name
('layers/wq' or its leaf 'wq'); they must agree on how a path is spelt, so they share these.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax


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
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
