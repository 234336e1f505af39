"""`flmjax sample`: generate text from a checkpoint (greedy or top-p, KV cache)."""

from __future__ import annotations

import argparse
import sys


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--checkpoint', required=True, help='workdir, stage dir or step dir')
  p.add_argument('--prompt', action='append', default=None,
                 help='text prompt (repeat for a batch); for synthetic-data models use '
                      '--prompt_ids')
  p.add_argument('--prompt_ids', default=None, help='comma-separated token ids instead of text')
  p.add_argument('--max_new_tokens', type=int, default=64)
  p.add_argument('--temperature', type=float, default=0.0,
                 help='0 = greedy; any finite value > 0 samples (very large: uniform over the '
                      'vocabulary, never a padding id)')
  p.add_argument('--top_p', type=float, default=1.0,
                 help='nucleus mass; needs --temperature > 0')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--allow_unverified', action='store_true',
                 help='read a checkpoint without a manifest (or with files its manifest '
                 'does not list), e.g. one written by another tool: its bytes cannot be '
                 'verified')


def sample_main(args: argparse.Namespace) -> int:
  from flmjax.storage import checkpoint
  from flmjax.data import get_tokenizer
  from flmjax.sampling import generate
  if bool(args.prompt) == bool(args.prompt_ids):
    print('flmjax sample: give exactly one of --prompt (text) or --prompt_ids', file=sys.stderr)
    return 2
  if not 0.0 < args.top_p <= 1.0:
    print(f'flmjax sample: --top_p must be in (0, 1], got {args.top_p}', file=sys.stderr)
    return 2
  if args.max_new_tokens < 1:
    print(f'flmjax sample: --max_new_tokens must be >= 1, got {args.max_new_tokens}',
          file=sys.stderr)
    return 2
  if not args.temperature >= 0.0 or args.temperature == float('inf'):
    print(f'flmjax sample: --temperature must be a finite number >= 0 (0 = greedy), got '
          f'{args.temperature}', file=sys.stderr)
    return 2
  if args.top_p < 1.0 and args.temperature == 0.0:
    print(f'flmjax sample: --top_p {args.top_p} needs --temperature > 0: temperature 0 is greedy '
          f'decoding, which ignores top_p', file=sys.stderr)
    return 2
  if args.prompt_ids:
    try:
      ids = [int(t) for t in args.prompt_ids.split(',')]
    except ValueError:
      print(f'flmjax sample: --prompt_ids must be comma-separated integers, got '
            f'{args.prompt_ids!r}', file=sys.stderr)
      return 2
  cfg, params, config = checkpoint.load_params(args.checkpoint,
                                               allow_unverified=args.allow_unverified)
  if args.prompt_ids:
    bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
    if bad:
      print(f'flmjax sample: --prompt_ids {bad[0]} is outside the vocabulary of '
            f'{args.checkpoint} (ids 0..{cfg.vocab_size - 1})', file=sys.stderr)
      return 2
    out = generate(params, cfg, [ids], args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed)
    print(','.join(str(t) for t in out[0]))
    return 0
  if config.data.get('source') == 'synthetic':
    print(f'flmjax sample: {args.checkpoint} was trained on synthetic token data (no text '
          f'tokenizer); use --prompt_ids', file=sys.stderr)
    return 2
  vocab = get_tokenizer(config.data)
  prompts = [list(vocab.encode(p)) for p in args.prompt]
  outs = generate(params, cfg, prompts, args.max_new_tokens, temperature=args.temperature,
                  top_p=args.top_p, seed=args.seed, eos_id=vocab.eos_id)
  print(format_samples([f'{p}{vocab.decode(out)}' for p, out in zip(args.prompt, outs)]))
  return 0


SEPARATOR = '-' * 40


def format_samples(texts: list[str]) -> str:
  """One text as it is; several separated by a line of dashes, or they would run together."""
  return f'\n{SEPARATOR}\n'.join(texts)
