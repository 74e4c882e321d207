"""Train-step (and sampling) throughput of named configs, with the same network in PyTorch.

For each config: the jitted, sharded train step of its real network on synthetic batches (data
loading excluded) after compilation and warm-up, timed in alternation with PyTorch running the
same network (diffusers' ``UNet2DModel`` built like our DDPM CIFAR-10 UNet, 35,746,307
parameters in both; diffusers' ``DiTTransformer2DModel`` for DiT configs) on the same batch
shape with the same update (clipping, Adam, EMA: see ``TorchStep``), so the ratio holds on a
noisy machine; each window starts with one untimed step. Also: the denoiser's forward rate
(sampling NFE/s, images/s for the config's sampler steps), model FLOPs per step from XLA's cost
analysis and, given the device's peak (``--peak_tflops``, default by device kind; on a CPU,
the best dense matmul rate of all its cores, measured in the run: ``measured_host_peak``), the
model FLOPs utilisation of diffjax and of the PyTorch twin; weak scaling over 1, 2, 4, ...
devices (``--scaling``).

Writes ``results_<backend>.json`` and ``results_<backend>.md`` beside this file.

  python experiments/benchmarks/throughput/train_throughput.py            # CPU set
  python experiments/benchmarks/throughput/train_throughput.py \\
      --configs cifar10_ddpm@128,dit_b2_latent@256,dit_xl2_latent@128 \\
      --dtype bfloat16 --isolate                                         # on a GPU

A config name may carry ``@batch`` and ``+path=value`` overrides of its config, e.g.
``cifar10_ddpm@128+model.kwargs.dropout=0.0``. ``--isolate`` times each network of each row in
a process of its own (diffjax, then PyTorch), so neither framework's memory pool starves the
other on a GPU; without it the two alternate in one process, which keeps the ratio fair on a
noisy CPU host. ``--profile_dir`` also writes a profiler trace of a few diffjax steps per row.

PyTorch runs when ``torch`` and ``diffusers`` are importable (``pip install diffusers``; not
needed for training). On a CPU-only host this script splits the host into one XLA device per
core, as launch.py does; PyTorch gets all the cores as threads. Like launch.py, it restarts
itself with huge pages for glibc's large allocations where that helps (``diffjax/host.py``);
the PyTorch twin runs in the same process, so both frameworks get the same allocator.
"""

import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "cpu"))
from conv_cpu import call_times  # noqa: E402  (warm-up call, then each call's seconds)

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
flags.DEFINE_string("results", "", "file stem of the results beside this script "
                    "(default results_<backend>)")
flags.DEFINE_bool("isolate", False, "time each framework of each row in a process of its own")
flags.DEFINE_enum("only", "", ["", "jax", "torch"], "time one framework only (used by --isolate)")
flags.DEFINE_list("torch_matmul", [], "dtype,n,calls: print the best time of a PyTorch matmul "
                  "on all cores and exit (measured_host_peak's child)")
flags.DEFINE_string("row_file", "", "write the row as JSON here and nothing else (--isolate)")
flags.DEFINE_bool("interleave", False, "diffjax only: build every config's step in this process "
                  "and alternate their timing windows (A B, then B A, ...): an A/B of config "
                  "fields immune to process-to-process drift (flag_ab.py --same_process)")
flags.DEFINE_string("profile_dir", "", "write a jax.profiler trace of 3 diffjax steps per row")
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


def parse_name(name: str) -> tuple[str, int | None, dict]:
  """``module[:arg][@batch][+path=value...]`` -> (config name, batch or None, overrides)."""
  import ast
  name, *sets = name.split("+")
  name, _, at_batch = name.partition("@")
  overrides = {}
  for item in sets:
    path, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"config override {item!r}: expected path=value")
    try:
      overrides[path] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[path] = value
  return name, int(at_batch) if at_batch else None, overrides


def get_config(name: str, overrides: dict | None = None):
  """A config by ``module[:arg]``, or a DiT on ImageNet-256 latent shapes, with overrides."""
  config = _base_config(name)
  for path, value in (overrides or {}).items():
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config


