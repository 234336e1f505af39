"""The Colab demo notebook runs top to bottom and shows what it promises."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_growth_demo_notebook_executes(tmp_path):
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
  assert len(images) == 2
  assert "'The function" in text and "'中国的" in text
