"""The data-preparation job (``launch.py --mode prep``): config -> `PrepSpec` -> input plan ->
the Beam pipeline of `diffjax.data.prep.pipeline`. Needs no JAX devices."""

from __future__ import annotations

import os
import pathlib

from diffjax.data.prep import pipeline
from diffjax.data.prep.inputs import InputError, plan_inputs
from diffjax.data.prep.spec import build_prep_spec
from diffjax.fields import ConfigError


def prepare(config, workdir: str) -> dict:
  """Runs the whole preparation; returns the manifest. Bad input raises ConfigError before
  anything is read or written."""
  spec = build_prep_spec(config)
  try:
    plan = plan_inputs(spec.kind, spec.path, spec.splits, spec.captions, spec.tfds_name,
                       spec.tfds_data_dir, spec.limit)
  except InputError as e:
    raise ConfigError(f"config.source: {e}") from e
  previous = pipeline.check_output_dir(workdir, spec)
  try:
    import apache_beam  # noqa: F401
  except ImportError as e:
    raise ConfigError("--mode prep needs Apache Beam and OpenCV: pip install -r "
                      "requirements-prep.txt") from e
  old_umask = os.umask(0o077)  # owner-only files and folders, here and in worker processes
  try:
    return pipeline.run(spec, plan, pathlib.Path(workdir), previous)
  finally:
    os.umask(old_umask)
