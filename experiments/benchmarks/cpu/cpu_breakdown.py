"""Where the DDPM UNet's CPU train step loses time outside the kernels: the allocator, the
second device and the gradient collectives. Each case runs in a fresh process.

  python experiments/benchmarks/cpu/cpu_breakdown.py      # writes cpu_breakdown.{md,json} here
  python experiments/benchmarks/cpu/cpu_breakdown.py --results cpu_breakdown_avx2   # another stem

* glibc settings (``GLIBC_TUNABLES``): step time, page faults, user and system CPU time per step
  of cifar10_ddpm on the host's two devices (16 images), for no tunable, huge pages (what
  ``diffjax/host.py`` sets) and a single arena with a 1 GiB mmap threshold and no trimming.
* The second device: one device with 8 images pinned to core 0 alone, then two such processes
  at once (cores 0 and 1), against the data-parallel step above; and the same for the PyTorch
  twin: one thread with 8 images on core 0, two threads with 16 images.
* Collectives: psum, reduce-scatter + all-gather, and an elementwise pass over the UNet's
  143 MB of gradients between two devices.
* The copy XLA:CPU makes of a 3x3x512x256 kernel for an input gradient (flip + transpose)
  against the transpose and the flip alone.
Step times: median of 3 windows of 2 steps after one untimed step; microbenchmarks: median of 7.
"""

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # conv_cpu
sys.path.insert(0, str(HERE.parent / "throughput"))  # train_throughput
sys.path.insert(0, str(HERE.parents[2]))
from diffjax.host import cpu_description  # noqa: E402

HUGE = "glibc.malloc.hugetlb=1"
GLIBC_CASES = {"none": "glibc.malloc.hugetlb=0", "huge pages": HUGE,
               "one arena, 1 GiB mmap threshold, no trim":
               "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=1:"
               "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"}


def median_ms(fn, calls: int = 7) -> float:
  from conv_cpu import call_times
  return round(statistics.median(call_times(fn, calls)) * 1e3, 1)


def child_step(devices: int) -> dict:
  """Step time and per-step resource use of cifar10_ddpm on ``devices`` XLA devices."""
  from diffjax.parallel.distributed import tune_cpu_xla_flags
  tune_cpu_xla_flags()
  os.environ["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  import train_throughput
  train_throughput.FLAGS(["cpu_breakdown"])
  ours = train_throughput.OurStep("cifar10_ddpm", 8 * devices)
  before = resource.getrusage(resource.RUSAGE_SELF)
  windows = [ours.run(2) for _ in range(3)]  # 3 x (1 untimed + 2 timed) steps
  after = resource.getrusage(resource.RUSAGE_SELF)
  per_step = lambda field: (getattr(after, field) - getattr(before, field)) / 9
  return {"step_ms": round(statistics.median(windows) * 1e3, 1),
          "page_faults": round(per_step("ru_minflt")), "user_s": round(per_step("ru_utime"), 2),
          "system_s": round(per_step("ru_stime"), 2)}


def child_torch(threads: int) -> dict:
  """Step time of the PyTorch twin of cifar10_ddpm with ``threads`` threads, 8 images each."""
  import torch

  import train_throughput
  from diffjax.experiment import build_spec
  train_throughput.FLAGS(["cpu_breakdown"])
  config = train_throughput.bench_config("cifar10_ddpm", 8 * threads, {})
  twin = train_throughput.TorchStep(build_spec(config, num_devices=1, check_network=False))
  torch.set_num_threads(threads)
  windows = [twin.run(2) for _ in range(3)]
  return {"step_ms": round(statistics.median(windows) * 1e3, 1)}


def child_collectives() -> dict:
  from diffjax.parallel.distributed import tune_cpu_xla_flags
  tune_cpu_xla_flags()
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("d",))
  grads = jax.device_put(jnp.ones((2, 35_750_000)), NamedSharding(mesh, P("d")))
  scatter = lambda a: jax.lax.psum_scatter(a, "d", scatter_dimension=1, tiled=True)
  cases = {"psum": lambda a: jax.lax.psum(a, "d"),
           "reduce-scatter + all-gather":
           lambda a: jax.lax.all_gather(scatter(a), "d", axis=1, tiled=True),
           "elementwise pass (a * 1.0001)": lambda a: a * 1.0001}
  out = {}
  for name, fn in cases.items():
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("d"), out_specs=P("d")))
    out[name] = median_ms(lambda f=f: jax.block_until_ready(f(grads)))
  kernel = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 512, 256), np.float32))
  copies = {"flip + transpose (input-gradient kernel)":
            lambda w: jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2),
            "transpose only": lambda w: w.transpose(0, 1, 3, 2),
            "flip only": lambda w: jnp.flip(w, (0, 1))}
  for name, fn in copies.items():
    f = jax.jit(fn)
    out[name] = median_ms(lambda f=f: jax.block_until_ready(f(kernel)))
  return out


