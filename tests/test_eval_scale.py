"""Big models and first use: a checkpoint evaluated sharded over 8 (simulated) devices on its
experiment's mesh, the HF loader's dtype / device map, and `flmjax eval` with no data at all."""

import argparse
import json

import pytest

from conftest import run_py
from flmjax.commands import eval as eval_command
from flmjax.evaluation import loading
from test_eval_cli import fake_checkpoint, params  # noqa: F401  (fixtures)

SHARDED = r'''
import os, tempfile
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from flmjax import experiment
from flmjax.storage import checkpoint
from flmjax.config import ModelConfig
from flmjax.model import Transformer
from flmjax.commands import eval as eval_command
from flmjax.evaluation import engine, loading
from test_eval_engine import ByteVocab

cfg = ModelConfig(vocab_size=260, d_model=32, n_heads=2, head_dim=16, d_ff=64, n_layers=2,
                  max_len=64, init_std=0.3)
params = nn.unbox(jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(1),
                                                 jnp.zeros((1, 4), jnp.int32))['params'])
root = tempfile.mkdtemp()
out = {}
for name, mesh in (('fits', dict(data=1, fsdp=4, tensor=2)), ('too_big', dict(data=16, fsdp=1,
                                                                               tensor=1))):
  c = experiment.default_config()
  c.model.update(cfg.to_dict())
  c.mesh.update(mesh)
  path = checkpoint.save_state(os.path.join(root, name, 'stage_0'), c.to_dict(),
                               {'params': params, 'step': jnp.int32(3)},
                               meta={'model': cfg.to_dict(), 'stage': 0})
  cfg2, sharded, _, placement = loading.load_checkpoint(os.path.join(root, name))
  leaves = jax.tree_util.tree_leaves(sharded)
  out[name] = {'placement': placement,
               'devices': sorted({len(l.sharding.device_set) for l in leaves}),
               'split': sum(not l.sharding.is_fully_replicated for l in leaves),
               'equal': all(bool(jnp.array_equal(a, b)) for a, b in
                            zip(leaves, jax.tree_util.tree_leaves(params)))}
  reqs = [('The cat sat on the', ' mat'), ('Q: 2+2?\nA:', ' 4'), ('x' * 70, ' long')]
  prompts = ['hello wor', 'Input: a b\nOutput:']
  one = engine.FlmEngine(params, cfg, ByteVocab(), batch_size=4)
  many = engine.FlmEngine(sharded, cfg2, ByteVocab(), batch_size=4)
  out[name]['scores'] = [[s.logprob for s in e.loglikelihood(reqs)] for e in (one, many)]
  out[name]['gen'] = [e.generate(prompts, 6) for e in (one, many)]

# The whole command on the sharded checkpoint (the byte vocabulary stands in for the text one).
loading.vocabulary = lambda config, where: ByteVocab()
report = os.path.join(root, 'r.json')
rc = eval_command.main(['--checkpoint', os.path.join(root, 'fits'), '--suite', 'iq', '--tasks',
                        'counting', '--n_items', '2', '--output', report])
out['rc'] = rc
out['report_model'] = json.load(open(report))['model']
emit(out)
'''


