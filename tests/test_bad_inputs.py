"""Bad inputs end in one clear line and a non-zero exit status, never a traceback.

`CASES` is the table BUILD.md counts: (command line, exit status, a fragment the one line must
hold).  Each runs `flmjax.cli.main` in-process on small fixtures written here: a 2-step tiny
checkpoint, damaged copies of it, experiment files, a garbage corpus, a SentencePiece model
larger than the model's vocabulary, a workdir held by a live process."""

from __future__ import annotations

import gzip
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


def _text_experiment(path: str, spm_model: str, cache: str, en_file: str,
                     zh_file: str = '') -> str:
  """An experiment training on the given text file(s) with a ready SentencePiece model."""
  zh = (f"\n        c.data.zh.kind = 'files'\n        c.data.zh.files = [{zh_file!r}]"
        if zh_file else '')
  return _experiment(path, f'''
      def get_config():
        c = tiny_config(2)
        c.data.source = 'bilingual'
        c.data.vocab.model_file = {spm_model!r}
        c.data.cache_dir = {cache!r}
        c.data.en.kind = 'files'
        c.data.en.files = [{en_file!r}]{zh}
        c.model.vocab_size = 512
        return c
  ''')


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
  w['text_exp'] = _text_experiment(str(base / 'text_exp.py'), w['spm'], str(base / 'cache'),
                                   w['garbage'], w['garbage'])
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
  w['exit_exp'] = _experiment(str(base / 'exit_exp.py'), '''
      sys.exit(0)
  ''')
  w['three_stage_exp'] = _experiment(str(base / 'three_stage_exp.py'), '''
      def get_config():
        stages = tiny_stages((2, 2))
        stages.append(dict(name='bigger', model=dict(d_model=128, n_heads=8, d_ff=256), steps=2,
                           growth=dict(width='msg', depth='msg', ramp_steps=2)))
        return tiny_config(0, stages=stages)
  ''')
  w['utf16'] = str(base / 'utf16.txt')
  with open(w['utf16'], 'w', encoding='utf-16') as f:
    f.write('a line of text\n' * 400)
  w['nul'] = str(base / 'nul.txt')  # UTF-16 without its byte-order mark: a NUL after each letter
  with open(w['nul'], 'w', encoding='utf-16-le') as f:
    f.write('a line of text\n' * 400)
  for name in ('utf16', 'nul'):
    w[name + '_exp'] = _text_experiment(str(base / (name + '_exp.py')), w['spm'],
                                        str(base / 'cache'), w[name])
  # evaluation release files that are not clean text (knowledge: MMLU, ARC; bAbI)
  w['latin1'] = str(base / 'latin1')
  os.makedirs(os.path.join(w['latin1'], 'mmlu', 'test'))
  w['latin1_csv'] = os.path.join(w['latin1'], 'mmlu', 'test', 'anatomy_test.csv')
  with open(w['latin1_csv'], 'wb') as f:
    f.write(b'What is 1?,a,b,c,d,A\nCaf\xe9?,a,b,c,d,A\n')
  w['gz'] = str(base / 'gz')
  w['gz_jsonl'] = os.path.join(w['gz'], 'arc', 'ARC-Easy', 'ARC-Easy-Test.jsonl')
  os.makedirs(os.path.dirname(w['gz_jsonl']))
  with open(w['gz_jsonl'], 'wb') as f:
    f.write(gzip.compress(b'{"question": "q"}\n' * 50))
  w['dir_csv'] = str(base / 'dircsv')
  os.makedirs(os.path.join(w['dir_csv'], 'mmlu', 'test', 'anatomy_test.csv'))
  w['babi_nosep'] = str(base / 'babi')
  os.makedirs(w['babi_nosep'])
  with open(os.path.join(w['babi_nosep'], 'qa1_single-supporting-fact_test.txt'), 'w') as f:
    f.write('1 Nora went to the cellar.\n2 Where is Nora? cellar 1\n')
  for name, content in (('empty_metrics', b''), ('garbage_metrics', bytes(range(256)) * 4)):
    w[name] = str(base / name)
    os.makedirs(w[name])
    with open(os.path.join(w[name], 'metrics.jsonl'), 'wb') as f:
      f.write(content)
  w['fifo'] = str(base / 'fifo.txt')
  os.mkfifo(w['fifo'])
  w['fifo_exp'] = _text_experiment(str(base / 'fifo_exp.py'), w['spm'], str(base / 'cache'),
                                   w['fifo'])
  w['arc_test_only'] = str(base / 'arc_test_only')
  os.makedirs(os.path.join(w['arc_test_only'], 'arc', 'ARC-Easy'))
  with open(os.path.join(w['arc_test_only'], 'arc', 'ARC-Easy', 'ARC-Easy-Test.jsonl'), 'w') as f:
    f.write('{"question": {"stem": "q", "choices": [{"text": "a", "label": "A"}, '
            '{"text": "b", "label": "B"}]}, "answerKey": "A"}\n')
  w['devzero_exp'] = _text_experiment(str(base / 'devzero_exp.py'), w['spm'],
                                      str(base / 'cache'), '/dev/zero')
  w['hs_val_only'] = str(base / 'hs_val_only')
  os.makedirs(os.path.join(w['hs_val_only'], 'hellaswag'))
  with open(os.path.join(w['hs_val_only'], 'hellaswag', 'hellaswag_val.jsonl'), 'w') as f:
    f.write('{"ctx_a": "a", "ctx_b": "b", "activity_label": "x", "endings": ["c", "d"], '
            '"label": 0}\n')
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
    ('files-corpus-without-vocabulary', _train('text_exp', '--config.data.vocab.model_file='), 1,
     lambda w: "data.vocab.model_file is not set and data.en is a files corpus: `train` does not "
               f"train its vocabulary; run `flmjax data build --config {w['text_exp']} --out DIR`"),
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
    ('experiment-exits-at-import', _train('exit_exp'), 2,
     lambda w: f'{w["exit_exp"]}:5: it called sys.exit(0) while being loaded'),
    ('utf16-corpus', _train('utf16_exp'), 1,
     lambda w: f'{w["utf16"]}: UTF-16 text (byte-order mark fffe)'),
    ('nul-corpus', _train('nul_exp'), 1,
     lambda w: f'{w["nul"]}: no usable line (first bad line {w["nul"]}:1)'),
    ('ramp-longer-than-stage',
     _train('three_stage_exp', '--config.stages.1.growth.ramp_steps=1000'), 2, lambda w: "stages[1].growth.ramp_steps=1000 is longer than the stage 'big' (2 steps)"),
    ('steps-past-int32', _train('tiny_exp', '--config.train.steps=99999999999999999999'), 2,
     lambda w: 'train.steps = 99999999999999999999 steps is more than a run can count'),
    ('lr-hex', _train('tiny_exp', '--config.optim.lr=0x10'), 2,
     lambda w: "--config.optim.lr: expected a float, got '0x10'"),
    ('spike-window-0', _train('tiny_exp', '--config.faults.spike_window=0'), 2,
     lambda w: 'faults.spike_window must be >= 1, got 0'),
    ('validation-fraction-0', _train('tiny_exp', '--config.data.validation_fraction=0'), 2,
     lambda w: 'data.validation_fraction must be > 0'),
    ('workdir-empty', lambda w: ['train', '--config', w['tiny_exp'], '--workdir', ''], 2,
     lambda w: "--workdir '' is empty"),
    ('eval-shots-negative', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite', 'iq',
                                       '--shots', 'counting=-1'], 2,
     lambda w: "integer k >= 0 (the number of examples before each item), got 'counting=-1'"),
    ('eval-latin1-csv', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite', 'knowledge',
                                   '--data_dir', w['latin1'], '--tasks', 'mmlu'], 2,
     lambda w: f'{w["latin1_csv"]}:2: knowledge/mmlu: not UTF-8 text (byte e9 at column 4)'),
    ('eval-gzip-jsonl', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite', 'knowledge',
                                   '--data_dir', w['gz'], '--tasks', 'arc_easy'], 2,
     lambda w: f'{w["gz_jsonl"]}:1: knowledge/arc_easy: not UTF-8 text'),
    ('eval-directory-for-file', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite',
                                           'knowledge', '--data_dir', w['dir_csv'], '--tasks',
                                           'mmlu'], 2,
     lambda w: 'anatomy_test.csv: knowledge/mmlu: is a directory, expected a data file'),
    ('eval-babi-question-without-answer', lambda w: [
        'eval', '--checkpoint', w['ckpt'], '--suite', 'iq', '--babi_dir', w['babi_nosep'],
        '--tasks', 'single_supporting_fact', '--shots', 'single_supporting_fact=0'], 2,
     lambda w: f'qa1_single-supporting-fact_test.txt:2: anti_interference (bAbI): a question '
               f'without its answer'),
    ('plot-empty-metrics', lambda w: ['plot', '--workdir', w['empty_metrics']], 1,
     lambda w: 'empty_metrics: metrics.jsonl has no val_loss* records to plot (none logged yet'),
    ('plot-garbage-metrics', lambda w: ['plot', '--workdir', w['garbage_metrics']], 1,
     lambda w: f'{w["garbage_metrics"]}/metrics.jsonl:1: not valid JSON (Expecting value); '
               f'is it a metrics.jsonl written by flmjax train?'),
    ('fifo-as-data-file', _train('fifo_exp'), 1,
     lambda w: f'{w["fifo"]} is not a regular file (a FIFO, socket or device)'),
    ('dev-zero-as-data-file', _train('devzero_exp'), 1,
     lambda w: '/dev/zero is not a regular file (a FIFO, socket or device)'),
    ('eval-hellaswag-without-train-file', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite',
                                                     'knowledge', '--data_dir', w['hs_val_only'],
                                                     '--tasks', 'hellaswag'], 2,
     lambda w: 'knowledge/hellaswag: 10-shot needs the train file '
               f'{w["hs_val_only"]}/hellaswag/hellaswag_train.jsonl, which is missing (or run '
               '0-shot with --shots hellaswag=0)'),
    ('eval-arc-without-train-file', lambda w: ['eval', '--checkpoint', w['ckpt'], '--suite',
                                               'knowledge', '--data_dir', w['arc_test_only'],
                                               '--tasks', 'arc_easy'], 2,
     lambda w: 'knowledge/arc_easy: 25-shot needs the train file '
               f'{w["arc_test_only"]}/arc/ARC-Easy/ARC-Easy-Train.jsonl, which is missing (or run '
               '0-shot with --shots arc_easy=0)'),
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


