"""Train-step (and sampling) throughput of named configs, with the same network in PyTorch.

For each config: the jitted, sharded train step of its real network on synthetic batches (data
loading excluded) after compilation and warm-up, timed in alternation with PyTorch running the
same network (diffusers' ``UNet2DModel`` built like our DDPM CIFAR-10 UNet, 35,746,307
parameters in both; diffusers' ``DiTTransformer2DModel`` for DiT configs) on the same batch
shape with Adam, so the ratio holds on a noisy machine. Also: the denoiser's forward rate
(sampling NFE/s, images/s for the config's sampler steps), model FLOPs per step from XLA's cost
analysis and, given the device's peak (``--peak_tflops``, default by device kind), the model
FLOPs utilisation; weak scaling over 1, 2, 4, ... devices (``--scaling``).

Writes ``results_<backend>.json`` and ``results_<backend>.md`` beside this file.

  python experiments/benchmarks/train_throughput.py                       # CPU set
  python experiments/benchmarks/train_throughput.py --configs cifar10_ddpm,dit_b2_latent,\\
      dit_xl2_latent --batch 64 --dtype bfloat16 --scaling 1             # on a GPU

PyTorch runs when ``torch`` and ``diffusers`` are importable (``pip install diffusers``; not
needed for training). On a CPU-only host this script splits the host into one XLA device per
core, as launch.py does; PyTorch gets all the cores as threads.
"""

import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("configs", ["default", "mnist:cpu", "mnist", "cifar10_ddpm"],
                  "config modules[:arg]; also dit_b2_latent / dit_xl2_latent (DiT on 32x32x4 "
                  "latents, ImageNet-256 shapes)")
flags.DEFINE_integer("batch", None, "batch size for every config (default: per-config CPU sizes)")
flags.DEFINE_integer("steps", 5, "timed steps per window")
flags.DEFINE_integer("windows", 2, "alternating timing windows per framework")
flags.DEFINE_string("dtype", "", "compute dtype override: float32 | bfloat16")
flags.DEFINE_float("peak_tflops", 0.0, "device peak (dense, at the dtype) for MFU; 0: by kind")
flags.DEFINE_bool("torch", True, "also time the same network in PyTorch where one exists")
flags.DEFINE_list("scaling", [], "device counts for weak scaling of the first config")
flags.DEFINE_string("attention", "", "DiT attention for jax.nn.dot_product_attention "
                    "(xla | cudnn; empty: JAX's default). MFU always counts the XLA version's "
                    "FLOPs, since XLA's cost analysis cannot see inside a cuDNN call")
FLAGS = flags.FLAGS

# Batch per config on a 2-core CPU (None keeps the config's own batch).
CPU_BATCH = {"default": None, "mnist:cpu": None, "mnist": 32, "cifar10_ddpm": 16,
             "dit_b2_latent": 8, "dit_xl2_latent": 4}
# Measured dense bf16 matmul peak of an H100/H200 (issue 6); TPU numbers are the spec sheets'.
PEAK_TFLOPS = {"h100": 790.0, "h200": 790.0, "tpu v4": 275.0, "tpu v5p": 459.0,
               "tpu v5 lite": 197.0, "tpu v6 lite": 918.0}


def get_config(name: str):
  """A config by ``module[:arg]``, or a DiT on ImageNet-256 latent shapes."""
  import importlib
  if name in ("dit_b2_latent", "dit_xl2_latent"):
    c = importlib.import_module("configs.imagenet64_dit").get_config()
    c.model.name = "DiT-B/2" if name == "dit_b2_latent" else "DiT-XL/2"
    # Validated as 3 channels (no latent data source exists yet); `latent_spec` makes it 4.
    c.data.image_size, c.data.channels, c.data.num_classes = 32, 3, 1000
    return c
  module, _, arg = name.partition(":")
  return importlib.import_module(f"configs.{module}").get_config(arg or None)


def latent_spec(name: str, spec):
  """DiT configs run on 32x32x4 latents (ImageNet-256 through SD's VAE)."""
  import dataclasses
  if name.startswith("dit_"):
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, channels=4))
  return spec


def peak_tflops(device_kind: str) -> float:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  kind = device_kind.lower()
  return next((v for k, v in PEAK_TFLOPS.items() if k in kind), 0.0)


