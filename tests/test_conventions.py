"""One convention for training, evaluation and sampling: the same first input (BOS) and the same
normaliser (the real vocabulary), so the three give one log-likelihood; long contexts in float16
and bfloat16; the FreeLM teacher signal as a loss term that teaches the label."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flmjax import optimizer, sampling
from flmjax.config import BOS_ID, ModelConfig
from flmjax.data.pipeline import DataIterator, Store
from flmjax.evaluation import engine
from flmjax.model import NEG_INF, Transformer, init_cache
from flmjax.training import step as step_fns
from flmjax.training.state import TrainState

CFG = ModelConfig(vocab_size=200, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=64, init_std=0.2)  # padded to 256: 56 padding rows


def _params(cfg=CFG, seed=0):
  return nn.unbox(Transformer(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))
                  ['params'])


def _store(docs, prompt_lens=None) -> Store:
  tokens = np.concatenate([np.asarray(d, np.int32) for d in docs])
  offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
  prompt_len = np.asarray(prompt_lens or [0] * len(docs), np.int32)
  return Store(tokens, offsets, prompt_len)


class IdTokenizer:
  """Text 'a b c' <-> ids [a, b, c]."""

  eos_id = 1

  def encode(self, s):
    return [int(t) for t in s.split()]

  def decode(self, ids):
    return ' '.join(map(str, ids))


def test_train_eval_and_sampling_give_one_log_likelihood():
  doc = [17, 5, 199, 42, 8, 8, 120]
  params = _params()
  # Training: the pipeline's packed row (BOS first) and the trainer's loss.
  it = DataIterator({'en': _store([doc])}, {'en': 1.0}, seq_len=16, global_batch_size=1, seed=0,
                    shuffle=False, finite=True)
  batch = next(it)
  assert batch['inputs'][0, 0] == BOS_ID
  logits = Transformer(CFG).apply({'params': params}, jnp.asarray(batch['inputs']),
                                  positions=jnp.asarray(batch['positions']),
                                  segment_ids=jnp.asarray(batch['segment_ids']))
  assert float(logits[..., CFG.vocab_size:].max()) <= NEG_INF  # padding rows are not tokens
  ce, _ = step_fns.token_losses(logits, jnp.asarray(batch['targets']),
                                jnp.asarray(batch['loss_weights']))
  train_ll = -float(ce)
  # Evaluation: the engine scores the whole document as the continuation of an empty context.
  eng = engine.FlmEngine(params, CFG, IdTokenizer(), batch_size=2)
  assert eng._context('3 4')[0] == BOS_ID
  (score,) = eng.loglikelihood([('', ' '.join(map(str, doc)))])
  # Sampling: the KV-cached decoding path, teacher-forced through the document.
  sample_ll = sampling.sequence_logprob(params, CFG, [], doc)
  assert score.logprob == pytest.approx(train_ll, abs=1e-4)
  assert sample_ll == pytest.approx(train_ll, abs=1e-4)
  # Reference: log-softmax over the real vocabulary only, BOS first.
  raw = Transformer(CFG).apply({'params': params}, jnp.array([[BOS_ID] + doc[:-1]]))
  logp = jax.nn.log_softmax(raw[0, :, :CFG.vocab_size], axis=-1)
  assert train_ll == pytest.approx(float(logp[np.arange(len(doc)), doc].sum()), abs=1e-4)


def test_sampler_and_engine_start_generation_from_bos():
  params = _params()
  prompt = [5, 17, 42]
  forward = jax.jit(lambda p, t: Transformer(CFG).apply({'params': p}, t))
  seq = [BOS_ID] + prompt
  for _ in range(6):  # uncached greedy from BOS + prompt
    buf = jnp.array([seq + [0] * (32 - len(seq))])
    seq.append(int(jnp.argmax(forward(params, buf)[0, len(seq) - 1])))
  want = seq[1 + len(prompt):]
  assert sampling.generate(params, CFG, [prompt], 6) == [want]
  eng = engine.FlmEngine(params, CFG, IdTokenizer(), batch_size=2)
  assert eng.generate(['5 17 42'], 6, stop=[]) == [' '.join(map(str, want))]


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_decoding_at_position_8192_stays_finite_and_accurate(dtype):
  """xPos key scales reach ~5e8 at position 8191: the float16 compute path must not overflow."""
  ref_cfg = CFG.replace(max_len=64)
  cfg = ref_cfg.replace(compute_dtype=dtype)
  params = _params(ref_cfg, seed=1)
  tokens = jnp.array([[11, 23, 5, 77, 90]])
  positions = jnp.arange(8188, 8193)[None]  # the last token sits at position 8192

  def decode(c):
    cache = init_cache(c, 1, 8)
    logits, cache = Transformer(c).apply({'params': params}, tokens[:, :4],
                                         positions=positions[:, :4], cache=cache)
    step, _ = Transformer(c).apply({'params': params}, tokens[:, 4:], positions=positions[:, 4:],
                                   cache=cache)
    return jnp.concatenate([logits, step], axis=1)[..., :c.vocab_size]

  want = decode(ref_cfg)
  got = decode(cfg)
  assert bool(jnp.isfinite(got).all())
  scale = float(jnp.abs(want).max())
  tol = 0.02 if dtype == 'float16' else 0.08
  assert float(jnp.abs(got - want).max()) <= tol * scale
  scored = Transformer(cfg).apply({'params': params}, tokens, positions=positions)  # no cache
  assert bool(jnp.isfinite(scored[..., :cfg.vocab_size]).all())


# ---- FreeLM teacher signal -----------------------------------------------------------------

TRUE, FALSE, SEP = 3, 4, 5


def _teacher_doc(rng):
  """Random text, then <sep>, a proposition token x: label <true> iff x is even."""
  text = list(rng.integers(10, 64, size=int(rng.integers(3, 7))))
  x = int(rng.integers(10, 64))
  return text + [SEP, x], TRUE if x % 2 == 0 else FALSE


def _teacher_accuracy(teacher_weight: float, steps: int = 400, lr: float = 3e-3
                      ) -> tuple[float, list[float]]:
  cfg = ModelConfig(vocab_size=64, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                    max_len=32)
  rng = np.random.default_rng(0)
  lm_docs = [list(rng.integers(10, 64, size=20)) for _ in range(200)]
  samples = [_teacher_doc(rng) for _ in range(300)]
  teacher = _store([p + [y] for p, y in samples], [len(p) for p, _ in samples])
  stores = {'en': _store(lm_docs), 'teacher': teacher}
  # A token share like FLM-101B's mixture: labels are ~2% of the loss tokens.
  it = DataIterator(stores, {'en': 0.85, 'teacher': 0.15}, seq_len=32, global_batch_size=8,
                    seed=0)
  optim = ml_collections.ConfigDict(dict(lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                                         clip=1.0, grad_accum=1, z_loss=0.0,
                                         teacher_loss=teacher_weight))
  schedule = optax.constant_schedule(lr)
  tx = optimizer.model_optimizer(optim, schedule, cfg)
  params = _params(cfg, seed=2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0), grow_step=jnp.zeros((), jnp.int32),
                     ramp_steps=jnp.zeros((), jnp.int32))
  train_step, _ = step_fns.make_step_fns(cfg, tx, schedule, optim)
  train_step = jax.jit(train_step)
  teacher_losses = []
  for _ in range(steps):
    batch = {k: jnp.asarray(v) for k, v in next(it).items()}
    state, out = train_step(state, batch)
    teacher_losses.append(float(out['loss_teacher']))
  held_out = [_teacher_doc(np.random.default_rng(1000 + i)) for i in range(64)]
  hits = 0
  for prompt, label in held_out:
    logits = Transformer(cfg).apply({'params': state.params}, jnp.array([[BOS_ID] + prompt]))
    hits += int((logits[0, -1, TRUE] > logits[0, -1, FALSE]) == (label == TRUE))
  return hits / len(held_out), teacher_losses


@pytest.mark.slow
def test_teacher_loss_teaches_the_label_where_token_share_does_not():
  from flmjax import experiment
  with_teacher, losses = _teacher_accuracy(experiment.default_config().optim.teacher_loss)
  without, _ = _teacher_accuracy(0.0)
  assert np.mean(losses[-30:]) < np.mean(losses[:30])  # reported, and it falls
  assert with_teacher >= 0.9  # 1.0 here
  assert without <= 0.7    # 0.52 here: chance


def test_padded_vocab_mask_is_the_select_in_value_and_gradient():
  """The mask is an additive bias (its backward is free); it must equal the select it replaced:
  the same logits bit for bit (large ones included) and the same gradients, zero on padding."""
  from flmjax.model import mask_padded_vocab
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 256), jnp.float32) * 30.0
  logits = logits.at[0, 0, 250].set(1e20).at[0, 1, 5].set(-0.0)
  select = lambda x: jnp.where(jnp.arange(x.shape[-1]) < 200, x, NEG_INF)
  biased = mask_padded_vocab(logits, 200)
  assert float(biased[..., 200:].max()) == float(np.float32(NEG_INF))
  np.testing.assert_array_equal(np.asarray(biased), np.asarray(select(logits)))
  loss = lambda f: lambda x: jax.nn.logsumexp(f(x), axis=-1).sum() - f(x)[..., 7].sum()
  g_bias, g_select = jax.grad(loss(lambda x: mask_padded_vocab(x, 200)))(logits), \
      jax.grad(loss(select))(logits)
  np.testing.assert_array_equal(np.asarray(g_bias), np.asarray(g_select))
  assert not np.asarray(g_bias[..., 200:]).any()
  assert mask_padded_vocab(logits, 256) is logits  # nothing padded: untouched
