"""Training throughput of flmjax against a PyTorch peer, and hardware utilisation, in one run.

  python benchmarks/train_throughput.py                    # ≈10M, 50M, 125M params
  python benchmarks/train_throughput.py --sizes 125m --reps 7
  python benchmarks/train_throughput.py --remat dots --attention cudnn --dtype bf16   # GPU
  python benchmarks/train_throughput.py --smoke            # tiny sizes, 2 steps (CI)
  python benchmarks/train_throughput.py --sizes 10m,50m --profile   # + where the step's time goes

flmjax side: the trainer's own step (`flmjax.training.runtime.StageRuntime.train_step`: jitted with shardings,
donated state, AdamW with clipping and masked weight decay).  PyTorch side: the same architecture
and size as a Hugging Face `GPT2LMHeadModel` (built from a `GPT2Config`, nothing downloaded;
dropout off, exact GeLU, tied embeddings, the default SDPA attention) with `torch.optim.AdamW` and
global-norm clipping, on the same batches.  The two steps alternate (interleaved medians) with a
dense matmul, whose FLOP/s is the utilisation yardstick of this device in this run.

Model FLOPs = `ModelConfig.flops_per_token(seq) × tokens` (6N + attention, PaLM convention) for
both sides.  Each side's utilisation is its model FLOP/s over its *own* framework's dense-matmul
FLOP/s in the same run (flmjax over XLA's matmul, PyTorch over torch's), so a host whose BLAS is
slow for one framework does not flatter the other.  The last line is the host-fair headline:
flmjax utilisation ÷ PyTorch utilisation at the largest size, with the raw tokens/s ratio beside it.

Where the difference lies: each side also runs the step's *weight GEMMs alone* (every projection,
MLP and logits matmul of the model with its two backward GEMMs, at the step's shapes, in that
framework, interleaved with the steps).  Their share of the step is the part no training loop can
remove; the rest (attention, norms, activations, loss, optimizer, copies, host time) is the step's
overhead, in milliseconds, compared side by side.  (One call per GEMM: at the named sizes each
takes milliseconds; at the smoke sizes the calls' dispatch dominates and the split means nothing.)
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import op_profile  # noqa: E402

# name: (model fields, seq_len, global batch).  head_dim 64 everywhere, d_ff = 4·d_model.
SIZES = {
    '10m': (dict(vocab_size=8192, d_model=384, n_heads=6, head_dim=64, d_ff=1536, n_layers=4),
            512, 8),
    '50m': (dict(vocab_size=16384, d_model=640, n_heads=10, head_dim=64, d_ff=2560, n_layers=8),
            1024, 2),
    '125m': (dict(vocab_size=50257, d_model=768, n_heads=12, head_dim=64, d_ff=3072, n_layers=12),
             1024, 1),
}
SMOKE_SIZES = {
    'smoke-a': (dict(vocab_size=256, d_model=64, n_heads=2, head_dim=32, d_ff=256, n_layers=2),
                64, 2),
    'smoke-b': (dict(vocab_size=512, d_model=128, n_heads=4, head_dim=32, d_ff=512, n_layers=2),
                64, 2),
}
DTYPES = {'f32': 'float32', 'bf16': 'bfloat16'}


def torch_stepper(model_kw: dict, padded_vocab: int, seq_len: int, batches: list[dict],
                  dtype: str, optim):
  """A GPT-2 of the same shape in PyTorch, trained by AdamW (+ clipping) on `batches`."""
  import torch
  import torch.nn.functional as F
  from transformers import GPT2Config, GPT2LMHeadModel
  torch.manual_seed(0)
  cfg = GPT2Config(vocab_size=padded_vocab, n_positions=seq_len, n_embd=model_kw['d_model'],
                   n_layer=model_kw['n_layers'], n_head=model_kw['n_heads'],
                   n_inner=model_kw['d_ff'], activation_function='gelu', resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                   bos_token_id=0, eos_token_id=0)
  model = GPT2LMHeadModel(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2),
                          eps=optim.eps, weight_decay=optim.weight_decay)
  tb = [{k: torch.from_numpy(b[k].astype('int64')) for k in ('inputs', 'targets')}
        for b in batches]
  state = {'i': 0}
  autocast = dtype == 'bfloat16'

  def step() -> float:
    b = tb[state['i'] % len(tb)]
    state['i'] += 1
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
      logits = model(input_ids=b['inputs']).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), b['targets'].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip)
    opt.step()
    return float(loss.detach())

  n_params = sum(p.numel() for p in model.parameters())
  return step, n_params


def weight_gemm_shapes(model_kw: dict, padded_vocab: int, tokens: int) -> list[tuple[int, int, int]]:
  """(m, k, n) of every weight GEMM in one training step: per weight W (k×n) applied to x (m×k),
  the forward x·W, and the backward dy·Wᵀ (m×n·n×k) and xᵀ·dy (k×m·m×n)."""
  D, F, N = model_kw['d_model'], model_kw['d_ff'], model_kw['n_layers']
  HK = model_kw['n_heads'] * model_kw['head_dim']
  forward = [(tokens, D, HK)] * 3 + [(tokens, HK, D), (tokens, D, F), (tokens, F, D)]
  forward = forward * N + [(tokens, D, padded_vocab)]
  return [g for m, k, n in forward for g in ((m, k, n), (m, n, k), (k, m, n))]


def weight_gemm_fns(shapes: list[tuple[int, int, int]], dtype: str, with_torch: bool):
  """({'gemms': jax fn, 'gemms_torch': torch fn}, flops): each runs `shapes` one GEMM at a time."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  host = {s: (rng.standard_normal(s[:2], np.float32), rng.standard_normal(s[1:], np.float32))
          for s in sorted(set(shapes))}
  mm = jax.jit(lambda a, b: a @ b)
  on_jax = {s: (jnp.asarray(a, dtype), jnp.asarray(b, dtype)) for s, (a, b) in host.items()}

  def run_jax():
    for s in shapes:
      mm(*on_jax[s]).block_until_ready()

  fns = {'gemms': run_jax}
  if with_torch:
    import torch
    dt = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]
    on_torch = {s: (torch.from_numpy(a).to(dt), torch.from_numpy(b).to(dt))
                for s, (a, b) in host.items()}

    def run_torch():
      for s in shapes:
        on_torch[s][0] @ on_torch[s][1]

    fns['gemms_torch'] = run_torch
  return fns, float(sum(2 * m * k * n for m, k, n in shapes))


