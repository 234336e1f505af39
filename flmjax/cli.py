"""The `flmjax` command: sub-commands registered in `COMMANDS`.

Each entry names its functions as 'module:function' strings in `flmjax.commands`; only the chosen
command's module is imported, and it imports jax only when it runs (so `flmjax --help` and
`flmjax CMD --help` stay fast).  To add a command, add a line, e.g.
  'grow': Command('grow a checkpoint to a bigger model', 'flmjax.commands.grow:run',
                  'flmjax.commands.grow:add_args', config_overrides=False),
`add_args(parser)` declares its flags; `run(args) -> int` is the exit status.  Commands with
`config_overrides=True` receive `--config.a.b=value` overrides as `args.config_overrides`.

An error ends in one line on stderr naming what is wrong (file, field) and what to do, and a
non-zero exit status (2: config or usage, 1: anything else, 130: Ctrl-C); `--debug` (anywhere on
the line) or `FLMJAX_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import glob
import importlib
import importlib.util
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from flmjax import host_memory


@dataclasses.dataclass(frozen=True)
class Command:
  help: str
  run: str                      # 'module:function', function(args) -> int
  add_args: Optional[str] = None  # 'module:function', function(parser) -> None
  config_overrides: bool = False
  allow_abbrev: bool = True       # False: only the declared flags (no argparse prefixes)
  extra_args: bool = False        # True: undeclared flags go to args.extra_args (Beam's options)


COMMANDS: dict[str, Command] = {
    'train': Command('train (or resume) an experiment: all its growth stages',
                     'flmjax.commands.train:run_train',
                     'flmjax.commands.train:add_train_args', config_overrides=True),
    'grow': Command('grow a checkpoint to a bigger model (offline), optionally verify exactness',
                    'flmjax.commands.grow:grow_main', 'flmjax.commands.grow:add_grow_arguments'),
    'mup-check': Command('µP coordinate check: activation scale vs width (PNG)',
                         'flmjax.commands.mup_tools:mup_check_main',
                         'flmjax.commands.mup_tools:add_mup_check_arguments', config_overrides=True),
    'sweep': Command('µP sweep of lr / init std / output mult on proxies; transfer the best point',
                     'flmjax.commands.mup_tools:sweep_main',
                     'flmjax.commands.mup_tools:add_sweep_arguments',
                     config_overrides=True),
    'predict-loss': Command("predict a wide model's loss from µP proxies (L(N), L(C) fits)",
                            'flmjax.commands.mup_tools:predict_loss_main',
                            'flmjax.commands.mup_tools:add_predict_loss_arguments',
                            config_overrides=True),
    'vocab': Command('train the SentencePiece vocabulary of an experiment\'s data section',
                     'flmjax.commands.vocab:run_vocab', 'flmjax.commands.vocab:add_vocab_args',
                     config_overrides=True),
    'eval': Command('run the IQ / knowledge suites on a checkpoint or a local HF model',
                    'flmjax.commands.eval:eval_main', 'flmjax.commands.eval:add_eval_arguments',
                    allow_abbrev=False),
    'sample': Command('generate text from a checkpoint (greedy or top-p, KV cache)',
                      'flmjax.commands.sample:sample_main',
                      'flmjax.commands.sample:add_sample_arguments'),
    'compile': Command('AOT-compile every stage and growth for a TPU slice on this host: fits HBM?',
                       'flmjax.commands.compile:run', 'flmjax.commands.compile:add_args',
                       config_overrides=True),
    'plan-growth': Command('choose how and when to grow from short probes on a FLOPs budget',
                           'flmjax.commands.plan_growth:run',
                           'flmjax.commands.plan_growth:add_args', config_overrides=True),
    'data': Command('build the tokenized, sharded store of an experiment\'s data (Apache Beam)',
                    'flmjax.commands.data:run_data', 'flmjax.commands.data:add_data_args',
                    config_overrides=True, allow_abbrev=False, extra_args=True),
    'plot': Command('plot validation loss vs FLOPs and tokens, growth marked, runs compared',
                    'flmjax.commands.plot:plot_main', 'flmjax.commands.plot:add_plot_arguments'),
}


def _resolve(ref: str) -> Callable:
  module, name = ref.split(':')
  return getattr(importlib.import_module(module), name)


def split_overrides(rest: Sequence[str]) -> tuple[list[str], list[str]]:
  """Pull `--config.a.b=v` / `--config.a.b v` out of `rest`; returns (overrides, others)."""
  overrides, others, i = [], [], 0
  rest = list(rest)
  while i < len(rest):
    a = rest[i]
    if a.startswith('--config.'):
      if '=' in a:
        overrides.append(a[len('--config.'):])
      elif i + 1 < len(rest):
        overrides.append(a[len('--config.'):] + '=' + rest[i + 1])
        i += 1
      else:
        others.append(a)
    else:
      others.append(a)
    i += 1
  return overrides, others


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
  """The parser; only `command`'s flags are declared (importing only its module)."""
  parser = argparse.ArgumentParser(prog='flmjax', description=__doc__.splitlines()[0])
  parser.add_argument('--debug', action='store_true',
                      help=f'show the traceback of an error (or set {DEBUG_ENV}=1)')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  for name, cmd in COMMANDS.items():
    p = sub.add_parser(name, help=cmd.help, description=cmd.help, allow_abbrev=cmd.allow_abbrev)
    if cmd.add_args and name == command:
      _resolve(cmd.add_args)(p)
  return parser


def _command_name(argv: Sequence[str]) -> Optional[str]:
  """The first argument that names a command (flags before it belong to `flmjax` itself)."""
  for a in argv:
    if not a.startswith('-'):
      return a if a in COMMANDS else None
  return None


