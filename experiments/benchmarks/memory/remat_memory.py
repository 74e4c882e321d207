"""What rematerialisation saves: for each config and `model.kwargs.remat` policy, the bytes the
backward pass keeps from the forward pass (the vjp's residuals: what `jax.checkpoint` decides,
the same on every backend) beside the temporary memory of the compiled train step per device
(what the backend's compiler makes of it). Compiles only; runs no step.

  python experiments/benchmarks/memory/remat_memory.py               # CPU: UNet, MNIST UNet
  python experiments/benchmarks/memory/remat_memory.py --nocompile --policies=none \\
      --dtype bfloat16 \\
      --configs dit_xl2_latent@128,dit_xl2_latent@128+model.kwargs.lean_residuals=False \\
      --results residuals_lean                         # what lean residuals save, any size
  bash experiments/benchmarks/throughput/gpu.sh remat      # on a GPU: DiT-XL/2 and the UNet

Takes train_throughput.py's row names (``--configs``) and its ``--batch``, ``--dtype`` and
``--attention`` (it imports ``../throughput/train_throughput.py``). Writes
``remat_<backend>.{md,json}`` beside this file (``--results`` renames them).

On XLA:CPU the two agreed only once `tune_cpu_xla_flags` disabled the pass
``cse_barrier_expander``: it expands the optimisation barriers that `jax.checkpoint` places
against common-subexpression elimination before CSE runs, so the recomputation merged back into
the forward pass and the compiled step kept about as much as without remat.
"""

import json
import os
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "throughput"))
import train_throughput as tt  # noqa: E402  (its flags: --configs, --batch, --dtype, ...)

flags.DEFINE_list("policies", ["", "full", "dots"], "remat policies ('' or none = off)")
flags.DEFINE_bool("compile", True, "also compile the step for its memory per device (off: the "
                  "residuals only, seconds per row at any size, e.g. DiT-XL/2 at batch 128)")
FLAGS = flags.FLAGS
FLAGS.set_default("configs", ["cifar10_ddpm", "mnist:cpu"])

HERE = pathlib.Path(__file__).resolve().parent
MB = 2**20


def residual_bytes(spec, setup) -> int:
  """Bytes of the vjp's residuals of the loss on the whole batch (shapes only, nothing runs)."""
  import jax
  import numpy as np

  from diffjax.methods.diffusion import loss_fn
  s, c, b = spec.data.image_size, spec.data.channels, spec.data.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, c), np.float32),
           "label": jax.ShapeDtypeStruct((b,), np.int32)}
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        setup.abstract.nets["denoiser"].params)
  method = spec.method

  def residuals(p, batch):
    loss = lambda p: loss_fn(p, batch, jax.random.PRNGKey(0), model=method.module,
                             spec=method.diffusion, conditional=method.model.conditional)[0]
    return jax.tree.leaves(jax.vjp(loss, p)[1])
  return sum(int(np.prod(r.shape)) * r.dtype.itemsize
             for r in jax.eval_shape(residuals, params, batch))


def measure(label: str, policy: str) -> dict:
  import jax

  from diffjax import parallel
  from diffjax.experiment import build_spec
  from diffjax.jobs.common import state_setup
  from diffjax.jobs.train import compile_step
  name, at_batch, overrides = tt.parse_name(label)
  config = tt.bench_config(name, tt.row_batch(name, at_batch),
                           {**overrides, "model.kwargs.remat": policy})
  devices = jax.devices()
  spec = tt.latent_spec(name, build_spec(config, num_devices=len(devices), check_network=False))
  mesh = parallel.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)
  setup = state_setup(spec, mesh)
  row = {"config": label, "remat": policy or "none", "devices": len(devices),
         "batch": spec.data.batch_size,
         "residual_mb_whole_batch": round(residual_bytes(spec, setup) / MB, 1)}
  if not FLAGS.compile:
    return row
  t0 = time.perf_counter()
  memory = compile_step(setup, spec, mesh).memory_analysis()
  row["compile_s"] = round(time.perf_counter() - t0, 1)
  if memory is not None:
    row.update(temp_mb_per_device=round(memory.temp_size_in_bytes / MB, 1),
               argument_mb_per_device=round(memory.argument_size_in_bytes / MB, 1))
  return row


def main(argv):
  del argv
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    from diffjax.parallel.distributed import split_host_into_devices
    split_host_into_devices(16)
  import jax
  rows = []
  for label in FLAGS.configs:
    for policy in ("" if p == "none" else p for p in FLAGS.policies):
      try:
        row = measure(label, policy)
      except Exception as e:  # e.g. out of memory at compile time: keep the other rows
        row = {"config": label, "remat": policy or "none",
               "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
      print(json.dumps(row), flush=True)
      rows.append(row)
  backend, device = jax.default_backend(), jax.devices()[0].device_kind
  stem = FLAGS.results or f"remat_{backend}"
  meta = {"backend": backend, "device": device, "jax": jax.__version__, "rows": rows}
  (HERE / f"{stem}.json").write_text(json.dumps(meta, indent=1))
  cols = ["config", "remat", "devices", "batch", "residual_mb_whole_batch",
          "temp_mb_per_device", "argument_mb_per_device", "compile_s", "error"]
  lines = [f"Rematerialisation on {backend} ({device}, jax {jax.__version__}): the vjp's "
           "residuals (whole batch; what `jax.checkpoint` keeps, backend-independent) against "
           "the compiled train step's temporary memory per device (XLA's estimate)", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
  (HERE / f"{stem}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
