"""Bad inputs end in one clear line and a non-zero exit status, never a traceback.

`CASES` is the table BUILD.md counts: (command line, exit status, a fragment the one line must
hold).  Each runs `flmjax.cli.main` in-process on small fixtures written here: a 2-step tiny
checkpoint, damaged copies of it, experiment files, a garbage corpus, a SentencePiece model
larger than the model's vocabulary, a workdir held by a live process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, tiny_config
from flmjax import cli
from flmjax.storage import checkpoint
from flmjax.training import loop
from flmjax.storage.workdir_lock import LOCK_NAME, WorkdirLock

TESTS = os.path.join(ROOT, 'tests')


def _experiment(path: str, body: str) -> str:
  with open(path, 'w') as f:
    f.write(f'import sys\nsys.path.insert(0, {TESTS!r})\nfrom conftest import tiny_config, '
            f'tiny_stages\n' + textwrap.dedent(body))
  return path


def _state_files(step_dir: str) -> list[str]:
  """The array data files of a checkpoint's `state` item, largest first."""
  out = []
  for root, _, names in os.walk(os.path.join(step_dir, 'state')):
    for n in names:
      p = os.path.join(root, n)
      if os.path.getsize(p) > 1024:
        out.append(p)
  return sorted(out, key=os.path.getsize, reverse=True)


def flip_bytes(step_dir: str) -> str:
  path = _state_files(step_dir)[0]
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(64)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
  return path


def truncate(step_dir: str) -> str:
  path = _state_files(step_dir)[0]
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  return path


def _spm_model(out_dir: str, pieces: int) -> str:
  import sentencepiece as spm
  from flmjax.data.corpus import SPECIAL_TOKENS
  words = [f'w{i}x{j}' for i in range(200) for j in range(3)]
  lines = [' '.join(words[i:i + 12]) for i in range(0, len(words), 12)] * 4
  prefix = os.path.join(out_dir, 'big')
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=pieces, model_type='bpe',
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
      add_dummy_prefix=False, byte_fallback=True,
      user_defined_symbols=list(SPECIAL_TOKENS))
  return prefix + '.model'


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """Every path the table refers to, by name."""
  base = tmp_path_factory.mktemp('bad')
  w = {'base': str(base)}
  w['ckpt'] = str(base / 'ckpt')
  loop.train(tiny_config(2, train=dict(ckpt_every=1)), w['ckpt'])
  step2 = os.path.join(w['ckpt'], 'stage_0', '2')
  for kind, damage in (('flipped', flip_bytes), ('truncated', truncate)):
    w[kind] = str(base / kind)
    shutil.copytree(w['ckpt'], w[kind])
    w[kind + '_file'] = os.path.relpath(damage(os.path.join(w[kind], 'stage_0', '2')), w[kind])
  w['tiny_exp'] = _experiment(str(base / 'tiny_exp.py'), '''
      def get_config():
        return tiny_config(2)
  ''')
  w['staged_exp'] = _experiment(str(base / 'staged_exp.py'), '''
      def get_config():
        c = tiny_config(0, stages=tiny_stages((2, 2)))
        return c
  ''')
  w['grow_exp'] = _experiment(str(base / 'grow_exp.py'), '''
      def get_config():
        c = tiny_config(0, stages=tiny_stages((2, 2)))
        return c
  ''')
  w['warm_stage_exp'] = _experiment(str(base / 'warm_stage_exp.py'), '''
      def get_config():
        c = tiny_config(0, stages=tiny_stages((2, 2)))
        c.stages[0]['warmup_steps'] = 3
        return c
  ''')
  w['raising_exp'] = _experiment(str(base / 'raising_exp.py'), '''
      def get_config():
        c = tiny_config(2)
        c.optim.lr = 1 / 0
        return c
  ''')
  w['raising_line'] = 7  # the `1 / 0` line (4 prelude lines, a blank, def, c = ...)
  w['syntax_exp'] = str(base / 'syntax_exp.py')
  with open(w['syntax_exp'], 'w') as f:
    f.write('def get_config(:\n  pass\n')
  w['file'] = str(base / 'a_file')
  with open(w['file'], 'w') as f:
    f.write('not a directory')
  w['spm'] = _spm_model(str(base), 400)
  w['garbage'] = str(base / 'garbage.txt')
  with open(w['garbage'], 'wb') as f:
    for _ in range(40):  # binary junk with one line that decodes (as a wrong file would)
      f.write(bytes(range(128, 256)) * 8 + b'\n')
    f.write(b'%%%% ~~~~ @@@@\n')
  w['text_exp'] = _experiment(str(base / 'text_exp.py'), f'''
      def get_config():
        c = tiny_config(2)
        c.data.source = 'bilingual'
        c.data.vocab.model_file = {w['spm']!r}
        c.data.cache_dir = {str(base / 'cache')!r}
        c.data.en.kind = 'files'
        c.data.en.files = [{w['garbage']!r}]
        c.data.zh.kind = 'files'
        c.data.zh.files = [{w['garbage']!r}]
        c.model.vocab_size = 512
        return c
  ''')
  w['tfds_exp'] = _experiment(str(base / 'tfds_exp.py'), f'''
      def get_config():
        c = tiny_config(2)
        c.data.source = 'bilingual'
        c.data.vocab.model_file = {w['spm']!r}
        c.data.cache_dir = {str(base / 'cache')!r}
        c.data.en.kind = 'tfds'
        c.data.en.tfds_name = 'no_such_dataset_xyz'
        c.data.en.tfds_data_dir = {str(base / 'tfds')!r}
        c.model.vocab_size = 512
        return c
  ''')
  # a workdir whose lock is held by a live process (a `sleep`)
  w['locked'] = str(base / 'locked')
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
  lock = WorkdirLock(w['locked'], 'test holder')
  lock.record.update(pid=holder.pid, started=None)
  lock.acquire()
  w['holder_pid'] = holder.pid
  yield w
  holder.kill()
  holder.wait()