def _eval_args(*argv: str):
  from flmjax.commands import eval as eval_command
  parser = cli.build_parser('eval')
  return parser.parse_args(['eval', '--checkpoint', 'unused', *argv])


def test_unreadable_eval_file_is_skippable_and_the_good_task_runs(world):
  """--skip_missing skips a task whose file is not text (or a folder), not the whole suite."""
  from flmjax.commands import eval as eval_command
  base = world['base']
  good = os.path.join(base, 'mixed', 'mmlu', 'test')
  os.makedirs(good)
  with open(os.path.join(good, 'anatomy_test.csv'), 'w') as f:
    f.write('What is 1?,a,b,c,d,A\n')
  os.makedirs(os.path.join(base, 'mixed', 'arc', 'ARC-Easy'))
  shutil.copy(world['gz_jsonl'], os.path.join(base, 'mixed', 'arc', 'ARC-Easy'))
  os.makedirs(os.path.join(base, 'mixed', 'arc', 'ARC-Challenge', 'ARC-Challenge-Test.jsonl'))
  tasks, skipped = eval_command.build_tasks(_eval_args(
      '--suite', 'knowledge', '--data_dir', os.path.join(base, 'mixed'), '--skip_missing',
      '--tasks', 'mmlu,arc_easy,arc_challenge', '--shots', 'mmlu=0,arc_easy=0,arc_challenge=0'))
  assert [t.name for t in tasks] == ['mmlu']
  assert 'not UTF-8 text' in skipped['knowledge']['arc_easy']
  assert 'is a directory' in skipped['knowledge']['arc_challenge']


