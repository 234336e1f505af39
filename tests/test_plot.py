"""`flmjax plot` reads metrics.jsonl, finds growth events and writes real PNGs."""

import json

import pytest

from flmjax import plot


def _write(path, rows):
  path.mkdir(parents=True, exist_ok=True)
  with open(path / 'metrics.jsonl', 'w') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')


def _run(stages):
  rows, flops = [], 0.0
  for step in range(1, 13):
    stage = stages[min((step - 1) // 4, len(stages) - 1)]
    flops += 1e9 * (1 + stage)
    rows.append({'step': step, 'loss': 5.0 - step * 0.1, 'tokens': step * 1000, 'flops': flops,
                 'stage': stage})
    if step % 2 == 0:
      rows.append({'step': step, 'val_loss_en': 5.0 - step * 0.1, 'val_loss_zh': 5.5 - step * 0.1,
                   'tokens': step * 1000, 'flops': flops, 'stage': stage})
  return rows


def test_growth_events_and_series(tmp_path):
  rows = _run([0, 1, 2])
  events = plot.growth_events(rows)
  assert [e[2] for e in events] == [1, 2]
  assert [e[1] for e in events] == [4000.0, 8000.0]  # at the growth step: the old stage's last
  series = plot.val_series(rows)
  assert set(series) == {'val_loss_en', 'val_loss_zh'} and len(series['val_loss_en']) == 6


def test_resumed_steps_are_not_plotted_twice(tmp_path):
  rows = _run([0]) + [{'step': 4, 'val_loss_en': 1.0, 'tokens': 4000, 'flops': 4e9}]
  pts = plot.val_series(rows)['val_loss_en']
  assert len(pts) == 6 and (4e9, 4000.0, 1.0) in pts


def test_plot_writes_pngs_with_comparison(tmp_path):
  _write(tmp_path / 'grow', _run([0, 1, 2]))
  _write(tmp_path / 'scratch', _run([0]))
  paths = plot.plot_runs(str(tmp_path / 'grow'), str(tmp_path / 'scratch'))
  assert len(paths) == 2
  for p in paths:
    with open(p, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_malformed_metrics_line_names_file_and_line(tmp_path):
  (tmp_path / 'w').mkdir()
  (tmp_path / 'w' / 'metrics.jsonl').write_text('{"step": 1}\n{oops\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2'):
    plot.read_metrics(str(tmp_path / 'w'))


def test_missing_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no metrics file'):
    plot.read_metrics(str(tmp_path / 'nope'))


def test_growth_is_marked_at_the_growth_step_not_the_next_logged_record(tmp_path):
  """log_every=10, growth at step 25 (the old stage's last step is always logged), the new
  stage's first regular record at step 30; the grown model's `after_growth` evaluation at 25."""
  rows = [{'step': s, 'stage': 0, 'tokens': s * 100, 'flops': s * 1e9, 'val_loss_en': 3.0}
          for s in (10, 20, 25)]
  rows += [{'step': 25, 'stage': 1, 'tokens': 2500, 'flops': 25e9, 'after_growth': 1.0,
            'val_loss_en': 3.0},
           {'step': 30, 'stage': 1, 'tokens': 3000, 'flops': 30e9, 'val_loss_en': 2.9}]
  assert plot.growth_events(rows) == [(25e9, 2500.0, 1)]
  assert plot.growth_events([r for r in rows if not r.get('after_growth')]) == [(25e9, 2500.0, 1)]
