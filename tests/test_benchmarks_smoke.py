"""CI keeps the performance benchmarks from rotting: each one's `--smoke` mode runs in a fresh
subprocess and must end with its headline ratio (`headline: ... = <number>x`) on the last line.

The numbers are not asserted (smoke sizes measure nothing); BUILD.md records the real runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')
HEADLINE = re.compile(r'^headline: .+ = (inf|[0-9.]+x)\b')


def _run(script: str, *args: str, timeout: int = 900) -> str:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  # only the fast-compile flag (conftest.FAST_COMPILE): a smoke's many tiny runs are compile-bound
  env['XLA_FLAGS'] = FAST_COMPILE
  proc = subprocess.run([sys.executable, os.path.join(BENCH, script), '--smoke', *args],
                        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert lines and HEADLINE.match(lines[-1]), f'{script}: last line is not a headline:\n' + \
      '\n'.join(lines[-10:])
  return proc.stdout


def _has(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.skipif(not (_has('torch') and _has('transformers')),
                    reason='the PyTorch peer needs the optional extra flmjax[hf] (torch, transformers)')
def test_train_throughput_smoke():
  """The regression guard: the ratio per size, and where each side's step time goes."""
  out = _run('train_throughput.py', '--profile')
  assert 'flmjax' in out and 'pytorch' in out and 'util' in out
  assert 'smoke-a: flmjax/pytorch utilisation = ' in out and 'smoke-b: flmjax/pytorch' in out
  assert 'own matmul FLOP/s' in out and '(host-fair)' in out.splitlines()[-1]
  assert 'where one training step\'s time goes' in out
  for family in ('matmul', 'attention', 'LayerNorm', 'optimizer', 'host / untraced'):
    assert family in out
  assert 'weight GEMMs alone ms' in out and 'outside the weight GEMMs flmjax' in out


def test_weight_gemms_are_the_models_6n_matmul_flops():
  """The GEMMs run alone are exactly the step's weight matmuls: three GEMMs per weight, whose
  FLOPs are 6 × tokens × the weight matrices' parameters (the tied embedding counted once, as the
  logits' weight); attention's q·k and p·v are not among them."""
  sys.path.insert(0, BENCH)
  import train_throughput
  from flmjax.config import ModelConfig
  model_kw, seq_len, batch = train_throughput.SIZES['10m']
  cfg = ModelConfig.from_dict(dict(model_kw, max_len=seq_len))
  tokens = seq_len * batch
  shapes = train_throughput.weight_gemm_shapes(model_kw, cfg.padded_vocab, tokens)
  assert len(shapes) == 3 * (6 * model_kw['n_layers'] + 1)
  D, F, HK = model_kw['d_model'], model_kw['d_ff'], model_kw['n_heads'] * model_kw['head_dim']
  weights = model_kw['n_layers'] * (4 * D * HK + 2 * D * F) + D * cfg.padded_vocab
  assert sum(2 * m * k * n for m, k, n in shapes) == 6 * tokens * weights


@pytest.mark.slow
def test_step_conventions_smoke():
  out = _run('step_conventions.py')
  for variant in ('xPos off', 'padded-vocabulary mask off', 'teacher term off',
                  'non-finite guard off', 'none of them'):
    assert variant in out


