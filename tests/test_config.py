"""Experiment configs: the shipped files validate, FLM-101B's shapes and FLOPs saving, and every
bad value is reported with its field and value before anything compiles."""

import os

import flax.linen as nn
import jax
import pytest

from conftest import ROOT, tiny_config
from flmjax import experiment, plan
from flmjax.config import ConfigError
from flmjax.model import abstract_params


def _load(name, *overrides):
  return experiment.load_config(os.path.join(ROOT, 'experiments', name), overrides)


def test_flm101b_stages_param_counts_and_model_card():
  stages = experiment.validate(_load('flm101b.py'))
  assert [s.name for s in stages] == ['16B', '51B', '101B']
  final = stages[-1].model
  assert (final.n_layers, final.n_heads, final.d_model, final.vocab_size, final.head_dim) == (
      80, 80, 10240, 100256, 128)
  assert final.padded_vocab == 100352
  for s, billions in zip(stages, (16, 51, 101)):
    shapes = nn.meta.unbox(abstract_params(s.model))  # eval_shape: no memory
    n = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
    assert n == s.model.param_count()
    assert abs(n / 1e9 - billions) / billions < 0.05, (s.name, n)
  assert [s.global_batch_size for s in stages] == [2304, 2304, 2160]
  assert [s.lr for s in stages] == [4e-4, 3.4e-4, 2e-4]
  assert sum(s.tokens for s in stages) == pytest.approx(311.55e9, rel=1e-3)
  # FLM-101B: 72% saved against the 101B model from scratch on the same tokens
  assert plan.flops_summary(stages)['saved_fraction'] == pytest.approx(0.72, abs=0.02)


def test_tiny_config_validates_on_one_device():
  stages = experiment.validate(_load('tiny.py'), num_devices=1)
  cfg = _load('tiny.py')
  assert cfg.data.source == 'bilingual'  # issue 3: the smoke config trains on flm_bilingual
  assert stages[0].steps == 150 and stages[0].model.d_model == 64


@pytest.mark.parametrize('mutate, message', [
    (lambda c: setattr(c, 'extra', 1), r"unknown section\(s\) \['extra'\]"),
    (lambda c: c.optim.__setattr__('lrr', 1.0), r"optim: unknown field\(s\) \['lrr'\]"),
    (lambda c: c.model.__setattr__('n_head', 2), r"unknown field\(s\) \['n_head'\]"),
    (lambda c: c.model.update(n_heads=3), r'model.n_heads \* model.head_dim must equal '
                                          r'model.d_model: 3 \* 16 = 48 != 32'),
    (lambda c: c.train.update(global_batch_size=6), r'train.global_batch_size=6 / '
                                                    r'optim.grad_accum=1 = 6 is not divisible'),
    (lambda c: c.optim.update(grad_accum=3), r'global_batch_size=8 .* not divisible by '
                                             r'optim.grad_accum=3'),
    (lambda c: c.mesh.update(data=3, fsdp=1), r'mesh \(data, fsdp, tensor\) = \(3, 1, 1\) has 3 '
                                              r'devices but 4 are available'),
    (lambda c: c.mesh.update(fsdp=1, tensor=4), r'model.n_heads=2 is not divisible by mesh axis '
                                                r"'tensor' of size 4"),
    (lambda c: c.optim.update(schedule='linear'), r"optim.schedule must be 'cosine' or "
                                                  r"'constant', got 'linear'"),
    (lambda c: c.train.update(steps=0), r'train: set exactly one of steps or tokens'),
    (lambda c: c.train.update(seq_len=64), r'train.seq_len=64 exceeds model.max_len=32'),
    (lambda c: c.data.synthetic.update(vocab_size=500), r'data.synthetic.vocab_size=500 exceeds'),
])
def test_validation_errors_name_field_and_value(mutate, message):
  c = tiny_config(4)
  with c.ignore_type():
    mutate(c)
  with pytest.raises(ConfigError, match=message):
    experiment.validate(c, num_devices=4)


def test_each_section_is_checked_by_the_module_that_owns_it():
  from flmjax import sharding
  from flmjax.training import faults
  mesh = {'data': 1, 'fsdp': -1, 'tensor': 1}
  assert dict(sharding.validate_mesh_config(mesh))['heads'] == 'tensor'
  with pytest.raises(ConfigError, match=r"mesh: unknown field\(s\) \['model'\]"):
    sharding.validate_mesh_config({**mesh, 'model': 2})
  with pytest.raises(ConfigError, match=r"mesh.tensor must be a int, got '2'"):
    sharding.validate_mesh_config({**mesh, 'tensor': '2'})
  f = faults.default_faults_config()
  assert faults.validate_faults_config(f) is f
  f.max_rollbacks = -1
  with pytest.raises(ConfigError, match=r'faults.max_rollbacks must be >= 0, got -1'):
    faults.validate_faults_config(f)
  c = tiny_config(4)
  del c['faults']  # required: every saved config has it
  with pytest.raises(ConfigError, match=r"config: missing section 'faults'"):
    experiment.validate(c, num_devices=1)