def _train(exp, *more):
  return lambda w: ['train', '--config', w[exp], '--workdir', os.path.join(w['base'], 'wd-' + exp),
                    *more]


CASES = [
    # (id, argv(world), exit status, fragment(world) of the one line)
    ('lr-infinite', _train('tiny_exp', '--config.optim.lr=1e999'), 2,
     lambda w: 'optim.lr must be a finite number'),
    ('lr-nan', _train('tiny_exp', '--config.optim.lr=nan'), 2,
     lambda w: "--config.optim.lr: expected a float, got 'nan'"),
    ('steps-on-staged', _train('staged_exp', '--config.train.steps=10'), 2,
     lambda w: '--config.train.steps=10 would have no effect'),
    ('unknown-field', _train('tiny_exp', '--config.train.stpes=3'), 2,
     lambda w: "unknown field 'stpes'"),
    ('experiment-raises', _train('raising_exp'), 2,
     lambda w: f'{w["raising_exp"]}:{w["raising_line"]}: ZeroDivisionError'),
    ('experiment-syntax', _train('syntax_exp'), 2,
     lambda w: f'{w["syntax_exp"]}:1: SyntaxError'),
    ('no-experiment-file', lambda w: ['train', '--config', w['base'] + '/nope.py', '--workdir',
                                      w['base'] + '/x'], 2, lambda w: 'no such file'),
    ('vocab-file-larger-than-model', _train('text_exp', '--config.model.vocab_size=128'), 2,
     lambda w: 'exceeds model.vocab_size=128'),
    ('garbage-corpus', _train('text_exp'), 1,
     lambda w: f'unreadable line(s) skipped, first: {w["garbage"]}:1: invalid UTF-8'),
    ('tfds-unknown-name', _train('tfds_exp'), 1,
     lambda w: "data.en.tfds_name: cannot read prepared TFDS dataset 'no_such_dataset_xyz'"),
    ('workdir-under-a-file', lambda w: ['train', '--config', w['tiny_exp'], '--workdir',
                                        w['file'] + '/w'], 1, lambda w: 'not writable'),
    ('workdir-locked', lambda w: ['train', '--config', w['tiny_exp'], '--workdir', w['locked']],
     1, lambda w: f'is in use by pid {w["holder_pid"]} on host {socket.gethostname()}'),
    ('sample-id-out-of-vocab', lambda w: ['sample', '--checkpoint', w['ckpt'], '--prompt_ids',
                                          '1,999999'], 2,
     lambda w: '--prompt_ids 999999 is outside the vocabulary'),
    ('sample-negative-id', lambda w: ['sample', '--checkpoint', w['ckpt'], '--prompt_ids', '-3'],
     2, lambda w: 'outside the vocabulary'),
    ('sample-max-new-tokens', lambda w: ['sample', '--checkpoint', w['ckpt'], '--prompt_ids', '1',
                                         '--max_new_tokens', '-1'], 2,
     lambda w: '--max_new_tokens must be >= 1'),
    ('sample-flipped-bytes', lambda w: ['sample', '--checkpoint', w['flipped'], '--prompt_ids',
                                        '1'], 1,
     lambda w: f'{w["flipped_file"]}: CRC32'),  # ... (checksum mismatch: bytes changed)
    ('sample-truncated', lambda w: ['sample', '--checkpoint', w['truncated'], '--prompt_ids',
                                    '1'], 1, lambda w: 'truncated'),
    ('sample-no-checkpoint', lambda w: ['sample', '--checkpoint', w['base'] + '/none',
                                        '--prompt_ids', '1'], 1,
     lambda w: 'no complete checkpoint found'),
    ('eval-flipped-bytes', lambda w: ['eval', '--checkpoint', w['flipped'], '--suite', 'iq',
                                      '--limit', '1', '--skip_missing'], 2,
     lambda w: 'checksum mismatch'),
    ('eval-output-under-a-file', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite', 'iq',
                                            '--output', w['file'] + '/r.json'], 2,
     lambda w: f'--output {w["file"]}/r.json cannot be written'),
    ('eval-output-is-a-dir', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite', 'iq',
                                        '--output', w['base']], 2,
     lambda w: 'is a directory'),
    ('grow-flipped-bytes', lambda w: ['grow', '--checkpoint', w['flipped'] + '/stage_0', '--to',
                                      w['grow_exp'] + ':big', '--out', w['base'] + '/grown'], 1,
     lambda w: 'checksum mismatch'),
    ('grow-truncated', lambda w: ['grow', '--checkpoint', w['truncated'] + '/stage_0', '--to',
                                  w['grow_exp'] + ':big', '--out', w['base'] + '/grown2'], 1,
     lambda w: 'truncated'),
    ('plot-no-metrics', lambda w: ['plot', '--workdir', w['base'] + '/none'], 1,
     lambda w: 'no metrics file'),
    ('stage-schedule-single-stage', _train('tiny_exp', '--config.optim.stage_schedule=foo'), 2,
     lambda w: "optim.stage_schedule must be one of ('continue', 'rewarm'), got 'foo'"),
    ('warmup-longer-than-run', _train('tiny_exp', '--config.optim.warmup_steps=5'), 2,
     lambda w: "optim.warmup_steps=5 is longer than the stage 'main' (2 steps)"),
    ('warmup-longer-than-stage', _train('warm_stage_exp'), 2,
     lambda w: "stages[0].warmup_steps=3 is longer than the stage 'small' (2 steps)"),
    ('end-lr-above-lr', _train('tiny_exp', '--config.optim.end_lr=1.0'), 2,
     lambda w: 'optim.end_lr=1.0 is above optim.lr=0.01'),
    ('num-processes-without-coordinator', _train('tiny_exp', '--num_processes', '2'), 2,
     lambda w: 'need --coordinator_address'),
    ('process-id-out-of-range', _train('tiny_exp', '--process_id', '5', '--num_processes', '2'),
     2,
     lambda w: '--process_id 5 must be in [0, 2)'),
    ('config-not-python', lambda w: ['train', '--config', os.path.join(ROOT, 'README.md'),
                                     '--workdir', w['base'] + '/readme'], 2,
     lambda w: 'README.md: not a Python file'),
    ('grow-verify-len-past-max-len', lambda w: [
        'grow', '--checkpoint', w['ckpt'] + '/stage_0', '--to', w['grow_exp'] + ':big', '--out',
        w['base'] + '/grown-len', '--verify', '--verify_len', '100000'], 2,
     lambda w: '--verify_len must be in [1, 32]'),
    ('grow-verify-batch-0', lambda w: [
        'grow', '--checkpoint', w['ckpt'] + '/stage_0', '--to', w['grow_exp'] + ':big', '--out',
        w['base'] + '/grown-batch', '--verify', '--verify_batch', '0'], 2,
     lambda w: '--verify_batch must be >= 1'),
    ('sample-top-p-without-temperature', lambda w: ['sample', '--checkpoint', w['ckpt'],
                                                    '--prompt_ids', '1', '--top_p', '0.5'], 2,
     lambda w: '--top_p 0.5 needs --temperature > 0'),
]


