"""The parameter-role tables in `flmjax.params` agree with what `flmjax.model` declares, and
µP, growth and the optimizer's decay mask read their roles from them."""

import flax.linen as nn
import pytest

from flmjax import mup, optimizer, params
from flmjax.config import ModelConfig
from flmjax.model import abstract_params

CFG = ModelConfig(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=32)


def _leaf_names(cfg: ModelConfig) -> list[str]:
  return [name.rsplit('/', 1)[-1] for name in params.flatten_paths(nn.meta.unbox(abstract_params(cfg)))]


def test_every_declared_parameter_has_exactly_one_role():
  declared = set(_leaf_names(CFG)) | set(_leaf_names(CFG.replace(tie_embeddings=False)))
  roles = (params.WEIGHTS, params.BIASES, params.LAYER_NORM)
  for name in declared:
    assert sum(name in r for r in roles) == 1, name
  assert set().union(*roles) == declared  # no table names a parameter the model lacks
  assert set(params.RESIDUAL_OUT) <= declared and set(params.FINAL_LN) <= set(params.LAYER_NORM)
  assert 'unembed' not in _leaf_names(CFG)  # tied: the embedding is the readout


def test_decay_mask_is_the_weight_matrices_exactly():
  p = nn.meta.unbox(abstract_params(CFG.replace(tie_embeddings=False)))
  mask = params.flatten_paths(optimizer.decay_mask(p))
  assert {n.rsplit('/', 1)[-1] for n, decays in mask.items() if decays} == set(params.WEIGHTS)
  # Names, not prefixes: a weight whose name starts with 'b' or 'ln' still decays.
  assert optimizer.decay_mask({'blend': 1.0, 'lnx': 2.0, 'bo': 3.0}) == {
      'blend': True, 'lnx': True, 'bo': False}


def test_mup_groups_follow_the_tables():
  assert {mup.param_group(n) for n in params.HIDDEN} == {'hidden'}
  assert {mup.param_group(n) for n in params.BIASES + params.LAYER_NORM} == {'vector'}
  assert mup.param_group('embed') == 'embedding' and mup.param_group('unembed') == 'output'
  cfg = CFG.replace(n_layers=8)
  assert mup.init_std(cfg, 'wo') == pytest.approx(cfg.init_std / 4)  # residual out: 1/√(2·8)
  assert mup.init_std(cfg, 'wq') == pytest.approx(cfg.init_std)
  with pytest.raises(ValueError, match="'bo' is a vector parameter"):
    mup.init_std(cfg, 'bo')
