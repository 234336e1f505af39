"""bAbI: the reader of the standard text format (our own tiny stories in that format), the
--babi_dir switch, and the generated reconstruction looking like bAbI."""

import argparse
import collections
import os
import re

import pytest

from flmjax.commands import eval as eval_command
from flmjax.evaluation import iq_interference
from flmjax.evaluation.iq_interference import Difficulty
from flmjax.evaluation.tasks import EvalDataError
from test_eval_iq import solve_story

QA1_TEST = """1 Nora went to the cellar.
2 Omar journeyed to the porch.
3 Where is Nora? \tcellar\t1
4 Nora went back to the attic.
5 Omar moved to the studio.
6 Where is Nora? \tattic\t4
1 Omar travelled to the office.
2 Nora moved to the porch.
3 Where is Omar? \toffice\t1
"""
QA1_TRAIN = """1 Lucia went to the library.
2 Tomas moved to the garage.
3 Where is Tomas?\tgarage\t2
"""
QA2_TEST = """1 Nora got the kite there.
2 Nora went to the attic.
3 Where is the kite? | attic | 1 2
4 Nora discarded the kite.
5 Nora travelled to the porch.
6 Where is the kite? | attic | 4 2
"""
QA2_TRAIN = """1 Omar grabbed the scarf there.
2 Omar journeyed to the office.
3 Where is the scarf?\toffice\t1 2
"""


def write_babi(root):
  """qa1 in the release's en/ folder, qa2 (with '|' separators) at the top."""
  files = {os.path.join('en', 'qa1_single-supporting-fact_test.txt'): QA1_TEST,
           os.path.join('en', 'qa1_single-supporting-fact_train.txt'): QA1_TRAIN,
           'qa2_two-supporting-facts_test.txt': QA2_TEST,
           'qa2_two-supporting-facts_train.txt': QA2_TRAIN}
  for rel, text in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
  return str(root)


def test_parse_babi_contexts_are_the_story_so_far(tmp_path):
  root = write_babi(tmp_path)
  qs = iq_interference.parse_babi(os.path.join(root, 'en', 'qa1_single-supporting-fact_test.txt'))
  assert qs == [
      ('Nora went to the cellar. Omar journeyed to the porch.\nQuestion: Where is Nora?\nAnswer:',
       ' cellar'),
      ('Nora went to the cellar. Omar journeyed to the porch. Nora went back to the attic. '
       'Omar moved to the studio.\nQuestion: Where is Nora?\nAnswer:', ' attic'),
      ('Omar travelled to the office. Nora moved to the porch.\nQuestion: Where is Omar?\n'
       'Answer:', ' office')]
  qs2 = iq_interference.parse_babi(os.path.join(root, 'qa2_two-supporting-facts_test.txt'))
  assert [a for _, a in qs2] == [' attic', ' attic']
  assert all(solve_story(p) == a for p, a in qs + qs2)  # the answers follow from the stories


def test_babi_task_reads_test_questions_and_train_demonstrations(tmp_path):
  root = write_babi(tmp_path)
  t = iq_interference.make_task('single_supporting_fact', n_items=300, seed=0, babi_dir=root)
  assert len(t.items) == 3 and t.k_shot == 1
  assert t.source.startswith('bAbI qa1 release file') and t.source.endswith('_test.txt')
  for it in t.items:
    shot, query = it.prompt.split('\n\n')
    assert shot == ('Lucia went to the library. Tomas moved to the garage.\n'
                    'Question: Where is Tomas?\nAnswer: garage')
    assert 'Lucia' not in query
  two = iq_interference.make_task('two_supporting_facts', n_items=1, seed=3, babi_dir=root,
                                  k_shot=0)
  assert len(two.items) == 1 and two.items[0].answer == ' attic'
  keys = iq_interference.make_task('multiple_key_retrieval', n_items=2, babi_dir=root)
  assert keys.source.startswith('generated')  # bAbI has no key retrieval task


def test_babi_errors_name_file_and_line_or_the_expected_name(tmp_path):
  with pytest.raises(EvalDataError, match=r'two_supporting_facts: no bAbI qa2 test file .*'
                                          r'qa2_two-supporting-facts_test\.txt'):
    iq_interference.make_task('two_supporting_facts', babi_dir=str(tmp_path))
  bad = tmp_path / 'qa1_single-supporting-fact_test.txt'
  bad.write_text('1 Nora went to the cellar.\n3 Where is Nora?\tcellar\t1\n')
  with pytest.raises(EvalDataError, match=r'qa1_single-supporting-fact_test\.txt:2: .*does not '
                                          r'follow 1'):
    iq_interference.parse_babi(str(bad))
  bad.write_text('1 Nora went to the cellar.\n2 Where is Nora?\t\t1\n')
  with pytest.raises(EvalDataError, match=r'_test\.txt:2: .*question line needs'):
    iq_interference.parse_babi(str(bad))
  bad.write_text('Nora went to the cellar.\n')
  with pytest.raises(EvalDataError, match=r'_test\.txt:1: .*expected a line number'):
    iq_interference.parse_babi(str(bad))
  bad.write_text('1 Nora went to the cellar.\n2 Where is Nora?\tcellar\t1\n')
  with pytest.raises(EvalDataError, match=r'1-shot needs a bAbI train file or a test file with '
                                          r'several stories'):
    iq_interference.make_task('single_supporting_fact', babi_dir=str(tmp_path))