@pytest.mark.parametrize('argv,status,fragment', [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_clear_line(world, capsys, argv, status, fragment):
  rc = cli.main(argv(world))
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith('flmjax ')]
  assert rc == status, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  assert len(lines) == 1, err[-3000:]
  assert fragment(world) in lines[0], lines[0]


def test_damaged_input_writes_nothing(world):
  """A failed grow leaves no output directory; a damaged checkpoint is not moved by readers."""
  for out in ('grown', 'grown-len', 'grown-batch'):
    assert not os.path.exists(os.path.join(world['base'], out))
  assert checkpoint.latest(world['flipped']) == (0, 2)


def test_debug_shows_the_traceback(world, monkeypatch, capsys):
  argv = ['sample', '--checkpoint', world['flipped'], '--prompt_ids', '1']
  with pytest.raises(checkpoint.CheckpointError, match='CRC32'):
    cli.main(argv + ['--debug'])
  monkeypatch.setenv(cli.DEBUG_ENV, '1')
  with pytest.raises(checkpoint.CheckpointError):
    cli.main(argv)


def test_unexpected_error_is_one_line_naming_its_type(monkeypatch, capsys):
  from flmjax.commands import plot as plot_cmd
  def boom(args):
    raise KeyError('surprise')
  monkeypatch.setattr(plot_cmd, 'plot_main', boom)
  assert cli.main(['plot', '--workdir', 'w']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "KeyError: 'surprise'" in err[0] and '--debug' in err[0]


def test_full_disk_is_one_line_without_library_tracebacks(monkeypatch, capfd):
  """A failing save that a library logs with its traceback still ends in one line."""
  from absl import logging as absl_logging
  from flmjax.commands import plot as plot_cmd
  def full_disk(args):
    try:
      raise OSError(28, 'No space left on device', '/w/stage_0/3.orbax-checkpoint-tmp')
    except OSError as e:
      absl_logging.exception('background save failed')
      raise e
  monkeypatch.setattr(plot_cmd, 'plot_main', full_disk)
  assert cli.main(['plot', '--workdir', 'w']) == 1
  err = capfd.readouterr().err
  assert 'Traceback' not in err, err
  line = [l for l in err.splitlines() if l.startswith('flmjax ')]
  assert len(line) == 1 and 'No space left on device; free space there' in line[0], err


def test_lock_holder_is_named_and_the_workdir_untouched(world):
  assert sorted(os.listdir(world['locked'])) == [LOCK_NAME]


def test_case_count_is_in_build_md():
  text = open(os.path.join(ROOT, 'BUILD.md'), encoding='utf-8').read()
  assert f'{len(CASES)} bad inputs' in text, len(CASES)
