"""Knowledge benchmarks from their public release files: MMLU, C-Eval, ARC, HellaSwag, TruthfulQA.

FLM-101B reports these beside the IQ suite (Open LLM Leaderboard settings: ARC 25-shot, HellaSwag
10-shot, MMLU 5-shot, TruthfulQA 0-shot; C-Eval 5-shot).  All are multiple choice, scored by the
log-likelihood of each option.  Expected layout under --data_dir (the releases, unmodified):

  mmlu/{dev,test}/<subject>_{dev,test}.csv        no header: question,A,B,C,D,answer
  ceval/{dev,val}/<subject>_{dev,val}.csv         header id,question,A,B,C,D,answer[,explanation]
  ceval/subject_mapping.json                      optional: subject -> [en, zh, category]
  arc/ARC-{Challenge,Easy}/ARC-*-{Train,Test}.jsonl
  hellaswag/hellaswag_{train,val}.jsonl
  truthfulqa/mc_task.json                         a JSON list with mc1_targets / mc2_targets

Every item carries a subject key `category/subject` so accuracy is broken down both ways.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import re
from typing import Any, Optional, Sequence

from flmjax.evaluation.tasks import EvalDataError, Item, Task, read_json_lines

CATEGORY = 'knowledge'
TASKS = ('mmlu', 'ceval', 'arc_easy', 'arc_challenge', 'hellaswag', 'truthfulqa_mc1',
         'truthfulqa_mc2')
DEFAULT_SHOTS = {'mmlu': 5, 'ceval': 5, 'arc_easy': 25, 'arc_challenge': 25, 'hellaswag': 10,
                 'truthfulqa_mc1': 0, 'truthfulqa_mc2': 0}
LETTERS = 'ABCD'

_MMLU_GROUPS = {
    'STEM': 'abstract_algebra anatomy astronomy college_biology college_chemistry '
            'college_computer_science college_mathematics college_physics computer_security '
            'conceptual_physics electrical_engineering elementary_mathematics high_school_biology '
            'high_school_chemistry high_school_computer_science high_school_mathematics '
            'high_school_physics high_school_statistics machine_learning',
    'humanities': 'formal_logic high_school_european_history high_school_us_history '
                  'high_school_world_history international_law jurisprudence logical_fallacies '
                  'moral_disputes moral_scenarios philosophy prehistory professional_law '
                  'world_religions',
    'social_sciences': 'econometrics high_school_geography high_school_government_and_politics '
                       'high_school_macroeconomics high_school_microeconomics '
                       'high_school_psychology human_sexuality professional_psychology '
                       'public_relations security_studies sociology us_foreign_policy',
    'other': 'business_ethics clinical_knowledge college_medicine global_facts human_aging '
             'management marketing medical_genetics miscellaneous nutrition '
             'professional_accounting professional_medicine virology',
}
MMLU_CATEGORY = {s: g for g, names in _MMLU_GROUPS.items() for s in names.split()}


def _err(task: str, msg: str) -> EvalDataError:
  return EvalDataError(f'{CATEGORY}/{task}: {msg}')


def _root(task: str, data_dir: Optional[str], names: Sequence[str], expected: str) -> str:
  if not data_dir:
    raise _err(task, f'no data directory given (pass --data_dir D with D/{expected}); nothing '
                     f'is downloaded')
  for n in names:
    path = os.path.join(data_dir, n)
    if os.path.isdir(path):
      return path
  raise _err(task, f'data not found under {data_dir!r}; expected '
                   f'{os.path.join(data_dir, expected)}')


def _csv_rows(task: str, path: str, header: bool) -> list[tuple[str, dict[str, str]]]:
  """('file:line', row) with question, A-D and a valid answer letter; bad rows are errors."""
  out = []
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.reader(f)
    cols = None
    for row in reader:
      where = f'{path}:{reader.line_num}: {CATEGORY}/{task}'
      if not row or not any(c.strip() for c in row):
        continue
      if header and cols is None:
        cols = [c.strip() for c in row]
        missing = [c for c in ('question', 'A', 'B', 'C', 'D', 'answer') if c not in cols]
        if missing:
          raise EvalDataError(f'{where}: header lacks column(s) {missing} (has {cols})')
        continue
      if header:
        if len(row) != len(cols):
          raise EvalDataError(f'{where}: {len(row)} fields, header has {len(cols)}')
        rec = dict(zip(cols, row))
      else:
        if len(row) != 6:
          raise EvalDataError(f'{where}: expected 6 fields (question,A,B,C,D,answer), got '
                              f'{len(row)}')
        rec = dict(zip(('question', 'A', 'B', 'C', 'D', 'answer'), row))
      rec['answer'] = rec['answer'].strip()
      if rec['answer'] not in LETTERS:
        raise EvalDataError(f'{where}: answer {rec["answer"]!r} is not one of A, B, C, D')
      out.append((where, rec))
  if not out:
    raise EvalDataError(f'{path}: {CATEGORY}/{task}: no question in the file')
  return out


def _jsonl(task: str, path: str, fields: Sequence[str]) -> list[dict[str, Any]]:
  out = []
  for where, rec in read_json_lines(path, f'{CATEGORY}/{task}', fields):
    rec['_where'] = where
    out.append(rec)
  if not out:
    raise EvalDataError(f'{path}: {CATEGORY}/{task}: no record in the file')
  return out


def _mc_block(rec: dict[str, str], answer_word: str) -> str:
  opts = ''.join(f'\n{c}. {rec[c]}' for c in LETTERS)
  return f"{rec['question'].strip()}{opts}\n{answer_word}"


def _exam(task: str, data_dir: Optional[str], k: int, limit: Optional[int]) -> Task:
  """MMLU (English, 'Answer: X') or C-Eval (Chinese, '答案：X'); shots = first k dev rows."""
  zh = task == 'ceval'
  eval_split = 'val' if zh else 'test'
  root = _root(task, data_dir, ('ceval', 'C-Eval') if zh else ('mmlu', 'MMLU', 'mmlu/data'),
               f'{task}/{eval_split}/<subject>_{eval_split}.csv')
  files = sorted(glob.glob(os.path.join(root, eval_split, f'*_{eval_split}.csv')))
  if not files:
    raise _err(task, f'no {os.path.join(root, eval_split, "<subject>_" + eval_split + ".csv")} '
                     f'files')
  mapping = {}
  mpath = os.path.join(root, 'subject_mapping.json')
  if zh and os.path.isfile(mpath):
    with open(mpath, encoding='utf-8') as f:
      try:
        mapping = json.load(f)
      except ValueError as e:
        raise EvalDataError(f'{mpath}: {CATEGORY}/{task}: invalid JSON ({e})') from None
  items = []
  for path in files:
    subject = os.path.basename(path)[:-len(f'_{eval_split}.csv')]
    rows = _csv_rows(task, path, header=zh)
    shots = []
    if k:
      dev = os.path.join(root, 'dev', f'{subject}_dev.csv')
      if not os.path.isfile(dev):
        raise _err(task, f'{k}-shot needs the dev file {dev}, which is missing')
      shots = [r for _, r in _csv_rows(task, dev, header=zh)[:k]]
    if zh:
      info = mapping.get(subject, [subject, subject, 'all'])
      group, name = (info[2] if len(info) > 2 else 'all'), (info[1] if len(info) > 1 else subject)
      head = f'以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n'
      word, sp = '答案：', ''
    else:
      group = MMLU_CATEGORY.get(subject, 'other')
      head = ('The following are multiple choice questions (with answers) about '
              f"{subject.replace('_', ' ')}.\n\n")
      word, sp = 'Answer:', ' '
    prefix = head + ''.join(_mc_block(r, word) + sp + r['answer'] + '\n\n' for r in shots)
    choices = tuple(sp + c for c in LETTERS)
    for _, r in rows[:limit]:
      y = LETTERS.index(r['answer'])
      items.append(Item(prompt=prefix + _mc_block(r, word), answer=choices[y], choices=choices,
                        label=y, subject=f'{group}/{subject}'))
  return Task(name=task, category=CATEGORY, items=tuple(items), k_shot=k)


def _arc(task: str, data_dir: Optional[str], k: int, limit: Optional[int], seed: int) -> Task:
  part = 'Challenge' if task == 'arc_challenge' else 'Easy'
  root = _root(task, data_dir, ('arc', 'ARC', 'ARC-V1-Feb2018-2'),
               f'arc/ARC-{part}/ARC-{part}-Test.jsonl')

  def read(split: str) -> list[tuple[str, tuple[str, ...], int]]:
    path = os.path.join(root, f'ARC-{part}', f'ARC-{part}-{split}.jsonl')
    if not os.path.isfile(path):
      raise _err(task, f'missing {path}')
    out = []
    for rec in _jsonl(task, path, ('question', 'answerKey')):
      q = rec['question']
      try:
        labels = [str(c['label']) for c in q['choices']]
        texts = tuple(' ' + str(c['text']).strip() for c in q['choices'])
        y = labels.index(str(rec['answerKey']))
        stem = str(q['stem']).strip()
      except (TypeError, KeyError, ValueError) as e:
        raise EvalDataError(f"{rec['_where']}: bad question/choices/answerKey ({e!r})") from None
      out.append((f'Question: {stem}\nAnswer:', texts, y))
    return out

  test = read('Test')[:limit]
  train = read('Train') if k else []
  items = []
  for i, (prompt, choices, y) in enumerate(test):
    rng = random.Random(f'{task}:{seed}:{i}')
    shots = rng.sample(train, min(k, len(train)))
    prefix = ''.join(p + c[sy] + '\n\n' for p, c, sy in shots)
    items.append(Item(prompt=prefix + prompt, answer=choices[y], choices=choices, label=y,
                      subject=f'arc/{part.lower()}'))
  return Task(name=task, category=CATEGORY, items=tuple(items), norm='byte', k_shot=k)


def _hellaswag_text(text: str) -> str:
  """Cleans the WikiHow markup of HellaSwag contexts ('[title]', '[step]', double spaces)."""
  text = text.strip().replace(' [title]', '. ')
  text = re.sub(r'\[.*?\]', '', text)
  return text.replace('  ', ' ')


def _hellaswag(data_dir: Optional[str], k: int, limit: Optional[int], seed: int) -> Task:
  task = 'hellaswag'
  root = _root(task, data_dir, ('hellaswag', 'HellaSwag'), 'hellaswag/hellaswag_val.jsonl')

  def read(split: str):
    path = os.path.join(root, f'hellaswag_{split}.jsonl')
    if not os.path.isfile(path):
      raise _err(task, f'missing {path}')
    out = []
    for rec in _jsonl(task, path, ('ctx_a', 'ctx_b', 'activity_label', 'endings', 'label')):
      endings = rec['endings']
      if (not isinstance(endings, list) or len(endings) < 2
          or not isinstance(rec['label'], int) or not 0 <= rec['label'] < len(endings)):
        raise EvalDataError(f"{rec['_where']}: needs a list of endings and an int label in range")
      ctx = f"{rec['activity_label']}: {rec['ctx_a']} {str(rec['ctx_b']).capitalize()}"
      source = 'wikihow' if str(rec.get('source_id', '')).startswith('wikihow') else 'activitynet'
      out.append((_hellaswag_text(ctx), tuple(' ' + _hellaswag_text(str(e)) for e in endings),
                  rec['label'], source))
    return out

  val = read('val')[:limit]
  train = read('train') if k else []
  items = []
  for i, (ctx, choices, y, source) in enumerate(val):
    rng = random.Random(f'{task}:{seed}:{i}')
    prefix = ''.join(c + e[sy] + '\n\n' for c, e, sy, _ in rng.sample(train, min(k, len(train))))
    items.append(Item(prompt=prefix + ctx, answer=choices[y], choices=choices, label=y,
                      subject=f'hellaswag/{source}'))
  return Task(name=task, category=CATEGORY, items=tuple(items), norm='byte', k_shot=k)


def _truthfulqa(task: str, data_dir: Optional[str], k: int, limit: Optional[int]) -> Task:
  root = _root(task, data_dir, ('truthfulqa', 'TruthfulQA'), 'truthfulqa/mc_task.json')
  path = os.path.join(root, 'mc_task.json')
  if not os.path.isfile(path):
    raise _err(task, f'missing {path}')
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except ValueError as e:
      raise EvalDataError(f'{path}: line {e.lineno}: {CATEGORY}/{task}: invalid JSON '
                          f'({e.msg})') from None
  if not isinstance(data, list):
    raise EvalDataError(f'{path}: {CATEGORY}/{task}: expected a JSON list of questions')
  key = 'mc1_targets' if task == 'truthfulqa_mc1' else 'mc2_targets'
  rows = []
  for i, rec in enumerate(data):
    t = rec.get(key) if isinstance(rec, dict) else None
    mc1 = rec.get('mc1_targets') if isinstance(rec, dict) else None
    if (not isinstance(t, dict) or not t or not isinstance(rec.get('question'), str)
        or not isinstance(mc1, dict) or 1 not in mc1.values() or 1 not in t.values()):
      raise EvalDataError(f'{path}: question #{i}: {CATEGORY}/{task}: needs "question" and '
                          f'"{key}" mapping answers to 0/1 with at least one 1')
    best = next(a for a, v in mc1.items() if v == 1)
    rows.append((rec['question'].strip(), tuple(' ' + a for a in t),
                 tuple(j for j, v in enumerate(t.values()) if v == 1), ' ' + best))
  # Demonstrations are the first k questions with their best answer; they are not evaluated.
  prefix = ''.join(f'Q: {q}\nA:{best}\n\n' for q, _, _, best in rows[:k])
  mc2 = task == 'truthfulqa_mc2'
  items = tuple(Item(prompt=f'{prefix}Q: {q}\nA:', answer=c[trues[0]], choices=c,
                     label=trues[0], true_labels=trues if mc2 else (), subject='truthfulqa/all')
                for q, c, trues, _ in rows[k:][:limit])
  return Task(name=task, category=CATEGORY, items=items, k_shot=k, metric='mc2' if mc2 else 'acc')


def make_task(name: str, data_dir: Optional[str], seed: int = 0, k_shot: int | None = None,
              limit: int | None = None) -> Task:
  """One knowledge task; `limit` caps eval items (per subject for MMLU and C-Eval)."""
  if name not in TASKS:
    raise ValueError(f'{CATEGORY}: unknown task {name!r}; known: {list(TASKS)}')
  k = DEFAULT_SHOTS[name] if k_shot is None else k_shot
  if name in ('mmlu', 'ceval'):
    return _exam(name, data_dir, k, limit)
  if name.startswith('arc'):
    return _arc(name, data_dir, k, limit, seed)
  if name == 'hellaswag':
    return _hellaswag(data_dir, k, limit, seed)
  return _truthfulqa(name, data_dir, k, limit)
