"""Tiny benchmark files in the public release formats, written by the tests (no tests here)."""

import csv
import json
import os


def _jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + '\n')


def write_superglue(root):
  for split, n in (('train', 6), ('val', 4)):
    _jsonl(os.path.join(root, 'BoolQ', f'{split}.jsonl'), [
        {'question': f'is {i} even', 'idx': i, 'label': i % 2 == 0,
         'passage': f'The number {i} is {("odd", "even")[i % 2 == 0]}.'} for i in range(n)])
    _jsonl(os.path.join(root, 'WiC', f'{split}.jsonl'), [
        {'word': 'bank', 'sentence1': f'The bank {i}.', 'sentence2': f'A river bank {i}.',
         'idx': i, 'label': i % 2 == 1, 'start1': 4, 'end1': 8, 'start2': 8, 'end2': 12}
        for i in range(n)])
    _jsonl(os.path.join(root, 'RTE', f'{split}.jsonl'), [
        {'premise': f'Sam has {i} cats.', 'hypothesis': 'Sam has cats.', 'idx': i,
         'label': 'entailment' if i else 'not_entailment'} for i in range(n)])
    _jsonl(os.path.join(root, 'WSC', f'{split}.jsonl'), [
        {'text': f'Ann thanked Bea because she {i} helped.', 'idx': i, 'label': i % 2 == 0,
         'target': {'span1_text': 'Bea', 'span1_index': 2, 'span2_text': 'she', 'span2_index': 4}}
        for i in range(n)])


def write_clue(root):
  for split, n in (('train', 6), ('dev', 4)):
    _jsonl(os.path.join(root, 'afqmc_public', f'{split}.json'), [
        {'sentence1': f'花呗怎么还款{i}', 'sentence2': '怎么还花呗', 'label': str(i % 2)}
        for i in range(n)])
    _jsonl(os.path.join(root, 'csl_public', f'{split}.json'), [
        {'id': i, 'abst': f'本文研究了第{i}种方法。', 'keyword': ['方法', '研究'], 'label': str(i % 2)}
        for i in range(n)])
    _jsonl(os.path.join(root, 'ocnli_public', f'{split}.json'), [
        {'sentence1': f'他有{i}本书。', 'sentence2': '他有书', 'genre': 'news', 'id': i,
         'label': ('entailment', 'neutral', 'contradiction', '-')[i % 4]} for i in range(n + 1)])
    _jsonl(os.path.join(root, 'cluewsc2020_public', f'{split}.json'), [
        {'target': {'span2_index': 5, 'span1_index': 0, 'span1_text': '小明', 'span2_text': '他'},
         'idx': i, 'label': 'true' if i % 2 else 'false', 'text': f'小明说他第{i}个到。'}
        for i in range(n)])


def _csv(path, rows, header=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8', newline='') as f:
    w = csv.writer(f)
    if header:
      w.writerow(header)
    w.writerows(rows)


def write_knowledge(root):
  for subject in ('abstract_algebra', 'world_religions'):
    for split, n in (('dev', 5), ('test', 3)):
      _csv(os.path.join(root, 'mmlu', split, f'{subject}_{split}.csv'),
           [[f'{subject} question {i}, with a comma?', 'one', 'two', 'three', 'four', 'ABCD'[i % 4]]
            for i in range(n)])
  for split, n in (('dev', 5), ('val', 3)):
    _csv(os.path.join(root, 'ceval', split, f'computer_network_{split}.csv'),
         [[i, f'问题{i}', '甲', '乙', '丙', '丁', 'ABCD'[i % 4]] for i in range(n)],
         header=['id', 'question', 'A', 'B', 'C', 'D', 'answer'])
  with open(os.path.join(root, 'ceval', 'subject_mapping.json'), 'w', encoding='utf-8') as f:
    json.dump({'computer_network': ['Computer Network', '计算机网络', 'STEM']}, f,
              ensure_ascii=False)
  for part in ('Challenge', 'Easy'):
    for split, n in (('Train', 4), ('Test', 3)):
      _jsonl(os.path.join(root, 'arc', f'ARC-{part}', f'ARC-{part}-{split}.jsonl'), [
          {'id': f'q{i}', 'answerKey': 'ABCD'[i % 4] if i % 2 else str(1 + i % 4),
           'question': {'stem': f'Which is item {i}?', 'choices': [
               {'text': f'option {j}', 'label': 'ABCD'[j] if i % 2 else str(j + 1)}
               for j in range(4)]}} for i in range(n)])
  for split, n in (('train', 4), ('val', 3)):
    _jsonl(os.path.join(root, 'hellaswag', f'hellaswag_{split}.jsonl'), [
        {'ind': i, 'activity_label': 'Cooking', 'ctx_a': f'A man cracks egg {i}.',
         'ctx_b': 'then he', 'ctx': f'A man cracks egg {i}. then he', 'split': split,
         'split_type': 'indomain', 'source_id': 'activitynet~v_x' if i % 2 else 'wikihow~1',
         'endings': ['stirs [title] it.', 'sleeps.', 'flies.', 'sings.'], 'label': i % 4}
        for i in range(n)])
  os.makedirs(os.path.join(root, 'truthfulqa'), exist_ok=True)
  with open(os.path.join(root, 'truthfulqa', 'mc_task.json'), 'w', encoding='utf-8') as f:
    json.dump([{'question': f'What happens {i}?',
                'mc1_targets': {'Nothing.': 1, 'Magic.': 0, 'Doom.': 0},
                'mc2_targets': {'Nothing.': 1, 'Not much.': 1, 'Magic.': 0}} for i in range(4)], f)


def write_all(root):
  write_superglue(str(root))
  write_clue(str(root))
  write_knowledge(str(root))
  return str(root)
