"""Train-step throughput of named configs on this machine (or a GPU/TPU).

Times the jitted, sharded train step of each config's real network on synthetic batches (data
loading excluded), after compilation and two warm-up steps, and writes the numbers to
``results_<backend>.json`` and ``results_<backend>.md`` beside this file.

  python experiments/benchmarks/train_throughput.py                  # default, mnist, cifar10_ddpm
  python experiments/benchmarks/train_throughput.py --configs cifar10_ddpm --batch 128 --steps 20

On a CPU-only host the script splits the host into one XLA device per core, as launch.py does.
"""

import functools
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# (config module, config argument, batch size used on CPU); None keeps the config's batch.
DEFAULT_CASES = [("default", None, None), ("mnist", None, 32), ("mnist", "cpu", None),
                 ("cifar10_ddpm", None, 16)]


def measure(module: str, arg, batch, steps: int):
  import importlib

  import jax
  import numpy as np

  from diffjax import parallel
  from diffjax.spec import build_spec, mesh_size
  from diffjax.training import parameter_count, train_step
  from diffjax.training.setup import setup_state

  config = importlib.import_module(f"configs.{module}").get_config(arg)
  if batch:
    config.data.batch_size = batch
  spec = build_spec(config, num_devices=jax.device_count())
  mesh = parallel.make_mesh(mesh_size(spec.mesh, jax.device_count()))
  setup = setup_state(spec, mesh)
  bs = parallel.batch_sharding(mesh)
  fn = jax.jit(functools.partial(
      train_step, model=setup.model, diffusion_spec=spec.diffusion, optimizer=setup.optimizer,
      lr_schedule=setup.lr_schedule, ema_decay=spec.train.ema_decay,
      ema_warmup=spec.train.ema_warmup, conditional=spec.model.conditional),
      in_shardings=(setup.shardings, bs), out_shardings=(setup.shardings,
                                                         parallel.replicated(mesh)),
      donate_argnums=0)
  b, s, c = spec.data.batch_size, spec.data.image_size, spec.data.channels
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32),
              "label": rng.integers(0, max(spec.data.num_classes, 1), b).astype(np.int32)}
  batch_arr = parallel.global_batch(batch_np, bs)
  state = setup.init(jax.random.PRNGKey(0))
  t0 = time.perf_counter()
  state, metrics = fn(state, batch_arr)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(2):
    state, metrics = fn(state, batch_arr)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = fn(state, batch_arr)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / steps
  return {"config": module + (f":{arg}" if arg else ""), "model": spec.model.name,
          "params_M": round(parameter_count(state.params) / 1e6, 2),
          "image": f"{s}x{s}x{c}", "batch": b, "dtype": spec.model.dtype,
          "devices": jax.device_count(), "compile_s": round(compile_s, 1),
          "step_ms": round(step_s * 1e3, 1), "images_per_s": round(b / step_s, 1)}


def main(argv):
  del argv
  args = FLAGS
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    from diffjax.parallel.distributed import split_host_into_devices
    split_host_into_devices(16)
  import jax
  cases = ([(m, None, args.batch) for m in args.configs] if args.configs else
           [(m, a, args.batch or b) for m, a, b in DEFAULT_CASES])
  rows = []
  for module, arg, batch in cases:
    row = measure(module, arg, batch, args.steps)
    print(json.dumps(row), flush=True)
    rows.append(row)
  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  out = pathlib.Path(__file__).parent
  meta = {"backend": backend, "device": device, "jax": jax.__version__,
          "cpu_count": os.cpu_count(), "machine": platform.machine(), "rows": rows}
  (out / f"results_{backend}.json").write_text(json.dumps(meta, indent=1))
  cols = ["config", "model", "params_M", "image", "batch", "dtype", "devices", "step_ms",
          "images_per_s", "compile_s"]
  lines = [f"Train-step throughput on {device} ({backend}, {os.cpu_count()} cores, "
           f"jax {jax.__version__})", "", "| " + " | ".join(cols) + " |",
           "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
  (out / f"results_{backend}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_list("configs", [], "config modules (default: a fixed set)")
  flags.DEFINE_integer("batch", None, "override the batch size")
  flags.DEFINE_integer("steps", 10, "timed steps per config")
  FLAGS = flags.FLAGS
  app.run(main)
