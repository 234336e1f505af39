"""lm-evaluation-harness as a peer and a door, offline.

Peer: on a tiny random byte-level GPT-2 saved locally and made-up items fed to the harness's own
task definitions (local-data YAMLs that `include` the installed arc_easy, hellaswag, mmlu,
ceval-valid and truthfulqa tasks), `flmjax eval`'s prompts, per-choice log-likelihoods and
accuracies equal the harness's with its own `hf` model.
Door: the harness's `flmjax` model on an flmjax checkpoint gives, per item and choice, the
log-likelihoods `flmjax eval`'s engine gives; it runs through simple_evaluate and the CLI.
"""

import json
import os
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip('lm_eval')
pytest.importorskip('transformers')

from harness_parity_fixtures import write_flmjax_layout, write_harness_tasks  # noqa: E402
from flmjax.evaluation import knowledge, runner  # noqa: E402

HARNESS_TASKS = os.path.join(os.path.dirname(lm_eval.__file__), 'tasks')
OFFLINE = {'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1',
           'TOKENIZERS_PARALLELISM': 'false'}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  for k, v in OFFLINE.items():
    os.environ.setdefault(k, v)
  root = tmp_path_factory.mktemp('parity')
  tasks_dir, names, shots = write_harness_tasks(root / 'harness', HARNESS_TASKS)
  return {'flm': write_flmjax_layout(root / 'flm'), 'tasks_dir': tasks_dir, 'names': names,
          'shots': shots, 'root': root}


def _harness(model, model_args, tasks, data, **kw):
  from lm_eval.tasks import TaskManager
  return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                 task_manager=TaskManager(include_path=data['tasks_dir']),
                                 log_samples=True, **kw)


def _by_doc(samples):
  """{doc_id: (context, [choice continuations], [log-likelihoods])} of the harness's log."""
  out = {}
  for s in samples:
    args = [a for a in s['arguments']]
    out[s['doc_id']] = (args[0][0], [a[1] for a in args], [r[0] for r in s['filtered_resps']])
  return out


@pytest.mark.slow  # lm-eval + transformers imports and 6 harness tasks: ~60 s on 2 cores
def test_flmjax_eval_equals_the_harness_on_the_same_hf_model_and_items(data, tmp_path):
  from flmjax.evaluation.hf_backend import HFBackend
  from test_eval_hf import save_tiny_gpt2
  gpt2 = save_tiny_gpt2(tmp_path / 'gpt2', n_positions=1024)
  res = _harness('hf', f'pretrained={gpt2},dtype=float32', list(data['names'].values()), data,
                 device='cpu', batch_size=4)
  backend = HFBackend(gpt2, batch_size=4)
  for ours, theirs in data['names'].items():
    task = knowledge.make_task(ours, data['flm'], k_shot=data['shots'][ours])
    docs = _by_doc(res['samples'][theirs])
    assert len(docs) == len(task.items), ours
    for i, it in enumerate(task.items):  # the same prompt and choices, character for character
      ctx, conts, lls = docs[i]
      assert (ctx, tuple(conts)) == (it.prompt, it.choices), (ours, i)
      ours_ll = [s.logprob for s in backend.loglikelihood([(it.prompt, c) for c in it.choices])]
      assert ours_ll == pytest.approx(lls, abs=1e-3), (ours, i)
    r = runner.evaluate(backend, task)
    want = res['results'][theirs]
    if r.score_name == 'acc_norm':  # ARC, HellaSwag: both of the harness's metrics
      assert (r.accuracy, r.also['acc']) == (want['acc_norm,none'], want['acc,none']), ours
    else:
      assert r.accuracy == pytest.approx(float(want['acc,none']), abs=1e-9), ours


