"""Process set-up that has to happen before JAX (or even Python's allocator) starts.

Imports nothing heavy, so an entry point can call `reexec_with_huge_pages` first thing.

Why huge pages: XLA:CPU allocates one large temporary buffer per program execution (hundreds
of MB for a CIFAR-10 UNet's train step) and frees it afterwards. glibc serves an allocation
that large with a fresh ``mmap`` every time, so every step faults in and zeroes it in 4 KiB
pages. With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` glibc asks for transparent huge pages
for its mappings, which takes the page faults down by two orders of magnitude (measurements:
experiments/benchmarks/cpu/cpu_breakdown.md, throughput/ab_hugetlb_cpu.md). glibc reads the
tunable only at process start, hence the re-execution.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Mapping

# Installed with a GPU or TPU backend: the CPU backend does no training work there.
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin",
                       "jax_rocm60_plugin", "libtpu")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
HUGETLB_SINCE = (2, 35)  # the glibc release that added the tunable
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
CPUINFO = "/proc/cpuinfo"
# x86 vector extensions, widest first: the one a CPU's kernels (XLA's, oneDNN's) can use matters
# more than its name, e.g. the DDPM UNet's PyTorch ratio differs between AVX-512 and AVX2 hosts.
VECTOR_ISAS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
               ("sve", "SVE"), ("asimd", "NEON"))


def cpu_only_host(environ: Mapping[str, str] = os.environ) -> bool:
  """True with ``JAX_PLATFORMS=cpu`` or when no GPU/TPU plugin is installed."""
  if environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
    return True
  return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def glibc_version() -> tuple[int, ...] | None:
  """The running glibc's (major, minor), or None for another C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  return tuple(int(p) for p in re.findall(r"\d+", version)[:2]) if name == "glibc" else None


def transparent_huge_pages_mode(path: str = THP_ENABLED) -> str | None:
  """The kernel's THP mode ('always', 'madvise' or 'never'), None where it cannot be read."""
  try:
    with open(path) as f:
      found = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return found.group(1) if found else None


def huge_page_environment(environ: Mapping[str, str], glibc: tuple[int, ...] | None,
                          thp_mode: str | None, cpu_only: bool) -> dict[str, str] | None:
  """The environment to re-execute with so glibc backs large allocations with huge pages, or
  None where that changes nothing: an accelerator host, not glibc >= 2.35, a kernel whose THP
  mode is not 'madvise' ('always' gives huge pages anyway, 'never' none), or a
  ``GLIBC_TUNABLES`` that already names the tunable (the user's choice, ``=0`` turns it off)."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (HUGETLB_TUNABLE in tunables or not cpu_only or glibc is None or glibc < HUGETLB_SINCE
      or thp_mode != "madvise"):
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables,
                                                             f"{HUGETLB_TUNABLE}=1"]))}


def cpu_description(cpuinfo: str | None = None) -> str:
  """The host CPU for a results file: model name and widest vector extension, e.g.
  'AMD EPYC, AVX2'; from ``/proc/cpuinfo`` (or the text given), 'unknown CPU' without it."""
  if cpuinfo is None:
    try:
      with open(CPUINFO) as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields = {}
  for line in cpuinfo.splitlines():  # the first processor's block is enough
    key, sep, value = line.partition(":")
    if not sep:
      if fields:
        break
      continue
    fields.setdefault(key.strip(), value.strip())
  name = fields.get("model name") or fields.get("Hardware") or "unknown CPU"
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  isa = next((label for flag, label in VECTOR_ISAS if flag in flags), None)
  return f"{name}, {isa}" if isa else name


def reexec_with_huge_pages() -> None:
  """Restarts this process (same interpreter, same command line, same PID) with huge pages for
  glibc's large allocations where `huge_page_environment` says it helps; returns otherwise.

  For the ``__main__`` block of CPU entry points only, before any real work: everything the
  process did so far is lost, and never call it from a library or under pytest.
  """
  if sys.argv[0] in ("", "-"):  # an interactive session or a script read from stdin
    return
  env = huge_page_environment(os.environ, glibc_version(), transparent_huge_pages_mode(),
                              cpu_only_host())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
