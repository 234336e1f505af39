"""lm-evaluation-harness model `flmjax`: the harness's own tasks run on flmjax checkpoints.

Importing this module registers the class with `lm_eval.api.registry.register_model('flmjax')`
(lm-eval 0.4 has no plugin entry point, so registration is the import).  Then

  import lm_eval, flmjax.evaluation.lm_eval_model
  lm_eval.simple_evaluate(model='flmjax', model_args='checkpoint=W,batch_size=8', tasks=[...])

or, from the command line, the harness's own CLI after the import:

  python -m flmjax.evaluation.lm_eval_model run --model flmjax --model_args checkpoint=W \
      --tasks arc_easy,hellaswag --output_path out/

Requests run on the engine `flmjax eval` uses (`loading.load_engine`: BOS first, the same
left-truncation, the same batching), so an item's log-likelihood is the one `flmjax eval` computes.
The harness sends each continuation with its leading delimiter (' B'), as our tasks do; text pairs
go to the engine unchanged.  Generation is greedy only (the engine's decoder).  Needs the `lm_eval`
extra (pip install "flmjax[lm_eval]").
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from flmjax.evaluation import loading
from flmjax.evaluation.engine import Backend


@register_model('flmjax')
class FlmjaxLM(LM):
  """An flmjax checkpoint (`checkpoint=W`) or any evaluation `Backend` as a harness model."""

  def __init__(self, checkpoint: Optional[str] = None, batch_size: Any = 8,
               max_len: Any = None, max_gen_toks: Any = 256, backend: Optional[Backend] = None,
               max_batch_size: Any = None, device: Any = None, **unused: Any):
    super().__init__()
    del max_batch_size, device  # the engine places the model on the devices present
    if unused:
      raise ValueError(f'flmjax model: unknown model_args {sorted(unused)}; accepted: '
                       f'checkpoint, batch_size, max_len, max_gen_toks')
    if (backend is None) == (checkpoint is None):
      raise ValueError('flmjax model: give model_args checkpoint=W (an flmjax work dir)')
    if backend is None:
      bs = 8 if str(batch_size).startswith('auto') else int(batch_size)
      backend, self.description = loading.load_engine(
          checkpoint, batch_size=bs, max_len=int(max_len) if max_len else None)
    else:
      self.description = {'backend': type(backend).__name__}
    self.backend = backend
    self.max_gen_toks = int(max_gen_toks)

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    scores = self.backend.loglikelihood([tuple(r.args) for r in requests])
    return [(s.logprob, s.greedy) for s in scores]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    return self.backend.loglikelihood_rolling([r.args[0] for r in requests])

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy continuations, cut at the request's `until` strings; batched per setting."""
    groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for i, r in enumerate(requests):
      kwargs = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
      if kwargs.get('do_sample') or float(kwargs.get('temperature') or 0) > 0:
        raise ValueError('flmjax model: generation is greedy only (do_sample=False, '
                         'temperature=0)')
      until = kwargs.get('until') or ()
      until = (until,) if isinstance(until, str) else tuple(until)
      budget = int(kwargs.get('max_gen_toks') or self.max_gen_toks)
      groups.setdefault((until, budget), []).append(i)
    out = [''] * len(requests)
    for (until, budget), idx in groups.items():
      texts = self.backend.generate([requests[i].args[0] for i in idx], budget, stop=until)
      for i, t in zip(idx, texts):
        out[i] = t
    return out


def main(argv: Optional[list[str]] = None) -> None:
  """The harness's command line with the `flmjax` model registered (by importing this module)."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  if argv is not None:
    sys.argv = [sys.argv[0]] + list(argv)
  cli_evaluate()


if __name__ == '__main__':
  main()
