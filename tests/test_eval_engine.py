"""The flmjax engine: log-likelihoods equal a direct forward pass; cached generation equals
uncached greedy decoding; batches and lengths are bucketed so programs are not recompiled."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flmjax.config import BOS_ID, ModelConfig
from flmjax.evaluation import engine
from flmjax.model import Transformer

CFG = ModelConfig(vocab_size=260, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=96, init_std=0.3)


class ByteVocab:
  """Bytes as tokens: 0 pad, 1 eos, byte b -> b + 3."""

  eos_id = 1
  vocab_size = 259

  def encode(self, s):
    return [b + 3 for b in s.encode('utf-8')]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if i >= 3).decode('utf-8', errors='replace')


@pytest.fixture(scope='module')
def params():
  init = jax.jit(Transformer(CFG).init)
  return nn.unbox(init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))['params'])


_FORWARD = jax.jit(lambda p, t: Transformer(CFG).apply({'params': p}, t))


def _direct_logprob(params, ctx, cont):
  """Reference: one forward pass (causal, so trailing filler is invisible), real-vocab softmax."""
  seq = ctx + cont
  buf = jnp.array([seq[:-1] + [0] * (CFG.max_len - len(seq) + 1)])
  logits = _FORWARD(params, buf)[0, :, :CFG.vocab_size]
  logp = jax.nn.log_softmax(logits, axis=-1)
  idx = np.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
  tok = logp[idx, np.array(cont)]
  greedy = bool(jnp.all(jnp.argmax(logp[idx], axis=-1) == np.array(cont)))
  return float(tok.sum()), greedy


def test_loglikelihood_equals_direct_forward_pass(params):
  vocab = ByteVocab()
  eng = engine.FlmEngine(params, CFG, vocab, batch_size=3)
  reqs = [('The cat sat on the', ' mat'), ('Q: 2+2?\nA:', ' 4'), ('x', ' a much longer answer'),
          ('', 'empty context'), ('The cat sat on the', ' hat'), ('héllo wörld', ' ünïcode')]
  scores = eng.loglikelihood(reqs)
  for (ctx, cont), s in zip(reqs, scores):
    c_ids = [BOS_ID] + vocab.encode(ctx)  # every context starts with BOS, as in training
    want, greedy = _direct_logprob(params, c_ids, vocab.encode(cont))
    assert s.logprob == pytest.approx(want, abs=1e-4)
    assert s.greedy == greedy
    assert s.n_tokens == len(vocab.encode(cont)) and s.n_bytes == len(cont.encode('utf-8'))
    assert s.normalized('token') == pytest.approx(s.logprob / s.n_tokens)
    assert s.normalized('byte') == pytest.approx(s.logprob / s.n_bytes)


def test_long_context_is_left_truncated_to_max_len(params):
  vocab = ByteVocab()
  eng = engine.FlmEngine(params, CFG, vocab, batch_size=2)
  ctx = 'abcdefghij' * 20
  (s,) = eng.loglikelihood([(ctx, ' end')])
  cont = vocab.encode(' end')
  kept = ([BOS_ID] + vocab.encode(ctx))[-(CFG.max_len + 1 - len(cont)):]
  assert s.logprob == pytest.approx(_direct_logprob(params, kept, cont)[0], abs=1e-4)
  # A choice longer than the whole context no longer aborts the run (it used to raise): like
  # lm-evaluation-harness, the last max_len + 1 tokens are read and only the end is scored.
  long_cont = ' ' + 'z' * 200
  (s,) = eng.loglikelihood([('a', long_cont)])
  window = ([BOS_ID] + vocab.encode('a') + vocab.encode(long_cont))[-(CFG.max_len + 1):]
  assert s.cut and s.n_tokens == CFG.max_len and eng.continuation_overflows(long_cont)
  assert s.logprob == pytest.approx(_direct_logprob(params, window[:1], window[1:])[0], abs=1e-4)
  assert not eng.continuation_overflows(' end')


def test_scoring_does_not_recompile_per_example(params):
  eng = engine.FlmEngine(params, CFG, ByteVocab(), batch_size=4, buckets=(32, 64, 96))
  rng = np.random.default_rng(0)

  def reqs(n):
    return [('w' * int(rng.integers(1, 80)), ' ' + 'v' * int(rng.integers(1, 10)))
            for _ in range(n)]

  eng.loglikelihood(reqs(30))
  before = engine.TRACES['score']
  eng.loglikelihood(reqs(30))  # new lengths and batch counts, same buckets
  eng.loglikelihood(reqs(5))
  assert engine.TRACES['score'] == before


def _greedy_uncached(params, prompt, n):
  seq = list(prompt)
  for _ in range(n):
    buf = jnp.array([seq + [0] * (CFG.max_len - len(seq))])
    seq.append(int(jnp.argmax(_FORWARD(params, buf)[0, len(seq) - 1, :CFG.vocab_size])))
  return seq[len(prompt):]


def test_cached_generation_equals_uncached(params):
  eng = engine.FlmEngine(params, CFG, ByteVocab(), batch_size=2)
  prompts = [[40, 41, 42], [50] * 20, [7, 9, 11, 13, 15]]
  out = eng.generate_tokens(prompts, 12, frozenset())
  for p, o in zip(prompts, out):
    assert o == _greedy_uncached(params, p, 12)
  before = engine.TRACES['generate']
  eng.generate_tokens([[3, 4], [5, 6, 7, 8]], 10, frozenset())  # same buckets: no new program
  assert engine.TRACES['generate'] == before


def test_generation_stops_at_stop_tokens(params):
  eng = engine.FlmEngine(params, CFG, ByteVocab(), batch_size=2)
  prompt = [40, 41, 42]
  free = _greedy_uncached(params, prompt, 10)
  stop = free[4]
  (cut,) = eng.generate_tokens([prompt], 10, frozenset({stop}))
  assert cut == free[:free.index(stop) + 1]  # the stop token is kept; text is cut after it
  (to_eos,) = eng.generate_tokens([prompt], 10, frozenset({stop, ByteVocab.eos_id}))
  assert to_eos == cut
  # Text level: the newline byte is a stop token, and the text is cut there.
  assert ByteVocab().encode('\n')[0] in eng.stop_ids('\n')
  texts = eng.generate(['hello', 'a'], 8)
  assert all('\n' not in t for t in texts) and len(texts) == 2
