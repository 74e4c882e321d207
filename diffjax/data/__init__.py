"""Data: random-access sources, Grain pipelines and converters. Knows no model, diffusion or
training."""

from diffjax.data.pipeline import PipelineOptions, iterate_once, make_dataset
from diffjax.data.sources import (ArrayRecordSource, ArraySource, GuardedSource, TFDSSource,
                                  digits_source, make_source)
