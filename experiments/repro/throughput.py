"""Sampling throughput of the imported published networks in bfloat16 on this machine's
accelerator: DDPM CIFAR-10 (the 1000-step ancestral chain, Ho et al.'s sampler) and DiT-XL/2
at 256x256 (250 respaced steps with learned variances and classifier-free guidance 1.5, in the
4x32x32 latent space; the VAE decode is not included).

The weights are random numbers written in the published formats with the published tensor names
and shapes (``diffjax.models.importers.published_table``; throughput does not depend on the
values) and imported exactly as a user's checkpoint is (``import_checkpoint``). Each sampler is
jitted, run once to compile, then timed over ``--repeats`` calls. With ``--peer`` the same
networks are also timed in diffusers / PyTorch (bf16 autocast, the same weights, the same number
of network evaluations: diffusers' DDPMScheduler for DDPM; DiT's doubled-batch evaluations with
a placeholder update) in the same run.

  python experiments/repro/throughput.py --out experiments/repro [--peer]

writes ``throughput_<device>.json`` / ``.md``. A smoke run on a CPU:
``--batch_ddpm 2 --batch_dit 2 --steps_ddpm 2 --steps_dit 2 --repeats 1``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import diffusion  # noqa: E402
from diffjax.diffusion import learned_variance  # noqa: E402
from diffjax.models import importers  # noqa: E402
from diffjax.models.layers import sincos_2d_position_embedding  # noqa: E402
from diffjax.models.registry import get_model  # noqa: E402


def write_random(path: pathlib.Path, table: dict, fixed: dict | None = None, seed: int = 0):
  """A ``.safetensors`` file of random float32 tensors with ``table``'s names and shapes."""
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  tensors = {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in table.items()}
  tensors.update(fixed or {})
  save_file(tensors, str(path))
  return path


