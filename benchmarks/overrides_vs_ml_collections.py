"""`--config.a.b=v` overrides: what flmjax's parser does on the cases tests/test_cli.py pins, and
what ml_collections' own path machinery (`config_flags.config_path`, usable without absl flags)
does on the same text.

  python benchmarks/overrides_vs_ml_collections.py

ml_collections converts override *strings* to the field's type only inside its absl flag parsers;
without absl flags, `config_path.set_value` takes an already-typed value.  So the library side here
gets the text as-is (what a command line gives), and a row shows `ok` only when the library alone
yields the value flmjax's tests expect.  The table goes into BUILD.md's "Why not the library".
"""

from __future__ import annotations

import ast
import os
import sys

import common  # noqa: F401  (puts the repository on sys.path)

sys.path.insert(0, os.path.join(common.ROOT, 'tests'))

from conftest import tiny_config  # noqa: E402
from flmjax import experiment  # noqa: E402
from flmjax.config import ConfigError  # noqa: E402

# (override, the field it sets, what flmjax's tests expect: a value or the error text)
CASES = [
    ('train.steps=7', 'train.steps', 7),
    ('optim.lr=1', 'optim.lr', 1.0),
    ('train.allow_overwrite=true', 'train.allow_overwrite', True),
    ('mesh.rules.mlp=fsdp,tensor', 'mesh.rules.mlp', ('fsdp', 'tensor')),
    ('mesh.rules.embed=()', 'mesh.rules.embed', ()),
    ('stages.1.lr=0.5', 'stages[1].lr', 0.5),
    ('stages.1.growth.ramp_steps=4', 'stages[1].growth.ramp_steps', 4),
    ('train.stpes=3', 'train.stpes', "--config.train.stpes: unknown field 'stpes'"),
    ('train.steps=many', 'train.steps', "--config.train.steps: expected an int, got 'many'"),
    ('train.allow_overwrite=maybe', 'train.allow_overwrite',
     '--config.train.allow_overwrite: expected a bool'),
    ('stages.5.lr=1', 'stages[5].lr', '--config.stages.5: no element'),
]


def _config():
  return tiny_config(stages=[dict(name='a', steps=2),
                             dict(name='b', steps=3, lr=0.1, model=dict(n_layers=3),
                                  growth=dict(ramp_steps=1))])


def _ours(override: str, field: str) -> object:
  c = _config()
  try:
    experiment.apply_overrides(c, [override])
  except ConfigError as e:
    return f'ConfigError: {e}'
  return _get(c, field)


def _get(c, field: str) -> object:
  from ml_collections.config_flags import config_path
  return config_path.get_value(field, c)


def _library(override: str, field: str, glue: bool) -> object:
  """config_path.set_value on the override as written.  `glue`: the least a caller adds, the
  text through ast.literal_eval (a plain string when that fails)."""
  from ml_collections.config_flags import config_path
  c = _config()
  path, text = override.split('=', 1)
  value = text
  if glue:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      pass
  try:
    config_path.set_value(path, c, value)
  except Exception as e:  # pylint: disable=broad-except  (the row reports whatever it raised)
    return f'{type(e).__name__}: {str(e).splitlines()[0][:60]}'
  return _get(c, field)


def _verdict(got: object, want: object) -> str:
  if isinstance(want, str):
    return 'ok' if isinstance(got, str) and want in got else 'differs'
  return 'ok' if got == want and type(got) is type(want) else 'differs'


def main() -> None:
  rows, ok = [], {'raw': 0, 'glue': 0}
  for override, field, want in CASES:
    raw, glued = _library(override, field, False), _library(override, field, True)
    ok['raw'] += _verdict(raw, want) == 'ok'
    ok['glue'] += _verdict(glued, want) == 'ok'
    rows.append([override, _verdict(_ours(override, field), want), _verdict(raw, want),
                 _verdict(glued, want), repr(glued)[:70]])
  common.print_table(['override', 'flmjax', 'library', 'library+literal_eval',
                      'library+literal_eval gives'], rows)
  print(f'pinned behaviour: flmjax {len(CASES)}/{len(CASES)}, library alone {ok["raw"]}/'
        f'{len(CASES)}, library + literal_eval {ok["glue"]}/{len(CASES)}')


if __name__ == '__main__':
  main()