def test_glob_characters_in_data_dirs_are_names(world):
  """A release under a folder named like a glob pattern (d2[1]) is found as it is named."""
  from flmjax.commands import eval as eval_command
  root = os.path.join(world['base'], 'd2[1]')
  os.makedirs(os.path.join(root, 'mmlu', 'test'))
  with open(os.path.join(root, 'mmlu', 'test', 'anatomy_test.csv'), 'w') as f:
    f.write('What is 1?,a,b,c,d,A\n')
  with open(os.path.join(root, 'qa1_single-supporting-fact_test.txt'), 'w') as f:
    f.write('1 Nora went to the cellar.\n2 Where is Nora?\tcellar\t1\n')
  tasks, skipped = eval_command.build_tasks(_eval_args(
      '--suite', 'all', '--data_dir', root, '--babi_dir', root, '--tasks',
      'mmlu,single_supporting_fact', '--shots', 'mmlu=0,single_supporting_fact=0'))
  assert sorted(t.name for t in tasks) == ['mmlu', 'single_supporting_fact'], skipped
  assert tasks[0].source.startswith(root) or tasks[1].source.startswith(root)


def test_a_step_without_meta_is_named_when_skipped_and_read_only_loads_are_quiet(world, capfd):
  """A reader passes over a step dir without meta/ (not complete) and says so; orbax's notes
  that a reader's manager is read-only are not printed."""
  ckpt = os.path.join(world['base'], 'no-meta')
  shutil.copytree(world['ckpt'], ckpt)
  shutil.rmtree(os.path.join(ckpt, 'stage_0', '2', 'meta'))
  assert cli.main(['sample', '--checkpoint', ckpt, '--prompt_ids', '1', '--max_new_tokens',
                   '1']) == 0
  err = capfd.readouterr().err
  assert (f'note: step 2 skipped ({ckpt}/stage_0/2 has no meta/, so it is not a complete '
          f'checkpoint); reading step 1') in err, err
  assert 'read only' not in err and 'read_only' not in err, err


