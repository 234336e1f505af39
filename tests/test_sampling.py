"""Cached generation equals uncached greedy decoding; padding and top-p behave."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flmjax.config import BOS_ID, ModelConfig
from flmjax.model import Transformer
from flmjax.sampling import generate, sample_logits

CFG = ModelConfig(vocab_size=200, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=64, init_std=0.2)


def _params():
  return nn.unbox(Transformer(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
                  ['params'])


def _greedy_uncached(params, prompt, n):
  """Full forward over a right-padded buffer each step (causal: padding after is invisible)."""
  forward = jax.jit(lambda p, t: Transformer(CFG).apply({'params': p}, t))
  seq = list(prompt)
  for _ in range(n):
    buf = jnp.array([seq + [0] * (32 - len(seq))])
    seq.append(int(jnp.argmax(forward(params, buf)[0, len(seq) - 1, :CFG.vocab_size])))
  return seq[len(prompt):]


def test_cached_greedy_equals_uncached_and_padding_is_invisible():
  params = _params()
  prompts = [[5, 17, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]]
  out = generate(params, CFG, prompts, 8)
  for p, o in zip(prompts, out):
    assert o == _greedy_uncached(params, [BOS_ID] + p, 8)  # generate starts from BOS
  assert generate(params, CFG, [[BOS_ID] + prompts[0]], 8, add_bos=False)[0] == out[0]
  alone = generate(params, CFG, prompts[:1], 8)
  assert alone[0] == out[0]


def test_eos_cuts_and_sampling_is_seeded():
  params = _params()
  full = generate(params, CFG, [[1, 2, 3]], 6)[0]
  cut = generate(params, CFG, [[1, 2, 3]], 6, eos_id=full[2])[0]
  assert cut == full[:full.index(full[2])]
  a = generate(params, CFG, [[1, 2, 3]], 10, temperature=1.0, top_p=0.9, seed=1)
  b = generate(params, CFG, [[1, 2, 3]], 10, temperature=1.0, top_p=0.9, seed=1)
  assert a == b
  assert all(0 <= t < CFG.vocab_size for t in a[0])


def test_top_p_keeps_only_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05] + [1e-9] * 124]))
  draws = {int(sample_logits(logits, jax.random.PRNGKey(i), 1.0, 0.7, 4)[0]) for i in range(200)}
  assert draws == {0, 1}
  never_padded = {int(sample_logits(jnp.zeros((1, 128)), jax.random.PRNGKey(i), 1.0, 1.0, 4)[0])
                  for i in range(200)}
  assert never_padded <= {0, 1, 2, 3}


def test_extreme_temperatures_never_draw_padding_ids():
  """A huge temperature samples uniformly over the real vocabulary (1e38 drew only the first
  padding id: -inf · (1/1e38 flushed to 0) is NaN), 1e308 (inf in float32) too; a tiny one is
  greedy."""
  params = _params()
  assert CFG.padded_vocab > CFG.vocab_size
  for t in (1e38, 1e308):
    out = generate(params, CFG, [[1, 2, 3]] * 4, 16, temperature=t, seed=3)
    ids = [i for row in out for i in row]
    assert all(0 <= i < CFG.vocab_size for i in ids), (t, ids)
    assert len(set(ids)) > 16, (t, ids)  # spread over the vocabulary, not one id
  greedy = generate(params, CFG, [[1, 2, 3]], 8)
  assert generate(params, CFG, [[1, 2, 3]], 8, temperature=1e-44, top_p=0.5) == greedy