def timed(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def ddpm(folder, batch, steps, repeats) -> dict:
  module = get_model("ddpm-cifar10", embedding_freq_shift=1.0, embedding_sin_first=True,
                     dtype=jnp.bfloat16)
  path = write_random(folder / "ddpm.safetensors",
                      importers.published_table("diffusers_unet", module, (32, 32, 3)))
  params, _ = importers.import_checkpoint(path, "diffusers_unet", module, (32, 32, 3))
  schedule = diffusion.get_schedule("linear")
  param = diffusion.get_parameterization("eps", noise_input="step_index")

  @jax.jit
  def sample(p, rng):
    denoise = diffusion.make_denoiser(lambda x, t, c: module.apply({"params": p}, x, t),
                                      param, schedule)
    clipped = lambda x, t: jnp.clip(denoise(x, t), -1, 1)
    return diffusion.sample(clipped, schedule, (batch, 32, 32, 3), rng, sampler="ddpm",
                            num_steps=steps, spacing="respaced", variance="large")

  seconds = timed(lambda: sample(params, jax.random.PRNGKey(0)), repeats)
  return {"network": "DDPM CIFAR-10 UNet (35.7M)", "batch": batch, "steps": steps,
          "seconds_per_batch": seconds, "images_per_second": batch / seconds,
          "network_evaluations_per_second": batch * steps / seconds}


def dit(folder, batch, steps, repeats) -> dict:
  module = get_model("DiT-XL/2", out_channels=8, num_classes=1000, dtype=jnp.bfloat16)
  shape = (32, 32, 4)
  pos = sincos_2d_position_embedding(16, 16, 1152)[None]
  path = write_random(folder / "dit.safetensors", importers.published_table("dit", module, shape),
                      {"pos_embed": pos})
  params, _ = importers.import_checkpoint(path, "dit", module, shape)
  schedule = diffusion.get_schedule("linear")
  param = diffusion.get_parameterization("eps", noise_input="step_index")
  labels = jnp.arange(batch) % 1000

  @jax.jit
  def sample(p, rng):
    net = lambda x, t, c: module.apply({"params": p}, x, t, c)
    return learned_variance.sample(net, param, schedule, (batch, *shape), rng, num_steps=steps,
                                   cond=labels, guidance_scale=1.5, null_cond=1000,
                                   guidance_channels=3)

  seconds = timed(lambda: sample(params, jax.random.PRNGKey(0)), repeats)
  return {"network": "DiT-XL/2 256x256 latents (675M), cfg 1.5 (batch doubled)",
          "batch": batch, "steps": steps, "seconds_per_batch": seconds,
          "images_per_second": batch / seconds,
          "network_evaluations_per_second": 2 * batch * steps / seconds}


def peer(folder, batch_ddpm, steps_ddpm, batch_dit, steps_dit, repeats) -> dict:
  """The same networks and weights in diffusers, bf16 autocast, the same evaluations."""
  import torch
  from diffusers import DiTTransformer2DModel, UNet2DModel
  from safetensors.torch import load_file
  device = "cuda" if torch.cuda.is_available() else "cpu"

  def run(fn):
    fn()
    if device == "cuda":
      torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
      fn()
    if device == "cuda":
      torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats

  unet = UNet2DModel(sample_size=32, block_out_channels=(128, 256, 256, 256),
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                       "DownBlock2D"),
                     up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                     attention_head_dim=None, norm_eps=1e-6, freq_shift=1, flip_sin_to_cos=False,
                     downsample_padding=0)
  unet.load_state_dict(load_file(str(folder / "ddpm.safetensors")))
  unet.to(device).eval()

  from diffusers import DDPMScheduler
  scheduler = DDPMScheduler(num_train_timesteps=1000, variance_type="fixed_large",
                            clip_sample=True)
  scheduler.set_timesteps(steps_ddpm)

  @torch.no_grad()
  def ddpm_loop():
    x = torch.randn(batch_ddpm, 3, 32, 32, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
      for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t.to(device)).sample, t, x).prev_sample
    return x

  out = {"device": device, "ddpm_seconds_per_batch": run(ddpm_loop)}
  model = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4,
                                out_channels=8, num_layers=28, sample_size=32, patch_size=2)
  sd = _release_to_diffusers(load_file(str(folder / "dit.safetensors")))
  model.load_state_dict(sd)
  model.to(device).eval()
  labels = torch.arange(2 * batch_dit, device=device) % 1000

  # The network evaluations of DiT's guided sampling (a doubled batch per step); the update
  # between them is a placeholder, a negligible share of the time.
  @torch.no_grad()
  def dit_loop():
    x = torch.randn(batch_dit, 4, 32, 32, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
      for k in range(steps_dit):
        both = torch.cat([x, x])
        out = model(both, timestep=torch.full((2 * batch_dit,), 999 - k, device=device),
                    class_labels=labels).sample
        x = x - 0.001 * out[:batch_dit, :4]
    return x

  out["dit_seconds_per_batch"] = run(dit_loop)
  out["ddpm_images_per_second"] = batch_ddpm / out["ddpm_seconds_per_batch"]
  out["dit_images_per_second"] = batch_dit / out["dit_seconds_per_batch"]
  return out


def _release_to_diffusers(sd: dict) -> dict:
  """The DiT release's names -> diffusers' (embedders copied into every block)."""
  import torch
  out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"],
         "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
         "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
         "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
         "proj_out_2.weight": sd["final_layer.linear.weight"],
         "proj_out_2.bias": sd["final_layer.linear.bias"]}
  depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  for i in range(depth):
    b, e = f"transformer_blocks.{i}", f"transformer_blocks.{i}.norm1.emb"
    for leaf in ("weight", "bias"):
      q, k, v = torch.chunk(sd[f"blocks.{i}.attn.qkv.{leaf}"], 3)
      out.update({f"{b}.attn1.to_q.{leaf}": q, f"{b}.attn1.to_k.{leaf}": k,
                  f"{b}.attn1.to_v.{leaf}": v,
                  f"{b}.attn1.to_out.0.{leaf}": sd[f"blocks.{i}.attn.proj.{leaf}"],
                  f"{b}.ff.net.0.proj.{leaf}": sd[f"blocks.{i}.mlp.fc1.{leaf}"],
                  f"{b}.ff.net.2.{leaf}": sd[f"blocks.{i}.mlp.fc2.{leaf}"],
                  f"{b}.norm1.linear.{leaf}": sd[f"blocks.{i}.adaLN_modulation.1.{leaf}"],
                  f"{e}.timestep_embedder.linear_1.{leaf}": sd[f"t_embedder.mlp.0.{leaf}"],
                  f"{e}.timestep_embedder.linear_2.{leaf}": sd[f"t_embedder.mlp.2.{leaf}"]})
    out[f"{e}.class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch_ddpm", type=int, default=256)
  parser.add_argument("--batch_dit", type=int, default=64)
  parser.add_argument("--steps_ddpm", type=int, default=1000)
  parser.add_argument("--steps_dit", type=int, default=250)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--peer", action="store_true", help="also time diffusers / PyTorch")
  parser.add_argument("--out", default="", help="results folder (default: none, print only)")
  args = parser.parse_args()
  device = jax.devices()[0]
  result = {"device": device.device_kind, "platform": device.platform, "dtype": "bfloat16",
            "jax": jax.__version__}
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    result["ddpm"] = ddpm(folder, args.batch_ddpm, args.steps_ddpm, args.repeats)
    print(json.dumps(result["ddpm"]), flush=True)
    result["dit"] = dit(folder, args.batch_dit, args.steps_dit, args.repeats)
    print(json.dumps(result["dit"]), flush=True)
    if args.peer:
      result["peer_diffusers"] = peer(folder, args.batch_ddpm, args.steps_ddpm, args.batch_dit,
                                      args.steps_dit, args.repeats)
      print(json.dumps(result["peer_diffusers"]), flush=True)
  if args.out:
    out = pathlib.Path(args.out)
    name = "throughput_" + device.device_kind.replace(" ", "_").lower()
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Sampling throughput, bf16, {device.device_kind}", "",
             "| network | batch | steps | s / batch | images / s | network evals / s |",
             "|---|---|---|---|---|---|"]
    for key in ("ddpm", "dit"):
      r = result[key]
      lines.append(f"| {r['network']} | {r['batch']} | {r['steps']} | "
                   f"{r['seconds_per_batch']:.3f} | {r['images_per_second']:.2f} | "
                   f"{r['network_evaluations_per_second']:.1f} |")
    if "peer_diffusers" in result:
      p = result["peer_diffusers"]
      lines += ["", f"diffusers / PyTorch ({p['device']}, bf16 autocast, same weights and "
                f"evaluations): DDPM {p['ddpm_images_per_second']:.2f} images/s, DiT "
                f"{p['dit_images_per_second']:.2f} images/s"]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.json / .md")


if __name__ == "__main__":
  main()
