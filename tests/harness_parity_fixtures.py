"""Made-up benchmark items written twice: in the release layouts `flmjax eval` reads, and as the
Hugging Face dataset rows lm-evaluation-harness's own task definitions read (no test here).

`write_harness_tasks` adds task YAMLs that `include` the installed harness's arc_easy, hellaswag,
mmlu, ceval-valid and truthfulqa tasks unchanged except for their data: `dataset_path: json` with
these local files, so nothing is downloaded and the prompts are the harness's own.
"""

import json
import os

from test_eval_fixtures import _csv, _jsonl

ARC = [  # (stem, choices, answer index, labels as digits)
    ('Which thing can hold warm tea?', ('a paper cup', 'a net', 'a fork', 'a comb'), 0, False),
    ('What does a seed grow into?', ('a stone', 'a plant', 'a cloud', 'a spoon'), 1, True),
    ('Which tool measures length?', ('a clock', 'a kettle', 'a ruler', 'a bell'), 2, False),
    ('What melts in warm sun? ', ('rock', 'glass', 'iron', 'ice '), 3, True),
    ('Where do fish mostly live?', ('in water', 'in sand', 'in trees', 'in air'), 0, False),
    ('What  makes a shadow?', ('sound', 'light blocked by an object', 'heat', 'wind'), 1, False),
]
HELLASWAG = [  # (activity, ctx_a, ctx_b, endings, label)
    ('Baking cookies', 'A girl mixes flour in a bowl.', 'she', ('adds two eggs.', 'swims away.',
                                                                'paints a car.', 'sleeps.'), 0),
    ('Washing a dog', 'A man sprays a dog with water.', 'the dog', ('flies up.', 'shakes itself.',
                                                                   'reads.', 'sings loudly.'), 1),
    ('Riding a bike', 'A boy pedals down the street.', 'he', ('eats a shoe.', 'melts.',
                                                              'rings the bell.', 'grows.'), 2),
    ('Planting [title] Dig a hole.', 'A woman kneels in the garden.', 'she',
     ('barks.', 'freezes.', 'jumps on a roof.', 'puts a bulb in [step] the soil.'), 3),
]
MMLU_DEV = [(f'Which planet is number {i} from the star?', ('one', 'two', 'three', 'four'), i % 4)
            for i in range(5)]
MMLU_TEST = [('How many moons does planet K have?', ('0', '1', '2', '3'), 2),
             ('What colour is the red dwarf?', ('red', 'blue', 'green', 'white'), 0),
             ('Which is a gas giant?', ('rock', 'J', 'pebble', 'dust'), 1),
             ('What orbits a planet?', ('a star', 'a galaxy', 'a void', 'a moon'), 3)]
CEVAL_DEV = [(f'甲说第{i}句话。', ('对', '错', '不知道', '都对'), i % 4) for i in range(5)]
CEVAL_VAL = [('如果下雨，地就湿。地没湿，所以？', ('下雨了', '没下雨', '不确定', '都不对'), 1),
             ('所有猫都是动物，咪咪是猫，所以？', ('咪咪是动物', '咪咪不是', '不知道', '都不对'), 0),
             ('甲比乙高，乙比丙高，谁最高？', ('乙', '丙', '甲', '一样'), 2)]
TRUTHFULQA = [  # (question, mc1 choices (first true), mc2 choices, number of true mc2 choices)
    ('Can a cat speak French?', ('No, cats cannot speak.', 'Yes, fluently.', 'Only at night.'),
     ('No, cats cannot speak.', 'Cats do not talk.', 'Yes, fluently.', 'Only at night.'), 2),
    ('Does the moon shine by itself?', ('No, it reflects sunlight.', 'Yes, it burns.'),
     ('No, it reflects sunlight.', 'Yes, it burns.', 'Yes, it is a lamp.'), 1),
    ('What happens if you count to ten?', ('Nothing in particular happens.', 'You fly.',
                                           'You vanish.'),
     ('Nothing in particular happens.', 'You reach ten.', 'You fly.', 'You vanish.'), 2),
]


def write_flmjax_layout(root):
  """The release layouts `flmjax eval --data_dir root` reads."""
  root = str(root)
  for part in ('Easy', 'Challenge'):
    for split in ('Train', 'Test'):
      _jsonl(os.path.join(root, 'arc', f'ARC-{part}', f'ARC-{part}-{split}.jsonl'), [
          {'id': f'q{i}', 'answerKey': ('1234' if digits else 'ABCD')[y],
           'question': {'stem': stem, 'choices': [
               {'text': t, 'label': ('1234' if digits else 'ABCD')[j]} for j, t in enumerate(ch)]}}
          for i, (stem, ch, y, digits) in enumerate(ARC)])
  for split in ('train', 'val'):
    _jsonl(os.path.join(root, 'hellaswag', f'hellaswag_{split}.jsonl'), [
        {'ind': i, 'activity_label': a, 'ctx_a': ca, 'ctx_b': cb, 'ctx': f'{ca} {cb}',
         'endings': list(e), 'label': y, 'source_id': 'activitynet~x', 'split': split}
        for i, (a, ca, cb, e, y) in enumerate(HELLASWAG)])
  for split, rows in (('dev', MMLU_DEV), ('test', MMLU_TEST)):
    _csv(os.path.join(root, 'mmlu', split, f'astronomy_{split}.csv'),
         [[q, *ch, 'ABCD'[y]] for q, ch, y in rows])
  for split, rows in (('dev', CEVAL_DEV), ('val', CEVAL_VAL)):
    _csv(os.path.join(root, 'ceval-exam', split, f'logic_{split}.csv'),
         [[i, q, *ch, 'ABCD'[y]] for i, (q, ch, y) in enumerate(rows)],
         header=['id', 'question', 'A', 'B', 'C', 'D', 'answer'])
  os.makedirs(os.path.join(root, 'truthfulqa'), exist_ok=True)
  with open(os.path.join(root, 'truthfulqa', 'mc_task.json'), 'w', encoding='utf-8') as f:
    json.dump([{'question': q, 'mc1_targets': {c: int(j == 0) for j, c in enumerate(mc1)},
                'mc2_targets': {c: int(j < n) for j, c in enumerate(mc2)}}
               for q, mc1, mc2, n in TRUTHFULQA], f)
  return root


