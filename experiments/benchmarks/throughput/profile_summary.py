"""Where a profiled train step's time goes, from a ``jax.profiler`` trace (``*.xplane.pb``).

  python experiments/benchmarks/throughput/train_throughput.py --configs cifar10_ddpm@128 \\
      --dtype bfloat16 --isolate --notorch --profile_dir /tmp/prof      # on the GPU machine
  pip install xprof                                                     # anywhere
  python experiments/benchmarks/throughput/profile_summary.py \\
      /tmp/prof/cifar10_ddpm_128/**/*.xplane.pb

Prints, for the second profiled step: the step's span on the device against the kernels' busy
time, the same split before the first convolution / matmul, between the first and the last, and
after the last (the optimizer update), the largest idle gaps on the stream, kernel time by kind
per step, and the host thread's time in the dispatch calls. That is the evidence for "the device
waits for the host" versus "the kernels are slow", which MFU alone cannot tell apart.
"""

import collections
import json
import re
import sys


def tool(path: str, name: str):
  from xprof.convert import raw_to_tool_data
  data, _ = raw_to_tool_data.xspace_to_tool_data([path], name, {})
  return json.loads(data)


def table_rows(table) -> list[dict]:
  table = table[0] if isinstance(table, list) else table
  cols = [c["id"] for c in table["cols"]]
  return [dict(zip(cols, [c.get("v") if isinstance(c, dict) else c for c in row["c"]]))
          for row in table["rows"]]


def kind(kernel: str) -> str:
  if kernel.startswith("sm90_xmma") or kernel.startswith("sm80_xmma"):
    return "conv " + kernel.split("_")[2]  # fprop / dgrad / wgrad
  if kernel.startswith("nvjet") or "gemm" in kernel:
    return "matmul"
  if "flash" in kernel or "fmha" in kernel or "cudnn_generated" in kernel:
    return "attention"
  return re.sub(r"[_.]\d+$", "", kernel)[:40]


def main(path: str) -> None:
  events = tool(path, "trace_viewer")["traceEvents"]
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  on = lambda prefix: sorted((e for e in events if e.get("ph") == "X" and threads.get(
      (e["pid"], e["tid"]), "").startswith(prefix)), key=lambda e: e["ts"])
  modules, kernels = on("XLA Modules"), on("Stream")
  steps = len(modules)
  step = modules[min(1, steps - 1)]
  ks = [e for e in kernels if step["ts"] <= e["ts"] <= step["ts"] + step["dur"]]
  busy = sum(e["dur"] for e in ks) / 1e3
  print(f"{steps} steps profiled; step {min(1, steps - 1)}: {step['dur'] / 1e3:.2f} ms on the "
        f"device, kernels busy {busy:.2f} ms ({len(ks)} kernels)")
  heavy = [i for i, e in enumerate(ks) if kind(e["name"]).startswith(("conv", "matmul"))]
  if heavy:
    for label, part in (("before the first conv/matmul", ks[:heavy[0]]),
                        ("first to last conv/matmul", ks[heavy[0]:heavy[-1] + 1]),
                        ("after the last (optimizer)", ks[heavy[-1] + 1:])):
      if part:
        span = (part[-1]["ts"] + part[-1]["dur"] - part[0]["ts"]) / 1e3
        print(f"  {label:30s} span {span:6.2f} ms, busy {sum(e['dur'] for e in part) / 1e3:6.2f}"
              f" ms, {len(part)} kernels")
  gaps = sorted(((ks[i + 1]["ts"] - ks[i]["ts"] - ks[i]["dur"], ks[i]["name"], ks[i + 1]["name"])
                 for i in range(len(ks) - 1)), reverse=True)
  print(f"  idle on the stream: {sum(g for g, _, _ in gaps if g > 0) / 1e3:.2f} ms; largest:")
  for g, before, after in gaps[:3]:
    print(f"    {g:7.0f} us between {before[:40]} and {after[:40]}")

  rows = table_rows(tool(path, "kernel_stats"))
  total = collections.Counter()
  count = collections.Counter()
  for r in rows:
    total[kind(r["kernel_name"])] += r["total_duration_us"] / steps
    count[kind(r["kernel_name"])] += r["occurrences"] / steps
  all_us = sum(total.values())
  print(f"kernel time per step {all_us / 1e3:.2f} ms, by kind:")
  for name, us in total.most_common(14):
    print(f"  {us / all_us * 100:5.1f}% {us / 1e3:6.2f} ms {count[name]:6.0f} launches  {name}")

  if steps > 1:
    spacing = (modules[-1]["ts"] - modules[0]["ts"]) / (steps - 1) / 1e3
    print(f"steps start every {spacing:.2f} ms on the device (the host's pace when it is slower)")
  host = collections.Counter()
  for e in events:
    found = e.get("ph") == "X" and re.search(
        r"GpuExecutable::ExecuteThunks|command_buffer::execute|command_buffer::update|"
        r"ParseArguments", e["name"])
    if found:
      host[found.group(0)] += e["dur"] / steps
  print("host time per step (nested: thunks include the command buffers):")
  for name, us in host.most_common():
    print(f"  {us / 1e3:7.2f} ms  {name}")


if __name__ == "__main__":
  for p in sys.argv[1:]:
    print("==", p)
    main(p)
