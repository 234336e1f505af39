"""Symbolic mapping (FLM-101B SuperGLUE-IQ and CLUE-IQ, after Wei et al. 2023 'symbol tuning').

Classification tasks are posed in context with every natural-language label replaced by a random
symbol string such as `<30mFC%4Z>`, fixed per task and seed and shown in the demonstrations, so a
model must map labels from the context rather than recall them.  Each task is also built with its
original labels, over the same items and demonstrations, for comparison.

Data: the public release files, SuperGLUE `<Task>/{train,val}.jsonl` and CLUE
`<task>_public/{train,dev}.json` (one JSON object per line), under a configured directory, or (for
SuperGLUE) a prepared TFDS `super_glue/<task>` dataset.  The names of the common re-releases are
accepted too: FewCLUE (`cluewsc/`, `train_few_all.json`, `dev_few_all.json`, its labelled
`test_public.json`), OCNLI's own `train.50k.json` / `train.3k.json`.  Evaluation uses val/dev
(test labels are hidden; FewCLUE's labelled public test is chosen with clue_split='test_public');
demonstrations come from train, balanced over labels so every label's symbol is shown.  A task
whose train file lacks a label (FewGLUE's WSC has only True examples) is refused: the model
could not learn that label's symbol from the context, so its score would measure something else.
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import Any, Callable, Optional

from flmjax.evaluation.tasks import EvalDataError, Item, Task, read_json_lines, sample_limit
from flmjax.storage import paths

CATEGORY = 'symbolic_mapping'
_SYMBOL_CHARS = string.ascii_letters + string.digits + '%#&*+=?@!$'
_CLUE_TRAIN = ('train.json', 'train_few_all.json')
_CLUE_EVAL = ('dev.json', 'dev_few_all.json')   # CLUE's dev, or FewCLUE's
# `--clue_split`: which labelled CLUE file the items come from.  'dev' (the default) is the CLUE
# release's dev.json, or FewCLUE's dev_few_all.json in a FewCLUE folder; 'test_public' is
# FewCLUE's labelled public test.  The report names the file read.
CLUE_SPLITS = {'dev': _CLUE_EVAL, 'test_public': ('test_public.json',)}


@dataclasses.dataclass(frozen=True)
class Spec:
  """Where a task's files live, which fields a line needs, and how to render and label it."""

  name: str
  benchmark: str                      # 'superglue' | 'clue'
  dirs: tuple[str, ...]               # accepted folder names under data_dir (or data_dir/benchmark)
  train_files: tuple[str, ...]
  eval_files: tuple[str, ...]
  fields: tuple[str, ...]
  labels: tuple[Any, ...]             # raw label values as they appear in the files
  verbalizer: tuple[str, ...]         # the original label words, aligned with `labels`
  render: Callable[[dict], str]       # record -> prompt text ending where the label goes
  skip_labels: tuple[Any, ...] = ()   # raw labels meaning 'no gold' (OCNLI '-'), skipped

  @property
  def space(self) -> str:
    return ' ' if self.benchmark == 'superglue' else ''


def _target(r: dict, key: str) -> str:
  t = r['target']
  if not isinstance(t, dict) or key not in t:
    raise ValueError(f"'target' lacks {key!r}")
  return str(t[key])


