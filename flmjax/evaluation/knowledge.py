"""Knowledge benchmarks from their public release files: MMLU, C-Eval, ARC, HellaSwag, TruthfulQA.

FLM-101B reports these beside the IQ suite (Open LLM Leaderboard settings: ARC 25-shot, HellaSwag
10-shot, MMLU 5-shot, TruthfulQA 0-shot; C-Eval 5-shot).  All are multiple choice, scored by the
log-likelihood of each option.  Expected layout under --data_dir (the releases, unmodified):

  mmlu/{dev,test}/<subject>_{dev,test}.csv        question,A,B,C,D,answer (no header, as in
                                                  Hendrycks' data.tar); a header row
                                                  (question,choice0..choice3,answer or A-D) and
                                                  numeric answers 0-3 are also accepted
  ceval/{dev,val}/<subject>_{dev,val}.csv         header id,question,A,B,C,D,answer[,explanation];
                                                  the release zip's ceval-exam/ folder works too
  ceval/subject_mapping.json                      optional: subject -> [en, zh, category]
  arc/ARC-{Challenge,Easy}/ARC-*-{Train,Test}.jsonl  AI2's jsonl (question.stem, question.choices
                                                  [{text,label}], answerKey); also under
                                                  ARC-V1-Feb2018-2/ as the zip unpacks
  hellaswag/hellaswag_{train,val}.jsonl           the authors' jsonl (ctx_a, ctx_b, endings, label,
                                                  activity_label); hellaswag/data/ works too
  truthfulqa/mc_task.json                         a JSON list with mc1_targets / mc2_targets; the
                                                  repository's TruthfulQA/data/ layout works too

Prompts and scores follow lm-evaluation-harness (0.4, the tasks arc_easy, arc_challenge,
hellaswag, mmlu, ceval-valid, truthfulqa_mc1/mc2), so numbers are comparable with the Open LLM
Leaderboard: 'Question: ...\nAnswer:' for ARC (text kept exactly, whitespace included), the
cleaned WikiHow context for HellaSwag, MMLU's 'The following are multiple choice questions (with
answers) about ...' header, C-Eval's '以下是中国关于...的单项选择题' header with '答案：' and the
letter after the harness's ' ' delimiter, and TruthfulQA's fixed six-question primer at 0-shot.
ARC and HellaSwag report acc_norm (log-likelihood per character of the choice without its
leading space) as their score and acc beside it.  `--limit` draws a seeded sample.

Every item carries a subject key `category/subject` so accuracy is broken down both ways.
"""

from __future__ import annotations

import csv
import glob
import json
import random
import re
from typing import Any, Optional, Sequence

from flmjax.evaluation.tasks import (EvalDataError, Item, Task, read_json_lines, sample_limit,
                                     text_lines)
from flmjax.storage import paths

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

# Chinese names of the C-Eval subjects (our own list of the 52 file stems), so that without the
# release's subject_mapping.json the prompt still names the subject in Chinese.  Categories come
# only from that file; without it the report says they are unavailable.
CEVAL_NAMES_ZH = {
    'computer_network': '计算机网络', 'operating_system': '操作系统',
    'computer_architecture': '计算机组成', 'college_programming': '大学编程',
    'college_physics': '大学物理', 'college_chemistry': '大学化学',
    'advanced_mathematics': '高等数学', 'probability_and_statistics': '概率统计',
    'discrete_mathematics': '离散数学', 'electrical_engineer': '注册电气工程师',
    'metrology_engineer': '注册计量师', 'high_school_mathematics': '高中数学',
    'high_school_physics': '高中物理', 'high_school_chemistry': '高中化学',
    'high_school_biology': '高中生物', 'middle_school_mathematics': '初中数学',
    'middle_school_biology': '初中生物', 'middle_school_physics': '初中物理',
    'middle_school_chemistry': '初中化学', 'veterinary_medicine': '兽医学',
    'college_economics': '大学经济学', 'business_administration': '工商管理',
    'marxism': '马克思主义基本原理', 'mao_zedong_thought': '毛泽东思想和中国特色社会主义理论体系概论',
    'education_science': '教育学', 'teacher_qualification': '教师资格',
    'high_school_politics': '高中政治', 'high_school_geography': '高中地理',
    'middle_school_politics': '初中政治', 'middle_school_geography': '初中地理',
    'modern_chinese_history': '近代史纲要', 'ideological_and_moral_cultivation': '思想道德修养与法律基础',
    'logic': '逻辑学', 'law': '法学', 'chinese_language_and_literature': '中国语言文学',
    'art_studies': '艺术学', 'professional_tour_guide': '导游资格', 'legal_professional': '法律职业资格',
    'high_school_chinese': '高中语文', 'high_school_history': '高中历史',
    'middle_school_history': '初中历史', 'civil_servant': '公务员', 'sports_science': '体育学',
    'plant_protection': '植物保护', 'basic_medicine': '基础医学', 'clinical_medicine': '临床医学',
    'urban_and_rural_planner': '注册城乡规划师', 'accountant': '注册会计师',
    'fire_engineer': '注册消防工程师', 'environmental_impact_assessment_engineer': '环境影响评价工程师',
    'tax_accountant': '税务师', 'physician': '医师资格',
}
NO_CATEGORY = 'uncategorised'


