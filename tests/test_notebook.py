"""The Colab demo notebook runs top to bottom and shows what it promises."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_growth_demo_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv('FLMJAX_DEMO_PRESET', 'smoke')  # section 6 trains CPU-sized in CI
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'growth_demo.ipynb'), as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}}
                          ).execute()
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.get('outputs', []) if o.get('output_type') == 'stream')
  diff_line = [l for l in text.splitlines() if l.startswith('max |logit difference|')]
  assert diff_line, text[-2000:]
  assert float(diff_line[0].split(':')[1]) <= 1e-5
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  # section 3's two PNGs, and sections 5 and 6 drawn after `%matplotlib inline` (flmjax.plot
  # selects Agg, under which plt.show() showed nothing)
  assert len(images) == 4
  assert "'The function" in text and "'中国的" in text
  assert 'FLOPs to reach the scratch final loss / scratch FLOPs:' in text
  stdout = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                     for o in c.get('outputs', []) if o.get('name') == 'stdout')
  assert 'flmjax from this clone' in stdout and ROOT not in stdout  # no developer's path
  saved = nbformat.read(os.path.join(ROOT, 'notebooks', 'growth_demo.ipynb'), as_version=4)
  assert not [o for c in saved.cells if c.cell_type == 'code' for o in c.get('outputs', [])
              if o.get('name') == 'stderr']  # saved without stderr noise
