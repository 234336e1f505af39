"""µP hyperparameter sweep: lr × init std × output multiplier on width-256 proxies.

FLM-101B's proxy search found lr 4e-4, init std 1.6e-2, output multiplier 2.0 at width 256
(µP base width 256, attention 1/d_head); this grid is centred on those values, ×4 apart.
  flmjax sweep --config experiments/mup_sweep.py --workdir /tmp/sweep
  flmjax sweep --config experiments/mup_sweep.py:tiny --workdir /tmp/sweep_tiny   # CPU, minutes
"""

import ml_collections

from flmjax import experiment


def proxy_experiment(preset: str = 'flm') -> ml_collections.ConfigDict:
  """The proxy family (µP on); sweeps and loss predictions rescale its width."""
  c = experiment.default_config()
  if preset == 'tiny':  # synthetic Markov data, 2 layers: seconds per point on CPU
    c.model.update(vocab_size=128, d_model=32, n_heads=2, head_dim=16, d_ff=128, n_layers=2,
                   max_len=32, use_mup=True, mup_base_width=32, attn_scale='1/d_head',
                   output_mult=2.0, init_std=1.6e-2)
    c.data.source = 'synthetic'
    c.data.synthetic.update(vocab_size=32, min_doc_len=4, max_doc_len=12)
    c.optim.update(lr=1e-2, warmup_steps=2, end_lr=1e-3, weight_decay=0.0)
    c.train.update(steps=8, seq_len=16, global_batch_size=8, log_every=2, eval_every=0,
                   eval_batches=1, ckpt_every=0)
  elif preset == 'flm':  # embedded bilingual corpus, FLM-101B's µP settings at width 256
    c.model.update(vocab_size=8000, d_model=256, n_heads=4, head_dim=64, d_ff=1024, n_layers=4,
                   max_len=256, use_mup=True, mup_base_width=256, attn_scale='1/d_head',
                   output_mult=2.0, init_std=1.6e-2)
    c.data.source = 'bilingual'
    c.optim.update(lr=4e-4, warmup_steps=50, end_lr=4e-5, weight_decay=0.1, clip=1.0)
    c.train.update(steps=1000, seq_len=256, global_batch_size=32, log_every=50, eval_every=0,
                   eval_batches=4, ckpt_every=0)
  else:
    raise ValueError(f"preset must be 'flm' or 'tiny', got {preset!r}")
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c


def get_config(preset: str = 'flm'):
  c = ml_collections.ConfigDict()
  c.experiment = proxy_experiment(preset)
  c.sweep = ml_collections.ConfigDict(dict(
      mode='grid', num_samples=8, seed=0,
      lr=[1e-4, 4e-4, 1.6e-3], init_std=[4e-3, 1.6e-2, 6.4e-2], output_mult=[0.5, 2.0, 8.0],
      widths=[256], target_width=2048, train_target=False))
  if preset == 'tiny':
    c.sweep.update(lr=[3e-3, 1e-2], init_std=[1.6e-2], output_mult=[2.0], widths=[32, 64],
                   target_width=128)
  return c
