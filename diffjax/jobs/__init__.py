"""The jobs `launch.py` runs, one module each (train, sample, evaluate, ref_stats, estimate,
sweep, prep, encode) over the shared run set-up in `diffjax.jobs.common`; no job imports
another. This module is what `launch.py` calls: the job table, distributed start-up and sweeps."""

from __future__ import annotations

import importlib
import os
from typing import Callable

from diffjax.fields import ConfigError


def _job(module: str, function: str) -> Callable:
  """A job's entry point, imported when the job runs (``--help`` and prep stay fast)."""

  def call(config, workdir):
    return getattr(importlib.import_module(f"diffjax.jobs.{module}"), function)(config, workdir)

  return call


JOBS = {"prep": _job("prep", "prepare"), "train": _job("train", "train"),
        "sample": _job("sample", "sample"), "eval": _job("evaluate", "evaluate"),
        "ref_stats": _job("ref_stats", "ref_stats"), "estimate": _job("estimate", "estimate"),
        "encode": _job("encode", "encode")}


def run(mode: str, config, workdir: str):
  if mode not in JOBS:
    raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(JOBS)}")
  if mode != "prep" and config.get("job") == "prep":
    raise ConfigError(f"{config.dataset!r} is a data preparation config: run it with "
                      f"--mode prep")
  return JOBS[mode](config, workdir)


def compile_cache_dir(flag: str, environ=None) -> str | None:
  """Where compiled XLA programs persist between runs: ``--compile_cache=PATH`` wins, then
  ``$JAX_COMPILATION_CACHE_DIR``, then ``~/.cache/diffjax/jax``; ``--compile_cache=`` (empty)
  turns it off. Any path JAX can write works, including ``gs://`` for a TPU pod."""
  environ = os.environ if environ is None else environ
  if flag != "auto":
    return flag or None
  return environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "diffjax", "jax")


def enable_compile_cache(path: str | None) -> None:
  if path:
    import jax
    jax.config.update("jax_compilation_cache_dir", path)


def start_distributed(mode, coordinator_address, num_processes, process_id) -> bool:
  from diffjax.parallel import distributed
  return distributed.initialize(mode, coordinator_address, num_processes, process_id)


def split_cpu(batch_size: int) -> int:
  from diffjax.parallel import distributed
  return distributed.split_host_into_devices(batch_size)


def run_sweep(config_flag, workdir: str, *, dry_run: bool, argv: list[str]):
  from diffjax.jobs import sweep
  return sweep.run(config_flag, workdir, dry_run=dry_run, argv=argv)