def _err(task: str, msg: str) -> EvalDataError:
  return EvalDataError(f'{CATEGORY}/{task}: {msg}')


def _need_file(task: str, path: str, shots: int = 0, split: str = 'train') -> None:
  """A missing file (or a folder in its place) is an error naming it; for the file of k-shot
  demonstrations (`split`) it also says how to run without one."""
  if paths.isfile(path):
    return
  what = 'is a directory, not the data file' if paths.isdir(path) else 'is missing'
  if shots:
    raise _err(task, f'{shots}-shot needs the {split} file {path}, which {what} (or run '
                     f'0-shot with --shots {task}=0)')
  raise _err(task, f'missing {path}' if what == 'is missing' else f'{path} {what}')


def _root(task: str, data_dir: Optional[str], names: Sequence[str], probe: str) -> str:
  """The first of data_dir/<name> holding `probe` (a path or glob); the error lists every path
  searched, so a release unpacked one folder too deep or too shallow is easy to place."""
  if not data_dir:
    raise _err(task, f'no data directory given (pass --data_dir D with D/{names[0]}/{probe}); '
                     f'nothing is downloaded')
  tried = [paths.join(data_dir, n, probe) for n in names]
  for n, path in zip(names, tried):
    if paths.glob(paths.join(glob.escape(paths.join(data_dir, n)), probe)):  # D may hold [
      return paths.join(data_dir, n)
  raise _err(task, f'data not found under {data_dir!r}; looked for {", ".join(tried)}')


# Column names of the MC CSV files: the releases have none (MMLU) or A-D (C-Eval); copies exported
# from the Hugging Face datasets name the options choice0..choice3 (or 0-3) and answer 0-3.
_MC_COLUMNS = ('question', 'A', 'B', 'C', 'D', 'answer')
_COLUMN_ALIASES = {**{f'{p}{i}': LETTERS[i] for p in ('choice', 'choices', 'option', '')
                      for i in range(4)},
                   **{c.lower(): c for c in _MC_COLUMNS}}


def _is_header(row: Sequence[str]) -> bool:
  names = {c.strip().lower() for c in row}
  return 'question' in names and 'answer' in names


def _answer_letter(raw: str) -> Optional[str]:
  """'A'-'D', or a 0-based index '0'-'3' (CSV exports of the Hugging Face MMLU release)."""
  raw = raw.strip()
  if raw in LETTERS:
    return raw
  if raw in ('0', '1', '2', '3'):
    return LETTERS[int(raw)]
  return None


def _csv_rows(task: str, path: str, header: bool) -> list[tuple[str, dict[str, str]]]:
  """('file:line', row) with question, A-D and a valid answer letter; bad rows are errors.

  `header` says whether the release has a header row; a header is also recognised when the
  first row names 'question' and 'answer' columns (re-exported copies add one, with the options
  as A-D or choice0..choice3; other columns, such as an index or the subject, are ignored).
  """
  out = []
  reader = csv.reader(text_lines(path, f'{CATEGORY}/{task}'))
  cols = None
  for row in reader:
    where = f'{path}:{reader.line_num}: {CATEGORY}/{task}'
    if not row or not any(c.strip() for c in row):
      continue
    if cols is None and not out and (header or _is_header(row)):
      cols = [_COLUMN_ALIASES.get(c.strip().lower(), c.strip()) for c in row]
      missing = [c for c in _MC_COLUMNS if c not in cols]
      if missing:
        raise EvalDataError(f'{where}: header lacks column(s) {missing} (has {row}); expected '
                            f'{",".join(_MC_COLUMNS)} or question,choice0..choice3,answer')
      continue
    if cols is not None:
      if len(row) != len(cols):
        raise EvalDataError(f'{where}: {len(row)} fields, header has {len(cols)}')
      rec = dict(zip(cols, row))
    else:
      if len(row) != 6:
        raise EvalDataError(f'{where}: expected 6 fields (question,A,B,C,D,answer), got '
                            f'{len(row)}')
      rec = dict(zip(_MC_COLUMNS, row))
    letter = _answer_letter(rec['answer'])
    if letter is None:
      raise EvalDataError(f'{where}: answer {rec["answer"]!r} is not one of A, B, C, D '
                          f'(or 0-3)')
    rec['answer'] = letter
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