@pytest.mark.slow
def test_checkpoint_is_evaluated_sharded_on_its_experiment_mesh():
  out = run_py(SHARDED, devices=8)
  fits = out['fits']
  assert fits['placement'] == {'devices': 8, 'mesh': {'data': 1, 'fsdp': 4, 'tensor': 2},
                               'mesh_from': 'experiment'}
  assert fits['split'] > 0 and max(fits['devices']) == 8 and fits['equal']
  too_big = out['too_big']
  assert too_big['placement']['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  assert too_big['placement']['mesh_from'] == 'fsdp over all devices'
  assert 'experiment mesh' in too_big['placement']['mesh_note']
  for case in (fits, too_big):
    one, many = case['scores']
    assert many == pytest.approx(one, abs=1e-4)
    assert case['gen'][0] == case['gen'][1]
  assert out['rc'] == 0 and out['report_model']['placement']['mesh']['tensor'] == 2


def test_one_device_loads_unsharded():
  import jax
  shardings, placement = loading.eval_shardings(None, {}, devices=jax.devices()[:1])
  assert shardings is None and placement == {'devices': 1, 'mesh': None}


# ---- Hugging Face: dtype and device map ---------------------------------------------------------
def test_hf_dtype_and_device_map_reach_from_pretrained(tmp_path, monkeypatch):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from flmjax.evaluation import hf_backend
  from test_eval_hf import save_tiny_gpt2
  path = save_tiny_gpt2(tmp_path / 'gpt2')
  real = transformers.AutoModelForCausalLM.from_pretrained
  seen = []

  def from_pretrained(p, **kw):
    seen.append(kw)
    return real(p, **{k: v for k, v in kw.items() if k != 'device_map'})

  monkeypatch.setattr(transformers.AutoModelForCausalLM, 'from_pretrained', from_pretrained)
  b = hf_backend.HFBackend(path, dtype='bfloat16', device_map='auto')
  key = 'dtype' if 'dtype' in seen[0] else 'torch_dtype'
  assert seen[0][key] is torch.bfloat16 and seen[0]['device_map'] == 'auto'
  assert seen[0]['local_files_only'] is True
  assert next(b.model.parameters()).dtype == torch.bfloat16 and b.device == 'cpu'
  assert b.loglikelihood([('hello', ' world')])[0].logprob < 0
  assert 'trust_remote_code' not in seen[0]  # never run a folder's code unless asked
  assert hf_backend.load_kwargs(transformers, torch, trust_remote_code=True)['trust_remote_code']
  with pytest.raises(ValueError, match='--dtype must be one of'):
    hf_backend.load_kwargs(transformers, torch, 'int4')


def test_hf_device_map_auto_loads_and_evaluates(tmp_path, capsys):
  """`--device_map auto` (the `hf` extra installs accelerate) loads the way transformers users
  load a 100B-class checkpoint, and evaluates; without accelerate it is a clear error."""
  pytest.importorskip('transformers')
  from test_eval_hf import save_tiny_gpt2
  parser = argparse.ArgumentParser()
  eval_command.add_eval_arguments(parser)
  out = tmp_path / 'r.json'
  args = parser.parse_args(['--hf_model', save_tiny_gpt2(tmp_path / 'g'), '--suite', 'iq',
                            '--tasks', 'counting', '--n_items', '2', '--device_map', 'auto',
                            '--dtype', 'float32', '--output', str(out)])
  try:
    import accelerate  # noqa: F401
  except ImportError:
    assert eval_command.eval_main(args) == 2
    assert '--device_map auto needs the accelerate package' in capsys.readouterr().err
    return
  assert eval_command.eval_main(args) == 0
  model = json.load(open(out))['model']
  assert model['device_map'] == 'auto' and model['dtype'] == 'float32'


# ---- first use: the README command ----------------------------------------------------------------
def _args(*argv):
  parser = argparse.ArgumentParser()
  eval_command.add_eval_arguments(parser)
  return parser.parse_args(list(argv))


def test_readme_eval_command_runs_without_data(tmp_path, fake_checkpoint, capsys):  # noqa: F811
  out = tmp_path / 'iq.json'
  rc = eval_command.eval_main(_args('--checkpoint', 'runs/tiny_growth', '--suite', 'iq', '--output',
                                    str(out), '--n_items', '2'))
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  rep = json.loads(out.read_text())
  cats = rep['categories']
  assert set(cats['symbolic_mapping']['skipped']) == {'boolq', 'wic', 'rte', 'wsc', 'afqmc', 'csl',
                                                      'ocnli', 'cluewsc2020'}
  assert all('--data_dir' in why for why in cats['symbolic_mapping']['skipped'].values())
  assert set(cats['rule_understanding']['tasks']) == {'counting', 'replace_lowercase',
                                                      'replace_word'}
  assert len(cats['anti_interference']['tasks']) == 3
  assert 'skipped' in captured.out and '--skip_missing' not in captured.err
  assert 'reconstruction, not bAbI' in captured.out  # the report names the data source
  # Asking for a data task by name without data is still an error that says what to pass.
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--tasks', 'boolq')) == 2
  assert '--data_dir' in capsys.readouterr().err


@pytest.mark.parametrize('flag,value', [('--limit', '-1'), ('--limit', '0'), ('--n_items', '0'),
                                        ('--batch_size', '0')])
def test_counts_must_be_positive(flag, value, fake_checkpoint, capsys):  # noqa: F811
  assert eval_command.eval_main(_args('--checkpoint', 'W', flag, value)) == 2
  assert f'{flag} must be >= 1, got {value}' in capsys.readouterr().err
  assert fake_checkpoint == []  # refused before loading anything


def test_dtype_is_for_hf_models_only(fake_checkpoint, capsys):  # noqa: F811
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--dtype', 'bfloat16')) == 2
  assert 'apply to --hf_model' in capsys.readouterr().err
  assert eval_command.eval_main(_args('--checkpoint', 'W', '--trust_remote_code')) == 2