def test_babi_dir_flag_switches_the_source_in_the_report(tmp_path):
  parser = argparse.ArgumentParser()
  eval_command.add_eval_arguments(parser)
  args = parser.parse_args(['--checkpoint', 'W', '--suite', 'iq', '--babi_dir',
                            write_babi(tmp_path), '--tasks',
                            'single_supporting_fact,two_supporting_facts'])
  tasks, skipped = eval_command.build_tasks(args)
  assert [t.source.split(' release')[0] for t in tasks] == ['bAbI qa1', 'bAbI qa2']
  assert not skipped
  args.babi_dir = None
  tasks, _ = eval_command.build_tasks(args)
  assert all('reconstruction, not bAbI' in t.source for t in tasks)


def test_generated_stories_look_like_babi():
  verbs = collections.Counter()
  lengths = collections.defaultdict(list)
  for name in ('single_supporting_fact', 'two_supporting_facts'):
    task = iq_interference.make_task(name, n_items=300, seed=5, k_shot=0,
                                     difficulty=Difficulty(n_distractors=0))
    for it in task.items:
      story = it.prompt.split('\nQuestion:')[0]
      sentences = re.findall(r'[^.]+\.', story)
      lengths[name].append(len(sentences))
      for v in iq_interference._MOVE + iq_interference._TAKE + iq_interference._DROP:
        verbs[v] += sum(f' {v} the ' in s for s in sentences)
  assert all(verbs[v] for v in ('went back to', 'got', 'discarded', 'journeyed to', 'put down'))
  assert set(lengths['single_supporting_fact']) == {2, 4, 6, 8, 10}  # as bAbI's qa1 questions
  assert min(lengths['two_supporting_facts']) >= 4 and max(lengths['two_supporting_facts']) <= 20
  assert re.search(r'\w+ (?:got|grabbed|picked up|took) the \w+ there\.', ''.join(
      it.prompt for it in task.items))


def test_babi_runs_from_the_test_files_alone(tmp_path):
  root = str(tmp_path)
  path = os.path.join(root, 'en', 'qa1_single-supporting-fact_test.txt')
  os.makedirs(os.path.dirname(path))
  with open(path, 'w', encoding='utf-8') as f:
    f.write(QA1_TEST)
  zero = iq_interference.make_task('single_supporting_fact', babi_dir=root, k_shot=0)
  assert len(zero.items) == 3 and zero.items[0].prompt.startswith('Nora went to the cellar.')
  one = iq_interference.make_task('single_supporting_fact', babi_dir=root)  # the default 1-shot
  assert one.k_shot == 1 and 'other stories of the test file' in one.notes[0]
  for it in one.items:
    shot, question = it.prompt.rsplit('\n\n', 1)
    # The demonstration never comes from the question's own story.
    own_first = question.split(' ')[0]  # 'Nora' (story 1) or 'Omar' (story 2)
    assert not shot.startswith(own_first), it.prompt


def test_missing_babi_message_lists_every_path_searched_and_skip_missing_skips(tmp_path):
  with pytest.raises(EvalDataError) as e:
    iq_interference.make_task('two_supporting_facts', babi_dir=str(tmp_path))
  for sub in ('', 'en', os.path.join('tasks_1-20_v1-2', 'en'), 'en-10k',
              os.path.join('tasks_1-20_v1-2', 'en-10k')):
    assert os.path.join(str(tmp_path), sub, 'qa2_*_test.txt') in str(e.value)
  parser = argparse.ArgumentParser()
  eval_command.add_eval_arguments(parser)
  args = parser.parse_args(['--checkpoint', 'W', '--suite', 'iq', '--babi_dir', str(tmp_path),
                            '--tasks', 'two_supporting_facts,counting', '--skip_missing'])
  tasks, skipped = eval_command.build_tasks(args)
  assert [t.name for t in tasks] == ['counting']
  assert 'qa2_*_test.txt' in skipped['anti_interference']['two_supporting_facts']