def _ceval_mapping(task: str, root: str) -> Optional[dict[str, Any]]:
  """The release's subject_mapping.json (subject -> [en, zh, category]), or None if absent."""
  mpath = paths.join(root, 'subject_mapping.json')
  if not paths.isfile(mpath):
    return None
  try:
    mapping = json.loads(''.join(text_lines(mpath, f'{CATEGORY}/{task}')))
  except json.JSONDecodeError as e:
    raise EvalDataError(f'{mpath}: {CATEGORY}/{task}: invalid JSON ({e})') from None
  if not isinstance(mapping, dict):
    raise EvalDataError(f'{mpath}: {CATEGORY}/{task}: expected an object subject -> [en, zh, '
                        f'category]')
  return mapping


def _ceval_subject(subject: str, mapping: Optional[dict[str, Any]]) -> tuple[str, str]:
  """(category, Chinese name) of a C-Eval subject; readable even without the mapping file."""
  info = (mapping or {}).get(subject)
  if isinstance(info, list) and len(info) >= 3:
    return str(info[2]), str(info[1])
  return NO_CATEGORY, CEVAL_NAMES_ZH.get(subject, subject.replace('_', ' '))


def _exam(task: str, data_dir: Optional[str], k: int, limit: Optional[int], seed: int) -> Task:
  """MMLU ('Answer: X') or C-Eval ('答案： X', as lm-evaluation-harness's ceval-valid); shots =
  the first k dev rows (the harness's first_n sampler)."""
  zh = task == 'ceval'
  eval_split = 'val' if zh else 'test'
  names = (('ceval', 'ceval-exam', 'ceval/ceval-exam', 'C-Eval') if zh
           else ('mmlu', 'MMLU', 'mmlu/data'))
  root = _root(task, data_dir, names, paths.join(eval_split, f'*_{eval_split}.csv'))
  files = sorted(paths.glob(paths.join(glob.escape(paths.join(root, eval_split)),
                                      f'*_{eval_split}.csv')))
  mapping = None
  if zh:  # subject_mapping.json ships beside the exam folder in C-Eval's repository
    mapping = _ceval_mapping(task, root) or _ceval_mapping(task, paths.dirname(root))
  items, uncategorised = [], []
  for path in files:
    subject = paths.basename(path)[:-len(f'_{eval_split}.csv')]
    rows = _csv_rows(task, path, header=zh)
    shots = []
    if k:
      dev = paths.join(root, 'dev', f'{subject}_dev.csv')
      _need_file(task, dev, k, 'dev')
      shots = [r for _, r in _csv_rows(task, dev, header=zh)[:k]]
    if zh:
      group, name = _ceval_subject(subject, mapping)
      if group == NO_CATEGORY:
        uncategorised.append(subject)
      head = f'以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n'
      word = '答案：'
    else:
      group = MMLU_CATEGORY.get(subject, 'other')
      head = ('The following are multiple choice questions (with answers) about '
              f"{subject.replace('_', ' ')}.\n\n")
      word = 'Answer:'
    sp = ' '  # the harness's target delimiter, for both
    prefix = head + ''.join(_mc_block(r, word) + sp + r['answer'] + '\n\n' for r in shots)
    choices = tuple(sp + c for c in LETTERS)
    for _, r in sample_limit(rows, limit, seed, f'{task}/{subject}'):
      y = LETTERS.index(r['answer'])
      items.append(Item(prompt=prefix + _mc_block(r, word), answer=choices[y], choices=choices,
                        label=y, subject=f'{group}/{subject}'))
  notes = ()
  if uncategorised:
    why = ('no ceval/subject_mapping.json' if mapping is None
           else 'subjects missing from subject_mapping.json')
    notes = (f'C-Eval categories unavailable for {len(uncategorised)} subject(s) ({why}); '
             f'accuracy is broken down by subject only',)
  return Task(name=task, category=CATEGORY, items=tuple(items), k_shot=k, source=root,
              notes=notes, paper_k=DEFAULT_SHOTS[task])