DEBUG_ENV = 'FLMJAX_DEBUG'
# flmjax's own errors: their message already names the file / field and what to do.
_OWN_ERRORS = ('CheckpointError', 'DataError', 'PreflightError', 'DivergedError',
                'WorkdirLockedError', 'ConfigError', 'MetricsError', 'PlotError', 'StorageError')


def _one_line(text: str, limit: int = 800) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= limit else text[:limit] + ' ...'


def describe_error(e: BaseException) -> str:
  """One line for an error that ends a command."""
  names = {c.__name__ for c in type(e).__mro__}
  if 'ConfigError' in names:
    return f'config error: {_one_line(str(e))}'
  if names & set(_OWN_ERRORS):
    return _one_line(str(e))
  if isinstance(e, OSError):
    where = '' if e.filename is None else str(e.filename)
    where += f' -> {e.filename2}' if e.filename2 else ''
    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      todo = 'free space there or choose another path'
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
      todo = 'it is not writable: fix its permissions or choose another path'
    else:
      todo = ('check that the path exists, is a directory where one is expected, and is '
              'writable (or choose another path)')
    return _one_line(f'cannot use {where}: {what}; {todo}' if where else
                     f'{type(e).__name__}: {what}; {todo}')
  first = str(e).strip().splitlines()[0] if str(e).strip() else ''
  return _one_line(f'{type(e).__name__}: {first} (unexpected: run with --debug for the '
                   'traceback)')


def has_tpu() -> bool:
  """A Google TPU on this host's PCI bus (vendor 0x1ae0), as jax itself detects one."""
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      with open(vendor) as f:
        if f.read().strip() == '0x1ae0':
          return True
    except OSError:
      pass
  return False


def accelerator_present() -> bool:
  """A TPU or an NVIDIA GPU on this host (what jax, with JAX_PLATFORMS unset, would pick)."""
  return has_tpu() or os.path.exists('/proc/driver/nvidia/version')


def steps_on_cpu() -> bool:
  """JAX will run the steps on this host's CPU: JAX_PLATFORMS says cpu, or no accelerator."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  return platforms.split(',')[0] == 'cpu' if platforms else not accelerator_present()


def prepare_process() -> None:
  """What every flmjax process does before it imports jax: pick the CPU where libtpu would only
  complain, and, where the steps run on the CPU, keep freed host memory for the next step
  (`flmjax.host_memory`: ~25% of a CPU step was the kernel faulting its temporaries in again)."""
  cpu_unless_accelerator()
  if steps_on_cpu():
    host_memory.retain_freed_memory()


def cpu_unless_accelerator() -> None:
  """JAX_PLATFORMS=cpu where libtpu is installed (the `tpu` extra) but neither a TPU nor an
  NVIDIA GPU is here.  Otherwise jax, with JAX_PLATFORMS unset, loads libtpu to try a TPU
  backend, and libtpu prints lines about missing TPU VM metadata (worker hostnames, accelerator
  type) to every CPU command's stderr, and takes its lock file.  `flmjax compile` needs no TPU
  backend (it describes the slice to libtpu directly).  A JAX_PLATFORMS the user set wins."""
  if 'JAX_PLATFORMS' in os.environ or importlib.util.find_spec('libtpu') is None:
    return
  if accelerator_present():
    return
  os.environ['JAX_PLATFORMS'] = 'cpu'
  if 'jax' in sys.modules:  # read at jax's import: tell a jax imported already (no backend yet)
    jax = sys.modules['jax']
    if not jax.config.jax_platforms:
      jax.config.update('jax_platforms', 'cpu')


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  prepare_process()
  debug = '--debug' in argv or os.environ.get(DEBUG_ENV, '') not in ('', '0')
  argv = [a for a in argv if a != '--debug']
  overrides, others = split_overrides(argv)
  parser = build_parser(_command_name(others))
  name = _command_name(others)
  if name and COMMANDS[name].extra_args:
    args, extra = parser.parse_known_args(others)
    args.extra_args = extra
  else:
    args = parser.parse_args(others)
  cmd = COMMANDS[args.command]
  if overrides and not cmd.config_overrides:
    parser.error(f'{args.command} takes no --config.* overrides (got --config.{overrides[0]})')
  args.config_overrides = overrides
  quiet = None if debug else _LogWithoutTracebacks()
  if quiet:  # libraries (orbax) log a failing background save with its traceback, via absl
    logging.getLogger('absl').addFilter(quiet)
  try:
    return int(_resolve(cmd.run)(args) or 0)
  except KeyboardInterrupt:
    if debug:
      raise
    print(f'flmjax {args.command}: interrupted', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except  (one clear line, no traceback wall)
    if debug:
      raise
    print(f'flmjax {args.command}: {describe_error(e)}', file=sys.stderr)
    return 2 if 'ConfigError' in {c.__name__ for c in type(e).__mro__} else 1
  finally:
    if quiet:
      logging.getLogger('absl').removeFilter(quiet)


class _LogWithoutTracebacks(logging.Filter):
  """Keep library log lines but drop their tracebacks: the error that ends the command is
  reported once, in one line, by `main` (`--debug` keeps them).  orbax's own ERROR records are
  dropped too: a failed save logs one per background thread (5 to 60 lines, each repeating the
  cause), and the save's failure always reaches flmjax as the CheckpointError that ends the
  command in its one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and str(record.msg).startswith('[process='):
      return False  # orbax's prefix (absl names its own file as the record's pathname)
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


if __name__ == '__main__':
  sys.exit(main())
