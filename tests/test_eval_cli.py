"""`flmjax eval` end to end on tiny models and fixture data: table, JSON report, bad input."""

import argparse
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from flmjax.config import ModelConfig
from flmjax.commands import eval as eval_command
from flmjax.evaluation import loading
from flmjax.evaluation.tasks import EvalDataError
from flmjax.model import Transformer
from test_eval_engine import ByteVocab
from test_eval_fixtures import write_all

CFG = ModelConfig(vocab_size=260, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=1,
                  max_len=128)


def _args(*argv):
  parser = argparse.ArgumentParser()
  eval_command.add_eval_arguments(parser)
  return parser.parse_args(list(argv))


@pytest.fixture(scope='module')
def params():
  return nn.unbox(jax.jit(Transformer(CFG).init)(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 4), jnp.int32))['params'])


@pytest.fixture
def fake_checkpoint(monkeypatch, params):
  """The checkpoint loader returns params built directly; the vocabulary is bytes."""
  seen = []

  def load_checkpoint(path, **_):
    seen.append(path)
    return CFG, params, {'data': {'source': 'text'}}, {'devices': 1, 'mesh': None}

  monkeypatch.setattr(loading, 'load_checkpoint', load_checkpoint)
  monkeypatch.setattr(loading, 'vocabulary', lambda config, where: ByteVocab())
  return seen


@pytest.mark.slow
def test_eval_all_suites_writes_table_and_report(tmp_path, fake_checkpoint, capsys):
  data = write_all(tmp_path / 'data')
  out = tmp_path / 'r' / 'report.json'
  rc = eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'all', '--data_dir', data,
                                    '--limit', '2', '--n_items', '3', '--batch_size', '4',
                                    '--output', str(out)))
  assert rc == 0 and fake_checkpoint == ['W']
  table = capsys.readouterr().out
  assert 'boolq.symbolic' in table and 'boolq.original' in table and 'mmlu' in table
  assert '95% CI' in table and 'FLM-101B' in table and 'GLM-130B' in table
  assert '69.6' in table  # the paper's FLM-101B counting score, printed beside ours
  rep = json.loads(out.read_text())
  cats = rep['categories']
  assert set(cats) == {'symbolic_mapping', 'rule_understanding', 'pattern_mining',
                       'anti_interference', 'knowledge'}
  assert len(cats['symbolic_mapping']['tasks']) == 16
  assert set(cats['rule_understanding']['tasks']) == {'counting', 'replace_lowercase',
                                                      'replace_word'}
  t = cats['rule_understanding']['tasks']['counting']
  assert t['n'] == 2 and 0 <= t['ci95'][0] <= t['accuracy'] <= t['ci95'][1] <= 1
  assert t['reference'] == {'FLM-101B': 69.59, 'GPT-3': 82.43, 'GLM-130B': 60.81}
  assert cats['pattern_mining']['groups']['pattern_mining']['reference']['GPT-3'] == 70.0
  mmlu = cats['knowledge']['tasks']['mmlu']
  assert mmlu['n'] == 4 and set(mmlu['groups']) == {'STEM', 'humanities'}
  assert 'arXiv:2309.03852' in rep['reference_source']['citation']


def test_eval_iq_without_data_fails_naming_tasks_or_skips(tmp_path, fake_checkpoint, capsys):
  rc = eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'iq',
                                    '--data_dir', str(tmp_path)))
  err = capsys.readouterr().err
  assert rc == 2 and 'symbolic_mapping/boolq' in err and 'BoolQ/val.jsonl' in err
  assert 'afqmc_public/dev.json' in err and fake_checkpoint == []  # failed before loading
  out = tmp_path / 'r.json'
  rc = eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'iq', '--tasks',
                                    'boolq,head_slicing', '--n_items', '2',
                                    '--skip_missing', '--output', str(out)))
  assert rc == 1  # boolq was asked for by name and did not run: the exit status says so
  cats = json.loads(out.read_text())['categories']
  assert set(cats) == {'symbolic_mapping', 'rule_understanding', 'pattern_mining',
                       'anti_interference'}
  assert 'boolq' in cats['symbolic_mapping']['skipped'] and not cats['symbolic_mapping']['tasks']
  assert 'skipped' in capsys.readouterr().out


def test_bad_flags_and_malformed_data_are_reported(tmp_path, fake_checkpoint, capsys):
  bad = tmp_path / 'hellaswag'
  bad.mkdir()
  (bad / 'hellaswag_val.jsonl').write_text('{"ctx_a": "x"}\n')
  rc = eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'knowledge', '--tasks',
                                    'hellaswag', '--data_dir', str(tmp_path), '--shots',
                                    'hellaswag=0'))
  assert rc == 2 and 'hellaswag_val.jsonl:1' in capsys.readouterr().err
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--shots', 'counting=x')) == 2
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--shots', 'countin=2')) == 2
  assert 'unknown task' in capsys.readouterr().err
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--tasks', 'nothing_like_this')) == 2
  assert 'unknown task' in capsys.readouterr().err
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'knowledge', '--tasks',
                                      'counting')) == 2  # a real task, but not of this suite
  args = _args('--checkpoint', 'W', '--suite', 'iq', '--tasks', 'boolq.symbolic,counting',
               '--data_dir', write_all(tmp_path / 'd'), '--n_items', '2')
  assert [t.name for t in eval_command.build_tasks(args)[0]] == ['boolq.symbolic', 'counting']
  with pytest.raises(SystemExit):
    _args('--checkpoint', 'W', '--hf_model', 'P')  # exactly one model source