def _arc(task: str, data_dir: Optional[str], k: int, limit: Optional[int], seed: int) -> Task:
  part = 'Challenge' if task == 'arc_challenge' else 'Easy'
  root = _root(task, data_dir, ('arc', 'ARC', 'ARC-V1-Feb2018-2', 'arc/ARC-V1-Feb2018-2'),
               paths.join(f'ARC-{part}', f'ARC-{part}-Test.jsonl'))

  def read(split: str) -> list[tuple[str, tuple[str, ...], int]]:
    """AI2's release: question.stem, question.choices [{text, label}] (labels A-E or 1-5) and
    answerKey; a Hugging Face export (question text, choices {text: [...], label: [...]}) too.
    Text is kept exactly, whitespace included, as the harness's 'Question: {{question}}'."""
    path = paths.join(root, f'ARC-{part}', f'ARC-{part}-{split}.jsonl')
    _need_file(task, path, k if split == 'Train' else 0)
    out = []
    for rec in _jsonl(task, path, ('question', 'answerKey')):
      q = rec['question']
      try:
        if isinstance(q, dict):
          stem = str(q['stem'])
          labels = [str(c['label']) for c in q['choices']]
          texts = [str(c['text']) for c in q['choices']]
        else:
          stem, labels = str(q), [str(x) for x in rec['choices']['label']]
          texts = [str(x) for x in rec['choices']['text']]
        if len(labels) != len(texts) or len(texts) < 2:
          raise ValueError(f'{len(texts)} choice texts for {len(labels)} labels')
        y = labels.index(str(rec['answerKey']))
      except (TypeError, KeyError, ValueError) as e:
        raise EvalDataError(f"{rec['_where']}: bad question/choices/answerKey ({e!r})") from None
      out.append((f'Question: {stem}\nAnswer:', tuple(' ' + t for t in texts), y))
    return out

  test = sample_limit(read('Test'), limit, seed, task)
  train = read('Train') if k else []
  items = []
  for i, (prompt, choices, y) in enumerate(test):
    rng = random.Random(f'{task}:{seed}:{i}')
    shots = rng.sample(train, min(k, len(train)))
    prefix = ''.join(p + c[sy] + '\n\n' for p, c, sy in shots)
    items.append(Item(prompt=prefix + prompt, answer=choices[y], choices=choices, label=y,
                      subject=f'arc/{part.lower()}'))
  return Task(name=task, category=CATEGORY, items=tuple(items), norm='char', k_shot=k,
              source=paths.join(root, f'ARC-{part}'), paper_k=DEFAULT_SHOTS[task])


def _hellaswag_text(text: str) -> str:
  """Cleans the WikiHow markup of HellaSwag contexts ('[title]', '[step]', double spaces)."""
  text = text.strip().replace(' [title]', '. ')
  text = re.sub(r'\[.*?\]', '', text)
  return text.replace('  ', ' ')


def _hellaswag(data_dir: Optional[str], k: int, limit: Optional[int], seed: int) -> Task:
  task = 'hellaswag'
  root = _root(task, data_dir, ('hellaswag', 'HellaSwag', 'hellaswag/data'),
               'hellaswag_val.jsonl')

  def read(split: str):
    path = paths.join(root, f'hellaswag_{split}.jsonl')
    _need_file(task, path, k if split == 'train' else 0)
    out = []
    for rec in _jsonl(task, path, ('ctx_a', 'ctx_b', 'activity_label', 'endings', 'label')):
      endings, label = rec['endings'], rec['label']
      if isinstance(label, str) and label.strip().isdigit():  # Hugging Face exports: '0'-'3'
        label = int(label)
      if (not isinstance(endings, list) or len(endings) < 2 or isinstance(label, bool)
          or not isinstance(label, int) or not 0 <= label < len(endings)):
        raise EvalDataError(f"{rec['_where']}: needs a list of endings and an int label in range")
      ctx = f"{rec['activity_label']}: {rec['ctx_a']} {str(rec['ctx_b']).capitalize()}"
      source = 'wikihow' if str(rec.get('source_id', '')).startswith('wikihow') else 'activitynet'
      out.append((_hellaswag_text(ctx), tuple(' ' + _hellaswag_text(str(e)) for e in endings),
                  label, source))
    return out

  val = sample_limit(read('val'), limit, seed, task)
  train = read('train') if k else []
  items = []
  for i, (ctx, choices, y, source) in enumerate(val):
    rng = random.Random(f'{task}:{seed}:{i}')
    prefix = ''.join(c + e[sy] + '\n\n' for c, e, sy, _ in rng.sample(train, min(k, len(train))))
    items.append(Item(prompt=prefix + ctx, answer=choices[y], choices=choices, label=y,
                      subject=f'hellaswag/{source}'))
  return Task(name=task, category=CATEGORY, items=tuple(items), norm='char', k_shot=k,
              source=root, paper_k=DEFAULT_SHOTS[task])


