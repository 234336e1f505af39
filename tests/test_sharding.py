"""Logical → mesh rules, mesh resolution, and divisibility checks that name the field."""

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from flmjax import sharding
from flmjax.config import ConfigError, ModelConfig
from flmjax.model import abstract_params

CFG = ModelConfig(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=32)


def test_default_rules_shard_params_fsdp_and_tensor():
  rules = sharding.logical_rules({})
  specs = nn.logical_to_mesh(sharding.logical_specs(abstract_params(CFG)), rules)
  assert specs['embed'] == P('tensor', 'fsdp')
  assert specs['layers']['wq'] == P(None, 'fsdp', 'tensor', None)
  assert specs['layers']['wo_mlp'] == P(None, 'tensor', 'fsdp')
  assert specs['layers']['ln1_scale'] == P(None, 'fsdp')
  assert nn.logical_to_mesh_axes(('batch', 'length'), rules) == P(('data', 'fsdp'), None)


def test_rules_override_from_config_and_bad_axis():
  rules = dict(sharding.logical_rules({'rules': {'embed': (), 'mlp': 'fsdp,tensor'}}))
  assert rules['embed'] is None and rules['mlp'] == ('fsdp', 'tensor')
  with pytest.raises(ConfigError, match=r"mesh.rules.heads: unknown mesh axis \['model'\]"):
    sharding.logical_rules({'rules': {'heads': ('model',)}})


def test_mesh_shape_resolves_rest_and_rejects_wrong_product():
  assert sharding.mesh_shape({'data': 2, 'fsdp': -1, 'tensor': 2}, 8) == (2, 2, 2)
  with pytest.raises(ConfigError, match=r'mesh \(data, fsdp, tensor\) = \(2, 2, 1\) has 4 devices'):
    sharding.mesh_shape({'data': 2, 'fsdp': 2, 'tensor': 1}, 8)
  with pytest.raises(ConfigError, match='only one mesh axis may be -1'):
    sharding.mesh_shape({'data': -1, 'fsdp': -1, 'tensor': 1}, 8)
  with pytest.raises(ConfigError, match=r'mesh.tensor must be a positive integer or -1, got 0'):
    sharding.mesh_shape({'data': 1, 'fsdp': 1, 'tensor': 0}, 1)


def test_param_and_opt_state_shardings_on_a_mesh():
  import numpy as np
  import optax
  from jax.sharding import AbstractMesh, Mesh
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
  rules = sharding.logical_rules({})
  boxed = abstract_params(CFG)
  psh = sharding.param_shardings(CFG, mesh, rules)
  tx = optax.adamw(1e-3)
  opt = jax.eval_shape(tx.init, nn.meta.unbox(boxed))
  osh = sharding.opt_state_shardings(opt, psh, mesh)
  assert osh[0].mu['layers']['wq'].spec == psh['layers']['wq'].spec == P(None, 'fsdp', 'tensor',
                                                                         None)
  assert osh[0].count.spec == P()


def test_divisibility_error_names_the_config_field():
  from jax.sharding import AbstractMesh
  mesh = AbstractMesh((1, 1, 4), sharding.MESH_AXES)
  rules = sharding.logical_rules({})
  with pytest.raises(ConfigError, match=r"model.n_heads=2 is not divisible by mesh axis 'tensor' "
                                        r"of size 4"):
    sharding.check_divisible(CFG, mesh.shape, rules)
  with pytest.raises(ConfigError, match=r"model.n_heads=2 \(stage 'big'\) is not divisible by "
                                        r"mesh axis 'tensor' of size 4; change .* mesh.rules.heads"):
    sharding.check_divisible(CFG, mesh.shape, rules, stage='big')
  with pytest.raises(ConfigError, match=r"model.n_heads=2 is not divisible by mesh axis 'tensor'"):
    sharding.param_shardings(CFG, mesh, rules)
