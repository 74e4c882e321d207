"""Runs launch.py in a subprocess the way a user would, sharing one compilation cache."""

import os
import pathlib
import subprocess
import sys

# The repository root: the folder holding launch.py (diffjax/testing/ -> diffjax/ -> root).
ROOT = pathlib.Path(__file__).resolve().parents[2]


# XLA flags of the test session (see tests/conftest.py), kept when a test sets its own XLA_FLAGS.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_env(**extra) -> dict:
  if "XLA_FLAGS" in extra and TEST_XLA_FLAGS not in str(extra["XLA_FLAGS"]):
    extra["XLA_FLAGS"] = f"{extra['XLA_FLAGS']} {TEST_XLA_FLAGS}"
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": os.environ.get("DIFFJAX_TEST_CACHE", "/tmp/diffjax-test-cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "PYTHONUNBUFFERED": "1",
  })
  env.update({k: str(v) for k, v in extra.items()})
  return env


def launch(*args, env=None, timeout=300, check=True, prefix=()):
  """``python launch.py *args`` from the repository root; returns the CompletedProcess."""
  cmd = [sys.executable, *prefix, "launch.py", *map(str, args)]
  result = subprocess.run(cmd, cwd=ROOT, env=env or subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n"
                         f"{result.stderr[-4000:]}")
  return result