@pytest.fixture(scope='module')
def flm_checkpoint(tmp_path_factory):
  """A tiny flmjax checkpoint with FLM-101B's text tokenizer (cl100k_base, bundled offline)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from flmjax import experiment
  from flmjax.storage import checkpoint
  from flmjax.config import ModelConfig
  from flmjax.model import Transformer
  cfg = ModelConfig(vocab_size=100352, d_model=16, n_heads=2, head_dim=8, d_ff=32, n_layers=1,
                    max_len=256, init_std=0.3)
  params = nn.unbox(jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(1),
                                                   jnp.zeros((1, 4), jnp.int32))['params'])
  c = experiment.default_config()
  c.model.update(cfg.to_dict())
  c.data.vocab.kind = 'tiktoken'
  root = str(tmp_path_factory.mktemp('flm') / 'w')
  checkpoint.save_state(os.path.join(root, 'stage_0'), c.to_dict(),
                        {'params': params, 'step': jnp.int32(1)},
                        meta={'model': cfg.to_dict(), 'stage': 0})
  return root


@pytest.mark.slow  # ~40 s: lm-eval import, the checkpoint, a harness task
def test_flmjax_harness_model_gives_the_engines_log_likelihoods(data, flm_checkpoint):
  import flmjax.evaluation.lm_eval_model as lm_eval_model  # registers 'flmjax'
  from flmjax.config import BOS_ID
  from flmjax.evaluation import loading
  name = data['names']['arc_easy']
  res = _harness('flmjax', f'checkpoint={flm_checkpoint},batch_size=4,max_len=64', [name], data)
  engine, _ = loading.load_engine(flm_checkpoint, batch_size=4, max_len=64)
  task = knowledge.make_task('arc_easy', data['flm'], k_shot=0)
  docs = _by_doc(res['samples'][name])
  for i, it in enumerate(task.items):
    want = [s.logprob for s in engine.loglikelihood([(it.prompt, c) for c in it.choices])]
    assert docs[i][2] == pytest.approx(want, abs=1e-5), i
  r = runner.evaluate(engine, task)
  assert (r.accuracy, r.also['acc']) == (res['results'][name]['acc_norm,none'],
                                         res['results'][name]['acc,none'])
  # Perplexity requests: the harness's disjoint windows (context_len 1), the first after BOS.
  model = lm_eval_model.FlmjaxLM(backend=engine)
  req = lambda *args: type('Req', (), {'args': args})()
  short, long = 'The quick brown fox jumps.', 'The quick brown fox jumps over the lazy dog. ' * 15
  rolled = model.loglikelihood_rolling([req(short), req(long)])
  assert rolled[0] == pytest.approx(engine.loglikelihood([('', short)])[0].logprob, abs=1e-4)
  ids = list(engine.tokenizer.encode(long))
  assert len(ids) > 2 * 64
  windows = [((BOS_ID,) if i == 0 else (ids[i - 1],), tuple(ids[i:i + 64]))
             for i in range(0, len(ids), 64)]
  assert rolled[1] == pytest.approx(sum(lp for lp, _ in engine.score_tokens(windows)), abs=1e-3)
  # Generation requests: greedy, cut at `until`.
  outs = model.generate_until([req('Question: what?\nAnswer:', {'until': ['\n'],
                                                                'max_gen_toks': 5})])
  assert outs == engine.generate(['Question: what?\nAnswer:'], 5, stop=('\n',))
  with pytest.raises(ValueError, match='greedy only'):
    model.generate_until([req('x', {'do_sample': True})])


@pytest.mark.slow  # a fresh python importing lm-eval: ~30 s
def test_harness_command_line_runs_the_flmjax_model(data, flm_checkpoint, tmp_path):
  out = tmp_path / 'out'
  env = {**os.environ, **OFFLINE, 'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                        os.environ.get('PYTHONPATH', '')])}
  proc = subprocess.run(
      [sys.executable, '-m', 'flmjax.evaluation.lm_eval_model', 'run', '--model', 'flmjax',
       '--model_args', f'checkpoint={flm_checkpoint},max_len=64', '--batch_size', '2', '--include_path',
       data['tasks_dir'], '--tasks', data['names']['arc_easy'], '--limit', '2',
       '--output_path', str(out)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (path,) = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs
             if f.startswith('results')]
  with open(path) as f:
    results = json.load(f)['results'][data['names']['arc_easy']]
  assert 0 <= results['acc,none'] <= 1 and 'acc_norm,none' in results


def test_ceval_headers_are_the_harness_ceval_valid_descriptions(tmp_path):
  """All 52 subjects: our header (from our own list of Chinese names) is the harness's."""
  import glob
  import yaml
  from test_eval_fixtures import _csv
  files = sorted(glob.glob(os.path.join(HARNESS_TASKS, 'ceval', 'ceval-valid_*.yaml')))
  assert len(files) == 52
  for path in files:
    with open(path, encoding='utf-8') as f:
      spec = yaml.safe_load(f)
    subject = spec['dataset_name']
    for split in ('dev', 'val'):
      _csv(os.path.join(tmp_path, subject, 'ceval', split, f'{subject}_{split}.csv'),
           [[0, '题', '1', '2', '3', '4', 'A']], header=['id', 'question', 'A', 'B', 'C', 'D',
                                                        'answer'])
    task = knowledge.make_task('ceval', str(tmp_path / subject), k_shot=0)
    assert task.items[0].prompt.startswith(spec['description']), subject