def _base_config(name: str):
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
  """DiT configs run on 32x32x4 latents (ImageNet-256 through SD's VAE): the data spec and the
  diffusion method, which takes its networks' input shape from the data when it is built."""
  import dataclasses
  if not name.startswith("dit_"):
    return spec
  data = dataclasses.replace(spec.data, channels=4)
  m = spec.method
  method = type(m)(m.model, m.diffusion, m.sampler, m.optim, data, grad_accum=m.grad_accum)
  return dataclasses.replace(spec, data=data, method=method)


def peak_tflops(device_kind: str) -> float:
  """Per device: ``--peak_tflops``, else the table's number for the kind, else 0 (unknown)."""
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  kind = device_kind.lower()
  return next((v for k, v in PEAK_TFLOPS.items() if k in kind), 0.0)


_HOST_PEAK = {}


def measured_host_peak(dtype: str, n: int = 1024, calls: int = 20) -> dict:
  """The best dense matmul rate of all of this host's CPU cores at once, in TFLOP/s.

  CPUs have no spec-sheet peak here (clocks and vector units vary by host), so CPU rows take
  MFU against what the cores reach on the friendliest workload: every XLA device multiplying
  its own n x n matrices at once (XLA's dot kernel, under this process's XLA flags), and
  PyTorch's ``torch.matmul`` on all cores when it is installed (in a child process, so its
  thread pool does not linger in this one); the higher of the two. Best of ``calls`` after a
  warm-up; measured once per process and dtype."""
  if dtype in _HOST_PEAK:
    return _HOST_PEAK[dtype]
  import importlib.util
  import subprocess

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ("d",))
  split = NamedSharding(mesh, PartitionSpec("d"))
  a = jax.device_put(jnp.ones((len(devices), n, n), dtype), split)
  f = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a), out_shardings=split)
  flop = 2.0 * n ** 3 * len(devices)
  rates = {"xla": flop / min(call_times(lambda: jax.block_until_ready(f(a)), calls)) / 1e12}
  if importlib.util.find_spec("torch"):
    done = subprocess.run([sys.executable, __file__, f"--torch_matmul={dtype},{n},{calls}"],
                          capture_output=True, text=True)
    if done.returncode == 0:
      rates["torch"] = flop / len(devices) / float(done.stdout.split()[-1]) / 1e12
  _HOST_PEAK[dtype] = {"tflops": max(rates.values()), "by_library": rates, "n": n}
  return _HOST_PEAK[dtype]


def torch_matmul_seconds(dtype: str, n: int, calls: int) -> float:
  """Best time of one n x n ``torch.matmul`` on all cores (``--torch_matmul``'s child)."""
  import torch
  torch.set_num_threads(os.cpu_count())
  t = torch.ones(n, n, dtype=getattr(torch, dtype))
  return min(call_times(lambda: torch.matmul(t, t), calls))


def bench_config(name: str, batch: int | None, overrides: dict):
  """The config as benchmarked: batch, --dtype and --attention applied."""
  config = get_config(name, overrides)
  if batch:
    config.data.batch_size = batch
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  if FLAGS.attention and config.model.name.startswith("DiT"):
    config.model.kwargs.attention_implementation = FLAGS.attention
  return config


