"""The training loop and what it is built from.

  state     TrainState: what a step needs and a checkpoint keeps
  batches   per-process numpy batches → global jax.Arrays; train / eval iterators
  step      the loss and the jitted train / eval step functions
  runtime   one stage's model, optimizer, shardings and compiled steps (StageRuntime)
  loop      `train()`: all stages, growth between them, checkpoints, faults
  summary   the end-of-run table
  faults, recovery   NaN/spike guard, preemption, watchdog; restart and rollback

Modules here import growth, checkpoint, data, model and sharding, never the commands above.
"""
