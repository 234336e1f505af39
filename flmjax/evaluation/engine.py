"""Scoring and generation backends: the text-level interface, and the jitted flmjax engine.

`Backend` turns text requests into token requests (shared by every backend, so the flmjax and
Hugging Face models see identical token sequences for the same tokenizer).  `FlmEngine` runs them
on an flmjax `Transformer`:
  * every context starts with BOS (`flmjax.config.BOS_ID`), a training document's first input;
  * log-likelihood of continuations: right-padded batches, one forward pass, log-softmax over the
    real vocabulary (the model masks the padded vocabulary rows);
  * greedy generation through `flmjax.sampling.decode` (the package's one decoding loop):
    left-padded prompts (segment 0, positions restarting at 0, so padding changes nothing), a KV
    cache, and a `while_loop` that stops once every row has hit a stop token.
Shapes are static: batch size is fixed (short batches are padded) and lengths are rounded up to a
few buckets, so a whole benchmark compiles a handful of programs, not one per example.
`TRACES` counts how often each program was traced (a Python side effect runs only at trace time).
Parameters may be sharded arrays (e.g. restored by orbax on a mesh); `jit` keeps their sharding.
"""

from __future__ import annotations

import abc
import functools
from typing import NamedTuple, Optional, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flmjax import sampling
from flmjax.config import BOS_ID, ModelConfig
from flmjax.model import Transformer

TRACES = sampling.TRACES  # one counter for the scoring program here and sampling's decoder


