"""The same scoring/generation interface over a local Hugging Face `transformers` causal LM.

So the whole suite can compare flmjax checkpoints with any other model on disk (`--hf_model PATH`).
Loading is strictly local (`local_files_only`): nothing is downloaded.  torch and transformers are
the optional extra `flmjax[hf]`.  A 100B-class checkpoint is loaded the way transformers users load
one: `dtype` (bfloat16 halves float32's memory) and `device_map='auto'` (layers spread over the
GPUs, then CPU memory; needs the accelerate package).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from flmjax.evaluation.engine import Backend, Tokenizer, cut_tokens


class HFTokenizer:
  """Adapts a transformers tokenizer to the engine's encode/decode/eos_id protocol."""

  def __init__(self, tok):
    if tok.eos_token_id is None:
      raise ValueError('the Hugging Face tokenizer has no eos token; the harness needs one')
    self.tok = tok
    self.eos_id = int(tok.eos_token_id)
    self.vocab_size = len(tok)

  def encode(self, s: str) -> list[int]:
    return list(self.tok(s, add_special_tokens=False)['input_ids'])

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode(list(ids))


def _import_hf():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('the Hugging Face backend needs torch and transformers: '
                      'pip install "flmjax[hf]"') from e
  return torch, transformers


DTYPES = ('auto', 'float32', 'bfloat16', 'float16')


def load_kwargs(transformers, torch, dtype: str = 'auto', device_map: Optional[str] = None,
                trust_remote_code: bool = False) -> dict[str, Any]:
  """from_pretrained keyword arguments for a dtype name and a device map.

  transformers renamed `torch_dtype` to `dtype` in 4.56; the name is chosen by version.
  """
  if dtype not in DTYPES:
    raise ValueError(f'--dtype must be one of {DTYPES}, got {dtype!r}')
  value = dtype if dtype == 'auto' else getattr(torch, dtype)
  major, minor = (int(x) for x in transformers.__version__.split('.')[:2])
  kwargs: dict[str, Any] = {'local_files_only': True,
                            ('dtype' if (major, minor) >= (4, 56) else 'torch_dtype'): value}
  if device_map:
    kwargs['device_map'] = device_map
  if trust_remote_code:  # models whose folder ships its own modelling code (FLM-101B does)
    kwargs['trust_remote_code'] = True
  return kwargs


def load_model(model_path: str, dtype: str = 'auto', device_map: Optional[str] = None,
               trust_remote_code: bool = False):
  """A local causal LM with the given dtype and device map; a clear error if accelerate (which
  device maps need) is missing."""
  torch, transformers = _import_hf()
  kwargs = load_kwargs(transformers, torch, dtype, device_map, trust_remote_code)
  try:
    return transformers.AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
  except (ImportError, ValueError) as e:
    if device_map and 'accelerate' in str(e).lower():
      raise ImportError(f'--device_map {device_map} needs the accelerate package '
                        f'(pip install accelerate): {e}') from e
    raise


class HFBackend(Backend):
  """Right-padded batched scoring and left-padded greedy `generate` with torch, on CPU or GPU.

  With a device map the model stays where transformers placed it, and inputs go to the device
  of its first layer.
  """

  def __init__(self, model_path: str, batch_size: int = 8, max_len: Optional[int] = None,
               tokenizer: Optional[Tokenizer] = None, device: Optional[str] = None,
               model=None, dtype: str = 'auto', device_map: Optional[str] = None,
               trust_remote_code: bool = False):
    torch, transformers = _import_hf()
    self.torch = torch
    if model is None:
      model = load_model(model_path, dtype, device_map, trust_remote_code)
    if device_map or getattr(model, 'hf_device_map', None):
      self.model = model.eval()
      self.device = str(model.get_input_embeddings().weight.device)
    else:
      self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
      self.model = model.to(self.device).eval()
    if tokenizer is None:
      tokenizer = HFTokenizer(transformers.AutoTokenizer.from_pretrained(
          model_path, local_files_only=True, trust_remote_code=trust_remote_code))
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    cfg = self.model.config
    limit = getattr(cfg, 'max_position_embeddings', None) or getattr(cfg, 'n_positions', None)
    self.max_len = max_len or limit or 2048
    self.model_path = model_path

  def vocab_size(self) -> int:
    return int(self.model.config.vocab_size)

  def score_tokens(self, requests):
    torch = self.torch
    seqs = [list(x) + list(c) for x, c in requests]
    out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with torch.inference_mode():
      for s in range(0, len(order), self.batch_size):
        idx = order[s:s + self.batch_size]
        L = max(len(seqs[i]) - 1 for i in idx)
        tokens = torch.zeros((len(idx), L), dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for row, i in enumerate(idx):
          n = len(seqs[i]) - 1
          tokens[row, :n] = torch.tensor(seqs[i][:-1])
          mask[row, :n] = 1
        logits = self.model(input_ids=tokens.to(self.device),
                            attention_mask=mask.to(self.device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row, i in enumerate(idx):
          n, n_cont = len(seqs[i]) - 1, len(requests[i][1])
          target = torch.tensor(seqs[i][-n_cont:])
          lp = logp[row, n - n_cont:n]
          total = lp.gather(-1, target[:, None])[:, 0].sum().item()
          out[i] = (float(total), bool((lp.argmax(-1) == target).all().item()))
    return out

  def generate_tokens(self, prompts, max_new_tokens, stop_ids):
    torch = self.torch
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    pad = self.tokenizer.eos_id
    with torch.inference_mode():
      for s in range(0, len(order), self.batch_size):
        idx = order[s:s + self.batch_size]
        P = max(len(prompts[i]) for i in idx)
        tokens = torch.full((len(idx), P), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), P), dtype=torch.long)
        for row, i in enumerate(idx):
          tokens[row, P - len(prompts[i]):] = torch.tensor(list(prompts[i]))
          mask[row, P - len(prompts[i]):] = 1
        gen = self.model.generate(input_ids=tokens.to(self.device),
                                  attention_mask=mask.to(self.device),
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=pad, eos_token_id=sorted(stop_ids))
        for row, i in enumerate(idx):
          out[i] = cut_tokens(gen[row, P:].tolist(), stop_ids, pad)
    return out
