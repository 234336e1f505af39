"""FLM-101B's recipe scaled down to a CPU: three width stages, MSG growth, bilingual mixture.

Proportions kept from the paper (see experiments/flm101b.py):
  * widths 4096 : 7168 : 10240 with heads 32 : 56 : 80 of 128  →  here 64 : 112 : 160 with
    heads 4 : 7 : 10 of 16 (÷64 and ÷8); d_ff = 4·d_model; depth constant (4 layers);
  * token budgets 245.37B : 39.64B : 26.54B (78.8% : 12.7% : 8.5% of the run);
  * the LR: one schedule (`optim.stage_schedule='continue'`: each stage decays to the next
    stage's LR, where that stage starts, only the first warms up and only the last anneals, to
    2e-4 here) that holds the peak through every growth and decays only in the last stage
    (`LRS`, issue 25: the LR at and after a growth decided whether growth paid in
    benchmarks/growth_evidence.py — starting the grown model at the LR where one cosine over
    steps stood left it behind training from scratch, returning to the peak made it reach
    scratch's loss with fewer FLOPs; BUILD.md › Performance).  The paper's own stage LRs,
    4e-4 : 3.4e-4 : 2e-4 (`FLM_LRS`, the same ratios scaled up), already keep the LR at the
    first growth at 0.85× the peak; experiments/flm101b.py keeps them;
  * AdamW β (0.9, 0.95), weight decay 0.1, clip 1.0, cosine decay; xPos; tied embeddings;
  * data: the `flm_bilingual` mixture (53.5 : 46.5 en : zh, plus instruction and FreeLM
    teacher-signal data), the embedded corpus.
Growth between stages is MSG on every width dimension, masks ramped over `RAMP` steps.

Stages are named so `flmjax grow --to experiments/tiny_growth.py:mid` can target one.
The from-scratch baseline is experiments/tiny_scratch.py (final shape, same total FLOPs).
"""

from flmjax import experiment

SEQ = 128
BATCH = 16
TOTAL_TOKENS = 1_000_000
VOCAB = 8000  # the data layer's default SentencePiece vocabulary (shared cache)
SHARES = (0.7880, 0.1273, 0.0847)  # 245.37 : 39.64 : 26.54
FLM_LRS = (4e-3, 3.4e-3, 2e-3)  # FLM-101B's 4e-4 : 3.4e-4 : 2e-4, scaled up
LRS = (4e-3, 4e-3, 4e-3)        # the peak held through each growth (issue 25's recipe)
RAMP = 20
WIDTHS = ((64, 4), (112, 7), (160, 10))  # (d_model, n_heads), head_dim 16


def base_config():
  """Everything but the stages: shared with tiny_scratch.py so the two runs differ only there."""
  c = experiment.default_config()
  c.model.update(vocab_size=VOCAB, d_model=64, n_heads=4, head_dim=16, d_ff=256, n_layers=4,
                 max_len=SEQ, tie_embeddings=True, use_xpos=True)
  c.data.source = 'bilingual'
  c.data.vocab.size = VOCAB
  c.optim.update(lr=LRS[0], warmup_steps=40, schedule='cosine', end_lr=2e-4, b1=0.9, b2=0.95,
                 weight_decay=0.1, clip=1.0, stage_schedule='continue')
  c.train.update(seq_len=SEQ, global_batch_size=BATCH, log_every=10, eval_every=50,
                 eval_batches=4, ckpt_every=200, keep=2)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c


def stage_model(k: int) -> dict:
  d, h = WIDTHS[k]
  return dict(d_model=d, n_heads=h, d_ff=4 * d)


def get_config():
  c = base_config()
  growth = dict(width='msg', depth='msg', ramp_steps=RAMP)
  c.stages = [
      dict(name='small', model=stage_model(0), tokens=int(TOTAL_TOKENS * SHARES[0]), lr=LRS[0],
           warmup_steps=40),
      dict(name='mid', model=stage_model(1), tokens=int(TOTAL_TOKENS * SHARES[1]), lr=LRS[1],
           growth=growth),
      dict(name='large', model=stage_model(2), tokens=int(TOTAL_TOKENS * SHARES[2]), lr=LRS[2],
           growth=growth),
  ]
  return c
