"""`flmjax eval`: run the IQ and/or knowledge suites on a checkpoint or a local HF model.

  flmjax eval --checkpoint W --suite iq|knowledge|all [--data_dir D] [--babi_dir B] [--limit N]
              --output R.json
  flmjax eval --hf_model PATH [--dtype bfloat16] [--device_map auto] ...

Tasks are built (and their data checked) before the model is loaded, so a missing or malformed
file fails in seconds with the task and the file named.  Without --data_dir the generated tasks
run and the tasks that need release files are listed as skipped.  A checkpoint is loaded sharded
over the devices present, on its experiment's mesh.  Prints the table, writes the JSON report.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

from flmjax.evaluation.tasks import IQ_CATEGORIES, EvalDataError, Task  # standard library only

if TYPE_CHECKING:
  from flmjax.evaluation.report import TaskResult

SUITES = ('iq', 'knowledge', 'all')


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of the `eval` sub-command."""
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument('--checkpoint', metavar='W', help='flmjax work dir (W/checkpoints + config)')
  src.add_argument('--hf_model', '--hf', dest='hf_model', metavar='PATH',
                   help='local Hugging Face causal LM folder (--hf is an alias)')
  parser.add_argument('--allow_unverified', action='store_true',
                      help='--checkpoint: read a checkpoint without a manifest (or with files '
                      'its manifest does not list), e.g. one written by another tool: its bytes '
                      'cannot be verified')
  parser.add_argument('--suite', choices=SUITES, default='all')
  parser.add_argument('--tasks', default='', help='comma-separated task names to keep (default all '
                      'of the suite), e.g. counting,boolq,mmlu')
  parser.add_argument('--data_dir', default=None, help='folder with the SuperGLUE/CLUE/MMLU/... '
                      'release files (see flmjax.evaluation.knowledge and iq_symbolic)')
  parser.add_argument('--symbolic_source', choices=('files', 'tfds'), default='files',
                      help="SuperGLUE from release files under --data_dir, or prepared TFDS data")
  parser.add_argument('--clue_split', choices=('dev', 'test_public'), default='dev',
                      help="CLUE-IQ items: 'dev' (default: the CLUE release's dev.json, or "
                      "FewCLUE's dev_few_all.json) or 'test_public' (FewCLUE's labelled public "
                      "test); the report names the file read")
  parser.add_argument('--babi_dir', default=None, help='folder with the bAbI text files '
                      '(qa1_single-supporting-fact_{train,test}.txt, qa2_two-supporting-facts_'
                      '...): the supporting-fact tasks read them instead of generated stories')
  parser.add_argument('--limit', type=int, default=None,
                      help='a seeded random sample of at most N items per task (per subject for '
                      'MMLU/C-Eval); the seed is --seed')
  parser.add_argument('--output', metavar='R.json', default=None, help='write the JSON report here')
  parser.add_argument('--seed', type=int, default=0, help='seed of generated items, symbols, shots')
  parser.add_argument('--shots', default='', help='k-shot overrides, e.g. counting=2,mmlu=0')
  parser.add_argument('--n_items', type=int, default=None, help='generated items per IQ task '
                      '(default: 100, anti-interference 300, as in the paper)')
  parser.add_argument('--distractors', type=int, default=12, help='anti-interference distractors')
  parser.add_argument('--n_keys', type=int, default=6, help='key/value pairs in key retrieval')
  parser.add_argument('--n_agents', type=int, default=4, help='agents in bAbI-style stories')
  parser.add_argument('--n_events', type=int, default=None, help='statements in generated '
                      "bAbI-style stories (default: drawn per story from bAbI's lengths)")
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--max_len', type=int, default=None, help="default: the model's context")
  parser.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'bfloat16',
                                                          'float16'),
                      help='--hf_model: weight dtype (auto: as saved)')
  parser.add_argument('--device_map', default=None, help='--hf_model: transformers device map, '
                      'e.g. auto to spread a large model over the GPUs (needs accelerate)')
  parser.add_argument('--trust_remote_code', action='store_true', help='--hf_model: run the '
                      "modelling code shipped in the model's folder (e.g. FLM-101B's)")
  parser.add_argument('--skip_missing', action='store_true',
                      help='record tasks whose data is missing as skipped instead of failing '
                      '(always the case without --data_dir)')


_MINIMUM = {'limit': 1, 'n_items': 1, 'batch_size': 1, 'max_len': 1, 'n_events': 1, 'n_keys': 1,
            'n_agents': 1, 'distractors': 0}


def validate_args(args: argparse.Namespace) -> None:
  """Counts must be positive; a negative --limit would silently mean 'all but the last'."""
  for flag, low in _MINIMUM.items():
    v = getattr(args, flag, None)
    if v is not None and v < low:
      raise ValueError(f'--{flag} must be >= {low}, got {v}')
  if args.checkpoint and (args.dtype != 'auto' or args.device_map or args.trust_remote_code):
    raise ValueError('--dtype, --device_map and --trust_remote_code apply to --hf_model; a '
                     '--checkpoint is sharded over the devices present on its experiment mesh')