def test_babi_report_says_its_items_are_a_seeded_sample(tmp_path):
  from flmjax.evaluation import iq_interference
  with open(tmp_path / 'qa1_single-supporting-fact_test.txt', 'w') as f:
    f.write('1 Nora went to the cellar.\n2 Where is Nora?\tcellar\t1\n'
            '3 Nora went to the attic.\n4 Where is Nora?\tattic\t3\n')
  task = iq_interference.babi_task('single_supporting_fact', str(tmp_path), n_items=1, seed=3,
                                   k_shot=0)
  assert task.notes == ("a seeded random sample (seed 3) of 1 of the test file's 2 questions "
                        '(--n_items, --limit)',)


_EXHAUSTED = ('RESOURCE_EXHAUSTED: Error writing "grow_step/0" in OCDBT database at local file '
              '"/w/stage_0/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": '
              'Failed writing: "/w/stage_0/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
              'ocdbt.process_0/d/9ce5ec62e6c')  # cut mid-path, as the reported message was


class _ExhaustedLater:
  """A commit future of orbax's background write failing as TensorStore reports a full disk."""

  def result(self, timeout=None):
    raise ValueError(_EXHAUSTED)

  def cancel(self):
    pass


def _fill_disk_at_step_2(monkeypatch):
  """A fault-injected writer (no tmpfs needed): step 2's array write fails with a full disk."""
  import re
  from orbax.checkpoint._src.handlers.base_pytree_checkpoint_handler import \
      BasePyTreeCheckpointHandler as Handler
  orig = Handler.async_save

  async def fills_the_disk(self, directory, *a, **k):
    futures = await orig(self, directory, *a, **k)
    if re.search(r'/2(\.orbax[^/]*)?/state', str(directory)):
      futures = list(futures or []) + [_ExhaustedLater()]
    return futures
  monkeypatch.setattr(Handler, 'async_save', fills_the_disk)