@pytest.mark.slow
def test_train_throughput_smoke_flmjax_only():
  """Without torch the benchmark still measures flmjax (no ratio line then, so not --smoke).

  JAX_PLATFORMS is unset, as a user runs it: with the `tpu` extra on a CPU host the benchmark
  must not let libtpu print its missing-TPU-VM lines (benchmarks/common.py picks the CPU)."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  env.pop('JAX_PLATFORMS', None)
  proc = subprocess.run([sys.executable, os.path.join(BENCH, 'train_throughput.py'), '--smoke',
                         '--no-torch', '--sizes', 'smoke-a'], env=env, capture_output=True,
                        text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'flmjax tokens/s' in proc.stdout.splitlines()[-1]
  assert 'TPU_WORKER_HOSTNAMES' not in proc.stderr and 'TPU_ACCELERATOR_TYPE' not in proc.stderr, \
      proc.stderr[-2000:]


@pytest.mark.skipif(not _has('libtpu'), reason='only the `tpu` extra makes jax try libtpu')
def test_benchmarks_pick_the_cpu_before_jax_loads_libtpu():
  """Importing benchmarks/common.py (every benchmark does, before jax) sets JAX_PLATFORMS=cpu on
  a host with libtpu but no TPU, as the `flmjax` command does; a user's own setting wins."""
  code = ('import os, sys; sys.path.insert(0, "benchmarks"); import common; '
          'print(os.environ.get("JAX_PLATFORMS"))')
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('JAX_PLATFORMS', None)
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.stdout.strip() == 'cpu', out.stderr[-2000:]
  env['JAX_PLATFORMS'] = 'cpu,tpu'
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.stdout.strip() == 'cpu,tpu', out.stderr[-2000:]
  # ... and every benchmark that imports jax imports common first
  for name in sorted(os.listdir(BENCH)):
    if not name.endswith('.py') or name == 'common.py':
      continue
    lines = open(os.path.join(BENCH, name)).read().splitlines()
    first_jax = next((i for i, l in enumerate(lines) if re.match(r'(import|from) jax\b', l)), None)
    if first_jax is not None:
      assert 'import common' in '\n'.join(lines[:first_jax]), name


@pytest.mark.slow
def test_growth_cost_smoke():
  out = _run('growth_cost.py')
  assert 'sharded check: OK' in out, out[-2000:]


@pytest.mark.slow
def test_msg_ramp_overhead_smoke():
  out = _run('msg_ramp_overhead.py')
  assert "masks ['heads', 'hidden', 'layers', 'mlp']" in out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, 'experiments', 'tiny_growth.py')) or
                    not os.path.exists(os.path.join(ROOT, 'experiments', 'tiny_scratch.py')),
                    reason='experiments/tiny_growth.py and tiny_scratch.py do not exist yet (the '
                           'growth-vs-scratch experiments are written later)')
def test_growth_vs_scratch_smoke():
  out = _run('growth_vs_scratch.py')
  assert 'validation loss (mean over languages) at equal FLOPs' in out


@pytest.mark.slow
def test_growth_vs_scratch_smoke_on_tiny():
  """The analysis path on the single-stage tiny experiment (both sides the same run)."""
  tiny = os.path.join(ROOT, 'experiments', 'tiny.py')
  out = _run('growth_vs_scratch.py', '--growth', tiny, '--scratch', tiny)
  assert out.splitlines()[-1].endswith('= 1.000x')


@pytest.mark.slow
def test_loss_prediction_smoke(tmp_path):
  first = str(tmp_path / 'default')
  out = _run('loss_prediction.py', '--workdir', first)
  assert 'held-out targets' in out and 'every candidate' in out and '± seeds' in out
  last = out.splitlines()[-1]
  assert 'coverage' in last and 'max 95% half-width' in last and 'half-width ≤ 1.5%' in last
  # issue 29's path: proxies at three budgets, laws with a data term, the data-order check, and
  # held-out targets at the fixed and the growing budget (tokens ∝ √N: 12 steps at width 48)
  assert 'L(N, D) Hoffmann' in out and 'L(C) envelope, all budgets' in out
  assert 'data-order check (data seed 1' in out and 'data-order sd per run' in out
  assert 'held-out 95% half-width by term' in out and 'proxy seeds' in out
  assert 'width@steps 48@6, 48@12' in last
  saved = json.load(open(os.path.join(first, 'heldout.json')))
  assert sorted({r['steps'] for r in saved['proxies']['development']}) == [4, 6, 8]
  assert saved['result']['residual_dof']['L(N, D) Hoffmann'] == 9 - 5
  # more init seeds at the narrow end; the data-order check pairs the seeds both orders ran
  assert {w: {tuple(r['seeds']) for r in saved['proxies']['development'] if r['width'] == w}
          for w in (8, 16)} == {8: {(0, 1)}, 16: {(0,)}}
  # issue 14's arm: another objective, judged by the first run's predictor (no development runs)
  arm = _run('loss_prediction.py', '--workdir', str(tmp_path / 'arm'), '--teacher_loss', '0',
             '--predictor_from', os.path.join(first, 'heldout.json'))
  assert 'teacher_loss 0;' in arm and 'development:' not in arm and 'data order:' not in arm
  assert f"from {os.path.join(first, 'heldout.json')}" in arm


