"""µP loss prediction: proxies of increasing width with the transferred hyperparameters, an
L(N) = a·N^b + c fit at fixed tokens (or, with predict.proxy_tokens, laws with a data term),
and the prediction for the target width (8× the widest proxy).  The proxy family is experiments/mup_sweep.py's, at the point its sweep found.
  flmjax predict-loss --config experiments/mup_proxy.py --workdir /tmp/pred
  flmjax predict-loss --config experiments/mup_proxy.py:tiny --workdir /tmp/pred_tiny --train_target
"""

import os

import ml_collections

from flmjax import experiment


def get_config(preset: str = 'flm'):
  sweep_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mup_sweep.py')
  c = ml_collections.ConfigDict()
  c.experiment = experiment.load_config(f'{sweep_file}:{preset}').experiment
  if preset == 'tiny':
    c.predict = ml_collections.ConfigDict(dict(
        proxy_widths=[16, 32, 48], target_width=64, train_target=False, samples=300, seed=0,
        proxy_seeds=[], proxy_tokens=[], target_tokens=0))
  else:  # FLM-101B's proxy width 256 and 4× / 2× narrower ones; the target is 8× the widest
    c.predict = ml_collections.ConfigDict(dict(
        proxy_widths=[64, 128, 192, 256], target_width=2048, train_target=False, samples=1000,
        seed=0, proxy_seeds=[0, 1],  # each proxy's loss is the mean over two init seeds
        # token budgets (issue 29): [] trains every proxy on the experiment's tokens only; e.g.
        # [T/2, T, 2T] fits laws with a data term, L(N, D), and target_tokens (0: T) sets the
        # target's own budget
        proxy_tokens=[], target_tokens=0))
  return c
