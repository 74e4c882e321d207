"""Speed and memory of the latent-diffusion networks, each beside its PyTorch twin (diffusers)
in the same run:

* the SD-layout VAE (``sd-vae``, 83.7M parameters; random weights: speed does not depend on
  them) encoding and decoding 256x256 images, whole and in tiles (``--tile`` pixels, 25%
  overlap, blended like diffusers' ``enable_tiling``), with XLA's temporary-buffer size of the
  compiled program (whole image vs one tile: tiles run one after another) and the same
  operations in diffusers' ``AutoencoderKL`` (``enable_tiling`` with the same tile size);
* one training step (forward, backward, AdamW) of a latent DiT on 32x32x4 latents (DiT-B/2 by
  default) against diffusers' ``DiTTransformer2DModel`` of the same size, with model FLOPs
  (analytic: 3x the forward's matmuls and attention), XLA's own FLOP count of the compiled
  step, and MFU when ``--peak_tflops`` is given.

CPU (what this machine measured; results_cpu.md):

  python experiments/latent_bench/bench.py --out experiments/latent_bench/results_cpu

GPU (one H100; DiT-XL/2 in bfloat16 at batch 256, VAE at batch 32; not measured here):

  python experiments/latent_bench/bench.py --device gpu --dit DiT-XL/2 --dtype bfloat16 \\
      --dit_batch 256 --vae_batch 32 --repeats 10 --peak_tflops 989 \\
      --out experiments/latent_bench/results_h100
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # diffjax, as a script


def _timed(fn, repeats: int, sync) -> float:
  """Seconds per call after one warm-up call (compilation)."""
  sync(fn())
  t0 = time.perf_counter()
  for _ in range(repeats):
    sync(fn())
  return (time.perf_counter() - t0) / repeats


def _mb(n) -> float:
  return float(n) / 2 ** 20


# --- the VAE ----------------------------------------------------------------------------------
def bench_vae_jax(a) -> dict:
  import jax
  import jax.numpy as jnp
  from diffjax.models import autoencoder as ae
  from diffjax.models.registry import AUTOENCODERS
  dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
  module = AUTOENCODERS.build("sd-vae", dtype=dtype)
  x = jax.random.uniform(jax.random.PRNGKey(0), (a.vae_batch, a.size, a.size, 3), minval=-1,
                         maxval=1)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), x[:1])
  moments = jax.jit(lambda v: module.apply(variables, v, method="moments"))
  decode = jax.jit(lambda z: module.apply(variables, z, method="decode"))
  z = ae.posterior(moments(x))[0]
  sync = jax.block_until_ready
  f = module.downsampling
  out = {}

  def temp(fn, arg):
    memory = fn.lower(arg).compile().memory_analysis()
    return _mb(memory.temp_size_in_bytes) if memory is not None else None

  tile_shapes_x = {(x[:, i:i + a.tile, j:j + a.tile].shape) for i in range(0, a.size,
                                                                             int(a.tile * 0.75))
                   for j in range(0, a.size, int(a.tile * 0.75))}
  cases = {
      "encode": (lambda: moments(x), temp(moments, x)),
      "encode_tiled": (lambda: ae.tiled_encode(moments, x, a.tile, f),
                       max(temp(moments, jnp.zeros(s)) for s in tile_shapes_x)),
      "decode": (lambda: decode(z), temp(decode, z)),
      "decode_tiled": (lambda: ae.tiled_decode(decode, z, a.tile, f),
                       max(temp(decode, jnp.zeros((s[0], s[1] // f, s[2] // f, 4)))
                           for s in tile_shapes_x)),
  }
  for name, (fn, temp_mb) in cases.items():
    seconds = _timed(fn, a.repeats, sync)
    out[name] = {"images_per_s": a.vae_batch / seconds, "seconds_per_batch": seconds,
                 "xla_temp_mb": temp_mb}
    print(f"jax {name}: {out[name]}", flush=True)
  return out


def bench_vae_torch(a) -> dict:
  import torch
  from diffusers import AutoencoderKL
  device = "cuda" if a.device == "gpu" else "cpu"
  dtype = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
  model = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        sample_size=a.tile).to(device, dtype).eval()
  x = torch.rand(a.vae_batch, 3, a.size, a.size, device=device, dtype=dtype) * 2 - 1
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  out = {}
  with torch.no_grad():
    z = model.encode(x).latent_dist.mean
    for tiled in (False, True):
      model.enable_tiling() if tiled else model.disable_tiling()
      suffix = "_tiled" if tiled else ""
      for name, fn in (("encode", lambda: model.encode(x).latent_dist.mean),
                       ("decode", lambda: model.decode(z).sample)):
        if device == "cuda":
          torch.cuda.reset_peak_memory_stats()
        seconds = _timed(fn, a.repeats, sync)
        out[name + suffix] = {"images_per_s": a.vae_batch / seconds,
                              "seconds_per_batch": seconds}
        if device == "cuda":
          out[name + suffix]["peak_mb"] = _mb(torch.cuda.max_memory_allocated())
        print(f"torch {name + suffix}: {out[name + suffix]}", flush=True)
  return out


# --- the latent DiT train step ------------------------------------------------------------------
def dit_flops(depth: int, hidden: int, tokens: int, patch_dim: int, batch: int) -> float:
  """Training FLOPs of a DiT step: 3x the forward's (2 per multiply-add) in the blocks' matmuls
  (qkv, output, 4x MLP: 24 d^2 per token), attention (4 T d per token), adaLN (12 d^2 per
  image per block), patch embedding and final projection (4 d p per token)."""
  per_image = depth * (24 * hidden ** 2 * tokens + 4 * tokens ** 2 * hidden + 12 * hidden ** 2)
  per_image += 4 * hidden * patch_dim * tokens
  return 3.0 * batch * per_image


def bench_dit_jax(a) -> dict:
  import functools
  import jax
  import jax.numpy as jnp
  import optax
  from diffjax import models
  dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
  model = models.get_model(a.dit, num_classes=1000, dtype=dtype)
  x = jax.random.normal(jax.random.PRNGKey(0), (a.dit_batch, 32, 32, 4))
  t = jax.random.uniform(jax.random.PRNGKey(1), (a.dit_batch,)) * 999
  y = jnp.arange(a.dit_batch) % 1000
  params = jax.jit(lambda: model.init({"params": jax.random.PRNGKey(0),
                                       "dropout": jax.random.PRNGKey(0)}, x[:1], t[:1],
                                      y[:1])["params"])()
  import flax.linen as nn
  params = nn.meta.unbox(params)
  opt = optax.adamw(1e-4, weight_decay=0.0)
  state = (params, opt.init(params))

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, x, t, y):
    params, opt_state = state

    def loss(p):
      out = model.apply({"params": p}, x, t, y, train=True,
                        rngs={"dropout": jax.random.PRNGKey(2)})
      return jnp.mean(jnp.square(out.astype(jnp.float32) - x))

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  compiled = step.lower(state, x, t, y).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  holder = [state]

  def run():
    holder[0], value = step(holder[0], x, t, y)
    return value

  seconds = _timed(run, a.repeats, jax.block_until_ready)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return {"seconds_per_step": seconds, "images_per_s": a.dit_batch / seconds,
          "parameters": n_params, "xla_flops": float(cost.get("flops", 0.0)) if cost else None,
          "xla_temp_mb": _mb(memory.temp_size_in_bytes) if memory else None}


def bench_dit_torch(a) -> dict:
  import torch
  from diffusers import DiTTransformer2DModel
  device = "cuda" if a.device == "gpu" else "cpu"
  depth, hidden, heads = DIT_SIZES[a.dit.split("/")[0].split("-")[1]]
  model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads,
                                in_channels=4, out_channels=4, num_layers=depth, sample_size=32,
                                patch_size=int(a.dit.split("/")[1]),
                                num_embeds_ada_norm=1000).to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  x = torch.randn(a.dit_batch, 4, 32, 32, device=device)
  t = torch.randint(0, 1000, (a.dit_batch,), device=device)
  y = torch.arange(a.dit_batch, device=device) % 1000
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      out = model(x, timestep=t, class_labels=y).sample
    loss = torch.mean(torch.square(out.float() - x))
    loss.backward()
    opt.step()
    return loss

  seconds = _timed(step, a.repeats, sync)
  out = {"seconds_per_step": seconds, "images_per_s": a.dit_batch / seconds,
         "parameters": sum(p.numel() for p in model.parameters())}
  if device == "cuda":
    out["peak_mb"] = _mb(torch.cuda.max_memory_allocated())
  return out


DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--what", default="vae,dit")
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--tile", type=int, default=128)
  p.add_argument("--vae_batch", type=int, default=1)
  p.add_argument("--dit", default="DiT-B/2")
  p.add_argument("--dit_batch", type=int, default=2)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--peak_tflops", type=float, default=0.0, help="chip peak for MFU (0: none)")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--out", default="")
  a = p.parse_args()
  import jax
  import torch
  results = {"args": vars(a), "jax_devices": [str(d) for d in jax.devices()],
             "backend": jax.default_backend(), "torch": torch.__version__,
             "jax": jax.__version__, "host": platform.processor() or platform.machine()}
  what = a.what.split(",")
  if "vae" in what:
    results["vae_jax"] = bench_vae_jax(a)
    if not a.no_torch:
      results["vae_torch"] = bench_vae_torch(a)
  if "dit" in what:
    depth, hidden, _ = DIT_SIZES[a.dit.split("/")[0].split("-")[1]]
    patch = int(a.dit.split("/")[1])
    flops = dit_flops(depth, hidden, (32 // patch) ** 2, patch * patch * 4, a.dit_batch)
    results["dit_model_flops_per_step"] = flops
    for name, fn in (("dit_jax", bench_dit_jax), ("dit_torch", bench_dit_torch)):
      if name == "dit_torch" and a.no_torch:
        continue
      r = fn(a)
      r["model_tflops_per_s"] = flops / r["seconds_per_step"] / 1e12
      if a.peak_tflops:
        r["mfu"] = r["model_tflops_per_s"] / a.peak_tflops
      results[name] = r
      print(f"{name}: {r}", flush=True)
  write(results, a.out)


def write(results: dict, out: str) -> None:
  if out:
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
  print(json.dumps(results, indent=1))


def markdown(r: dict) -> str:
  a = r["args"]
  lines = [f"# Latent diffusion networks: {r['backend']} ({r['host']}), measured", "",
           f"`python experiments/latent_bench/bench.py {_argline(a)}`; jax {r['jax']}, torch "
           f"{r['torch']}; {a['repeats']} timed calls after one warm-up.", ""]
  if "vae_jax" in r:
    lines += [f"SD-layout VAE (sd-vae, 83.7M parameters), {a['size']}x{a['size']}, batch "
              f"{a['vae_batch']}, {a['dtype']}; tiles of {a['tile']} px with 25% overlap.", "",
              "| operation | diffjax images/s | XLA temporaries (MB) | diffusers images/s |",
              "|---|---|---|---|"]
    for name, v in r["vae_jax"].items():
      t = r.get("vae_torch", {}).get(name, {})
      temp = f"{v['xla_temp_mb']:.0f}" if v.get("xla_temp_mb") is not None else "n/a"
      lines.append(f"| {name} | {v['images_per_s']:.3g} | {temp} | "
                   f"{t.get('images_per_s', float('nan')):.3g} |")
    lines.append("")
  if "dit_jax" in r:
    lines += [f"{a['dit']} train step on 32x32x4 latents, batch {a['dit_batch']}, {a['dtype']}; "
              f"model FLOPs {r['dit_model_flops_per_step'] / 1e12:.3g} TFLOP per step.", "",
              "| implementation | parameters | s / step | images/s | model TFLOP/s | MFU |",
              "|---|---|---|---|---|---|"]
    for name in ("dit_jax", "dit_torch"):
      if name in r:
        v = r[name]
        lines.append(f"| {'diffjax' if name == 'dit_jax' else 'diffusers'} | "
                     f"{v['parameters'] / 1e6:.1f}M | {v['seconds_per_step']:.3g} | "
                     f"{v['images_per_s']:.3g} | {v['model_tflops_per_s']:.3g} | "
                     f"{format(v['mfu'], '.3g') if 'mfu' in v else 'n/a'} |")
    if "dit_torch" in r:
      lines.append("\ndiffusers' DiTTransformer2DModel gives every block its own timestep and "
                   "label embedding (hence more parameters than the paper's DiT); its FLOPs "
                   "per step are those of the same blocks.")
    if r["dit_jax"].get("xla_flops"):
      lines.append(f"\nXLA counts {r['dit_jax']['xla_flops'] / 1e12:.3g} TFLOP in the compiled "
                   f"step (recomputation included).")
  return "\n".join(lines) + "\n"


def _argline(a: dict) -> str:
  return " ".join(f"--{k} {v}" for k, v in a.items() if v not in (False, "", None, 0.0))


if __name__ == "__main__":
  main()
