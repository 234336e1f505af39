"""FLM-101B's three growth stages (Li et al. 2023, "FLM-101B: An Open LLM and How to Train It
with $100K Budget").

The paper publishes the final (101B) shape only: 80 layers, 80 heads of 128, d_model 10240,
vocab 100256, seq 2048, xPos.  **The 16B and 51B stages below are our reconstruction**: same
depth and head_dim, heads 32 → 56 → 80 (d_model 4096 → 7168 → 10240, d_ff = 4·d_model).  Token
budgets (245.37B / 39.64B / 26.54B), learning rates (4e-4 / 3.4e-4 / 2e-4) and batch sizes
(2304 / 2304 / 2160 sequences of 2048) are the paper's table; AdamW β = (0.9, 0.95), weight decay
0.1, clip 1.0.  The LR is one slowly decaying schedule, as the paper "approximately inherit[s] the
previous learning rate" (`optim.stage_schedule='continue'`): 16B warms up and decays 4e-4 →
3.4e-4, 51B starts there and decays to 2e-4, 101B starts there and anneals to 6e-6.  The paper's
short warm-ups at 51B / 101B are the re-warm-up of the new units' updates (growth.rewarmup_steps
= 100), so the LR itself does not jump.  Growth between stages: MSG width growth (heads, hidden,
FFN), masks ramped in over `ramp_steps`.

The mesh is for a large slice (fsdp takes the rest of the devices, tensor 8); adjust to yours.
"""

from flmjax import experiment

SEQ = 2048


def get_config():
  c = experiment.default_config()
  c.model.update(vocab_size=100256, d_model=4096, n_heads=32, head_dim=128, d_ff=16384,
                 n_layers=80, max_len=SEQ, compute_dtype='bfloat16', remat='full',
                 tie_embeddings=True)
  c.data.source = 'bilingual'
  c.optim.update(lr=4e-4, warmup_steps=2000, schedule='cosine', end_lr=6e-6, b1=0.9, b2=0.95,
                 eps=1e-8, weight_decay=0.1, clip=1.0, grad_accum=1, z_loss=0.0,
                 stage_schedule='continue')
  c.train.update(seq_len=SEQ, global_batch_size=2304, log_every=10, eval_every=1000,
                 eval_batches=8, ckpt_every=1000, keep=3)
  c.mesh.update(data=1, fsdp=-1, tensor=8)
  growth = dict(width='msg', depth='msg', ramp_steps=500, rewarmup_steps=100)
  c.stages = [
      dict(name='16B', model=dict(d_model=4096, n_heads=32, d_ff=16384),
           tokens=245_370_000_000, lr=4e-4, warmup_steps=2000, global_batch_size=2304),
      dict(name='51B', model=dict(d_model=7168, n_heads=56, d_ff=28672),
           tokens=39_640_000_000, lr=3.4e-4, global_batch_size=2304, growth=growth),
      dict(name='101B', model=dict(d_model=10240, n_heads=80, d_ff=40960),
           tokens=26_540_000_000, lr=2e-4, global_batch_size=2160, growth=growth),
  ]
  return c