class Tokenizer(Protocol):
  """What the engine needs from a vocabulary (seqio.SentencePieceVocabulary fits)."""

  eos_id: int

  def encode(self, s: str) -> Sequence[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class Score(NamedTuple):
  """Log-likelihood of one continuation given its context."""

  logprob: float      # sum over the continuation's tokens
  n_tokens: int
  n_bytes: int        # UTF-8 bytes of the continuation text
  greedy: bool        # every continuation token is the argmax
  n_chars: int = 0    # characters of the continuation without its leading ' ' delimiter
  cut: bool = False   # the continuation was longer than the window: only its end was scored

  def normalized(self, norm: str) -> float:
    """'sum', or per 'token' / 'byte' / 'char' (length-fair comparison of unequal options).

    'char' is lm-evaluation-harness's acc_norm: the choice text's character count, not counting
    the space that separates it from the prompt.
    """
    if norm == 'sum':
      return self.logprob
    if norm == 'token':
      return self.logprob / max(1, self.n_tokens)
    if norm == 'byte':
      return self.logprob / max(1, self.n_bytes)
    if norm == 'char':
      return self.logprob / max(1, self.n_chars)
    raise ValueError(f"norm must be 'sum', 'token', 'byte' or 'char', got {norm!r}")


def choice_chars(continuation: str) -> int:
  """Length of a choice as the harness counts it: characters, without the leading delimiter."""
  return len(continuation[1:] if continuation.startswith(' ') else continuation)


def fit_window(context: Sequence[int], continuation: Sequence[int], max_len: int
               ) -> tuple[list[int], list[int], bool]:
  """(context, continuation, continuation cut) inside a window of max_len + 1 tokens.

  The context loses its first tokens (lm-evaluation-harness keeps the last max_len + 1 tokens of
  context + continuation the same way).  A continuation of max_len tokens or more leaves no room
  for context: the last max_len + 1 tokens of the continuation are kept, the first of them acting
  as the context and the other max_len scored.
  """
  context, continuation = list(context), list(continuation)
  if len(continuation) <= max_len:
    return context[-(max_len + 1 - len(continuation)):], continuation, False
  window = (context + continuation)[-(max_len + 1):]
  return window[:1], window[1:], True


def length_buckets(max_len: int, smallest: int = 32) -> tuple[int, ...]:
  """Powers of two from `smallest` up to max_len (always including max_len)."""
  out, b = [], smallest
  while b < max_len:
    out.append(b)
    b *= 2
  return tuple(out) + (max_len,)


def bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  raise ValueError(f'length {n} exceeds the largest bucket {buckets[-1]}')


class Backend(abc.ABC):
  """Text requests -> token requests; subclasses implement the two token-level calls."""

  tokenizer: Tokenizer
  max_len: int           # longest token sequence the model is fed
  batch_size: int

  # ---- token level (backend specific) -------------------------------------------------
  @abc.abstractmethod
  def score_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
                   ) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), all greedy) per (context ids, continuation ids)."""

  @abc.abstractmethod
  def generate_tokens(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      stop_ids: frozenset[int]) -> list[list[int]]:
    """Greedy continuation of each prompt, up to and including its first stop token (see
    `cut_tokens`)."""

  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids the model can emit."""

  # ---- text level (shared) ------------------------------------------------------------
  def _context(self, text: str) -> list[int]:
    ids = list(self.tokenizer.encode(text))
    return ids or [self.tokenizer.eos_id]  # an empty context still needs a first input token

  def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Score]:
    """Scores continuation given context for each (context, continuation).

    Like lm-evaluation-harness, the model reads the last max_len + 1 tokens of context +
    continuation: a long context loses its first tokens.  A continuation longer than the
    window (more than max_len tokens) has only its last max_len tokens scored (`fit_window`),
    never an error; `Score.cut` says so and the runner counts it.
    """
    token_reqs, meta = [], []
    for ctx, cont in requests:
      c_ids = list(self.tokenizer.encode(cont))
      if not c_ids:
        raise ValueError(f'continuation {cont!r} encodes to no tokens')
      x_ids, c_ids, cut = fit_window(self._context(ctx), c_ids, self.max_len)
      token_reqs.append((x_ids, c_ids))
      meta.append((len(c_ids), len(cont.encode('utf-8')), choice_chars(cont), cut))
    # Identical requests (shared demonstrations, repeated options) are scored once.
    unique = list(dict.fromkeys((tuple(x), tuple(c)) for x, c in token_reqs))
    scored = dict(zip(unique, self.score_tokens(unique)))
    out = []
    for (x, c), (n_tok, n_byte, n_char, cut) in zip(token_reqs, meta):
      logprob, greedy = scored[(tuple(x), tuple(c))]
      out.append(Score(logprob, n_tok, n_byte, greedy, n_char, cut))
    return out

  def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
    """log p(text) of each whole text (perplexity), in disjoint windows of max_len tokens.

    The first window is predicted from the start token (BOS for flmjax, as `_context('')`), each
    later one from the single token before it: lm-evaluation-harness's rolling windows with
    context_len=1, so word-perplexity tasks give the harness's numbers.
    """
    requests, owner = [], []
    for n, text in enumerate(texts):
      ids = list(self.tokenizer.encode(text))
      for i in range(0, len(ids), self.max_len):
        requests.append((tuple(self._context('')[-1:] if i == 0 else ids[i - 1:i]),
                         tuple(ids[i:i + self.max_len])))
        owner.append(n)
    totals = [0.0] * len(texts)
    for n, (logprob, _) in zip(owner, self.score_tokens(requests) if requests else []):
      totals[n] += logprob
    return totals

  def continuation_overflows(self, continuation: str) -> bool:
    """Whether a continuation alone is too long to be scored whole (see `loglikelihood`)."""
    return len(self.tokenizer.encode(continuation)) > self.max_len

  def scoring_overflows(self, prompt: str, continuation_tokens: int) -> bool:
    """Whether scoring a continuation of that many tokens cuts the prompt's first tokens off
    (as `loglikelihood` left-truncates); the runner counts these per task."""
    return len(self._context(prompt)) + continuation_tokens > self.max_len + 1

  def generation_overflows(self, prompt: str, max_new_tokens: int) -> bool:
    """Whether `generate` with this budget cuts the prompt's first tokens off."""
    return len(self._context(prompt)) > max(1, self.max_len - max_new_tokens)

  def stop_ids(self, stop: str) -> frozenset[int]:
    """EOS plus every token whose text contains `stop` (e.g. the newline byte token); cached."""
    cache = self.__dict__.setdefault('_stop_ids', {})
    if stop in cache:
      return cache[stop]
    ids = {self.tokenizer.eos_id}
    if stop:
      for i in range(self.vocab_size()):
        try:
          if stop in self.tokenizer.decode([i]):
            ids.add(i)
        except Exception:  # noqa: BLE001  (ids without text, e.g. control symbols)
          continue
    cache[stop] = frozenset(ids)
    return cache[stop]

  def generate(self, prompts: Sequence[str], max_new_tokens: int,
               stop: str | Sequence[str] = '\n') -> list[str]:
    """Greedy text continuation of each prompt, cut at the first of the `stop` strings.

    One-character stops (the newline) also end decoding early, on the device; longer ones
    only cut the text.
    """
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    stop_ids = frozenset({self.tokenizer.eos_id}).union(
        *(self.stop_ids(s) for s in stops if len(s) == 1))
    keep = max(1, self.max_len - max_new_tokens)
    ids = [self._context(p)[-keep:] for p in prompts]
    outs = self.generate_tokens(ids, max_new_tokens, stop_ids)
    return [cut_at(self.tokenizer.decode(o), stops) for o in outs]


