"""Test-session setup. Runs before JAX is imported by any test module.

* CPU only, with 8 virtual devices so sharding tests can build meshes in-process.
* A persistent compilation cache shared by this session's launch.py subprocesses.
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
# launch.py subprocesses share one persistent compilation cache (launch_util.subprocess_env).
# In-process tests do not use it: turned on there too (jax.config), the suite was not faster on
# this 2-core host (15:37 vs 13:06, other changes in between, noisy host; not settled).
os.environ.setdefault("DIFFJAX_TEST_CACHE", tempfile.mkdtemp(prefix="diffjax-test-cache-"))

