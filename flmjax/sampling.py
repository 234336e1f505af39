"""Text generation with a KV cache: greedy or nucleus (top-p) sampling, one jitted loop.

Prompts are left-padded (segment 0) to a bucketed length so that different prompts reuse one
compiled program; positions restart at 0 at each prompt's first real token, so padding changes
nothing in the computed logits.  `generate` starts every prompt with BOS (`flmjax.config.BOS_ID`),
the first input of every training document.
"""

from __future__ import annotations

import collections
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flmjax.config import BOS_ID, ModelConfig
from flmjax.model import Transformer, init_cache

BUCKET = 16
# How often each jitted program was traced (a Python side effect runs only at trace time): tests
# use it to check that bucketing avoids recompiles.  Shared with flmjax.evaluation.engine.
TRACES: collections.Counter = collections.Counter()


def _bucket(n: int, multiple: int = BUCKET) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def left_pad(prompts: Sequence[Sequence[int]], length: int):
  """Token, position and segment arrays (BxP) for left-padded prompts."""
  B = len(prompts)
  tokens = np.zeros((B, length), np.int32)
  positions = np.zeros((B, length), np.int32)
  segments = np.zeros((B, length), np.int32)
  for i, p in enumerate(prompts):
    if not p:
      raise ValueError(f'prompt {i} is empty: generation needs at least one token (e.g. BOS)')
    if len(p) > length:
      raise ValueError(f'prompt {i} has {len(p)} tokens, longer than {length}')
    tokens[i, length - len(p):] = p
    positions[i, length - len(p):] = np.arange(len(p))
    segments[i, length - len(p):] = 1
  return tokens, positions, segments


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_p: float,
                  vocab_size: int) -> jax.Array:
  """Greedy at temperature 0; otherwise nucleus sampling over the real (unpadded) vocabulary.

  Any finite temperature > 0 is sane: the logits are shifted so the largest is 0 and multiplied
  by 1/temperature computed in float64 and clipped to float32's range, so no product is NaN
  (XLA multiplies by a reciprocal: -inf · 0 for a huge temperature, 0 · inf for a tiny one) and a
  padding id is never drawn; a huge temperature samples uniformly, a tiny one greedily."""
  V = logits_BxV.shape[-1]
  real_V = jnp.arange(V) < vocab_size
  logits_BxV = jnp.where(real_V, logits_BxV.astype(jnp.float32), -jnp.inf)
  if temperature <= 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  scale = min(1.0 / temperature, float(jnp.finfo(jnp.float32).max))
  shifted_BxV = logits_BxV - jnp.max(logits_BxV, axis=-1, keepdims=True)
  logits_BxV = jnp.where(real_V, jnp.where(real_V, shifted_BxV, 0.0) * jnp.float32(scale),
                         -jnp.inf)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    threshold_B = jnp.min(jnp.where(keep, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV >= threshold_B, logits_BxV, -jnp.inf)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('cfg', 'max_new_tokens', 'temperature', 'top_p'))
def decode(params, tokens_BxP, positions_BxP, segments_BxP, live_B, stop_V, rng, *,
           cfg: ModelConfig, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0) -> jax.Array:
  """BxT new tokens for left-padded prompts: prefill the KV cache, then one token per step.

  The `while_loop` ends early once every live row has produced a token with `stop_V[token]`
  (rows with `live_B` False are batch fillers); entries after a row's stop are unspecified.
  The one decoding loop of the package: `generate` and the evaluation engine both call it.
  """
  TRACES['generate'] += 1
  model = Transformer(cfg)
  B, P = tokens_BxP.shape
  cache = init_cache(cfg, B, P + max_new_tokens)
  logits, cache = model.apply({'params': params}, tokens_BxP, positions=positions_BxP,
                              segment_ids=segments_BxP, cache=cache)
  rng, sub = jax.random.split(rng)
  first_B = sample_logits(logits[:, -1], sub, temperature, top_p, cfg.vocab_size)
  out_BxT = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(first_B)

  def cond(state):
    i, _, _, _, _, done_B, _ = state
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(state):
    i, tok_B, pos_B, cache, out_BxT, done_B, rng = state
    logits, cache = model.apply({'params': params}, tok_B[:, None], positions=pos_B[:, None],
                                segment_ids=jnp.ones((B, 1), jnp.int32), cache=cache)
    rng, sub = jax.random.split(rng)
    nxt_B = sample_logits(logits[:, -1], sub, temperature, top_p, cfg.vocab_size)
    out_BxT = jax.lax.dynamic_update_slice(out_BxT, nxt_B[:, None], (0, i))
    return i + 1, nxt_B, pos_B + 1, cache, out_BxT, done_B | stop_V[nxt_B], rng

  done_B = stop_V[first_B] | ~live_B
  state = (jnp.int32(1), first_B, positions_BxP[:, -1] + 1, cache, out_BxT, done_B, rng)
  return jax.lax.while_loop(cond, body, state)[4]


def stop_table(cfg: ModelConfig, stop_ids) -> np.ndarray:
  """Boolean table over the padded vocabulary: True for tokens that end a row's generation."""
  stop_V = np.zeros((cfg.padded_vocab,), bool)
  stop_V[[i for i in stop_ids if 0 <= i < cfg.padded_vocab]] = True
  return stop_V


def with_bos(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
  """Each prompt as a document starts in training: BOS first."""
  return [[BOS_ID, *p] for p in prompts]


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             eos_id: Optional[int] = None, add_bos: bool = True) -> list[list[int]]:
  """New tokens for each prompt (cut after the first `eos_id`, if given).  `add_bos=False` for
  prompts that already start with BOS or continue a document mid-way."""
  if add_bos:
    prompts = with_bos(prompts)
  length = _bucket(max(len(p) for p in prompts))
  tokens, positions, segments = left_pad(prompts, length)
  stop_V = stop_table(cfg, [] if eos_id is None else [eos_id])
  live = np.ones((len(prompts),), bool)
  out = np.asarray(decode(params, tokens, positions, segments, live, stop_V,
                          jax.random.PRNGKey(seed), cfg=cfg, max_new_tokens=max_new_tokens,
                          temperature=float(temperature), top_p=float(top_p)))
  results = []
  for row in out.tolist():
    if eos_id is not None and eos_id in row:
      row = row[:row.index(eos_id)]
    results.append(row)
  return results


def sequence_logprob(params, cfg: ModelConfig, prompt: Sequence[int],
                     continuation: Sequence[int], add_bos: bool = True) -> float:
  """log p(continuation | prompt) as the sampler computes it: BOS + left-padded prompt prefilled
  into the KV cache, then one cached step per continuation token (teacher-forced).  Checks that
  decoding sees the same distribution as training and evaluation."""
  prompt = with_bos([prompt])[0] if add_bos else list(prompt)
  length = _bucket(len(prompt))
  tokens, positions, segments = left_pad([prompt], length)
  model = Transformer(cfg)
  cache = init_cache(cfg, 1, length + len(continuation))
  logits, cache = model.apply({'params': params}, tokens, positions=positions,
                              segment_ids=segments, cache=cache)
  total, pos = 0.0, len(prompt)
  for token in continuation:
    total += float(jax.nn.log_softmax(logits[0, -1])[token])
    logits, cache = model.apply({'params': params}, jnp.array([[token]], jnp.int32),
                                positions=jnp.array([[pos]], jnp.int32),
                                segment_ids=jnp.ones((1, 1), jnp.int32), cache=cache)
    pos += 1
  return total
