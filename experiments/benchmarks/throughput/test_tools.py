"""Tests of the benchmark tools beside this file (flag_ab.py, train_throughput.py): how an A/B
refuses a setting before any round, and the window order of a one-process A/B. They start JAX
at most in child processes and compile nothing. From the repository root:

  python -m pytest experiments/benchmarks/throughput/test_tools.py
"""

import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))  # this folder: the tools under test
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(BENCHMARKS)))  # the repository

# The JAX processes these tests start run on the CPU, as in the project's test suite.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def test_flag_ab_refuses_a_flag_xla_does_not_know_before_any_round():
  """A misspelt or retired XLA flag aborts JAX at start-up; the A/B must say so up front, with
  XLA's message, rather than spend its rounds on processes that exit 1."""
  sys.path.insert(0, BENCHMARKS)
  try:
    import flag_ab
  finally:
    sys.path.pop(0)
  from absl import app
  flag_ab.check_setting("A", "", {})  # JAX's defaults start
  with pytest.raises(app.UsageError, match=r"setting B .*xla_cpu_no_such_flag"):
    flag_ab.check_setting("B", "--xla_cpu_no_such_flag=true", {})


INTERLEAVE_CHILD = r"""
import json, sys, types
import numpy as np
sys.path[:0] = sys.argv[1:3]
import train_throughput as tt
tt.FLAGS(["train_throughput.py", "--windows=4", "--steps=3"])
order, times = [], {"a": [4.0, 1.0, 3.0, 2.0], "b": [10.0, 30.0, 20.0, 40.0]}

class FakeStep:  # stands in for the compiled train step: records the order of the windows
  def __init__(self, name, batch, overrides=None):
    self.name, self.compile_s, self.memory_mb = name, 1.5, 7.0
    model = types.SimpleNamespace(name="m", dtype="float32")
    self.spec = types.SimpleNamespace(method=types.SimpleNamespace(model=model),
                                      data=types.SimpleNamespace(batch_size=batch or 8))
    self.mesh = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(device_kind="k")]))
  def run(self, steps):
    order.append((self.name, steps))
    return times[self.name][sum(n == self.name for n, _ in order) - 1]

tt.OurStep = FakeStep
print(json.dumps({"rows": tt.measure_interleaved(["a@2", "b+x=1"]), "calls": order}))
"""


def test_interleaved_ab_alternates_windows_and_takes_each_settings_median():
  """``train_throughput.py --interleave`` (flag_ab.py --same_process) times A B, B A, A B, ...
  so that drift of the host hits both settings alike, and reports each one's median window."""
  out = subprocess.run([sys.executable, "-c", INTERLEAVE_CHILD, BENCHMARKS, ROOT],
                       capture_output=True, text=True, check=True).stdout
  result = json.loads(out.splitlines()[-1])
  assert [name for name, _ in result["calls"]] == ["a", "b", "b", "a", "a", "b", "b", "a"]
  assert all(steps == 3 for _, steps in result["calls"])
  a, b = result["rows"]
  assert (a["config"], a["batch"], b["config"], b["batch"]) == ("a@2", 2, "b+x=1", 8)
  assert a["step_ms_by_window"] == [4000.0, 1000.0, 3000.0, 2000.0] and a["step_ms"] == 2500.0
  assert b["step_ms"] == 25000.0 and b["memory_mb_per_device"] == 7.0


def test_same_process_ab_refuses_settings_that_differ_outside_the_config():
  """One process has one XLA_FLAGS and one environment: an A/B of those cannot share it, and
  flag_ab.py must say so before compiling anything."""
  done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "flag_ab.py"),
                         "--same_process", "--b=--xla_cpu_enable_fast_math=true"],
                        capture_output=True, text=True)
  assert done.returncode != 0
  assert "--same_process" in done.stderr and "XLA_FLAGS" in done.stderr