def _parse_shots(spec: str) -> dict[str, int]:
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(','))):
    name, _, k = part.partition('=')
    if not k.strip().isdigit():
      raise ValueError(f'--shots: expected task=k with an integer k >= 0 (the number of '
                       f'examples before each item), got {part!r}')
    out[name.strip()] = int(k)
  return out


def build_tasks(args: argparse.Namespace) -> tuple[list[Task], dict[str, dict[str, str]]]:
  """Tasks of the suite, and {category: {task: reason}} for those skipped (--skip_missing)."""
  from flmjax.evaluation import iq_interference, iq_patterns, iq_rules, iq_symbolic, knowledge
  keep = set(filter(None, (t.strip() for t in args.tasks.split(','))))
  known = set(iq_symbolic.TASKS + iq_rules.TASKS + iq_patterns.TASKS + iq_interference.TASKS
              + knowledge.TASKS)
  unknown = sorted(k for k in keep if k.split('.')[0] not in known)
  if unknown:
    raise ValueError(f'--tasks: unknown task(s) {unknown}; known: {sorted(known)} (symbolic '
                     f'tasks also as NAME.symbolic / NAME.original)')
  bases = {k.split('.')[0] for k in keep}
  wanted = lambda name: not keep or name in bases
  shots = _parse_shots(args.shots)
  if set(shots) - known:
    raise ValueError(f'--shots: unknown task(s) {sorted(set(shots) - known)}')
  tasks: list[Task] = []
  skipped: dict[str, dict[str, str]] = {}
  errors: list[str] = []

  def attempt(category: str, name: str, make):
    needs_files = category == knowledge.CATEGORY or args.symbolic_source == 'files'
    if needs_files and not args.data_dir and not keep:  # a first run: the generated tasks only
      skipped.setdefault(category, {})[name] = 'needs --data_dir with its release files'
      return
    try:
      tasks.extend(make())
    except EvalDataError as e:
      if args.skip_missing:
        skipped.setdefault(category, {})[name] = str(e)
      else:
        errors.append(str(e))

  if args.suite in ('iq', 'all'):
    for name in iq_symbolic.TASKS:
      if wanted(name):
        attempt(iq_symbolic.CATEGORY, name, lambda name=name: iq_symbolic.make_tasks(
            name, args.data_dir, seed=args.seed, k_shot=shots.get(name),
            source=args.symbolic_source, limit=args.limit, clue_split=args.clue_split))
    difficulty = iq_interference.Difficulty(n_distractors=args.distractors, n_keys=args.n_keys,
                                            n_agents=args.n_agents, n_events=args.n_events)
    for mod, default_n in ((iq_rules, 100), (iq_patterns, 100), (iq_interference, 300)):
      for name in mod.TASKS:
        if not wanted(name):
          continue
        n = min(args.n_items or default_n, args.limit or 10**9)
        kw = ({'difficulty': difficulty, 'babi_dir': args.babi_dir}
              if mod is iq_interference else {})
        try:
          tasks.append(mod.make_task(name, n_items=n, seed=args.seed, k_shot=shots.get(name),
                                     **kw))
        except EvalDataError as e:  # a --babi_dir without the files
          if args.skip_missing:
            skipped.setdefault(mod.CATEGORY, {})[name] = str(e)
          else:
            errors.append(str(e))
  if args.suite in ('knowledge', 'all'):
    for name in knowledge.TASKS:
      if wanted(name):
        attempt(knowledge.CATEGORY, name, lambda name=name: [knowledge.make_task(
            name, args.data_dir, seed=args.seed, k_shot=shots.get(name), limit=args.limit)])
  if errors:
    raise EvalDataError('\n'.join(errors) + '\n(use --skip_missing to run the other tasks)')
  tasks = [t for t in tasks if not keep or t.name in keep or t.name.split('.')[0] in keep]
  if not tasks and not skipped:
    raise ValueError(f'no task of --suite {args.suite} matches --tasks {args.tasks!r}')
  return tasks, skipped  # readers and generators already applied --limit


def load_backend(args: argparse.Namespace):
  """(backend, description) for --checkpoint or --hf_model."""
  if args.hf_model:
    from flmjax.evaluation.hf_backend import HFBackend
    if not os.path.isdir(args.hf_model):
      raise EvalDataError(f'--hf_model: {args.hf_model!r} is not a folder with a saved model')
    backend = HFBackend(args.hf_model, batch_size=args.batch_size, max_len=args.max_len,
                        dtype=args.dtype, device_map=args.device_map,
                        trust_remote_code=args.trust_remote_code)
    return backend, {'backend': 'hf', 'path': args.hf_model, 'dtype': args.dtype,
                     'device_map': args.device_map}
  from flmjax.evaluation import loading
  backend, model = loading.load_engine(args.checkpoint, batch_size=args.batch_size,
                                       max_len=args.max_len,
                                       allow_unverified=args.allow_unverified)
  if model['placement'].get('mesh_note'):
    print(f'flmjax eval: warning: {model["placement"]["mesh_note"]}', file=sys.stderr)
  return backend, model


