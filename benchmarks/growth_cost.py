"""Time and peak memory of one jitted growth (params + AdamW state) into a ≈300M-param model.

  python benchmarks/growth_cost.py            # 124M (GPT-2 small shape) -> 303M, CPU
  python benchmarks/growth_cost.py --smoke    # tiny shapes (CI)

Each measurement runs in a fresh subprocess so its peak RSS is clean:
  single   1 device: init the source state, then `growth.grow_state` (compile + run, then a second
           run from the compiled cache); peak RSS vs source + target state bytes (limit 1.5×).
  sharded  8 simulated CPU devices on a (data 1, fsdp 4, tensor 2) mesh: every grown array must
           carry the target sharding and each device hold only its shard
           (`addressable_shards`), and the compiled growth must have no all-gather that
           materialises a whole target-sized array on a device (HLO of `lower().compile()`).
The last line is the headline: peak RSS ÷ (source + target state bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

HEAD = dict(head_dim=64, max_len=1024)
SHAPES = {
    'full': (dict(vocab_size=50257, d_model=768, n_heads=12, d_ff=3072, n_layers=12, **HEAD),
             dict(d_model=1024, n_heads=16, d_ff=4096, n_layers=20)),
    'smoke': (dict(vocab_size=256, d_model=64, n_heads=2, d_ff=256, n_layers=2, head_dim=32,
                   max_len=64),
              dict(d_model=128, n_heads=4, d_ff=512, n_layers=4)),
}
SPEC = dict(width='msg', depth='msg', ramp_steps=100)
RSS_LIMIT = 1.5


def _setup(shape: str, mesh: dict):
  """Two-stage config src -> dst (MSG growth) and its runtimes, on `mesh`."""
  src, dst = SHAPES[shape]
  stages = [dict(name='src', steps=1), dict(name='dst', steps=1, model=dst, growth=SPEC)]
  config = common.flmjax_config(src, 64, 8, stages=stages)
  config.mesh.update(mesh)
  return common.flmjax_runtimes(config)


def _tree_bytes(tree) -> int:
  import jax
  return int(sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, 'nbytes')))


def child_single(shape: str) -> dict:
  import jax
  from flmjax import growth
  rss0 = common.current_rss_bytes()
  rt0, rt1 = _setup(shape, dict(data=1, fsdp=1, tensor=1))
  rss_runtime = common.current_rss_bytes()  # libraries loaded, nothing allocated yet
  state = rt0.init_state(0)
  jax.block_until_ready(state)
  src_bytes = _tree_bytes((state.params, state.opt_state))
  rss_src = common.current_rss_bytes()
  peak_before = common.peak_rss_bytes()
  grow = lambda: growth.grow_state(state.params, state.opt_state, rt0.cfg, rt1.cfg, SPEC,
                                   jax.random.PRNGKey(1), mesh=rt1.mesh, rules=rt1.rules,
                                   optimizer=rt1.tx)
  t0 = time.perf_counter()
  out = jax.block_until_ready(grow())
  first_s = time.perf_counter() - t0
  dst_bytes = _tree_bytes(out[:2])
  peak = common.peak_rss_bytes()
  del out
  t0 = time.perf_counter()
  out = jax.block_until_ready(grow())
  second_s = time.perf_counter() - t0
  return dict(src_params=rt0.cfg.param_count(), dst_params=rt1.cfg.param_count(),
              src_bytes=src_bytes, dst_bytes=dst_bytes, rss_import=rss0, rss_runtime=rss_runtime,
              rss_src=rss_src,
              peak_before_growth=peak_before, peak_growth=peak,
              peak_end=common.peak_rss_bytes(), first_s=first_s, second_s=second_s)


_AG = re.compile(r'=\s*(\(?[a-z0-9]+\[[0-9,]*\][^=]*?)\s(all-gather(?:-start)?)\(')
_SHAPE = re.compile(r'([a-z]+[0-9]*)\[([0-9,]*)\]')
_BYTES = {'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'pred': 1, 's8': 1, 'u8': 1,
          'f64': 8, 's64': 8}


def _shape_bytes(text: str) -> int:
  total = 0
  for dt, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * _BYTES.get(dt, 4)
  return total


def child_sharded(shape: str) -> dict:
  import jax
  import numpy as np
  from flmjax import growth, sharding
  rt0, rt1 = _setup(shape, dict(data=1, fsdp=4, tensor=2))
  state = rt0.init_state(0)
  args = (state.params, state.opt_state, jax.random.PRNGKey(1))
  fn = growth.make_grow_fn(rt0.cfg, rt1.cfg, SPEC, state.opt_state, mesh=rt1.mesh,
                           rules=rt1.rules)
  compiled = fn.lower(*args).compile()
  hlo = compiled.as_text()
  gathers = [(_shape_bytes(m.group(1)), m.group(1).split('{')[0]) for m in _AG.finditer(hlo)]
  mem = compiled.memory_analysis()
  params, opt_state, _ = jax.block_until_ready(fn(*args))
  want = sharding.param_shardings(rt1.cfg, rt1.mesh, rt1.rules)
  leaves = jax.tree.leaves(params)
  dst_leaf_bytes = sorted(x.nbytes for x in leaves)
  n_dev = len(jax.devices())
  bad, sharded, per_dev = [], 0, np.zeros(n_dev)
  for x, w in zip(leaves, jax.tree.leaves(want)):
    shard_shape = w.shard_shape(x.shape)
    if not x.sharding.is_equivalent_to(w, x.ndim):
      bad.append(f'{x.shape}: sharding {x.sharding.spec} != {w.spec}')
    for s in x.addressable_shards:
      if tuple(s.data.shape) != tuple(shard_shape):
        bad.append(f'{x.shape}: device {s.device.id} holds {s.data.shape}, want {shard_shape}')
      per_dev[s.device.id] += s.data.nbytes
    sharded += int(tuple(shard_shape) != tuple(x.shape))
  for x in jax.tree.leaves(opt_state):  # mu / nu follow the params; scalars are replicated
    for s in x.addressable_shards:
      per_dev[s.device.id] += s.data.nbytes
  total = _tree_bytes((params, opt_state))
  # A gather to one device would put a whole target-sized (≥ largest leaf / 2) array on it.
  big = [g for g in gathers if g[0] >= dst_leaf_bytes[-1] / 2]
  return dict(devices=n_dev, leaves=len(leaves), sharded_leaves=sharded, bad=bad[:5],
              n_bad=len(bad), all_gathers=len(gathers),
              other_collectives={op: len(re.findall(rf'\s{op}(?:-start)?\(', hlo))
                                 for op in ('collective-permute', 'all-to-all', 'all-reduce')},
              max_gather_bytes=max([g[0] for g in gathers], default=0),
              max_gather=max(gathers, default=(0, ''))[1], big_gathers=len(big),
              largest_leaf_bytes=dst_leaf_bytes[-1], state_bytes=total,
              per_device_max=float(per_dev.max()), per_device_min=float(per_dev.min()),
              compiled_arg=mem.argument_size_in_bytes, compiled_out=mem.output_size_in_bytes,
              compiled_temp=mem.temp_size_in_bytes)


def run_child(mode: str, shape: str, devices: int) -> dict:
  # the caller's own XLA flags too (e.g. one thread per process), with the child's device count
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=' '.join([f'--xla_force_host_platform_device_count={devices}', *flags]),
             PYTHONPATH=common.ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', mode,
                         '--shape', shape], env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    sys.exit(f'{mode} child failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n'
             f'{proc.stderr[-4000:]}')
  return json.loads(lines[-1][len('RESULT '):])


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--smoke', action='store_true', help='tiny shapes (CI)')
  ap.add_argument('--skip-sharded', action='store_true', help='no 8-device check')
  ap.add_argument('--child', choices=('single', 'sharded'), help=argparse.SUPPRESS)
  ap.add_argument('--shape', default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  shape = args.shape or ('smoke' if args.smoke else 'full')
  if args.child:
    fn = child_single if args.child == 'single' else child_sharded
    print('RESULT ' + json.dumps(fn(shape)), flush=True)
    return

  gb = lambda b: f'{b / 1e9:.3f} GB'
  s = run_child('single', shape, 1)
  budget = s['src_bytes'] + s['dst_bytes']
  ratio = s['peak_growth'] / budget
  net = (s['peak_growth'] - s['rss_runtime']) / budget  # without the libraries' fixed RSS
  rows = [
      ('source -> target params', f"{s['src_params'] / 1e6:.1f}M -> {s['dst_params'] / 1e6:.1f}M"),
      ('growth', f"{SPEC['width']} width, {SPEC['depth']} depth (d_model, heads, d_ff, layers)"),
      ('source state (params + AdamW mu, nu)', gb(s['src_bytes'])),
      ('target state', gb(s['dst_bytes'])),
      ('RSS after importing jax', gb(s['rss_import'])),
      ('RSS with flmjax/orbax/XLA loaded (no arrays)', gb(s['rss_runtime'])),
      ('RSS with the source state', gb(s['rss_src'])),
      ('peak RSS before growth', gb(s['peak_before_growth'])),
      ('peak RSS through the first growth', gb(s['peak_growth'])),
      ('peak RSS through the second growth', gb(s['peak_end'])),
      ('first growth s (trace + compile + run)', f"{s['first_s']:.2f}"),
      ('second growth s (compiled)', f"{s['second_s']:.2f}"),
      ('peak RSS / state bytes', f'{ratio:.2f}x'),
      ('(peak RSS - library RSS) / state bytes', f'{net:.2f}x'),
  ]
  sharded_ok = None
  if not args.skip_sharded:
    h = run_child('sharded', shape, 8)
    sharded_ok = h['n_bad'] == 0 and h['big_gathers'] == 0
    rows += [
        ('8 devices: grown param leaves sharded', f"{h['sharded_leaves']}/{h['leaves']}"),
        ('8 devices: wrong shardings / shard shapes', f"{h['n_bad']} {h['bad']}"),
        ('8 devices: state bytes per device min/max', f"{gb(h['per_device_min'])} / "
         f"{gb(h['per_device_max'])} (whole state {gb(h['state_bytes'])}, /8 = "
         f"{gb(h['state_bytes'] / 8)})"),
        ('8 devices: all-gathers in compiled HLO', f"{h['all_gathers']} (largest "
         f"{h['max_gather_bytes'] / 1e6:.2f} MB {h['max_gather']}; largest target leaf "
         f"{h['largest_leaf_bytes'] / 1e6:.1f} MB)"),
        ('8 devices: gathers of a target-sized array', str(h['big_gathers'])),
        ('8 devices: other collectives in HLO', ', '.join(f'{k} {v}' for k, v in
                                                          h['other_collectives'].items())),
        ('8 devices: compiled per-device args/out/temp', f"{gb(h['compiled_arg'])} / "
         f"{gb(h['compiled_out'])} / {gb(h['compiled_temp'])}"),
    ]
  common.print_table(['quantity', 'value'], rows, title='one jitted growth on CPU')
  verdict = 'OK' if ratio < RSS_LIMIT else 'FAIL'
  if shape == 'smoke':
    verdict = 'not judged in --smoke (the libraries\' fixed RSS dominates tiny states)'
  print(f'sharded check: {"skipped" if sharded_ok is None else "OK" if sharded_ok else "FAIL"}; '
        f'peak RSS < {RSS_LIMIT}x state bytes: {verdict}')
  print(f'headline: peak RSS / (source + target state bytes) = {ratio:.2f}x')


if __name__ == '__main__':
  main()
