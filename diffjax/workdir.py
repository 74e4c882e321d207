"""The run folder: everything a run writes lives under it, and a second launch resumes it.

``<workdir>/config.json`` records the resolved config of the first launch. A later launch may
change how the run is driven (steps, logging, checkpoint cadence, sampling, mesh and sharding,
workers, gradient accumulation, evaluation, fault policies) but
not what is trained: a config that differs in method, data, model, diffusion, optimiser or seed is
refused with the differing fields named, so an experiment is never silently continued as
another one.
"""

from __future__ import annotations

import json
import pathlib
import sys

from diffjax.spec import ConfigError

# Fields that may differ between launches on the same workdir (prefix match).
_DRIVING_FIELDS = ("train.num_steps", "train.grad_accum", "logging.", "checkpoint.", "sample.",
                   "mesh.", "data.num_workers", "data.prefetch", "data.data_dir", "data.path",
                   "experiment", "eval.", "faults.", "estimate.", "encode.")


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def identity_differences(saved: dict, current: dict) -> list[str]:
  """Fields that define the experiment and differ between two config dicts."""
  a, b = _flatten(saved), _flatten(current)
  diffs = []
  for key in sorted(set(a) | set(b)):
    if key.startswith(_DRIVING_FIELDS):
      continue
    if key not in a:
      continue  # a field added to diffjax since the run began: see `added_fields`
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      diffs.append(f"{key}: workdir has {a.get(key, '<absent>')!r}, "
                   f"this launch has {b.get(key, '<absent>')!r}")
  return diffs


def added_fields(saved: dict, current: dict) -> list[str]:
  """Identity fields the run's config.json lacks: added to diffjax since the run began. They
  take their current values (new features default to the former behaviour)."""
  a, b = _flatten(saved), _flatten(current)
  return sorted(k for k in b if k not in a and not k.startswith(_DRIVING_FIELDS))


def prepare(workdir: str | pathlib.Path, config, *, write: bool = True) -> pathlib.Path:
  """Creates the workdir (checking it is writable), and saves or checks ``config.json``.

  Raises:
    ConfigError: the workdir holds a different experiment, or cannot be written.
  """
  workdir = pathlib.Path(workdir).absolute()
  current = json.loads(config.to_json_best_effort())
  path = workdir / "config.json"
  if path.exists():
    try:
      saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path} is not valid JSON ({e}); move it away to start afresh") from e
    if "method" not in saved:
      raise ConfigError(f"workdir {workdir} was written by diffjax before its method layer "
                        f"(config.json has no method section; its checkpoints hold the old "
                        f"one-network state); train in a new --workdir")
    added = added_fields(saved, current)
    if added:
      print(f"[diffjax] note: fields added to diffjax since this run began, at their current "
            f"values: {', '.join(f'{k}={_flatten(current)[k]!r}' for k in added)}",
            file=sys.stderr, flush=True)
    diffs = identity_differences(saved, current)
    if diffs:
      raise ConfigError(f"workdir {workdir} holds a different experiment; use another "
                        f"--workdir or the original config. Differences:\n  " +
                        "\n  ".join(diffs))
  if write:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      tmp = workdir / "config.json.tmp"
      tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
      tmp.replace(path)
    except OSError as e:
      raise ConfigError(f"cannot write to workdir {workdir}: {e}") from e
  return workdir
