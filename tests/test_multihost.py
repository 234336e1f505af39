"""Two CPU processes on 127.0.0.1 (gloo collectives, 2 devices each) train on one global mesh and
reproduce the single-process losses."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, free_port, subprocess_env


@pytest.mark.slow
def test_two_processes_match_single_process_losses(baseline, tmp_path):
  _, want, _ = baseline
  wd = str(tmp_path / 'w')
  code = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, %r)
    from flmjax import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    from conftest import tiny_config, read_losses
    from flmjax import train
    c = tiny_config(6)
    c.mesh.update(data=2, fsdp=2, tensor=1)
    train.train(c, sys.argv[3])
    if jax.process_index() == 0:
      print('RESULT ' + json.dumps(read_losses(sys.argv[3])), flush=True)
  ''' % os.path.join(ROOT, 'tests'))
  addr = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen([sys.executable, '-c', code, addr, str(i), wd],
                            env=subprocess_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=480))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  line = [l for l in outs[0][0].splitlines() if l.startswith('RESULT ')][-1]
  got = {int(k): v for k, v in json.loads(line[len('RESULT '):]).items()}
  assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
