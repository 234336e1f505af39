"""`flmjax` command line: override parsing and type checks, the command registry, and an end-to-end
`flmjax train` of experiments/tiny.py that visibly lowers the loss."""

import json
import os

import ml_collections
import pytest

from conftest import ROOT, read_losses, tiny_config
from flmjax import cli, experiment
from flmjax.scaling import sweep
from flmjax.config import ConfigError


def test_split_overrides_both_forms():
  overrides, rest = cli.split_overrides(
      ['--config', 'x.py', '--config.train.steps=5', '--config.optim.lr', '1e-3', '--workdir',
       'w'])
  assert overrides == ['train.steps=5', 'optim.lr=1e-3']
  assert rest == ['--config', 'x.py', '--workdir', 'w']


def test_overrides_are_type_checked_against_existing_fields():
  c = tiny_config(stages=[dict(name='a', steps=2), dict(name='b', steps=3, lr=0.1,
                                                         model=dict(n_layers=3),
                                                         growth=dict(ramp_steps=1))])
  experiment.apply_overrides(c, ['train.log_every=7', 'optim.lr=1', 'train.allow_overwrite=true',
                                 'mesh.rules.embed=()', 'mesh.rules.mlp=fsdp,tensor',
                                 'model.compute_dtype=bfloat16', 'stages.1.lr=0.5',
                                 'stages.1.growth.ramp_steps=4'])
  assert c.train.log_every == 7 and c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.train.allow_overwrite is True
  assert tuple(c.mesh.rules.embed) == () and tuple(c.mesh.rules.mlp) == ('fsdp', 'tensor')
  assert c.model.compute_dtype == 'bfloat16'
  assert c.stages[1]['lr'] == 0.5 and c.stages[1]['growth']['ramp_steps'] == 4
  with pytest.raises(ConfigError, match=r"--config.train.stpes: unknown field 'stpes'"):
    experiment.apply_overrides(c, ['train.stpes=3'])
  with pytest.raises(ConfigError, match=r"--config.train.log_every: expected an int, got 'many'"):
    experiment.apply_overrides(c, ['train.log_every=many'])
  with pytest.raises(ConfigError, match=r"--config.train.allow_overwrite: expected a bool"):
    experiment.apply_overrides(c, ['train.allow_overwrite=maybe'])
  with pytest.raises(ConfigError, match=r"--config.stages.5: no element"):
    experiment.apply_overrides(c, ['stages.5.lr=1'])


def test_cli_reports_config_errors_with_exit_status_2(capsys, tmp_path):
  rc = cli.main(['train', '--config', os.path.join(ROOT, 'experiments', 'tiny.py'),
                 '--workdir', str(tmp_path), '--config.model.d_modell=3'])
  assert rc == 2
  assert "unknown field 'd_modell'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(['nonsense'])
  assert 'train' in cli.build_parser().format_help()


@pytest.mark.slow
def test_flmjax_train_tiny_lowers_the_loss_on_both_languages(tmp_path):
  """experiments/tiny.py trains on the bilingual mixture; en and zh validation losses both fall."""
  wd = str(tmp_path / 'w')
  rc = cli.main(['train', '--config', os.path.join(ROOT, 'experiments', 'tiny.py'), '--workdir',
                 wd, '--config.train.steps=60', '--config.train.eval_every=20',
                 '--config.optim.warmup_steps=5'])
  assert rc == 0
  losses = read_losses(wd)
  assert losses[60] < losses[10] - 1.0
  from flmjax.storage.metrics import read_metrics
  evals = {r['step']: r for r in read_metrics(os.path.join(wd, 'metrics.jsonl'))
           if 'val_loss_en' in r}
  for lang in ('en', 'zh'):
    assert evals[60][f'val_loss_{lang}'] < evals[20][f'val_loss_{lang}'] - 0.2, (lang, evals)
  # summary.json records the config it ran, so a read-back can tell this run from another one
  with open(os.path.join(wd, 'summary.json')) as f:
    ran = json.load(f)['config']
  assert ran['train']['steps'] == 60 and ran['optim']['warmup_steps'] == 5
  same = ml_collections.ConfigDict(ran)
  assert sweep.run_point(same, wd)['loss'] == pytest.approx(
      (evals[60]['val_loss_en'] + evals[60]['val_loss_zh']) / 2)   # read back, not retrained
  bookkeeping = ml_collections.ConfigDict(ran)  # checkpoints: how often, how many kept
  bookkeeping.train.update(ckpt_every=7, keep=5,
                           allow_overwrite=not ran['train']['allow_overwrite'])
  assert sweep.run_point(bookkeeping, wd)['loss'] == sweep.run_point(same, wd)['loss']
  other = ml_collections.ConfigDict(ran)
  other.train.seed = ran['train']['seed'] + 1
  with pytest.raises(ConfigError, match=r'not the one asked for \(train.seed: ran 0, asked 1\)'):
    sweep.run_point(other, wd)  # a ConfigError: one clear line from the CLI, not 'unexpected'


def test_cpu_command_prints_no_libtpu_lines(tmp_path):
  """With the `tpu` extra on a host without a TPU, JAX_PLATFORMS unset: jax used to load libtpu
  for a TPU backend and libtpu printed lines about missing TPU VM metadata on every command."""
  import importlib.util
  import subprocess
  import sys
  if importlib.util.find_spec('libtpu') is None:
    pytest.skip('libtpu (the tpu extra) is not installed: nothing would print')
  if cli.has_tpu() or os.path.exists('/proc/driver/nvidia/version'):
    pytest.skip('an accelerator is attached: jax should look for it')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  env.update(PYTHONPATH=ROOT, ALLOW_MULTIPLE_LIBTPU_LOAD='1')  # as with no `flmjax compile` near
  # jax.device_count() runs before the config check: the backends are up when it fails
  proc = subprocess.run([sys.executable, '-m', 'flmjax.cli', 'train', '--config',
                         os.path.join(ROOT, 'experiments', 'tiny.py'), '--workdir',
                         str(tmp_path / 'w'), '--config.optim.lr=-1'],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      'flmjax train: config error: optim.lr must be > 0, got -1.0'], proc.stderr


def test_readme_what_next_commands_run_in_a_new_shell_and_parse():
  """Every command of README's "What next" is written `.venv/bin/flmjax ...` (a new shell has no
  `flmjax` on PATH) and its flags parse (a bare `flmjax mup-check` exits 2: --config needed)."""
  import re
  import shlex
  text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  section = text[text.index('## What next'):text.index('`.venv/bin/flmjax --help`')]
  commands = re.findall(r'`((?:\.venv/bin/)?flmjax [^`]*)`', section)
  assert len(commands) >= 8, commands
  for command in commands:
    assert command.startswith('.venv/bin/flmjax '), command
    argv = shlex.split(command)[1:]
    overrides, others = cli.split_overrides(argv)
    parser = cli.build_parser(cli._command_name(others))
    try:
      parser.parse_args(others)
    except SystemExit as e:
      pytest.fail(f'README command does not parse ({e.code}): {command}')