def cut_tokens(seq: Sequence[int], stop_ids: frozenset[int], eos_id: int) -> list[int]:
  """seq through its first stop token, which is kept (a token may hold text before the stop
  string; `cut_at` removes the rest) unless it is EOS."""
  for j, t in enumerate(seq):
    if t in stop_ids:
      return list(seq[:j] if t == eos_id else seq[:j + 1])
  return list(seq)


def cut_at(text: str, stops: Sequence[str]) -> str:
  """text up to the earliest occurrence of any stop string."""
  end = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
  return text[:end]


def _unbox(params):
  return nn.meta.unbox(params)


@functools.partial(jax.jit, static_argnames=('cfg',))
def _score_batch(params, tokens_BxL, targets_BxL, weights_BxL, segments_BxL, *, cfg: ModelConfig):
  TRACES['score'] += 1
  B, L = tokens_BxL.shape
  positions_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  logits_BxLxV = Transformer(cfg).apply({'params': params}, tokens_BxL, positions=positions_BxL,
                                        segment_ids=segments_BxL)
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  tok_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  sum_B = jnp.sum(tok_BxL * weights_BxL, axis=-1)
  hit_BxL = (jnp.argmax(logp_BxLxV, axis=-1) == targets_BxL) | (weights_BxL == 0)
  return sum_B, jnp.all(hit_BxL, axis=-1)


class FlmEngine(Backend):
  """Batched, jitted scoring and KV-cached greedy generation for flmjax models."""

  def __init__(self, params, cfg: ModelConfig, tokenizer: Tokenizer, batch_size: int = 8,
               max_len: Optional[int] = None, buckets: Optional[Sequence[int]] = None):
    self.params = _unbox(params)
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    self.max_len = max_len or cfg.max_len
    self.buckets = tuple(buckets) if buckets else length_buckets(self.max_len)
    if self.buckets[-1] < self.max_len:
      raise ValueError(f'largest bucket {self.buckets[-1]} < max_len {self.max_len}')

  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  def _context(self, text: str) -> list[int]:
    return [BOS_ID, *self.tokenizer.encode(text)]  # as every training document starts

  def _batches(self, n: int, lengths: Sequence[int]):
    """Index batches, longest first, so each batch pads little."""
    order = sorted(range(n), key=lambda i: -lengths[i])
    return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]

  def score_tokens(self, requests):
    seqs = [list(x) + list(c) for x, c in requests]
    out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
    for idx in self._batches(len(seqs), [len(s) for s in seqs]):
      L = bucket(max(len(seqs[i]) - 1 for i in idx), self.buckets)
      B = self.batch_size
      tokens, targets = np.zeros((B, L), np.int32), np.zeros((B, L), np.int32)
      weights, segments = np.zeros((B, L), np.float32), np.zeros((B, L), np.int32)
      for row, i in enumerate(idx):
        s, n_cont = seqs[i], len(requests[i][1])
        n = len(s) - 1
        tokens[row, :n], targets[row, :n], segments[row, :n] = s[:-1], s[1:], 1
        weights[row, n - n_cont:n] = 1.0
      sums, greedy = _score_batch(self.params, tokens, targets, weights, segments, cfg=self.cfg)
      sums, greedy = np.asarray(sums), np.asarray(greedy)
      for row, i in enumerate(idx):
        out[i] = (float(sums[row]), bool(greedy[row]))
    return out

  def generate_tokens(self, prompts, max_new_tokens, stop_ids):
    T = -(-max(1, max_new_tokens) // 16) * 16  # bucketed so nearby budgets share a program
    stop_V = sampling.stop_table(self.cfg, stop_ids)
    out: list[list[int]] = [[] for _ in prompts]
    for idx in self._batches(len(prompts), [len(p) for p in prompts]):
      P = bucket(max(len(prompts[i]) for i in idx), self.buckets)
      B = self.batch_size
      # Filler rows get a one-token prompt so every row is well-defined; `live` ignores them.
      rows = [prompts[i] for i in idx] + [[self.tokenizer.eos_id]] * (B - len(idx))
      tokens, positions, segments = sampling.left_pad(rows, P)
      live = np.arange(B) < len(idx)
      gen = np.asarray(sampling.decode(self.params, tokens, positions, segments, live, stop_V,
                                       jax.random.PRNGKey(0), cfg=self.cfg, max_new_tokens=T))
      for row, i in enumerate(idx):
        out[i] = cut_tokens(gen[row, :max_new_tokens].tolist(), stop_ids, self.tokenizer.eos_id)
    return out
