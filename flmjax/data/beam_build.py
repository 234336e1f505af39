"""The token store's build as an Apache Beam pipeline: units → Reshuffle → build_unit in workers.

Beam only distributes `flmjax.data.store_build.build_unit` (the function the in-process build
runs too): each worker reads its unit's text, tokenizes it with the experiment's vocabulary and
writes the unit's shards and marker straight into the store directory; the driver assembles the
manifest from the markers afterwards. So any runner works with nothing but Beam's options: the
DirectRunner with `--direct_num_workers N --direct_running_mode multi_processing` on a
workstation, Dataflow / Flink / Spark on a cluster (the store then on storage every worker sees).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import apache_beam as beam
import ml_collections
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from flmjax.data import store_build, vocab
from flmjax.data.config import validate_data_config


class _BuildUnit(beam.DoFn):
  """Builds one unit per element; the config travels as JSON, the encoder is loaded per worker."""

  def __init__(self, cfg_json: str, root: str, key: str):
    self._cfg_json, self._root, self._key = cfg_json, root, key
    self._cfg: Any = None
    self._encoder: Any = None

  def setup(self) -> None:
    self._cfg = validate_data_config(ml_collections.ConfigDict(json.loads(self._cfg_json)))
    # A worker is a core: SentencePiece's own threads (data.tokenize_threads, for the
    # in-process build) would let one worker take two cores and leave nothing to a second.
    self._cfg.tokenize_threads = 1
    self._encoder = vocab.batch_encoder(self._cfg)

  def process(self, unit: Sequence[Any]):
    u = store_build.Unit(*unit)
    marker = store_build.build_unit(self._cfg, epath.Path(self._root), u, self._key,
                                    self._encoder)
    yield store_build.unit_tokens(marker)


def beam_runner(beam_args: Sequence[str]) -> store_build.RunUnits:
  """A `run_units` for `store_build.build_store` that runs the units as one Beam pipeline."""

  def run(cfg: Any, root: epath.Path, units: list[store_build.Unit], key: str) -> None:
    options = PipelineOptions(list(beam_args))
    with beam.Pipeline(options=options) as p:
      _ = (p
           | 'units' >> beam.Create([tuple(u) for u in units])
           | 'spread' >> beam.Reshuffle()
           | 'build' >> beam.ParDo(_BuildUnit(json.dumps(cfg.to_dict()), str(root), key))
           | 'tokens' >> beam.CombineGlobally(sum))

  return run