class OurStep:
  """The config's train step on ``devices``, ready to time."""

  def __init__(self, name: str, batch: int | None, devices=None):
    import jax
    import numpy as np

    from diffjax import parallel
    from diffjax.spec import build_spec
    from diffjax.training import parameter_count
    from diffjax.training.setup import jit_train_step, setup_state
    config = get_config(name)
    if batch:
      config.data.batch_size = batch
    if FLAGS.dtype:
      config.model.dtype = FLAGS.dtype
    is_dit = config.model.name.startswith("DiT")
    if FLAGS.attention and is_dit:
      config.model.kwargs.attention_implementation = FLAGS.attention
    devices = devices or jax.devices()
    spec = latent_spec(name, build_spec(config, num_devices=len(devices), check_network=False))
    self.spec = spec
    self.name = name
    self.mesh = parallel.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)
    setup = setup_state(spec, self.mesh)
    self.setup = setup
    self.fn = jit_train_step(setup, spec, self.mesh)
    b, s, ch = spec.data.batch_size, spec.data.image_size, spec.data.channels
    rng = np.random.default_rng(0)
    self.batch_np = {"image": rng.uniform(-1, 1, (b, s, s, ch)).astype(np.float32),
                     "label": rng.integers(0, max(spec.data.num_classes, 1), b).astype(np.int32)}
    self.batch = parallel.global_batch(self.batch_np, parallel.batch_sharding(self.mesh))
    self.state = setup.init(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = self.fn.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.flops_per_step = self._model_flops(config, devices)
    memory = compiled.memory_analysis()
    self.memory_mb = (None if memory is None else round(
        (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20, 1))
    self.params_m = parameter_count(self.state.params) / 1e6
    self.run(2)  # warm-up

  def _model_flops(self, config, devices) -> float:
    """FLOPs of the step on the whole batch (backend-independent, see `train_step_flops`),
    with XLA attention for DiTs: XLA cannot count FLOPs inside a cuDNN attention call."""
    from diffjax.estimate import train_step_flops
    from diffjax.spec import build_spec
    config = config.copy_and_resolve_references()
    if config.model.name.startswith("DiT"):
      config.model.kwargs.attention_implementation = "xla"
    return train_step_flops(latent_spec(self.name, build_spec(config, num_devices=1,
                                                              check_network=False)))

  def run(self, steps: int) -> float:
    import jax
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.fn(self.state, self.batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps

  def forward_rate(self, steps: int) -> float:
    """Denoiser forward passes per second (one sampling step over the batch = batch NFE)."""
    import jax
    import jax.numpy as jnp
    model, labels = self.setup.model, self.batch["label"]
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, jnp.full(x.shape[:1], 0.5),
                                           labels if self.spec.model.conditional else None))
    x = self.batch["image"]
    jax.block_until_ready(fwd(self.state.ema_params, x))
    t0 = time.perf_counter()
    for _ in range(steps):
      out = fwd(self.state.ema_params, x)
    jax.block_until_ready(out)
    return x.shape[0] * steps / (time.perf_counter() - t0)


class TorchStep:
  """The same network in PyTorch (diffusers), one Adam step on an MSE loss per call."""

  def __init__(self, our: OurStep):
    import torch
    spec = our.spec
    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    if self.device == "cpu":
      torch.set_num_threads(os.cpu_count())
    name = spec.model.name
    b, s, ch = spec.data.batch_size, spec.data.image_size, spec.data.channels
    if name == "ddpm-cifar10":
      from diffusers import UNet2DModel
      self.model = UNet2DModel(
          sample_size=s, in_channels=ch, out_channels=ch, block_out_channels=(128, 256, 256, 256),
          layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                "DownBlock2D"),
          up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
          dropout=0.1, attention_head_dim=None, norm_num_groups=32, freq_shift=1,
          flip_sin_to_cos=False)
      self.call = lambda x, t, y: self.model(x, t).sample
    elif name.startswith("DiT-"):
      from diffusers import DiTTransformer2DModel
      depth, width, heads = {"DiT-B/2": (12, 768, 12), "DiT-XL/2": (28, 1152, 16)}[name]
      self.model = DiTTransformer2DModel(
          num_attention_heads=heads, attention_head_dim=width // heads, in_channels=ch,
          out_channels=ch, num_layers=depth, sample_size=s, patch_size=2,
          num_embeds_ada_norm=1000)
      self.call = lambda x, t, y: self.model(x, timestep=t, class_labels=y).sample
    else:
      raise KeyError(name)
    self.model.to(self.device).train()
    self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6
    self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    self.x = torch.randn(b, ch, s, s, generator=gen).to(self.device)
    self.t = torch.randint(0, 1000, (b,), generator=gen).to(self.device)
    self.y = torch.randint(0, 1000, (b,), generator=gen).to(self.device)
    self.bf16 = spec.model.dtype == "bfloat16"
    self.run(2)

  def step(self):
    torch = self.torch
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.call(self.x, self.t, self.y)
      loss = torch.nn.functional.mse_loss(out.float(), self.x)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()

  def run(self, steps: int) -> float:
    torch = self.torch
    if self.device == "cuda":
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    if self.device == "cuda":
      torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def make_torch(our: OurStep):
  if not FLAGS.torch:
    return None, "off"
  try:
    return TorchStep(our), ""
  except ImportError as e:
    return None, f"not installed ({e.name})"
  except KeyError:
    return None, "no PyTorch twin for this network"
  except Exception as e:  # e.g. out of memory beside JAX's buffers: keep diffjax's numbers
    return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


