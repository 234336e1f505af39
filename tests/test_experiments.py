"""The shipped experiment files: valid, and faithful to FLM-101B's proportions."""

import os

import pytest

from flmjax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(name: str):
  cfg = experiment.load_config(os.path.join(ROOT, 'experiments', name))
  return cfg, experiment.validate(cfg, num_devices=None)


def test_flm101b_stages_are_the_papers_table():
  _, stages = _plan('flm101b.py')
  assert [s.model.d_model for s in stages] == [4096, 7168, 10240]
  assert [s.model.n_heads for s in stages] == [32, 56, 80]
  assert {s.model.n_layers for s in stages} == {80} and {s.model.head_dim for s in stages} == {128}
  assert [s.lr for s in stages] == [4e-4, 3.4e-4, 2e-4]
  # the paper's 2304 / 2304 / 2160; 2160 divides no TPU slice's batch shards (see the file)
  assert [s.global_batch_size for s in stages] == [2304, 2304, 2176]
  tokens = [s.tokens / 1e9 for s in stages]
  assert tokens == pytest.approx([245.37, 39.64, 26.54], rel=1e-3)
  final = stages[-1].model
  # cl100k_base with its special tokens and ours, in the released 100352-row embedding
  assert (final.n_layers, final.n_heads, final.d_model, final.vocab_size) == (80, 80, 10240, 100282)
  assert final.padded_vocab == 100352
  assert (final.use_mup, final.mup_base_width, final.output_mult, final.input_mult) == (
      True, 256, 2.0, 1.0)
  assert final.width_mult == 40
  assert [s.growth.width for s in stages[1:]] == ['msg', 'msg']


def test_tiny_growth_keeps_the_papers_proportions():
  _, stages = _plan('tiny_growth.py')
  widths = [s.model.d_model for s in stages]
  assert [w / widths[0] for w in widths] == pytest.approx([1, 7168 / 4096, 10240 / 4096])
  assert [s.model.n_heads for s in stages] == [4, 7, 10]  # 32 : 56 : 80
  assert len({s.model.n_layers for s in stages}) == 1
  assert all(s.model.d_ff == 4 * s.model.d_model for s in stages)
  total = sum(s.tokens for s in stages)
  shares = [s.tokens / total for s in stages]
  paper = [245.37, 39.64, 26.54]
  assert shares == pytest.approx([p / sum(paper) for p in paper], abs=0.01)
  assert all(s.growth.width == 'msg' for s in stages[1:])


def test_tiny_scratch_is_the_final_shape_at_equal_flops():
  cfg_g, growth = _plan('tiny_growth.py')
  cfg_s, scratch = _plan('tiny_scratch.py')
  assert len(scratch) == 1 and scratch[0].model == growth[-1].model
  assert cfg_s.data.to_dict() == cfg_g.data.to_dict()
  assert scratch[0].flops == pytest.approx(sum(s.flops for s in growth), rel=0.01)


@pytest.mark.parametrize('name', ['tiny.py', 'tiny_growth.py', 'tiny_scratch.py', 'flm101b.py'])
def test_training_experiment_files_validate(name):
  """(The µP files carry `sweep`/`experiment` sections; tests/test_mup.py runs them.)"""
  cfg = experiment.load_config(os.path.join(ROOT, 'experiments', name))
  assert experiment.validate(cfg, num_devices=None)
