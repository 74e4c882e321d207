"""What `launch.py` calls: the job table, distributed start-up and sweeps."""

from __future__ import annotations

import importlib
import os


def _train(config, workdir):
  from diffjax.train import train
  return train(config, workdir)


def _sample(config, workdir):
  from diffjax.sample import sample
  return sample(config, workdir)


def _eval(config, workdir):
  from diffjax.evaluate import evaluate
  return evaluate(config, workdir)


def _ref_stats(config, workdir):
  from diffjax.evaluate import ref_stats
  return ref_stats(config, workdir)


def _estimate(config, workdir):
  from diffjax.estimate import estimate
  return estimate(config, workdir)


def _prep(config, workdir):
  from diffjax.data.prep.pipeline import prepare
  return prepare(config, workdir)


JOBS = {"prep": _prep, "train": _train, "sample": _sample, "eval": _eval, "ref_stats": _ref_stats,
        "estimate": _estimate}


def run(mode: str, config, workdir: str):
  if mode not in JOBS:
    raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(JOBS)}")
  if mode != "prep" and config.get("job") == "prep":
    from diffjax.fields import ConfigError
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
  sweep = importlib.import_module("diffjax.sweep")
  return sweep.run(config_flag, workdir, dry_run=dry_run, argv=argv)
