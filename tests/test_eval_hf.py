"""The Hugging Face backend on a tiny randomly initialised GPT-2 saved to disk (no download)."""

import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from flmjax.evaluation.hf_backend import HFBackend  # noqa: E402


def save_tiny_gpt2(path, n_embd=32, n_layer=2, n_head=2, n_positions=128, seed=0):
  """A byte-level GPT-2 (256 bytes + <|endoftext|>) with random weights, saved like a hub model."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
  vocab['<|endoftext|>'] = 256
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|endoftext|>')
  cfg = transformers.GPT2Config(vocab_size=257, n_positions=n_positions, n_embd=n_embd,
                                n_layer=n_layer, n_head=n_head, bos_token_id=256,
                                eos_token_id=256)
  torch.manual_seed(seed)
  transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
  fast.save_pretrained(path)
  return str(path)


@pytest.fixture(scope='module')
def backend(tmp_path_factory):
  return HFBackend(save_tiny_gpt2(tmp_path_factory.mktemp('gpt2')), batch_size=3)


def test_loglikelihood_equals_direct_forward_pass(backend):
  reqs = [('The cat sat on the', ' mat'), ('Q: 2+2?\nA:', ' 4'), ('x', ' a longer answer here'),
          ('', 'empty context'), ('héllo', ' wörld')]
  scores = backend.loglikelihood(reqs)
  tok = backend.tokenizer
  for (ctx, cont), s in zip(reqs, scores):
    c_ids, x_ids = tok.encode(cont), tok.encode(ctx) or [tok.eos_id]
    seq = torch.tensor([x_ids + c_ids])
    with torch.no_grad():
      logp = torch.log_softmax(backend.model(seq).logits[0, :-1], dim=-1)
    idx = torch.arange(len(x_ids) - 1, seq.shape[1] - 1)
    want = logp[idx, torch.tensor(c_ids)].sum().item()
    assert s.logprob == pytest.approx(want, abs=1e-4)
    assert s.greedy == bool((logp[idx].argmax(-1) == torch.tensor(c_ids)).all())


def test_batched_generation_equals_unpadded_greedy(backend):
  prompts = [[40, 41, 42], [50] * 15, [7, 9, 11, 13]]
  out = backend.generate_tokens(prompts, 8, frozenset())
  for p, o in zip(prompts, out):
    seq = list(p)
    with torch.no_grad():
      for _ in range(8):
        seq.append(int(backend.model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert o == seq[len(p):]
  texts = backend.generate(['hello', 'ab'], 6)
  assert len(texts) == 2 and all('\n' not in t for t in texts)