class OurStep:
  """The config's train step on ``devices``, ready to time."""

  def __init__(self, name: str, batch: int | None, devices=None, overrides: dict | None = None):
    import jax
    import numpy as np

    from diffjax import parallel
    from diffjax.experiment import build_spec
    from diffjax.jobs.common import state_setup
    from diffjax.training import parameter_count
    from diffjax.training.setup import jit_train_step
    config = bench_config(name, batch, overrides or {})
    devices = devices or jax.devices()
    spec = latent_spec(name, build_spec(config, num_devices=len(devices), check_network=False))
    self.spec = spec
    self.name = name
    self.mesh = parallel.make_mesh({"data": len(devices), "fsdp": 1, "tensor": 1}, devices)
    setup = state_setup(spec, self.mesh)
    self.setup = setup
    self.fn = jit_train_step(setup, self.mesh, spec.train, spec.faults)
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
    self.run(1, untimed=1)  # warm-up

  def _model_flops(self, config, devices) -> float:
    """FLOPs of the step on the whole batch (backend-independent, see `train_step_flops`),
    with XLA attention for DiTs: XLA cannot count FLOPs inside a cuDNN attention call."""
    from diffjax.experiment import build_spec
    from diffjax.jobs.estimate import train_step_flops
    config = config.copy_and_resolve_references()
    if config.model.name.startswith("DiT"):
      config.model.kwargs.attention_implementation = "xla"
    return train_step_flops(latent_spec(self.name, build_spec(config, num_devices=1,
                                                              check_network=False)))

  def run(self, steps: int, untimed: int = 1) -> float:
    """Seconds per step over ``steps`` steps, after ``untimed`` ones: each timing window starts
    with an untimed step, since on a CPU host the first step after the other framework's window
    ran up to 30% slower than the next ones (4.55 s, then 3.54 s)."""
    import jax
    for _ in range(untimed):
      self.state, metrics = self.fn(self.state, self.batch)
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.fn(self.state, self.batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps

  def profile(self, directory: str, steps: int = 3) -> None:
    import jax
    self.run(1)
    with jax.profiler.trace(directory):
      self.run(steps, untimed=0)

  def forward_rate(self, steps: int) -> float:
    """Denoiser forward passes per second (one sampling step over the batch = batch NFE)."""
    import jax
    import jax.numpy as jnp
    method, labels = self.spec.method, self.batch["label"]
    fwd = jax.jit(lambda p, x: method.module.apply(
        {"params": p}, x, jnp.full(x.shape[:1], 0.5),
        labels if method.model.conditional else None))
    x = self.batch["image"]
    ema_params = self.state.nets["denoiser"].ema_params
    jax.block_until_ready(fwd(ema_params, x))
    t0 = time.perf_counter()
    for _ in range(steps):
      out = fwd(ema_params, x)
    jax.block_until_ready(out)
    return x.shape[0] * steps / (time.perf_counter() - t0)


class TorchStep:
  """The same network in PyTorch (diffusers) and the same update as the config's diffjax step:
  an MSE loss, global-norm gradient clipping (``optim.grad_clip``), Adam and the EMA of the
  parameters (``train.ema_decay``; ``torch._foreach_lerp_``, as diffusers' EMAModel with
  foreach). Not mirrored: diffjax's skip of a non-finite update (a few selects per tensor)."""

  def __init__(self, spec):
    import torch
    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    if self.device == "cpu":
      torch.set_num_threads(os.cpu_count())
    name = spec.method.model.name
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
    self.params = list(self.model.parameters())
    o = spec.method.optim
    self.opt = torch.optim.Adam(self.params, lr=1e-4, betas=(o.b1, o.b2), eps=o.eps)
    self.grad_clip, self.ema_decay = o.grad_clip, spec.train.ema_decay
    self.ema = [p.detach().clone() for p in self.params] if self.ema_decay else []
    gen = torch.Generator().manual_seed(0)
    self.x = torch.randn(b, ch, s, s, generator=gen).to(self.device)
    self.t = torch.randint(0, 1000, (b,), generator=gen).to(self.device)
    self.y = torch.randint(0, 1000, (b,), generator=gen).to(self.device)
    self.bf16 = spec.method.model.dtype == "bfloat16"
    self.run(1, untimed=1)

  def step(self):
    torch = self.torch
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.call(self.x, self.t, self.y)
      loss = torch.nn.functional.mse_loss(out.float(), self.x)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
    self.opt.step()
    if self.ema:
      with torch.no_grad():
        torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)

  def run(self, steps: int, untimed: int = 1) -> float:
    torch = self.torch
    for _ in range(untimed):
      self.step()
    if self.device == "cuda":
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    if self.device == "cuda":
      torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def make_torch(spec):
  if not FLAGS.torch:
    return None, "off"
  try:
    return TorchStep(spec), ""
  except ImportError as e:
    return None, f"not installed ({e.name})"
  except KeyError:
    return None, "no PyTorch twin for this network"
  except Exception as e:  # e.g. out of memory beside JAX's buffers: keep diffjax's numbers
    return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


