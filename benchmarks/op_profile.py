"""Where a training step's time goes: per-op-family shares for flmjax (XLA) and PyTorch.

flmjax: `jax.profiler` records one event per executed XLA op (on CPU one per thunk, named as the
HLO instruction; GPU kernels usually carry their fusion's name, not checked here: no GPU was
lent to this work); the compiled module's text maps each instruction, through its stack frame
metadata, to the source line that emitted it, so every op is put in one family by where it came
from (`family_of_frames`).  PyTorch: `torch.profiler`'s self time per aten op, put in families by
op name (`torch_family`).  "host" is the step's wall time not covered by any op (dispatch,
Python, waiting): for XLA the step wall minus the union of op intervals, for PyTorch the step
wall minus the ops' summed self time.

Shares are of the step's wall time, so the families plus host add to 100%.  "other" is mostly
copies, transposes and zero-filled buffers with no source line (XLA's own).  Fused ops count
once, in the family of their highest-priority member (`FAMILIES` order): a fusion of a LayerNorm
with a residual add is LayerNorm.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import linecache
import os
import re
import tempfile
import time
from typing import Callable, Iterable, Optional

# Families in priority order (a fused op with members of several takes the first).
FAMILIES = ('matmul', 'attention', 'xPos / positions', 'softmax / loss', 'LayerNorm',
            'GeLU', 'embedding', 'optimizer', 'layer scan', 'other')
# The layer scan's own work: slicing each layer's parameters / saved activations out of the
# stacked arrays and writing them back (XLA names them after jax's index helpers).
_SCAN_OPS = ('dynamic_index_in_dim', 'dynamic_update_index_in_dim')
HOST = 'host / untraced'

_INSTR = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(')
_COMP = re.compile(r'^(?:ENTRY )?%([\w.\-]+) ')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_FRAME_ID = re.compile(r'stack_frame_id=(\d+)')
_KV = re.compile(r'(\w+)=(\d+)')
_CONTROL = ('while', 'call', 'conditional')


def _source_family(fn: str, path: str, line: int) -> Optional[str]:
  """The family of one source frame of flmjax / optax, or None (not a frame that decides)."""
  name = fn.rsplit('.', 1)[-1]
  text = linecache.getline(path, line)
  if 'optax' in path or path.endswith(('flmjax/optimizer.py', 'flmjax/training/faults.py')):
    return 'optimizer'
  if name in ('xpos_rotate',):
    return 'xPos / positions'
  if name in ('_attend', 'attention_mask') or path.endswith('flmjax/attention.py'):
    return 'attention'
  if name in ('token_losses', 'teacher_ce', 'mask_padded_vocab'):
    return 'softmax / loss'
  if name == 'layer_norm':
    return 'LayerNorm'
  if path.endswith('flmjax/model.py'):
    if 'einsum' in text:
      return 'matmul'
    if 'gelu' in text:
      return 'GeLU'
    if 'jnp.take(embed' in text:
      return 'embedding'
    if 'logit_scale' in text:
      return 'softmax / loss'
  if path.endswith('flmjax/training/step.py') and ('apply_updates' in text or 'tx.update' in text
                                                   or 'tree.norm' in text):
    return 'optimizer'
  return None


def _parse_stack_frames(text: str) -> Callable[[int], list[tuple[str, str, int]]]:
  """frame id -> [(function, file, line)] innermost first, from the module's frame tables."""
  section, files, fns, locs, frames = None, {}, {}, {}, {}
  for raw in text.splitlines():
    if raw in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      section = raw
      continue
    if not raw[:1].isdigit():  # a table's rows start with their id; anything else ends it
      section = None
      continue
    if section is None:
      continue
    key, _, rest = raw.partition(' ')
    if section in ('FileNames', 'FunctionNames'):
      (files if section == 'FileNames' else fns)[int(key)] = rest.strip().strip('"')
    else:
      kv = {k: int(v) for k, v in _KV.findall(rest)}
      (locs if section == 'FileLocations' else frames)[int(key)] = kv

  def chain(frame_id: int) -> list[tuple[str, str, int]]:
    out, seen = [], set()
    while frame_id in frames and frame_id not in seen:
      seen.add(frame_id)
      loc = locs.get(frames[frame_id]['file_location_id'], {})
      out.append((fns.get(loc.get('function_name_id'), ''), files.get(loc.get('file_name_id'), ''),
                  loc.get('line', 0)))
      frame_id = frames[frame_id].get('parent_frame_id', 0)
    return out

  return chain


def family_of_frames(frame_chains: Iterable[list[tuple[str, str, int]]], has_dot: bool) -> str:
  """One op's family from the stack frames of its instructions (fused members included)."""
  found = set()
  for chain in frame_chains:
    for fn, path, line in chain:  # innermost frame of our code / optax decides
      fam = _source_family(fn, path, line)
      if fam is not None:
        found.add(fam)
        break
  if has_dot:  # a contraction is a matmul unless it is the attention's q·k / p·v
    return 'attention' if 'attention' in found else 'matmul'
  found.discard('matmul')  # an einsum line's bias add / cast, not a contraction
  return next((f for f in FAMILIES if f in found), 'other')


