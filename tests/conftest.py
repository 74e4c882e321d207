"""Test-session setup. Runs before JAX is imported by any test module.

* CPU only, with 8 virtual devices so sharding tests can build meshes in-process.
* A persistent compilation cache shared by this session's subprocesses (end-to-end runs of
  launch.py compile the same programs as in-process tests).
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
# Programs compiled once (by this process, another test worker or a launch.py subprocess) are
# reused from disk. JAX reads these variables when it is first imported, hence before the
# imports below; jax.config is set too in case a plugin imported JAX earlier.
os.environ.setdefault("DIFFJAX_TEST_CACHE", tempfile.mkdtemp(prefix="diffjax-test-cache-"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["DIFFJAX_TEST_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
from diffjax.parallel.distributed import tune_cpu_xla_flags  # noqa: E402

tune_cpu_xla_flags()  # the XLA:CPU settings launch.py makes, so tests run what users run
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