def row_batch(name: str, at_batch: int | None) -> int | None:
  import jax
  return (at_batch or FLAGS.batch) or (
      CPU_BATCH.get(name) if jax.default_backend() == "cpu" else None)


def measure_torch(label: str) -> dict:
  """The PyTorch twin alone (``--only torch``): its row fields."""
  from diffjax.experiment import build_spec
  name, at_batch, overrides = parse_name(label)
  config = bench_config(name, row_batch(name, at_batch), overrides)
  spec = latent_spec(name, build_spec(config, num_devices=1, check_network=False))
  twin, why_not = make_torch(spec)
  if not twin:
    return {"config": label, "torch": why_not}
  times = []
  for w in range(FLAGS.windows):
    times.append(twin.run(FLAGS.steps))
    progress(label, "PyTorch", w, times[-1])
  torch_s = statistics.median(times)
  b = spec.data.batch_size
  return {"config": label, "torch_params_M": round(twin.params_m, 2),
          "torch_step_ms": round(torch_s * 1e3, 1), "torch_images_per_s": round(b / torch_s, 1)}


def progress(label: str, framework: str, window: int, seconds: float) -> None:
  """One line per timing window on stderr (a CPU row takes minutes per window)."""
  print(f"{label}: {framework} window {window + 1}/{FLAGS.windows}: {seconds:.3f} s/step "
        f"({FLAGS.steps} steps)", file=sys.stderr, flush=True)


def measure_isolated(label: str) -> dict:
  """The row from two child processes: diffjax alone, then PyTorch alone."""
  import subprocess
  import tempfile
  row = {}
  for only in ("jax", "torch") if FLAGS.torch else ("jax",):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
      args = [sys.executable, __file__, f"--configs={label}", f"--only={only}",
              f"--row_file={f.name}", f"--steps={FLAGS.steps}", f"--windows={FLAGS.windows}",
              f"--dtype={FLAGS.dtype}", f"--attention={FLAGS.attention}",
              f"--peak_tflops={FLAGS.peak_tflops}", f"--profile_dir={FLAGS.profile_dir}"]
      if FLAGS.batch:
        args.append(f"--batch={FLAGS.batch}")
      done = subprocess.run(args)
      part = json.loads(pathlib.Path(f.name).read_text() or "{}")
    if done.returncode or not part:  # the child died before writing its row
      part = {"config": label, "error" if only == "jax" else "torch":
              f"{only} process exited {done.returncode}"}
    row.update(part)
  return add_torch_ratio(row)


def add_torch_ratio(row: dict) -> dict:
  """diffjax's speed over PyTorch's and, where the row has an MFU, the twin's MFU (same model
  FLOPs, same peak) from the two step times."""
  if "torch_step_ms" in row and "step_ms" in row:
    row["speedup_vs_torch"] = round(row["torch_step_ms"] / row["step_ms"], 2)
    if row.get("mfu"):
      row["torch_mfu"] = round(row["mfu"] * row["step_ms"] / row["torch_step_ms"], 4)
  return row