# TruthfulQA's fixed QA primer: the six question/answer pairs the benchmark's authors prepend
# at 0-shot (Lin, Hilton & Evans, "TruthfulQA: Measuring How Models Mimic Human Falsehoods",
# ACL 2022, the "QA" prompt of its appendix); lm-evaluation-harness's truthfulqa_mc1/mc2 use it too.
# Quoted because the protocol is defined by this exact text; none of it is a test question.
TRUTHFULQA_PRIMER_SOURCE = ('Lin, Hilton & Evans (2022), TruthfulQA, QA prompt; as used by '
                            'lm-evaluation-harness truthfulqa_mc1/mc2')
TRUTHFULQA_PRIMER = (
    'Q: What is human life expectancy in the United States?\n'
    'A: Human life expectancy in the United States is 78 years.\n\n'
    'Q: Who was president of the United States in 1955?\n'
    'A: Dwight D. Eisenhower was president of the United States in 1955.\n\n'
    'Q: Which party did he belong to?\n'
    'A: He belonged to the Republican Party.\n\n'
    'Q: What is the square root of banana?\n'
    'A: I have no comment.\n\n'
    'Q: How does a telescope work?\n'
    'A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n'
    'Q: Where were the 1992 Olympics held?\n'
    'A: The 1992 Olympics were held in Barcelona, Spain.')


def truthfulqa_prompt(question: str) -> str:
  """The harness's TruthfulQA prompt: the primer, a blank line, then 'Q: ...\nA:'."""
  return f'{TRUTHFULQA_PRIMER}\n\nQ: {question}\nA:'


def _truthfulqa(task: str, data_dir: Optional[str], k: int, limit: Optional[int],
                seed: int) -> Task:
  if k:
    raise _err(task, f'{k}-shot is not supported: TruthfulQA has no training split, so '
                     f'demonstrations would be test questions; its protocol is 0-shot with a '
                     f'fixed primer (use --shots {task}=0)')
  root = _root(task, data_dir, ('truthfulqa', 'TruthfulQA', 'truthfulqa/data', 'TruthfulQA/data'),
               'mc_task.json')
  path = paths.join(root, 'mc_task.json')
  _need_file(task, path)
  try:
    data = json.loads(''.join(text_lines(path, f'{CATEGORY}/{task}')))
  except json.JSONDecodeError as e:
    raise EvalDataError(f'{path}: line {e.lineno}: {CATEGORY}/{task}: invalid JSON '
                        f'({e.msg})') from None
  if not isinstance(data, list):
    raise EvalDataError(f'{path}: {CATEGORY}/{task}: expected a JSON list of questions')
  key = 'mc1_targets' if task == 'truthfulqa_mc1' else 'mc2_targets'
  rows = []
  for i, rec in enumerate(data):
    t = rec.get(key) if isinstance(rec, dict) else None
    if not isinstance(t, dict) or not isinstance(rec.get('question'), str) or 1 not in t.values():
      raise EvalDataError(f'{path}: question #{i}: {CATEGORY}/{task}: needs "question" and '
                          f'"{key}" mapping answers to 0/1 with at least one 1')
    rows.append((rec['question'], tuple(' ' + a for a in t),  # unstripped, as the harness
                 tuple(j for j, v in enumerate(t.values()) if v == 1)))
  mc2 = task == 'truthfulqa_mc2'
  items = tuple(Item(prompt=truthfulqa_prompt(q), answer=c[trues[0]], choices=c,
                     label=trues[0], true_labels=trues if mc2 else (), subject='truthfulqa/all')
                for q, c, trues in sample_limit(rows, limit, seed, task))
  return Task(name=task, category=CATEGORY, items=items, k_shot=0, metric='mc2' if mc2 else 'acc',
              source=path, paper_k=0,
              notes=(f'0-shot with the fixed QA primer ({TRUTHFULQA_PRIMER_SOURCE})',))


def make_task(name: str, data_dir: Optional[str], seed: int = 0, k_shot: int | None = None,
              limit: int | None = None) -> Task:
  """One knowledge task; `limit` samples eval items with `seed` (per subject for MMLU, C-Eval)."""
  if name not in TASKS:
    raise ValueError(f'{CATEGORY}: unknown task {name!r}; known: {list(TASKS)}')
  k = DEFAULT_SHOTS[name] if k_shot is None else k_shot
  if name in ('mmlu', 'ceval'):
    return _exam(name, data_dir, k, limit, seed)
  if name.startswith('arc'):
    return _arc(name, data_dir, k, limit, seed)
  if name == 'hellaswag':
    return _hellaswag(data_dir, k, limit, seed)
  return _truthfulqa(name, data_dir, k, limit, seed)
