"""Runs a task on a backend: choice items by log-likelihood, generation items by exact match."""

from __future__ import annotations

import math
import re
from typing import Sequence

from flmjax.evaluation.engine import Backend
from flmjax.evaluation.report import TaskResult
from flmjax.evaluation.tasks import Item, Task

N_EXAMPLES = 3   # predictions kept in the report per task, for a reader to eyeball


def _mc2(logprobs: Sequence[float], true_labels: Sequence[int]) -> float:
  """Probability mass on the true answers, normalised over all options (TruthfulQA MC2)."""
  top = max(logprobs)
  p = [math.exp(x - top) for x in logprobs]
  return sum(p[i] for i in true_labels) / sum(p)


def stop_strings(prompt: str) -> tuple[str, ...]:
  """The newline, plus the field labels of the prompt (' Input:', ' Answer:', ...).

  A tokenizer that normalises newlines to spaces makes a model continue with the next
  demonstration on the same line; its field label then marks the end of the answer.
  """
  labels = dict.fromkeys(re.findall(r'(?:^|\n)([^\s:：][^:：\n]{0,15}[:：])', prompt))
  return ('\n',) + tuple(' ' + l for l in labels)


def _generate_grouped(backend: Backend, prompts: Sequence[str], budget: int) -> list[str]:
  """Generates in batches of prompts that share their stop strings (usually all of them)."""
  groups: dict[tuple[str, ...], list[int]] = {}
  for i, p in enumerate(prompts):
    groups.setdefault(stop_strings(p), []).append(i)
  outs = [''] * len(prompts)
  for stops, idx in groups.items():
    for i, o in zip(idx, backend.generate([prompts[i] for i in idx], budget, stop=stops)):
      outs[i] = o
  return outs


def _tail(text: str, n: int = 160) -> str:
  return text if len(text) <= n else '…' + text[-n:]


def count_over_length(backend: Backend, choice: Sequence[Item], gen: Sequence[Item],
                      budget: int) -> int:
  """Items whose prompt does not fit in the model's context with its answer: the backend keeps
  their last tokens (losing the earliest demonstrations, or the start of a 0-shot prompt), which
  the report must say."""
  enc = backend.tokenizer.encode
  over = sum(backend.scoring_overflows(it.prompt, max(len(enc(c)) for c in it.choices))
             for it in choice)
  return over + sum(backend.generation_overflows(it.prompt, budget) for it in gen)


def count_cut_continuations(backend: Backend, choice: Sequence[Item]) -> int:
  """Items with a choice longer than the whole context: only its last tokens are scored."""
  return sum(any(backend.continuation_overflows(c) for c in it.choices) for it in choice)


def evaluate(backend: Backend, task: Task) -> TaskResult:
  """Scores every item of `task`; returns per-item scores and a few example predictions."""
  choice = [it for it in task.items if it.is_choice]
  gen = [it for it in task.items if not it.is_choice]
  scores, examples = [], []
  raw_hits: list[float] = []   # acc by the unnormalised log-likelihood (the harness's 'acc')
  enc = backend.tokenizer.encode
  budget = min(task.max_new_tokens, max(len(enc(it.answer)) for it in gen) + 4) if gen else 0
  over_length = count_over_length(backend, choice, gen, budget)
  cut_choices = count_cut_continuations(backend, choice)
  if choice:
    reqs = [(it.prompt, c) for it in choice for c in it.choices]
    flat = backend.loglikelihood(reqs)
    pos = 0
    for it in choice:
      s = flat[pos:pos + len(it.choices)]
      pos += len(it.choices)
      norm = [x.normalized(task.norm) for x in s]
      pred = max(range(len(norm)), key=norm.__getitem__)
      if task.metric == 'mc2':
        scores.append(_mc2([x.logprob for x in s], it.true_labels))
      else:
        scores.append(float(pred == it.label))
        raw = max(range(len(s)), key=lambda j: s[j].logprob)
        raw_hits.append(float(raw == it.label))
      if len(examples) < N_EXAMPLES:
        examples.append({'prompt_tail': _tail(it.prompt), 'gold': it.answer,
                         'prediction': it.choices[pred]})
  if gen:
    outs = _generate_grouped(backend, [it.prompt for it in gen], budget)
    for it, out in zip(gen, outs):
      scores.append(float(out.strip() == it.answer.strip()))
      if len(examples) < N_EXAMPLES:
        examples.append({'prompt_tail': _tail(it.prompt), 'gold': it.answer, 'prediction': out})
  subjects = [it.subject for it in choice] + [it.subject for it in gen]
  normalised = task.metric == 'acc' and task.norm != 'sum' and choice and not gen
  also = {'acc': sum(raw_hits) / len(raw_hits)} if normalised else {}
  score_name = (task.metric if not normalised
                else 'acc_norm' if task.norm == 'char' else f'acc_per_{task.norm}')
  return TaskResult(name=task.name, category=task.category, scores=scores, subjects=subjects,
                    k_shot=task.k_shot, metric=task.metric, examples=examples,
                    over_length=over_length, cut_choices=cut_choices, source=task.source,
                    notes=list(task.notes), paper_k=task.paper_k, min_k=task.min_k,
                    dropped=dict(task.dropped), score_name=score_name, also=also)