@pytest.mark.slow
def test_packing_vs_seqio_smoke():
  out = _run('packing_vs_seqio.py')
  assert 'flmjax numpy packer' in out and 'seqio DecoderFeatureConverter' in out


@pytest.mark.slow
@pytest.mark.skipif(not _has('apache_beam'), reason='the Beam build needs the extra flmjax[beam]')
def test_data_scale_smoke():
  out = _run('data_scale.py')
  assert '2 workers / 1 worker (wall clock)' in out and 'peak RSS MB' in out and '101B stage need' in out
  assert 'FLM-101B: 311.54B tokens' in out


@pytest.mark.slow
def test_pod_plan_smoke():  # needs the tpu extra (libtpu), which .ci/run installs
  out = _run('pod_plan.py')
  assert 'pod plan for v5e:2x2 (4 chips)' in out and 'growth' in out
  assert 'target <= 0.90: met' in out


@pytest.mark.slow
def test_growth_evidence_smoke(tmp_path):
  out = _run('growth_evidence.py', '--workdir', str(tmp_path))
  assert 'three arms, one budget' in out and 'every operator in the same harness' in out
  for op in ('width msg + depth msg', 'width tile + depth msg', 'width msg + depth identity',
             'width msg + depth stack', 'width msg + depth interleave', 'width tile + depth stack'):
    assert op in out, op
  for png in ('arms.png', 'operators.png', 'flm_vs_equal_loss.png'):
    assert os.path.getsize(tmp_path / 'plots' / png) > 1000


@pytest.mark.slow
def test_growth_evidence_diagnosis_and_sweep_smoke(tmp_path):
  """Issue 25's modes: the idle-phase diagnosis (suspects beside their un-grown controls, the
  growth probe) and the operator × growth-point sweep with its heat-map."""
  out = _run('growth_evidence.py', '--workdir', str(tmp_path), '--diagnose')
  assert 'diagnosis of the idle phase' in out and 'growth probe' in out
  assert 'LR after growth: back to the peak, faster decay (LEMON)' in out
  diag = json.load(open(tmp_path / 'diagnosis.json'))
  today = diag['suspects']['today: LR goes on along one cosine over steps']
  assert today['probe'][0]['since_growth'] == 0 and today['probe'][0]['loss_share_new'] == 0.0
  assert len(today['gaps'][0]) >= 1 and 0.0 <= today['idle'][0] <= 1.0
  out = _run('growth_evidence.py', '--workdir', str(tmp_path), '--sweep')
  assert 'operator × growth point sweep' in out and 'stack x2 (depth only)' in out
  assert os.path.getsize(tmp_path / 'plots' / 'sweep_heatmap.png') > 1000
  assert json.load(open(tmp_path / 'sweep.json'))['best'][1] == '0.5'


@pytest.mark.slow
def test_growth_evidence_second_size_lr_sweep_smoke(tmp_path):
  """Issue 40's second size (--preset d64x8; --smoke: its CI-sized twin smoke_d64x8): the LR
  sweep on the scratch arm alone, on the size's own seed, checkpointing as it goes (the long
  run resumes), stopping before any arm."""
  out = _run('growth_evidence.py', '--workdir', str(tmp_path), '--preset', 'd64x8',
             '--lr_sweep_only')
  assert 'learning-rate sweep on arm (2)' in out and 'three arms' not in out
  sweep = json.load(open(tmp_path / 'lr_sweep.json'))
  assert (sweep['preset'], sweep['seed'], sweep['lr']) == ('smoke_d64x8', 200, 0.01)
  run = tmp_path / 'scratch_lr0.01_s200'
  config = json.load(open(run / 'summary.json'))['config']
  assert config['model']['d_model'] == 32 and config['model']['n_layers'] == 4
  assert config['model']['mup_base_width'] == 16 and config['train']['ckpt_every'] == 4
  assert os.listdir(run / 'stage_0')  # checkpoints kept to resume from


@pytest.mark.slow
def test_checkpoint_io_smoke():
  """Save and restore, local vs a GCS server (fake-gcs-server), each side timed."""
  out = _run('checkpoint_io.py')
  assert 'local ' in out and 'gs:// ' in out and 'save ms' in out and 'restore ms' in out
