"""Resource estimate of a training run before launching it (``launch.py --mode estimate``).

From the config alone (no parameters are initialised): parameter count, model FLOPs per image
and per step (XLA's cost analysis of the real compiled train step: forward, backward and
optimiser update), train-state memory per device under the config's sharding rules on the
target mesh, activation memory of one device's share of the batch (the compiled program on
this host), and the projected wall time and accelerator-hours of ``train.num_steps`` on
``estimate.num_devices`` chips of kind ``estimate.chip``: at the chip's peak (a lower bound),
at an assumed model FLOPs utilisation ``estimate.mfu``, and from a measured throughput
``estimate.images_per_s`` when given (e.g. from
experiments/benchmarks/throughput/train_throughput.py).
"""

from __future__ import annotations

import json
import pathlib

import jax
from jax.sharding import AbstractMesh

from diffjax import parallel
from diffjax.experiment import build_spec
from diffjax.fields import ConfigError
from diffjax.jobs.common import abstract_batch
from diffjax.spec import mesh_size
from diffjax.training import parameter_count
from diffjax.training.setup import jit_train_step, setup_state

# Dense bf16 peak per chip in TFLOP/s: H100/H200 as measured for large matmuls (issue 6 of this
# project: about 790), the others from their vendors' spec sheets.
PEAK_TFLOPS = {"h100": 790.0, "h200": 790.0, "a100": 312.0, "tpu-v4": 275.0, "tpu-v5e": 197.0,
               "tpu-v5p": 459.0, "tpu-v6e": 918.0}
_FLOPS_BATCH = 8  # images per compiled probe program (FLOPs scale linearly with batch)


