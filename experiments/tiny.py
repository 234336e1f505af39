"""CPU smoke run: a 2-layer, d_model 64 model on the `flm_bilingual` mixture (embedded corpus).

Trains in about a minute on 2 CPU cores (plus ~1 min the very first time, to build and cache
the SentencePiece vocabulary); validation loss falls on both the English and the Chinese split
(`val_loss_en`, `val_loss_zh` in metrics.jsonl).
`flmjax train --config experiments/tiny.py --workdir /tmp/tiny`.
For the synthetic token task instead: `--config.data.source=synthetic`.
"""

from flmjax import experiment


def get_config():
  c = experiment.default_config()
  c.model.update(vocab_size=8000, d_model=64, n_heads=4, head_dim=16, d_ff=256, n_layers=2,
                 max_len=128)
  c.data.source = 'bilingual'
  c.data.seed = 0
  c.data.synthetic.vocab_size = 64
  c.optim.update(lr=3e-3, warmup_steps=20, schedule='cosine', end_lr=3e-4, weight_decay=0.01)
  c.train.update(steps=150, seq_len=64, global_batch_size=16, log_every=10, eval_every=50,
                 eval_batches=2, ckpt_every=50, keep=2)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c