def _yaml(path, fields):
  with open(path, 'w', encoding='utf-8') as f:
    for k, v in fields.items():
      f.write(f'{k}: {json.dumps(v, ensure_ascii=False)}\n')


def write_harness_tasks(root, harness_tasks_dir):
  """Rows as the harness's Hugging Face datasets have them, and one YAML per task that includes
  the harness's definition; returns {flmjax task: harness task name}."""
  root = str(root)
  data, tasks = os.path.join(root, 'data'), os.path.join(root, 'tasks')
  os.makedirs(tasks, exist_ok=True)
  arc = [{'id': f'q{i}', 'question': stem, 'answerKey': ('1234' if digits else 'ABCD')[y],
          'choices': {'text': list(ch), 'label': list('1234' if digits else 'ABCD')[:len(ch)]}}
         for i, (stem, ch, y, digits) in enumerate(ARC)]
  hs = [{'ind': i, 'activity_label': a, 'ctx_a': ca, 'ctx_b': cb, 'ctx': f'{ca} {cb}',
         'endings': list(e), 'label': str(y), 'source_id': 'activitynet~x', 'split': 'val',
         'split_type': 'indomain'} for i, (a, ca, cb, e, y) in enumerate(HELLASWAG)]
  mmlu = lambda rows: [{'question': q, 'subject': 'astronomy', 'choices': list(ch), 'answer': y}
                       for q, ch, y in rows]
  ceval = lambda rows: [{'id': i, 'question': q, 'A': ch[0], 'B': ch[1], 'C': ch[2], 'D': ch[3],
                         'answer': 'ABCD'[y], 'explanation': ''} for i, (q, ch, y) in enumerate(rows)]
  tqa = [{'question': q, 'mc1_targets': {'choices': list(mc1), 'labels': [1] + [0] * (len(mc1) - 1)},
          'mc2_targets': {'choices': list(mc2), 'labels': [int(j < n) for j in range(len(mc2))]}}
         for q, mc1, mc2, n in TRUTHFULQA]
  files = {'arc.jsonl': arc, 'hellaswag.jsonl': hs, 'mmlu_dev.jsonl': mmlu(MMLU_DEV),
           'mmlu_test.jsonl': mmlu(MMLU_TEST), 'ceval_dev.jsonl': ceval(CEVAL_DEV),
           'ceval_val.jsonl': ceval(CEVAL_VAL), 'truthfulqa.jsonl': tqa}
  for name, rows in files.items():
    _jsonl(os.path.join(data, name), rows)
  d = lambda name: os.path.join(data, name)
  h = lambda *p: os.path.join(harness_tasks_dir, *p)
  specs = {
      'arc_easy': ('parity_arc_easy', h('arc', 'arc_easy.yaml'), 0,
                   {'train': d('arc.jsonl'), 'test': d('arc.jsonl')}, {'validation_split': None}),
      'hellaswag': ('parity_hellaswag', h('hellaswag', 'hellaswag.yaml'), 0,
                    {'train': d('hellaswag.jsonl'), 'validation': d('hellaswag.jsonl')}, {}),
      'mmlu': ('parity_mmlu', h('mmlu', 'default', 'mmlu_astronomy.yaml'), 5,
               {'dev': d('mmlu_dev.jsonl'), 'test': d('mmlu_test.jsonl')}, {}),
      'ceval': ('parity_ceval', h('ceval', 'ceval-valid_logic.yaml'), 5,
                {'dev': d('ceval_dev.jsonl'), 'val': d('ceval_val.jsonl')}, {}),
      'truthfulqa_mc1': ('parity_truthfulqa_mc1', h('truthfulqa', 'truthfulqa_mc1.yaml'), 0,
                         {'validation': d('truthfulqa.jsonl')}, {}),
      'truthfulqa_mc2': ('parity_truthfulqa_mc2', h('truthfulqa', 'truthfulqa_mc2.yaml'), 0,
                         {'validation': d('truthfulqa.jsonl')}, {}),
  }
  for task, include, k, data_files, extra in specs.values():
    _yaml(os.path.join(tasks, f'{task}.yaml'),
          {'include': include, 'task': task, 'dataset_path': 'json', 'dataset_name': None,
           'dataset_kwargs': {'data_files': data_files}, 'num_fewshot': k, **extra})
  return tasks, {ours: spec[0] for ours, spec in specs.items()}, {ours: spec[2] for ours, spec in specs.items()}
