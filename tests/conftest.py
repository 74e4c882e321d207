"""Test-session setup. Runs before JAX is imported by any test module.

* CPU only, with 8 virtual devices so sharding tests can build meshes in-process.
* One persistent compilation cache shared by the tests and their launch.py subprocesses.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
# Tests compile far more than they run: XLA:CPU's LLVM back end at -O0 compiles the same HLO
# (same fusions, buffers and passes) about 3x faster; the benchmarks and every launch.py run
# outside the tests keep the default level. TEST_XLA_FLAGS reach launch.py subprocesses too.
from launch_util import TEST_XLA_FLAGS  # noqa: E402

if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " " + TEST_XLA_FLAGS
from diffjax.parallel.distributed import tune_cpu_xla_flags  # noqa: E402

tune_cpu_xla_flags()  # the XLA:CPU settings launch.py makes, so tests run what users run
# One persistent compilation cache for the whole session: launch.py subprocesses (through
# launch_util.subprocess_env) and in-process tests alike, so a program any test compiled (the
# tiny train step on 8 devices above all) is compiled once. Without it, every in-process train()
# compiled its step from scratch (a former test of three train() calls: 94 s -> 68 s with it).
os.environ.setdefault("DIFFJAX_TEST_CACHE", tempfile.mkdtemp(prefix="diffjax-test-cache-"))
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["DIFFJAX_TEST_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# In CI (DIFFJAX_CI=1, set by .ci/run) a skip for missing assets or a required package fails.
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401
