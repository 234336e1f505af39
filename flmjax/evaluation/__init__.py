"""Evaluation harness: the FLM-101B IQ suite and knowledge benchmarks, for flmjax or HF models.

Modules, one job each:
  tasks            Item/Task types and the data-error type every reader raises
  engine           jitted log-likelihood scoring and KV-cached greedy generation (flmjax models)
  hf_backend       the same interface over a local Hugging Face causal LM
  iq_symbolic      SuperGLUE/CLUE classification with labels replaced by random symbols
  iq_rules         counting and replacement rules (generated)
  iq_patterns      head & tail, full repeating, head slicing (generated)
  iq_interference  multiple key retrieval, single/two supporting facts (generated, or bAbI files)
  words            the small word lists the generators draw from
  knowledge        MMLU, C-Eval, ARC, HellaSwag, TruthfulQA readers
  loading          restores an flmjax checkpoint sharded on its experiment's mesh, as an engine
  lm_eval_model    the lm-evaluation-harness model 'flmjax' (needs the lm_eval extra)
  runner           runs tasks on a backend, scores them, counts prompts cut to fit the context
  report           table with 95% intervals, paper reference numbers, JSON
The `flmjax eval` command itself lives with the other commands, in flmjax/commands/eval.py.
"""