def test_synthetic_checkpoints_have_no_text_vocabulary():
  with pytest.raises(EvalDataError, match='synthetic'):
    loading.vocabulary({'data': {'source': 'synthetic'}}, 'W')


def test_eval_hf_model(tmp_path, capsys):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  from test_eval_hf import save_tiny_gpt2
  path = save_tiny_gpt2(tmp_path / 'gpt2')
  out = tmp_path / 'r.json'
  rc = eval_command.eval_main(_args('--hf_model', path, '--suite', 'iq', '--tasks',
                                    'head_slicing', '--n_items', '3', '--dtype', 'bfloat16',
                                    '--output', str(out)))
  assert rc == 0
  rep = json.loads(out.read_text())
  assert rep['model'] == {'backend': 'hf', 'path': path, 'dtype': 'bfloat16', 'device_map': None}
  assert rep['categories']['pattern_mining']['tasks']['head_slicing']['n'] == 3


def _long_choice_hellaswag(data):
  """HellaSwag whose first item has an ending longer than the 128-token context."""
  path = os.path.join(data, 'hellaswag', 'hellaswag_val.jsonl')
  with open(path, encoding='utf-8') as f:
    recs = [json.loads(l) for l in f]
  recs[0]['endings'][1] = 'and then he keeps on stirring ' * 8  # 240 byte tokens > 128
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in recs)


def test_an_over_long_choice_is_scored_not_fatal_and_other_results_are_kept(
    tmp_path, fake_checkpoint, capsys):
  data = write_all(tmp_path / 'data')
  _long_choice_hellaswag(data)
  out = tmp_path / 'r.json'
  rc = eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'knowledge', '--tasks',
                                    'hellaswag,arc_easy', '--data_dir', data, '--shots',
                                    'hellaswag=0,arc_easy=0', '--output', str(out)))
  assert rc == 0
  rep = json.loads(out.read_text())
  tasks = rep['categories']['knowledge']['tasks']
  assert set(tasks) == {'hellaswag', 'arc_easy'} and rep['complete'] and not rep['failed']
  hs = tasks['hellaswag']
  assert hs['n'] == 3 and hs['cut_choices'] == 1 and not hs['comparable']
  assert hs['reference'] == {} and 'not comparable' in hs['comparison']
  assert tasks['arc_easy']['comparable'] and tasks['arc_easy']['n'] == 3
  captured = capsys.readouterr()
  assert 'not comparable' in captured.out and 'choice longer than the context' in captured.err


def test_a_failing_task_is_reported_and_the_others_are_written_as_they_finish(
    tmp_path, fake_checkpoint, monkeypatch, capsys):
  from flmjax.evaluation import runner
  data = write_all(tmp_path / 'data')
  out = tmp_path / 'r.json'
  real = runner.evaluate
  seen = []

  def evaluate(backend, task):
    if task.name == 'arc_challenge':  # the report already holds the task that finished before
      seen.append(json.loads(out.read_text()))
      raise RuntimeError('device lost')
    return real(backend, task)

  monkeypatch.setattr(runner, 'evaluate', evaluate)
  rc = eval_command.eval_main(_args('--checkpoint', 'W', '--suite', 'knowledge', '--tasks',
                                    'arc_challenge,arc_easy,truthfulqa_mc1', '--data_dir', data,
                                    '--shots', 'arc_challenge=0,arc_easy=0',
                                    '--output', str(out)))
  assert rc == 1
  (partial,) = seen
  assert set(partial['categories']['knowledge']['tasks']) == {'arc_easy'}
  assert partial['pending'] == ['arc_challenge', 'truthfulqa_mc1'] and not partial['complete']
  rep = json.loads(out.read_text())
  assert set(rep['categories']['knowledge']['tasks']) == {'arc_easy', 'truthfulqa_mc1'}
  assert rep['failed'] == {'arc_challenge': 'RuntimeError: device lost'} and not rep['complete']
  assert rep['categories']['knowledge']['failed'] == rep['failed'] and rep['pending'] == []
  captured = capsys.readouterr()
  assert 'FAILED' in captured.out and 'did not run: arc_challenge' in captured.err
  assert not [p for p in os.listdir(tmp_path) if '.tmp' in p]  # atomic writes leave no temp file


def test_hf_is_a_declared_alias_and_eval_flags_are_never_abbreviated(capsys):
  from flmjax import cli
  parser = cli.build_parser('eval')
  assert parser.parse_args(['eval', '--hf', 'P']).hf_model == 'P'
  assert parser.parse_args(['eval', '--hf_model', 'P']).hf_model == 'P'
  for prefix in (['--hf_mod', 'P'], ['--check', 'W'], ['--checkpoint', 'W', '--sui', 'iq']):
    with pytest.raises(SystemExit):
      parser.parse_args(['eval'] + prefix)
  assert 'unrecognized arguments' in capsys.readouterr().err