def measure(name: str) -> dict:
  """One config's row; ``name@B`` sets the batch for this config only."""
  import jax
  name, _, at_batch = name.partition("@")
  batch = (int(at_batch) if at_batch else FLAGS.batch) or (
      CPU_BATCH.get(name) if jax.default_backend() == "cpu" else None)
  ours = OurStep(name, batch)
  twin, why_not = make_torch(ours)
  our_times, torch_times = [], []
  for _ in range(FLAGS.windows):  # alternate, so machine drift hits both alike
    our_times.append(ours.run(FLAGS.steps))
    if twin:
      torch_times.append(twin.run(FLAGS.steps))
  step_s = statistics.median(our_times)
  spec = ours.spec
  b = spec.data.batch_size
  device = jax.devices()[0]
  peak = peak_tflops(device.device_kind) * jax.device_count()
  nfe_per_s = ours.forward_rate(FLAGS.steps)
  row = {"config": name, "model": spec.model.name, "params_M": round(ours.params_m, 2),
         "image": f"{spec.data.image_size}x{spec.data.image_size}x{spec.data.channels}",
         "batch": b, "dtype": spec.model.dtype, "devices": jax.device_count(),
         "step_ms": round(step_s * 1e3, 1), "images_per_s": round(b / step_s, 1),
         "compile_s": round(ours.compile_s, 1),
         "model_tflop_per_step": round(ours.flops_per_step / 1e12, 4),
         "mfu": round(ours.flops_per_step / step_s / (peak * 1e12), 4) if peak else None,
         "memory_mb_per_device": ours.memory_mb,
         "sample_nfe_per_s": round(nfe_per_s, 1),
         "sample_images_per_s": round(nfe_per_s / spec.sample.num_steps /
                                      (2 if spec.sample.guidance_scale != 1 else 1), 4),
         "sample_steps": spec.sample.num_steps}
  if twin:
    torch_s = statistics.median(torch_times)
    row.update(torch_params_M=round(twin.params_m, 2), torch_step_ms=round(torch_s * 1e3, 1),
               torch_images_per_s=round(b / torch_s, 1), speedup_vs_torch=round(torch_s / step_s, 2))
  else:
    row["torch"] = why_not
  return row


def weak_scaling(name: str, counts) -> list[dict]:
  """Same per-device batch on 1, 2, 4, ... devices; efficiency = rate_n / (n * rate_1)."""
  name = name.partition("@")[0]
  import jax
  per_device = FLAGS.batch or CPU_BATCH.get(name) or get_config(name).data.batch_size
  per_device = max(1, per_device // jax.device_count())
  rows, base = [], None
  for n in counts:
    ours = OurStep(name, per_device * n, devices=jax.devices()[:n])
    rate = per_device * n / statistics.median(ours.run(FLAGS.steps) for _ in range(FLAGS.windows))
    base = base or rate
    rows.append({"devices": n, "batch": per_device * n, "images_per_s": round(rate, 1),
                 "efficiency": round(rate / (n * base), 3)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv):
  del argv
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    from diffjax.parallel.distributed import split_host_into_devices
    split_host_into_devices(max([16] + [int(n) for n in FLAGS.scaling]))
  import jax
  rows = []
  for name in FLAGS.configs:
    try:
      row = measure(name)
    except Exception as e:  # one config failing (memory, a kernel) must not lose the others
      row = {"config": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    print(json.dumps(row), flush=True)
    rows.append(row)
  scaling = weak_scaling(FLAGS.configs[0], [int(n) for n in FLAGS.scaling]) if FLAGS.scaling else []
  backend, device = jax.default_backend(), jax.devices()[0].device_kind
  meta = {"backend": backend, "device": device, "jax": jax.__version__,
          "cpu_count": os.cpu_count(), "machine": platform.machine(), "rows": rows,
          "weak_scaling": scaling, "steps": FLAGS.steps, "windows": FLAGS.windows}
  out = pathlib.Path(__file__).parent
  (out / f"results_{backend}.json").write_text(json.dumps(meta, indent=1))
  cols = ["config", "model", "params_M", "image", "batch", "dtype", "devices", "step_ms",
          "images_per_s", "torch_images_per_s", "speedup_vs_torch", "mfu",
          "sample_images_per_s", "memory_mb_per_device", "compile_s", "error"]
  lines = [f"Train-step throughput on {device} ({backend}, {os.cpu_count()} cores, jax "
           f"{jax.__version__}); PyTorch = diffusers' twin network, same batch, same run", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(str(r.get(c, "-") if r.get(c) is not None else "-") for c in cols)
            + " |" for r in rows]
  if scaling:
    lines += ["", f"Weak scaling of {FLAGS.configs[0]} (same batch per device):", "",
              "| devices | batch | images/s | efficiency |", "|---|---|---|---|"]
    lines += [f"| {r['devices']} | {r['batch']} | {r['images_per_s']} | {r['efficiency']} |"
              for r in scaling]
  (out / f"results_{backend}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