def spawn(part: str, tunables: str, cores: str | None = None, wait: bool = True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GLIBC_TUNABLES=tunables)
  env.pop("XLA_FLAGS", None)
  cmd = (["taskset", "-c", cores] if cores else []) + [sys.executable, __file__, part]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
  return read(proc) if wait else proc


def read(proc) -> dict:
  out, _ = proc.communicate()
  if proc.returncode:
    raise RuntimeError(f"{proc.args} exited {proc.returncode}")
  return json.loads(out.strip().splitlines()[-1])


def main():
  if len(sys.argv) > 1 and sys.argv[1] != "--results":  # a child: one part
    part = sys.argv[1]
    print(json.dumps(child_collectives() if part == "collectives" else
                     child_torch(int(part[5:])) if part.startswith("torch") else
                     child_step(int(part))))
    return
  stem = sys.argv[2] if len(sys.argv) > 2 else "cpu_breakdown"
  results = {"glibc": {}, "second device": {}}
  for name, tunables in GLIBC_CASES.items():
    results["glibc"][name] = row = {"GLIBC_TUNABLES": tunables, **spawn("2", tunables)}
    print(name, row, flush=True)
  second = results["second device"]
  second["one device, 8 images, core 0, other core idle"] = spawn("1", HUGE, cores="0")
  pair = [spawn("1", HUGE, cores=c, wait=False) for c in ("0", "1")]
  together = [read(p) for p in pair]
  second["two one-device processes at once (cores 0 and 1), each"] = {
      "step_ms": [r["step_ms"] for r in together]}
  second["data parallel, 2 devices, 16 images (huge pages)"] = {
      "step_ms": results["glibc"]["huge pages"]["step_ms"]}
  second["PyTorch twin, one thread, 8 images, core 0"] = spawn("torch1", HUGE, cores="0")
  second["PyTorch twin, two threads, 16 images"] = spawn("torch2", HUGE)
  print(second, flush=True)
  results["microbenchmarks_ms"] = spawn("collectives", HUGE)
  results["host_cpu"] = cpu_description()
  (HERE / f"{stem}.json").write_text(json.dumps(results, indent=1))
  lines = [f"cifar10_ddpm train step on this CPU host ({os.cpu_count()} cores of "
           f"{results['host_cpu']}); per step: median of 3 windows of 2 steps "
           "(fresh process each)", "",
           "| GLIBC_TUNABLES | step ms | page faults | user s | system s |",
           "|---|---|---|---|---|"]
  lines += [f"| `{r['GLIBC_TUNABLES']}` | {r['step_ms']} | {r['page_faults']} | {r['user_s']} | "
            f"{r['system_s']} |" for r in results["glibc"].values()]
  lines += ["", "| the second device (huge pages) | step ms |", "|---|---|"]
  lines += [f"| {k} | {v['step_ms']} |" for k, v in second.items()]
  lines += ["", "| microbenchmark (collectives: 143 MB on 2 devices; copies: one kernel) | ms |",
            "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in results["microbenchmarks_ms"].items()]
  (HERE / f"{stem}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
