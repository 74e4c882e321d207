"""XLA:CPU's convolution kernels against PyTorch's (oneDNN), one 3x3 convolution at a time.

  python experiments/benchmarks/cpu/conv_cpu.py      # writes conv_cpu.{md,json} beside this file
  python experiments/benchmarks/cpu/conv_cpu.py --results conv_cpu_avx2   # another file stem

For each shape of the DDPM CIFAR-10 UNet (batch 8 = one device's share of the CPU benchmark's
16, NHWC, float32): the forward convolution, the input gradient and the weight gradient, each a
jitted program of its own, under XLA:CPU's default (YNNPACK convolutions) and with
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` (XLA's Eigen kernels; what
``diffjax.parallel.distributed.tune_cpu_xla_flags`` sets), against ``torch.nn.functional.conv2d``
and its ``torch.nn.grad`` gradients on the same data. Each XLA setting runs in a process of its
own (flags are read when the backend starts), pinned to one core with one XLA device; PyTorch
gets one thread. Best of 7 calls after a warm-up, in ms. Every result is checked against
PyTorch's (relative error below 1e-4) before it is timed.
"""

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from diffjax.host import cpu_description  # noqa: E402

# (batch, height = width, in channels, out channels): the UNet's 3x3 convolutions by level.
SHAPES = [(8, 32, 128, 128), (8, 16, 256, 256), (8, 8, 256, 256), (8, 4, 256, 256),
          (8, 32, 3, 128), (8, 32, 128, 3)]
SETTINGS = {
    "XLA default (YNNPACK)": "",
    "XLA Eigen convolutions": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"}
PARTS = ("forward", "input grad", "weight grad")


def call_times(fn, calls: int = 7) -> list[float]:
  """Seconds of each of ``calls`` calls of ``fn`` after one warm-up call."""
  fn()
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def best_ms(fn, calls: int = 7) -> float:
  return min(call_times(fn, calls)) * 1e3


def data(shape):
  n, s, ci, co = shape
  rng = np.random.default_rng(0)
  return (rng.standard_normal((n, s, s, ci), np.float32),
          (rng.standard_normal((3, 3, ci, co)) * 0.05).astype(np.float32),
          rng.standard_normal((n, s, s, co), np.float32))


def torch_parts(shape, timed: bool = True):
  """PyTorch's three results (NHWC / HWIO, to compare) and, when ``timed``, times."""
  import torch
  torch.set_num_threads(1)
  x, w, dy = (torch.from_numpy(a) for a in data(shape))
  xt, dyt = x.permute(0, 3, 1, 2).contiguous(), dy.permute(0, 3, 1, 2).contiguous()
  wt = w.permute(3, 2, 0, 1).contiguous()
  calls = {"forward": lambda: torch.nn.functional.conv2d(xt, wt, padding=1),
           "input grad": lambda: torch.nn.grad.conv2d_input(xt.shape, wt, dyt, padding=1),
           "weight grad": lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, dyt, padding=1)}
  to_ours = {"forward": lambda r: r.permute(0, 2, 3, 1), "input grad": lambda r: r.permute(
      0, 2, 3, 1), "weight grad": lambda r: r.permute(2, 3, 1, 0)}
  return ({p: to_ours[p](calls[p]()).numpy() for p in PARTS},
          {p: best_ms(calls[p]) for p in PARTS} if timed else {})


def child(shapes) -> dict:
  """This process's XLA timings (run with XLA_FLAGS set by the parent)."""
  import jax
  from jax import lax

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  fns = {"forward": jax.jit(lambda x, w, dy: conv(x, w)),
         "input grad": jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
         "weight grad": jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])}
  out = {}
  for shape in shapes:
    args = [jax.device_put(a) for a in data(shape)]
    reference, _ = torch_parts(shape, timed=False)
    row = {}
    for part, f in fns.items():
      got = np.asarray(f(*args))
      err = float(np.abs(got - reference[part]).max() / np.abs(reference[part]).max())
      if err > 1e-4:
        raise AssertionError(f"{shape} {part}: relative error {err:.2e} against PyTorch")
      row[part] = best_ms(lambda f=f: jax.block_until_ready(f(*args)))
    out[str(shape)] = row
  return out


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    print(json.dumps(child([tuple(s) for s in json.loads(sys.argv[2])])))
    return
  stem = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--results" else "conv_cpu"
  results = {}
  for name, flag in SETTINGS.items():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {flag}".strip())
    cmd = ["taskset", "-c", "0"] if sys.platform == "linux" else []
    done = subprocess.run(cmd + [sys.executable, __file__, "--child", json.dumps(SHAPES)],
                          env=env, capture_output=True, text=True, check=True)
    results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(name, results[name], flush=True)
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})
  results["PyTorch (oneDNN)"] = {str(s): torch_parts(s)[1] for s in SHAPES}
  import torch
  import jax
  meta = {"machine": platform.processor() or platform.machine(), "cores_used": 1,
          "host_cpu": cpu_description(),
          "jax": jax.__version__, "torch": torch.__version__, "results": results}
  out = pathlib.Path(__file__).parent
  (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))
  names = list(results)
  lines = [f"3x3 convolution, NHWC float32, one core of {meta['host_cpu']} (jax "
           f"{jax.__version__}, torch {torch.__version__}); best of 7 calls, ms", "",
           "| shape (N, H=W, Cin, Cout) | part | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  totals = {n: 0.0 for n in names}
  for s in SHAPES:
    for p in PARTS:
      vals = [results[n][str(s)][p] for n in names]
      for n, v in zip(names, vals):
        totals[n] += v
      lines.append(f"| {s} | {p} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
  lines.append("| all | all | " + " | ".join(f"**{totals[n]:.1f}**" for n in names) + " |")
  (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
