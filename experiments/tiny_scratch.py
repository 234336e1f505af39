"""Baseline for experiments/tiny_growth.py: its final (large) model trained from scratch on the
same data, with the same recipe, for the same total training FLOPs as the whole growth run.

`benchmarks/growth_vs_scratch.py` and `flmjax plot --compare` set the two side by side.
"""

import importlib.util
import os

from flmjax.config import ModelConfig


def _growth_experiment():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny_growth.py')
  spec = importlib.util.spec_from_file_location('tiny_growth', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  g = _growth_experiment()
  growth = g.get_config()
  c = g.base_config()
  c.model.update(g.stage_model(len(g.WIDTHS) - 1))
  seq = c.train.seq_len
  stage_models = [ModelConfig.from_dict({**c.model.to_dict(), **s['model']}) for s in growth.stages]
  growth_flops = sum(m.flops_per_token(seq) * s['tokens']
                     for m, s in zip(stage_models, growth.stages))
  final = ModelConfig.from_dict(c.model.to_dict())
  c.train.tokens = int(growth_flops / final.flops_per_token(seq))
  c.optim.update(lr=g.LRS[0], warmup_steps=40)
  return c