def hlo_op_families(hlo_text: str) -> dict[str, str]:
  """Instruction name -> family for every instruction of a compiled module's text; control flow
  (while / call / conditional) is left out, its body's ops are timed themselves."""
  chain = _parse_stack_frames(hlo_text)
  comps: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
  current = None
  for raw in hlo_text.splitlines():
    m = _COMP.match(raw)
    if m and raw.rstrip().endswith('{'):
      current = m.group(1)
      continue
    m = _INSTR.match(raw)
    if m and current is not None:
      comps[current].append((m.group(1), m.group(2), raw))

  def members(comp: str, depth: int = 0) -> list[tuple[str, str]]:
    out = []
    for _, op, raw in comps.get(comp, []):
      out.append((op, raw))
      c = _CALLS.search(raw)
      if c and depth < 4 and op not in _CONTROL:
        out += members(c.group(1), depth + 1)
    return out

  families = {}
  for comp, instrs in comps.items():
    for name, op, raw in instrs:
      if op in _CONTROL or op in ('parameter', 'tuple', 'get-tuple-element', 'constant'):
        continue
      c = _CALLS.search(raw)
      inner = members(c.group(1)) if c and op not in _CONTROL else []
      every = [(op, raw)] + inner
      chains = [chain(int(f.group(1))) for _, r in every if (f := _FRAME_ID.search(r))]
      has_dot = any(o in ('dot', 'convolution') for o, _ in every)
      if not has_dot and any(k in raw for k in _SCAN_OPS):
        families[name] = 'layer scan'
      else:
        families[name] = family_of_frames(chains, has_dot)
  return families


def _union_length(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, -float('inf')
  for a, b in sorted(intervals):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def jax_profile(step: Callable[[], object], hlo_text: str, steps: int = 3) -> dict[str, float]:
  """Seconds per step by family (+ 'host'), from `steps` profiled calls of `step` (warm)."""
  import jax
  families = hlo_op_families(hlo_text)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(d, '**', '*perfetto_trace.json.gz'), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  per = collections.Counter()
  spans = []
  for e in events:
    fam = families.get(e.get('name', ''))
    if e.get('ph') == 'X' and fam is not None:
      per[fam] += e['dur'] * 1e-6 / steps
      spans.append((e['ts'], e['ts'] + e['dur']))
  busy = _union_length(spans) * 1e-6 / steps
  if not per:
    raise RuntimeError('the profile holds no XLA op events: this jax does not trace ops here')
  scale = busy / sum(per.values())  # ops that ran concurrently share their wall time
  out = {f: v * scale for f, v in per.items()}
  out[HOST] = max(wall / steps - busy, 0.0)
  return out


def torch_family(op: str) -> str:
  """A PyTorch aten op's family by name."""
  n = op.lower()
  if 'scaled_dot_product' in n or 'attention' in n or ('softmax' in n and 'log' not in n):
    return 'attention'
  if any(k in n for k in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::matmul', 'aten::linear')):
    return 'matmul'
  if any(k in n for k in ('log_softmax', 'nll_loss', 'cross_entropy')):
    return 'softmax / loss'
  if 'layer_norm' in n:
    return 'LayerNorm'
  if 'gelu' in n:
    return 'GeLU'
  if 'embedding' in n or 'index_select' in n:
    return 'embedding'
  if any(k in n for k in ('_foreach', 'adamw', 'addcdiv', 'lerp', 'norm', 'optimizer')):
    return 'optimizer'
  return 'other'


def torch_profile(step: Callable[[], object], steps: int = 3) -> dict[str, float]:
  """Seconds per step by family (+ 'host'): self CPU time of each aten op (all threads)."""
  from torch.profiler import ProfilerActivity, profile
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    wall = time.perf_counter() - t0
  per = collections.Counter()
  for ev in prof.key_averages():
    if ev.key.startswith('aten::') or ev.key.startswith('Optimizer'):
      per[torch_family(ev.key)] += ev.self_cpu_time_total * 1e-6 / steps
  out = dict(per)
  out[HOST] = max(wall / steps - sum(per.values()), 0.0)
  return out


def share_rows(profiles: dict[str, dict[str, float]]) -> list[list[str]]:
  """Table rows: family, then each side's share of its step (and ms)."""
  rows = []
  for fam in FAMILIES + (HOST,):
    if not any(fam in p for p in profiles.values()):
      continue
    row = [fam]
    for p in profiles.values():
      total = sum(p.values())
      row.append(f'{100 * p.get(fam, 0.0) / total:5.1f}% ({1e3 * p.get(fam, 0.0):.1f} ms)')
    rows.append(row)
  rows.append(['step (wall)'] + [f'{1e3 * sum(p.values()):.1f} ms' for p in profiles.values()])
  return rows