SPECS = {s.name: s for s in (
    Spec('boolq', 'superglue', ('BoolQ', 'boolq'), ('train.jsonl',), ('val.jsonl',),
         ('passage', 'question', 'label'), (False, True), ('no', 'yes'),
         lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:"),
    Spec('wic', 'superglue', ('WiC', 'wic'), ('train.jsonl',), ('val.jsonl',),
         ('word', 'sentence1', 'sentence2', 'label'), (False, True), ('no', 'yes'),
         lambda r: (f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\nQuestion: Is "
                    f"the word '{r['word']}' used with the same meaning in both sentences?\n"
                    f"Answer:")),
    Spec('rte', 'superglue', ('RTE', 'rte'), ('train.jsonl',), ('val.jsonl',),
         ('premise', 'hypothesis', 'label'), ('entailment', 'not_entailment'), ('True', 'False'),
         lambda r: f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?\nAnswer:"),
    Spec('wsc', 'superglue', ('WSC', 'wsc'), ('train.jsonl',), ('val.jsonl',),
         ('text', 'target', 'label'), (False, True), ('no', 'yes'),
         lambda r: (f"Passage: {r['text']}\nQuestion: In the passage above, does the pronoun "
                    f"'{_target(r, 'span2_text')}' refer to '{_target(r, 'span1_text')}'?\n"
                    f"Answer:")),
    Spec('afqmc', 'clue', ('afqmc_public', 'afqmc', 'AFQMC'), _CLUE_TRAIN, _CLUE_EVAL,
         ('sentence1', 'sentence2', 'label'), ('0', '1'), ('否', '是'),
         lambda r: f"句子一：{r['sentence1']}\n句子二：{r['sentence2']}\n问题：两句话的意思相同吗？\n答案："),
    Spec('csl', 'clue', ('csl_public', 'csl', 'CSL'), _CLUE_TRAIN, _CLUE_EVAL,
         ('abst', 'keyword', 'label'), ('0', '1'), ('否', '是'),
         lambda r: (f"摘要：{r['abst']}\n关键词：{'，'.join(map(str, r['keyword']))}\n"
                    f"问题：这些关键词都是这篇摘要的关键词吗？\n答案：")),
    Spec('ocnli', 'clue', ('ocnli_public', 'ocnli', 'OCNLI'),
         _CLUE_TRAIN + ('train.50k.json', 'train.3k.json'), _CLUE_EVAL,
         ('sentence1', 'sentence2', 'label'),
         ('entailment', 'neutral', 'contradiction'), ('是', '可能', '否'),
         lambda r: f"{r['sentence1']}\n问题：{r['sentence2']}？\n答案：", skip_labels=('-',)),
    Spec('cluewsc2020', 'clue', ('cluewsc2020_public', 'cluewsc2020', 'CLUEWSC2020', 'cluewsc'),
         _CLUE_TRAIN, _CLUE_EVAL, ('text', 'target', 'label'), ('false', 'true'),
         ('否', '是'),
         lambda r: (f"{r['text']}\n问题：上文中的“{_target(r, 'span2_text')}”指的是"
                    f"“{_target(r, 'span1_text')}”吗？\n答案：")),
)}
SUPERGLUE = ('boolq', 'wic', 'rte', 'wsc')
CLUE = ('afqmc', 'csl', 'ocnli', 'cluewsc2020')
TASKS = SUPERGLUE + CLUE


def symbol_mapping(spec: Spec, seed: int) -> tuple[str, ...]:
  """Distinct random symbols like `<30mFC%4Z>` for the task's labels, fixed by (task, seed)."""
  rng = random.Random(f'symbols:{spec.name}:{seed}')
  out: list[str] = []
  while len(out) < len(spec.labels):
    s = '<' + ''.join(rng.choice(_SYMBOL_CHARS) for _ in range(8)) + '>'
    if s not in out:
      out.append(s)
  return tuple(out)


def _find_file(spec: Spec, data_dir: str, names: tuple[str, ...]) -> Optional[str]:
  for root in (data_dir, paths.join(data_dir, spec.benchmark),
               paths.join(data_dir, spec.benchmark.upper())):
    for d in spec.dirs:
      for n in names:
        path = paths.join(root, d, n)
        if paths.isfile(path):
          return path
  return None


def eval_files(spec: Spec, clue_split: str = 'dev') -> tuple[str, ...]:
  """Accepted names of the file the items come from (CLUE: per `clue_split`)."""
  if spec.benchmark != 'clue':
    return spec.eval_files
  if clue_split not in CLUE_SPLITS:
    raise ValueError(f'clue_split must be one of {list(CLUE_SPLITS)}, got {clue_split!r}')
  return CLUE_SPLITS[clue_split]


def _missing(spec: Spec, data_dir: str, train: Optional[str], dev: Optional[str],
             clue_split: str = 'dev') -> EvalDataError:
  """Names exactly which file is missing and the names it may have."""
  layout = 'SuperGLUE' if spec.benchmark == 'superglue' else 'CLUE'
  lacking = [(what, names) for what, names, found in
             (('train', spec.train_files, train),
              ('evaluation', eval_files(spec, clue_split), dev)) if not found]
  parts = [f'{what} file {paths.join(data_dir, spec.dirs[0], names[0])} (also accepted as '
           f'{" or ".join(names[1:]) or "no other name"})' for what, names in lacking]
  return EvalDataError(
      f'{CATEGORY}/{spec.name}: data not found under {data_dir!r}; missing the {layout} release '
      f'{"; ".join(parts)}. Folder names accepted: {list(spec.dirs)}, directly under the data '
      f'dir or under {spec.benchmark}/'
      + (f' (--clue_split {clue_split}; choices {list(CLUE_SPLITS)})' if layout == 'CLUE' else ''))


def _read_records(spec: Spec, path: str, dropped: Optional[dict[str, int]] = None
                  ) -> list[tuple[dict, int]]:
  """(record, label index) of each line; a malformed line is an error naming file:line.

  Lines whose label means 'no gold' (OCNLI's '-') are left out and counted in `dropped`.
  """
  out = []
  for where, rec in read_json_lines(path, f'{CATEGORY}/{spec.name}', spec.fields):
    raw = rec['label']
    if isinstance(spec.labels[0], str) and isinstance(raw, (bool, int)):
      raw = str(raw).lower()  # some copies store CLUE labels as numbers or booleans
    if raw in spec.skip_labels:
      if dropped is not None:
        key = f'of {paths.basename(path)} labelled {raw!r} (no gold label)'
        dropped[key] = dropped.get(key, 0) + 1
      continue
    if raw not in spec.labels or isinstance(raw, bool) != isinstance(spec.labels[0], bool):
      raise EvalDataError(f'{where}: label {raw!r} is not one of {list(spec.labels)}')
    try:
      spec.render(rec)
    except (ValueError, TypeError, KeyError) as e:
      raise EvalDataError(f'{where}: cannot render the record ({e})') from None
    out.append((rec, spec.labels.index(raw)))
  if not out:
    raise EvalDataError(f'{path}: {CATEGORY}/{spec.name}: no labelled example in the file')
  return out


_TFDS_FIELDS = {'boolq': ('passage', 'question'), 'wic': ('word', 'sentence1', 'sentence2'),
                'rte': ('premise', 'hypothesis'), 'wsc': ('text', 'span1_text', 'span2_text')}


def _tfds_records(spec: Spec, split: str, data_dir: Optional[str]) -> list[tuple[dict, int]]:
  """A prepared TFDS super_glue/<task> split as (record, label index); nothing is downloaded."""
  if spec.name not in _TFDS_FIELDS:
    raise EvalDataError(f'{CATEGORY}/{spec.name}: TFDS has no {spec.benchmark} data; use the '
                        f'release files with --data_dir')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    ds = tfds.load(f'super_glue/{spec.name}', split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001  (TFDS raises several types for 'not prepared')
    raise EvalDataError(f'{CATEGORY}/{spec.name}: TFDS dataset super_glue/{spec.name} split '
                        f'{split!r} is not prepared under {data_dir or "the default TFDS dir"} '
                        f'({type(e).__name__}: {e})') from None
  out = []
  for ex in tfds.as_numpy(ds):
    rec = {k: ex[k].decode('utf-8') for k in _TFDS_FIELDS[spec.name]}
    if spec.name == 'wsc':
      rec['target'] = {'span1_text': rec.pop('span1_text'), 'span2_text': rec.pop('span2_text')}
    out.append((rec, int(ex['label'])))  # TFDS label ids follow the order of spec.labels
  return out


def load_records(spec: Spec, data_dir: Optional[str], source: str = 'files',
                 clue_split: str = 'dev', dropped: Optional[dict[str, int]] = None):
  """(train, eval) records of one task from release files under data_dir, or from TFDS;
  eval items left out for lack of a gold label are counted in `dropped`."""
  if source == 'tfds':
    return (_tfds_records(spec, 'train', data_dir), _tfds_records(spec, 'validation', data_dir))
  if source != 'files':
    raise ValueError(f"{CATEGORY}: source must be 'files' or 'tfds', got {source!r}")
  if not data_dir:
    raise EvalDataError(f'{CATEGORY}/{spec.name}: no data directory given (pass --data_dir D '
                        f'with D/{spec.dirs[0]}/{eval_files(spec, clue_split)[0]}); nothing is '
                        f'downloaded')
  train, dev = find_files(spec, data_dir, clue_split)
  if train is None or dev is None:
    raise _missing(spec, data_dir, train, dev, clue_split)
  return _read_records(spec, train), _read_records(spec, dev, dropped)


def find_files(spec: Spec, data_dir: str, clue_split: str = 'dev'
               ) -> tuple[Optional[str], Optional[str]]:
  """(train path, eval path) of a task's release files under data_dir (None when absent)."""
  return (_find_file(spec, data_dir, spec.train_files),
          _find_file(spec, data_dir, eval_files(spec, clue_split)))


def check_label_coverage(spec: Spec, train: list[tuple[dict, int]], k: int, where: str) -> None:
  """Refuses demonstrations that cannot show every label's symbol.

  With a label absent from the demonstrations, the model cannot know which symbol stands for
  it, and a symbolic score would measure guessing, not mapping.
  """
  missing = [y for y in range(len(spec.labels)) if not any(ly == y for _, ly in train)]
  if missing:
    names = ', '.join(f'{spec.labels[y]!r} ({spec.verbalizer[y]})' for y in missing)
    raise EvalDataError(f'{CATEGORY}/{spec.name}: the demonstration data {where} has no example '
                        f'of label {names}, so its symbol could never be shown; use a train '
                        f'file with every label (e.g. the full SuperGLUE/CLUE release, not a '
                        f'few-shot subset such as FewGLUE)')
  if k < len(spec.labels):
    raise EvalDataError(f'{CATEGORY}/{spec.name}: {k} demonstration(s) cannot show all '
                        f'{len(spec.labels)} label symbols; use --shots {spec.name}='
                        f'{len(spec.labels)} or more')


def _balanced_shots(rng: random.Random, train: list[tuple[dict, int]], k: int, n_labels: int):
  """k demonstrations cycling over the labels (so every label's symbol is shown), shuffled."""
  by_label = [[r for r in train if r[1] == y] for y in range(n_labels)]
  shots = [rng.choice(by_label[i % n_labels]) for i in range(k)]
  rng.shuffle(shots)
  return shots


def make_tasks(name: str, data_dir: Optional[str], seed: int = 0, k_shot: int | None = None,
               source: str = 'files', limit: int | None = None,
               clue_split: str = 'dev') -> tuple[Task, Task]:
  """(symbolic, original) tasks for `name`: same items and demonstrations, different labels.

  k_shot defaults to one demonstration per label; `limit` samples eval items with `seed`;
  `clue_split` picks the CLUE evaluation file (see CLUE_SPLITS).
  """
  if name not in SPECS:
    raise ValueError(f'{CATEGORY}: unknown task {name!r}; known: {list(SPECS)}')
  spec = SPECS[name]
  dropped: dict[str, int] = {}
  train, dev = load_records(spec, data_dir, source, clue_split, dropped)
  if source == 'files':
    train_path, dev_path = find_files(spec, data_dir, clue_split)
    origin = f'{train_path} (demonstrations), {dev_path} (items)'
  else:
    train_path, origin = f'TFDS super_glue/{name} train', f'TFDS super_glue/{name}'
  k = len(spec.labels) if k_shot is None else k_shot
  check_label_coverage(spec, train, k, train_path)
  dev = sample_limit(dev, limit, seed, name)
  symbols = symbol_mapping(spec, seed)
  tasks = []
  for variant, names in (('symbolic', symbols), ('original', spec.verbalizer)):
    choices = tuple(spec.space + n for n in names)
    items = []
    for i, (rec, y) in enumerate(dev):
      rng = random.Random(f'shots:{name}:{seed}:{i}')
      shots = _balanced_shots(rng, train, k, len(spec.labels))
      prefix = ''.join(spec.render(r) + choices[sy] + '\n\n' for r, sy in shots)
      items.append(Item(prompt=prefix + spec.render(rec), answer=choices[y], choices=choices,
                        label=y))
    tasks.append(Task(name=f'{name}.{variant}', category=CATEGORY, items=tuple(items), k_shot=k,
                      source=origin, paper_k=len(spec.labels), min_k=len(spec.labels),
                      dropped=dropped))
  return tasks[0], tasks[1]
