"""What a new user reads in their first hour (issue 41): the end-of-run summary of a run without
growth, several samples, eval's cut-prompt hint and the one place it is said, the data caches'
progress lines."""

from conftest import tiny_config, tiny_stages
from flmjax import plan
from flmjax.commands.sample import SEPARATOR, format_samples
from flmjax.evaluation import report
from flmjax.training.summary import format_summary, run_summary


def test_a_run_without_growth_does_not_claim_flops_saved():
  one = format_summary(run_summary(plan.stage_plan(tiny_config(5)), {}))
  assert '% saved' not in one and 'no growth' in one.splitlines()[-1]
  grown = format_summary(run_summary(plan.stage_plan(tiny_config(0, stages=tiny_stages())), {}))
  assert grown.splitlines()[-1].endswith('% saved') and '0.0% saved' not in grown


def test_several_samples_are_separated():
  assert format_samples(['only one']) == 'only one'
  assert format_samples(['The cat', '中国人']) == f'The cat\n{SEPARATOR}\n中国人'


def test_cut_prompts_are_reported_once_with_an_accepted_shot_count():
  row = report.TaskResult('multiple_key_retrieval', 'anti_interference', [1, 0], k_shot=1,
                          over_length=2, paper_k=1, min_k=0)
  warning = report.cut_warning(row, 32)
  assert '(--shots multiple_key_retrieval=0)' in warning and 'k in' not in warning
  table = report.format_table([row])
  assert table.count('prompts lost their beginning') == 1 and '\nover: ' not in table


def test_building_the_token_cache_says_what_it_builds(tmp_path, capfd):
  from flmjax import experiment
  from flmjax.data import pipeline
  corpus = tmp_path / 'en.txt'
  corpus.write_text(''.join(f'line {i} of a small corpus about cats and dogs\n'
                            for i in range(300)))
  cfg = experiment.default_data_config()
  cfg.update(source='bilingual', cache_dir=str(tmp_path / 'cache'), instruct_rate=0.0,
             teacher_rate=0.0, validation_fraction=0.1)
  cfg.rates.update(en=1.0, zh=0.0)
  cfg.en.update(kind='files', files=[str(corpus)])
  cfg.zh.update(kind='files', files=[str(corpus)])
  cfg.vocab.update(size=400)
  pipeline.load_stores(cfg, 'validation', ('en',))
  err = capfd.readouterr().err
  assert 'data: training the 400-piece SentencePiece vocabulary (first run only' in err, err
  assert 'data: building the token store (first run only' in err
  assert 'data: token store unit 1/' in err and 'data: token store built in' in err
  pipeline.load_stores(cfg, 'validation', ('en',))
  assert 'data:' not in capfd.readouterr().err  # cached: silent