def measure(label: str) -> dict:
  """One config's row (see the module docstring for ``name@batch+path=value``)."""
  import jax
  if FLAGS.only == "torch":
    return measure_torch(label)
  name, at_batch, overrides = parse_name(label)
  ours = OurStep(name, row_batch(name, at_batch), overrides=overrides)
  twin, why_not = make_torch(ours.spec) if FLAGS.only != "jax" else (None, "")
  our_times, torch_times = [], []
  for w in range(FLAGS.windows):  # alternate, so machine drift hits both alike
    our_times.append(ours.run(FLAGS.steps))
    progress(label, "diffjax", w, our_times[-1])
    if twin:
      torch_times.append(twin.run(FLAGS.steps))
      progress(label, "PyTorch", w, torch_times[-1])
  step_s = statistics.median(our_times)
  spec = ours.spec
  model, sampler = spec.method.model, spec.method.sampler
  b = spec.data.batch_size
  device = jax.devices()[0]
  peak = peak_tflops(device.device_kind) * jax.device_count()
  host_peak = None
  if not peak and device.platform == "cpu":
    host_peak = measured_host_peak(model.dtype)
    peak = host_peak["tflops"]
  nfe_per_s = ours.forward_rate(FLAGS.steps)
  row = {"config": label, "model": model.name, "params_M": round(ours.params_m, 2),
         "image": f"{spec.data.image_size}x{spec.data.image_size}x{spec.data.channels}",
         "batch": b, "dtype": model.dtype, "devices": jax.device_count(),
         "device": device.device_kind,
         "step_ms": round(step_s * 1e3, 1), "images_per_s": round(b / step_s, 1),
         "compile_s": round(ours.compile_s, 1),
         "model_tflop_per_step": round(ours.flops_per_step / 1e12, 4),
         "mfu": round(ours.flops_per_step / step_s / (peak * 1e12), 4) if peak else None,
         "memory_mb_per_device": ours.memory_mb,
         "sample_nfe_per_s": round(nfe_per_s, 1),
         "sample_images_per_s": round(nfe_per_s / sampler.num_steps /
                                      (2 if sampler.guidance_scale != 1 else 1), 4),
         "sample_steps": sampler.num_steps,
         "step_ms_by_window": [round(t * 1e3, 1) for t in our_times]}
  if host_peak:
    row.update(peak_tflops_measured=round(host_peak["tflops"], 4),
               peak_by_library={k: round(v, 4) for k, v in host_peak["by_library"].items()})
  if twin:
    torch_s = statistics.median(torch_times)
    by_window = [t / o for o, t in zip(our_times, torch_times)]
    row.update(torch_params_M=round(twin.params_m, 2), torch_step_ms=round(torch_s * 1e3, 1),
               torch_images_per_s=round(b / torch_s, 1),
               torch_step_ms_by_window=[round(t * 1e3, 1) for t in torch_times],
               speedup_range=[round(min(by_window), 3), round(max(by_window), 3)])
  elif why_not:
    row["torch"] = why_not
  if FLAGS.profile_dir:
    ours.profile(os.path.join(FLAGS.profile_dir, re.sub(r"[^A-Za-z0-9._-]", "_", label)))
  return add_torch_ratio(row)


def measure_interleaved(labels: list[str]) -> list[dict]:
  """diffjax's step of every config in ``labels``, built in this process (all live at once) and
  timed in alternating windows, the order reversed each window (A B, B A, ...), so drift of
  the machine over the run hits every config alike (why: ``flag_ab.py --same_process``)."""
  steps = {}
  for label in labels:
    name, at_batch, overrides = parse_name(label)
    steps[label] = OurStep(name, row_batch(name, at_batch), overrides=overrides)
  times = {label: [] for label in labels}
  for w in range(FLAGS.windows):
    for label in labels if w % 2 == 0 else labels[::-1]:
      times[label].append(steps[label].run(FLAGS.steps))
      progress(label, "diffjax", w, times[label][-1])
  rows = []
  for label, ours in steps.items():
    step_s = statistics.median(times[label])
    model = ours.spec.method.model
    rows.append({"config": label, "model": model.name,
                 "batch": ours.spec.data.batch_size, "dtype": model.dtype,
                 "device": ours.mesh.devices.flat[0].device_kind,
                 "step_ms": round(step_s * 1e3, 1),
                 "images_per_s": round(ours.spec.data.batch_size / step_s, 1),
                 "compile_s": round(ours.compile_s, 1), "memory_mb_per_device": ours.memory_mb,
                 "step_ms_by_window": [round(t * 1e3, 1) for t in times[label]]})
  return rows