def test_full_disk_during_a_save_is_the_checkpoint_line_alone(world, monkeypatch, capfd):
  """TensorStore's RESOURCE_EXHAUSTED is a full disk: one line naming the step, the complete
  steps kept and 'No space left on device'; orbax's per-thread ERROR records and tracebacks
  are not printed; --debug raises with the details."""
  _fill_disk_at_step_2(monkeypatch)
  workdir = os.path.join(world['base'], 'full-disk')
  argv = ['train', '--config', world['tiny_exp'], '--workdir', workdir,
          '--config.train.ckpt_every=1']
  assert cli.main(argv) == 1
  err = capfd.readouterr().err
  ours = [l for l in err.splitlines() if l.strip() and not l.startswith('stage ')]
  assert len(ours) == 1, err
  assert ours[0].startswith(f'flmjax train: saving checkpoint step 2 in {workdir}/stage_0 '
                            'failed: No space left on device. Earlier checkpoints are kept '
                            '(complete steps here: [1])'), ours[0]
  assert 'Traceback' not in err and 'RESOURCE_EXHAUSTED' not in err, err
  shutil.rmtree(workdir)
  with pytest.raises(checkpoint.CheckpointError, match='No space left on device') as e:
    cli.main(argv + ['--debug'])
  assert _EXHAUSTED in repr(e.value.__cause__) or _EXHAUSTED in str(e.value.__context__)


def test_closing_after_a_failed_save_keeps_the_checkpoint_error(tmp_path, monkeypatch):
  """orbax's close re-raises the failed save's OSError; from `close`'s finally it used to replace
  the CheckpointError naming the step (a bare 'OSError: No space left on device')."""
  ckptr = checkpoint.StageCheckpointer(str(tmp_path / 'stage_0'))
  def full(*a, **k):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(ckptr.mngr, 'wait_until_finished', full)
  monkeypatch.setattr(ckptr.mngr, 'close', full)
  ckptr._unmanifested = [1]  # a save of step 1 in flight
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'saving checkpoint step 1 .* failed: No space left on device'):
    ckptr.close()
  assert checkpoint.is_disk_full(ValueError(_EXHAUSTED))
  assert not checkpoint.is_disk_full(ValueError('INVALID_ARGUMENT: bad shape'))


@pytest.mark.slow
def test_real_full_disk_before_the_first_checkpoint_is_one_line(world, tmp_path):
  """`flmjax train` on a 300 KiB tmpfs (when the tests may mount one): the first checkpoint
  cannot be written; stderr holds the checkpoint line and nothing else (no orbax records, no
  tracebacks from its threads at exit)."""
  from conftest import subprocess_env
  from test_faults import _mount_tmpfs
  disk = str(tmp_path / 'disk')
  _mount_tmpfs(disk, '300k')
  try:
    r = subprocess.run([sys.executable, '-m', 'flmjax.cli', 'train', '--config', world['tiny_exp'],
                        '--workdir', os.path.join(disk, 'w'), '--config.train.ckpt_every=1',
                        '--config.faults.min_free_bytes=0'],
                       capture_output=True, text=True, timeout=300, env=subprocess_env(1))
  finally:
    subprocess.run(['umount', '-l', disk], capture_output=True)
  lines = [l for l in r.stderr.replace('\r', '\n').splitlines()
           if l.strip() and not l.startswith('stage ')]
  assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
  assert ('saving checkpoint step 1' in lines[0] and 'failed: No space left on device' in lines[0]
          and '(complete steps here: none)' in lines[0]), lines[0]