def run_size(name: str, spec, args) -> dict:
  import jax
  from flmjax.config import ModelConfig
  model_kw, seq_len, batch = spec
  seq_len = args.seq_len or seq_len
  batch = args.batch or batch
  dtype = DTYPES[args.dtype]
  model_kw = dict(model_kw, remat=args.remat, attention_impl=args.attention,
                  compute_dtype=dtype, max_len=seq_len)
  config = common.flmjax_config(model_kw, seq_len, batch)
  rt = common.flmjax_runtimes(config)[0]
  mcfg: ModelConfig = rt.cfg
  batches = common.random_batches(2, batch, seq_len, mcfg.vocab_size, seed=1)
  fns = {'flmjax': common.FlmjaxStepper(rt, rt.init_state(0), batches)}
  torch_params = None
  if not args.no_torch:
    fns['pytorch'], torch_params = torch_stepper(model_kw, mcfg.padded_vocab, seq_len, batches,
                                                 dtype, config.optim)
  mm, mm_flops = common.jax_matmul_fn(args.matmul_n, dtype)
  fns['matmul'] = mm
  if not args.no_torch:
    fns['matmul_torch'], _ = common.torch_matmul_fn(args.matmul_n, dtype)
  gemm_fns, gemm_flops = weight_gemm_fns(
      weight_gemm_shapes(model_kw, mcfg.padded_vocab, batch * seq_len), dtype, not args.no_torch)
  fns.update(gemm_fns)
  times = common.interleaved(fns, reps=args.reps, warmup=args.warmup)
  profiles = {}
  if args.profile:
    profiles['flmjax'] = op_profile.jax_profile(fns['flmjax'], fns['flmjax'].compiled_text())
    if 'pytorch' in fns:
      profiles['pytorch'] = op_profile.torch_profile(fns['pytorch'])
  tokens = batch * seq_len
  flops = mcfg.flops_per_token(seq_len) * tokens
  rows, gemm_rows = [], []
  tps, util, overhead = {}, {}, {}
  for side, yardstick, gemms in (('flmjax', 'matmul', 'gemms'),
                                 ('pytorch', 'matmul_torch', 'gemms_torch')):
    if side not in times:
      continue
    t = common.median(times[side])
    t_gemm = common.median(times[gemms])
    overhead[side] = t - t_gemm
    gemm_rows.append([name, side, f'{1e3 * t:.1f}', f'{1e3 * t_gemm:.1f}',
                      common.fmt_si(gemm_flops / t_gemm, 'FLOP/s'), f'{100 * t_gemm / t:.1f}%',
                      f'{1e3 * (t - t_gemm):.1f}'])
    tps[side] = tokens / t
    own_peak = mm_flops / common.median(times[yardstick])
    util[side] = flops / t / own_peak
    rows.append([name, f'{mcfg.param_count() / 1e6:.1f}M' if side == 'flmjax' else
                 f'{torch_params / 1e6:.1f}M', f'{seq_len}x{batch}', side,
                 common.spread(times[side]), f'{tokens / t:,.0f}', common.fmt_si(flops / t, 'FLOP/s'),
                 common.fmt_si(own_peak, 'FLOP/s'), f'{100 * util[side]:.1f}%'])
  return {'rows': rows, 'gemm_rows': gemm_rows, 'overhead': overhead, 'tps': tps, 'util': util,
          'params': mcfg.param_count(),
          'profiles': profiles,
          'matmul': {k: mm_flops / common.median(times[k]) for k in ('matmul', 'matmul_torch')
                     if k in times},
          'device': jax.devices()[0].device_kind}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='tiny sizes, 2 timed steps (CI)')
  ap.add_argument('--sizes', default=None, help=f'comma list of {sorted(SIZES)}')
  ap.add_argument('--reps', type=int, default=None, help='timed steps per side')
  ap.add_argument('--warmup', type=int, default=1, help='untimed steps per side (compile)')
  ap.add_argument('--seq-len', type=int, default=None, help='override every size\'s seq_len')
  ap.add_argument('--batch', type=int, default=None, help='override every size\'s batch')
  ap.add_argument('--remat', default='none', choices=('none', 'full', 'dots'))
  ap.add_argument('--attention', default='xla', choices=('xla', 'cudnn'),
                  help='cudnn: jax.nn.dot_product_attention flash path (GPU only)')
  ap.add_argument('--dtype', default='f32', choices=sorted(DTYPES), help='compute dtype')
  ap.add_argument('--matmul-n', type=int, default=None, help='yardstick matmul size')
  ap.add_argument('--no-torch', action='store_true', help='flmjax only (no headline ratio)')
  ap.add_argument('--profile', action='store_true',
                  help="after timing, profile each side's step: share of step time per op family")
  args = ap.parse_args(argv)
  table = SMOKE_SIZES if args.smoke else SIZES
  names = list(table) if not args.sizes else [s.strip().lower() for s in args.sizes.split(',')]
  for n in names:
    if n not in table:
      ap.error(f'--sizes: unknown size {n!r}; known: {sorted(table)}')
  args.reps = args.reps or (2 if args.smoke else 5)
  args.matmul_n = args.matmul_n or (256 if args.smoke else 2048)
  if args.attention == 'cudnn':
    import jax
    if jax.default_backend() != 'gpu':
      ap.error('--attention cudnn needs a GPU (jax.nn.dot_product_attention cuDNN path); this '
               f'backend is {jax.default_backend()!r}')

  results = {n: run_size(n, table[n], args) for n in names}
  last = results[names[-1]]
  print(f"device: {last['device']}; remat={args.remat} attention={args.attention} "
        f"dtype={args.dtype}; {args.reps} interleaved reps, medians")
  peaks = ', '.join(f'{n}: ' + ', '.join(f'{k} {common.fmt_si(v, "FLOP/s")}'
                                         for k, v in r['matmul'].items())
                    for n, r in results.items())
  print(f'dense matmul ({args.matmul_n}^3, {args.dtype}) measured with each size: {peaks}')
  common.print_table(
      ['size', 'params', 'seq x batch', 'side', 'step ms med (min-max)', 'tokens/s',
       'model FLOP/s', 'own matmul FLOP/s', 'util'],
      [row for r in results.values() for row in r['rows']],
      title="utilisation = model FLOP/s / the side's own framework's dense-matmul FLOP/s, "
            'same run')
  common.print_table(
      ['size', 'side', 'step ms', 'weight GEMMs alone ms', 'their FLOP/s', 'GEMM share of step',
       'rest of step ms'],
      [row for r in results.values() for row in r['gemm_rows']],
      title="the step's weight GEMMs (forward + both backward GEMMs, the step's shapes) run alone "
            'in the same framework, same run: the rest is the step\'s overhead')
  for n, r in results.items():
    if r['profiles']:
      common.print_table(['op family'] + [f'{side}: share of step' for side in r['profiles']],
                         op_profile.share_rows(r['profiles']),
                         title=f'{n}: where one training step\'s time goes (profiled after timing; '
                               'host = wall not covered by any op)')
  if args.no_torch:
    print(f"flmjax tokens/s ({names[-1]}) = {last['tps']['flmjax']:,.0f}")
    return
  for n, r in results.items():
    print(f"{n}: flmjax/pytorch utilisation = {r['util']['flmjax'] / r['util']['pytorch']:.2f}x "
          f"(tokens/s {r['tps']['flmjax'] / r['tps']['pytorch']:.2f}x); outside the weight GEMMs "
          f"flmjax {1e3 * r['overhead']['flmjax']:.0f} ms, PyTorch {1e3 * r['overhead']['pytorch']:.0f} "
          f"ms per step")
  util_ratio = last['util']['flmjax'] / last['util']['pytorch']
  tps_ratio = last['tps']['flmjax'] / last['tps']['pytorch']
  print(f"headline: flmjax utilisation / PyTorch utilisation (host-fair) at {names[-1]} "
        f"({last['params'] / 1e6:.0f}M params) = {util_ratio:.2f}x (tokens/s ratio {tps_ratio:.2f}x)")


if __name__ == '__main__':
  main()