def output_problem(path: Optional[str]) -> Optional[str]:
  """Why `--output` cannot be written (checked before the run, not after it), or None."""
  if not path:
    return None
  if '://' in path:  # an object store: write and delete a small probe object next to it
    from flmjax.storage import paths
    probe = f'{path}.probe{os.getpid()}'
    try:
      paths.write_atomic(probe, b'')
      paths.remove(probe)
    except Exception as e:  # pylint: disable=broad-except  (the client's own error types)
      return f'--output {path} cannot be written ({paths.describe_error(e)}); choose a writable path'
    return None
  if os.path.isdir(path):
    return f'--output {path} is a directory; give a file path such as {path}/report.json'
  existed = os.path.exists(path)
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a', encoding='utf-8'):
      pass
    if not existed:
      os.remove(path)
  except OSError as e:
    return (f'--output {path} cannot be written ({e.strerror or e}: {e.filename or path}); '
            'choose a writable path')
  return None


def eval_main(args: argparse.Namespace) -> int:
  """Runs the suite; 0 when every requested task ran, 1 when one failed while running (or a task
  named in --tasks was skipped), 2 on bad input (message on stderr).

  A task that fails is recorded with its error and the others still run; with --output the JSON
  report is rewritten (atomically) after every task, so finished results survive a crash.
  """
  from flmjax.evaluation import report, runner
  problem = output_problem(args.output)
  if problem:
    print(f'flmjax eval: error: {problem}', file=sys.stderr)
    return 2
  try:
    validate_args(args)
    tasks, skipped = build_tasks(args)
  except (EvalDataError, ValueError) as e:
    print(f'flmjax eval: error: {e}', file=sys.stderr)
    return 2
  try:
    backend, model = load_backend(args)
  except (EvalDataError, ImportError) as e:
    print(f'flmjax eval: error: {e}', file=sys.stderr)
    return 2
  categories = ((IQ_CATEGORIES if args.suite in ('iq', 'all') else ()) +
                (('knowledge',) if args.suite in ('knowledge', 'all') else ()))
  meta = {'model': model, 'suite': args.suite, 'seed': args.seed, 'limit': args.limit,
          'limit_sampling': (f'seeded random sample, seed {args.seed}' if args.limit else None),
          'data_dir': args.data_dir, 'babi_dir': args.babi_dir, 'max_len': backend.max_len}
  results: list[TaskResult] = []
  failed: dict[str, dict[str, str]] = {}
  start = time.time()

  def write(pending):
    if args.output:
      report.write_json(args.output, report.to_json(
          results, {**meta, 'seconds': round(time.time() - start, 2)}, skipped, categories,
          failed=failed, pending=[t.name for t in pending]))

  for i, t in enumerate(tasks):
    t0 = time.time()
    try:
      results.append(runner.evaluate(backend, t))
    except Exception as e:  # noqa: BLE001  (one task's fault must not lose the others' results)
      why = f'{type(e).__name__}: {e}'
      failed.setdefault(t.category, {})[t.name] = why
      print(f'flmjax eval: error: {t.category}/{t.name} failed, the other tasks go on: {why}',
            file=sys.stderr)
    else:
      print(f'[eval] {t.category}/{t.name}: {len(t.items)} items, '
            f'acc {100 * results[-1].accuracy:.1f}% ({time.time() - t0:.1f}s)', file=sys.stderr)
      warning = report.cut_warning(results[-1], backend.max_len)
      if warning:
        print(f'flmjax eval: warning: {warning}', file=sys.stderr)
    write(tasks[i + 1:])
  if not tasks:
    write([])
  print(report.format_table(results, skipped, limit=args.limit, seed=args.seed, failed=failed))
  if args.output:
    print(f'report written to {args.output}', file=sys.stderr)
  else:  # nothing is written anywhere by default
    print('note: the table above is the only report: pass --output R.json to keep the JSON '
          'report (per-item scores, sources, notes)', file=sys.stderr)
  named = set(filter(None, (x.strip() for x in args.tasks.split(','))))
  not_run = sorted(n for reasons in skipped.values() for n in reasons if n in named)
  if failed or not_run:
    names = sorted(n for reasons in failed.values() for n in reasons) + not_run
    print(f'flmjax eval: {len(names)} requested task(s) did not run: {", ".join(names)}',
          file=sys.stderr)
    return 1
  return 0


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='flmjax eval', description=__doc__.splitlines()[0],
                                   allow_abbrev=False)
  add_eval_arguments(parser)
  return eval_main(parser.parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