def weak_scaling(name: str, counts) -> list[dict]:
  """Same per-device batch on 1, 2, 4, ... devices; efficiency = rate_n / (n * rate_1)."""
  name = parse_name(name)[0]
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
  if FLAGS.torch_matmul:
    dtype, n, calls = FLAGS.torch_matmul
    print(torch_matmul_seconds(dtype, int(n), int(calls)))
    return
  if FLAGS.interleave:  # flag_ab.py --same_process: rows of diffjax steps, no tables
    rows = measure_interleaved(FLAGS.configs)
    if FLAGS.row_file:
      pathlib.Path(FLAGS.row_file).write_text(json.dumps(rows))
    print(json.dumps(rows, indent=1))
    return
  if FLAGS.row_file:  # a child of --isolate: one row, no tables
    label = FLAGS.configs[0]
    try:
      row = measure(label)
    except Exception as e:
      why = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
      row = ({"config": label, "torch": f"failed: {why}"} if FLAGS.only == "torch"
             else {"config": label, "error": why})
    pathlib.Path(FLAGS.row_file).write_text(json.dumps(row))
    return
  import jax
  rows = []
  for name in FLAGS.configs:
    try:
      row = measure_isolated(name) if FLAGS.isolate else measure(name)
    except Exception as e:  # one config failing (memory, a kernel) must not lose the others
      row = {"config": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    print(json.dumps(row), flush=True)
    rows.append(row)
  scaling = weak_scaling(FLAGS.configs[0], [int(n) for n in FLAGS.scaling]) if FLAGS.scaling else []
  from diffjax.host import cpu_description
  backend, device = jax.default_backend(), jax.devices()[0].device_kind
  host_cpu = cpu_description()  # the ratio to PyTorch on CPU depends on it (AVX-512 vs AVX2)
  meta = {"backend": backend, "device": device, "jax": jax.__version__,
          "cpu_count": os.cpu_count(), "machine": platform.machine(), "host_cpu": host_cpu,
          "rows": rows,
          "weak_scaling": scaling, "steps": FLAGS.steps, "windows": FLAGS.windows,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
  out = pathlib.Path(__file__).parent
  stem = FLAGS.results or f"results_{backend}"
  (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))
  cols = ["config", "model", "params_M", "image", "batch", "dtype", "devices", "step_ms",
          "images_per_s", "torch_images_per_s", "speedup_vs_torch", "mfu", "torch_mfu",
          "sample_images_per_s", "memory_mb_per_device", "compile_s", "error"]
  lines = [f"Train-step throughput on {device} ({backend}; host: {os.cpu_count()} cores of "
           f"{host_cpu}; jax {jax.__version__}); PyTorch = diffusers' twin network, same batch, "
           "same run"
           + (f"; GLIBC_TUNABLES={meta['glibc_tunables']} (both frameworks)"
              if meta["glibc_tunables"] else ""), "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(str(r.get(c, "-") if r.get(c) is not None else "-") for c in cols)
            + " |" for r in rows]
  peaks = sorted({(r["dtype"], r["peak_tflops_measured"], json.dumps(r["peak_by_library"]))
                  for r in rows if r.get("peak_tflops_measured")})
  if peaks:
    lines += ["", "MFU on CPU: model FLOPs per second over the best dense matmul rate of all "
              "cores at once, measured in the same process (`measured_host_peak`): "
              + "; ".join(f"{dt} {p} TFLOP/s (by library: {lib})" for dt, p, lib in peaks)]
  if scaling:
    lines += ["", f"Weak scaling of {FLAGS.configs[0]} (same batch per device):", "",
              "| devices | batch | images/s | efficiency |", "|---|---|---|---|"]
    lines += [f"| {r['devices']} | {r['batch']} | {r['images_per_s']} | {r['efficiency']} |"
              for r in scaling]
  (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  from diffjax.host import reexec_with_huge_pages
  reexec_with_huge_pages()  # huge pages for XLA:CPU's buffers (see diffjax/host.py)
  app.run(main)