def train_step_flops(spec) -> float:
  """FLOPs of one train step over ``spec``'s whole batch, from XLA's cost analysis of the
  program as written, lowered for one CPU device. The count is the same whatever the target:
  a GPU-compiled module's cost analysis leaves out the convolutions and attention that GPU
  backends hand to cuDNN. (Use XLA attention in ``spec``: a cuDNN call has no CPU lowering.)"""
  cpu = jax.devices("cpu")[:1]
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, cpu)
  setup = setup_state(spec.method, mesh, parallel.DATA_PARALLEL_RULES)
  batch = abstract_batch(spec, parallel.batch_sharding(mesh))
  cost = jit_train_step(setup, mesh, spec.train, spec.faults).lower(
      setup.abstract, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def _probe_spec(config, batch: int):
  """``config`` with ``batch`` images on one device, no accumulation."""
  probe = config.copy_and_resolve_references()
  probe.data.batch_size = batch
  probe.train.grad_accum = 1
  probe.mesh.update(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1)
  return build_spec(probe, num_devices=1, check_network=False)


def _temporaries(spec) -> int | None:
  """Bytes of temporaries of ``spec``'s train step compiled for one local device (None where
  the backend reports no memory analysis)."""
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  setup = setup_state(spec.method, mesh, parallel.DATA_PARALLEL_RULES)
  compiled = jit_train_step(setup, mesh, spec.train, spec.faults).lower(
      setup.abstract, abstract_batch(spec, parallel.batch_sharding(mesh))).compile()
  memory = compiled.memory_analysis()
  return None if memory is None else memory.temp_size_in_bytes


def _options(config) -> dict:
  e = config.estimate
  problems = []
  if e.chip not in PEAK_TFLOPS:
    problems.append(f"config.estimate.chip: unknown chip {e.chip!r}; allowed: "
                    f"{', '.join(PEAK_TFLOPS)}")
  if not isinstance(e.num_devices, int) or e.num_devices < 1:
    problems.append(f"config.estimate.num_devices: must be a positive integer, got "
                    f"{e.num_devices!r}")
  if not 0 < e.mfu <= 1:
    problems.append(f"config.estimate.mfu: must be in (0, 1], got {e.mfu}")
  if e.images_per_s < 0:
    problems.append(f"config.estimate.images_per_s: must be >= 0, got {e.images_per_s}")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
  return dict(chip=e.chip, num_devices=e.num_devices, mfu=float(e.mfu),
              images_per_s=float(e.images_per_s))


def _compute_dtype(config) -> str:
  return config.model.dtype if "model" in config else "float32"


def _hours(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def estimate(config, workdir: str | None = None) -> dict:
  opts = _options(config)
  n = opts["num_devices"]
  spec = build_spec(config, num_devices=n)  # batch and mesh checked against the target
  sizes = mesh_size(spec.mesh, n)
  batch = spec.data.batch_size
  per_device = batch // (sizes["data"] * sizes["fsdp"])

  # Train-state bytes per device on the target mesh (an abstract mesh: no devices needed).
  target = AbstractMesh(tuple(sizes[a] for a in parallel.MESH_AXES), parallel.MESH_AXES)
  target_setup = setup_state(spec.method, target, parallel.get_rules(spec.mesh.rules))
  _, state_mb = parallel.sharding_report(target_setup.abstract, target_setup.shardings)

  # FLOPs and activation memory: the real train step compiled on one local device, at two
  # probe batches. The compiled temporaries grow with the batch by the activations (what the
  # backward pass keeps plus the step's scratch); the slope is that cost per image, free of
  # the optimiser update's batch-independent temporaries.
  probe_batch = min(per_device, _FLOPS_BATCH)
  probe_spec = _probe_spec(config, probe_batch)
  flops_per_image = train_step_flops(probe_spec) / probe_batch
  temps = [_temporaries(_probe_spec(config, b)) for b in (probe_batch, 2 * probe_batch)]
  activation_mb = None
  if None not in temps:
    micro = per_device // spec.train.grad_accum
    activation_mb = max(0, temps[1] - temps[0]) / probe_batch * micro / 2**20
  s, c = spec.data.image_size, spec.data.channels
  setup = setup_state(probe_spec.method, parallel.make_mesh(
      {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]), parallel.DATA_PARALLEL_RULES)

  flops_per_step = flops_per_image * batch
  peak = PEAK_TFLOPS[opts["chip"]] * 1e12 * n
  steps = spec.train.num_steps
  result = {
      "experiment": spec.experiment, "method": spec.method.name,
      "params_M": round(parameter_count(setup.abstract.params) / 1e6, 2),
      "image": f"{s}x{s}x{c}", "batch": batch, "grad_accum": spec.train.grad_accum,
      "num_steps": steps, "images_seen_M": round(steps * batch / 1e6, 2),
      "chip": opts["chip"], "num_devices": n, "mesh": sizes, "rules": spec.mesh.rules,
      "dtype": _compute_dtype(config),
      # Significant digits, not decimals: a tiny model's GFLOPs would round to a few digits.
      "gflops_per_image": float(f"{flops_per_image / 1e9:.4g}"),
      "tflops_per_step": float(f"{flops_per_step / 1e12:.4g}"),
      "state_mb_per_device": round(state_mb["per_device_mb"], 1),
      "state_mb_total": round(state_mb["total_mb"], 1),
      "activation_mb_per_device": None if activation_mb is None else round(activation_mb, 1),
      "peak_tflops_per_chip": PEAK_TFLOPS[opts["chip"]],
      "seconds_at_peak": flops_per_step * steps / peak,
      "assumed_mfu": opts["mfu"],
      "seconds_at_assumed_mfu": flops_per_step * steps / (peak * opts["mfu"])}
  if opts["images_per_s"]:
    result["seconds_at_measured_rate"] = steps * batch / opts["images_per_s"]
  for key in [k for k in result if k.startswith("seconds_")]:
    result[key.replace("seconds_", "chip_hours_")] = round(result[key] * n / 3600, 1)
  _print(result)
  if workdir:
    out = pathlib.Path(workdir) / "estimate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[diffjax] wrote {out}")
  return result


def _print(r: dict) -> None:
  lines = [
      f"experiment {r['experiment']!r}: {r['method']}, {r['params_M']}M parameters, "
      f"{r['image']} images, batch {r['batch']} (grad_accum {r['grad_accum']}), "
      f"{r['num_steps']} steps = {r['images_seen_M']}M images",
      f"compute: {r['gflops_per_image']} GFLOP per image (forward + backward + update, XLA "
      f"cost analysis), {r['tflops_per_step']} TFLOP per step",
      f"memory per device on {r['num_devices']} x {r['chip']} (mesh {r['mesh']}, "
      f"{r['rules']} rules): train state {r['state_mb_per_device']} MB of "
      f"{r['state_mb_total']} MB, activations ~{r['activation_mb_per_device']} MB "
      f"(growth of the compiled step's temporaries with the batch on this host's backend; "
      f"accelerators differ)",
      f"time at peak ({r['peak_tflops_per_chip']} TFLOP/s per chip, bf16): "
      f"{_hours(r['seconds_at_peak'])} = {r['chip_hours_at_peak']} chip-hours",
      f"time at {r['assumed_mfu']:.0%} MFU: {_hours(r['seconds_at_assumed_mfu'])} = "
      f"{r['chip_hours_at_assumed_mfu']} chip-hours"]
  if "seconds_at_measured_rate" in r:
    lines.append(f"time at the measured rate: {_hours(r['seconds_at_measured_rate'])} = "
                 f"{r['chip_hours_at_measured_rate']} chip-hours")
  if r["dtype"] != "bfloat16":
    lines.append("note: the model computes in float32; the bf16 peak makes these times "
                 "optimistic (set model.dtype=bfloat16 to train as estimated)")
  for line in lines:
    print(f"[diffjax] {line}", flush=True)
