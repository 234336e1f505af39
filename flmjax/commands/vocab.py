"""`flmjax vocab`: train the SentencePiece vocabulary of an experiment's `data` section."""

from __future__ import annotations

import argparse


def add_vocab_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', required=True, help='experiment file whose `data` section to use')
  p.add_argument('--out', required=True, help='directory for spm.model')


def run_vocab(args: argparse.Namespace) -> int:
  from flmjax import data, experiment
  config = experiment.load_config(args.config, args.config_overrides)
  print(data.train_vocabulary(config.data, args.out))
  return 0
