"""Multi-process start-up: ``jax.distributed.initialize`` when the job spans several processes."""

from __future__ import annotations

import os
import re
import sys

import jax

from diffjax.host import cpu_only_host


def cluster_detected() -> bool:
  """True on a multi-host Cloud TPU slice or a multi-task SLURM job (JAX discovers both)."""
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  try:
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  except ValueError:
    slurm_tasks = 1
  return len(hosts) > 1 or slurm_tasks > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
  """Starts the distributed runtime if needed; returns whether it did.

  Args:
    mode: ``"auto"`` (when coordinator flags are given or a cluster is detected), ``"on"`` or
      ``"off"``.
    coordinator_address, num_processes, process_id: explicit values for clusters JAX does not
      discover by itself (None lets JAX detect them).
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"distributed mode must be auto, on or off, got {mode!r}")
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if mode == "off" or (mode == "auto" and not explicit and not cluster_detected()):
    return False
  # CPU processes need a collectives backend to talk to each other (no effect on GPU/TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


# XLA:CPU settings diffjax makes on CPU hosts unless XLA_FLAGS already names the flag (the
# measurements behind each: experiments/benchmarks/README.md, throughput/ab_cpu_flags*.md,
# cpu/conv_cpu*.md, memory/remat_cpu.md):
# * YNNPACK's convolutions, XLA:CPU's default, were several times slower than XLA's own
#   (Eigen) kernels for the weight gradients of 3x3 convolutions. Dots go to Eigen as well:
#   YNNPACK's wants its operands in one layout, so XLA transposed activations for every weight
#   gradient of a dense layer. YNNPACK stays on for elementwise fusions and reductions.
# * Region-based copy insertion: with the default analysis XLA copied every parameter and
#   Adam moment at the start of a data-parallel step instead of updating the donated state in
#   place.
# * Rematerialisation: XLA:CPU's pass `cse_barrier_expander` removes the optimisation barriers
#   `jax.checkpoint` puts around what it recomputes, before common-subexpression elimination
#   runs, so the recomputation merged back into the forward pass and `model.kwargs.remat` saved
#   nothing. A program without barriers (no remat) compiles as before.
CPU_XLA_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution,-individual_dot",
                 "xla_cpu_copy_insertion_use_region_analysis": "true",
                 "xla_disable_hlo_passes": "cse_barrier_expander"}
# The jaxlib these flags were measured with (0.9.2 and 0.10.0 do not use YNNPACK for
# convolutions anyway; XLA aborts on a flag it does not know).
CPU_XLA_FLAGS_SINCE = (0, 10, 2)


def tune_cpu_xla_flags() -> list[str]:
  """Adds `CPU_XLA_FLAGS` to ``XLA_FLAGS`` (each only when not set there already) on a host
  without a GPU/TPU plugin or with ``JAX_PLATFORMS=cpu`` (on others the flags are not worth the
  risk of a jaxlib that no longer knows them); returns the flags added. Must run before JAX
  initialises its backends; only XLA:CPU reads them."""
  import jaxlib
  version = tuple(int(re.match(r"\d*", p).group() or 0) for p in jaxlib.__version__.split(".")[:3])
  if version < CPU_XLA_FLAGS_SINCE or not cpu_only_host():
    return []
  flags = os.environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in CPU_XLA_FLAGS.items() if name not in flags]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
  return added


def cpu_split_reason(batch_size: int, cores: int, devices: int) -> str:
  """Why a CPU host runs fewer XLA devices than it has cores."""
  return (f"this CPU host has {cores} cores but runs {devices} XLA device(s): launch.py gives "
          f"each core a device only up to the largest divisor of data.batch_size "
          f"({batch_size}); a batch divisible by {cores} uses every core")


def split_host_into_devices(batch_size: int, cores: int | None = None) -> int:
  """On a CPU-only host, exposes one XLA device per core (at most ``batch_size``'s largest
  divisor not above the core count), so data parallelism uses every core, and applies
  `tune_cpu_xla_flags`.

  Must run before JAX initialises its backends; only the CPU backend is affected, so it is
  harmless on GPU/TPU hosts. Returns the device count chosen (1 when XLA_FLAGS already sets
  one, or the platform is not CPU).
  """
  if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] not in ("cpu", ""):
    return 1
  tune_cpu_xla_flags()
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return 1
  cores = cores or os.cpu_count() or 1
  count = max(d for d in range(1, cores + 1) if batch_size % d == 0)
  if count < cores:
    print(f"[diffjax] note: {cpu_split_reason(batch_size, cores, count)}", file=sys.stderr,
          flush=True)
  if count > 1:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
  return count
