"""Parity of the importers at the published checkpoints' full sizes (the CI tests run them
shrunk): diffusers' ``UNet2DModel`` with google/ddpm-cifar10-32's configuration and
``DiTTransformer2DModel`` with facebook/DiT-XL-2-256's, random weights, saved as
``.safetensors``, imported, outputs compared on the same inputs in float32; DiT-XL/2 also as
the release's state dict (``.pt``) against diffusers computing the release's function
(frequency shift 0, MLP LayerNorm epsilon 1e-6). Needs torch and diffusers
(requirements-test.txt) and about 12 GB of memory.

  python experiments/repro/parity_full.py --out experiments/repro/parity_full.json
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

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import diffusers  # noqa: E402

from diffjax.models import importers  # noqa: E402
from diffjax.models.dit import DiT  # noqa: E402
from diffjax.models.unet import UNet  # noqa: E402

DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3,
                    block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                      "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, freq_shift=1,
                    flip_sin_to_cos=False, downsample_padding=0)
DIT_XL2_256 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                   num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)


def rel(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def perturb(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn(p.shape, generator=gen))
  return model.eval()


def ddpm(folder) -> dict:
  torch.manual_seed(0)
  model = perturb(diffusers.UNet2DModel(**DDPM_CIFAR10), 1)
  model.save_pretrained(folder / "ddpm", safe_serialization=True)
  module = UNet(**importers.unet_kwargs_from_diffusers(folder / "ddpm" / "config.json"))
  start = time.time()
  params, info = importers.import_checkpoint(
      folder / "ddpm" / "diffusion_pytorch_model.safetensors", "diffusers_unet", module,
      (32, 32, 3))
  seconds = time.time() - start
  x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
  t = torch.tensor([0.0, 250.0, 600.0, 999.0])
  with torch.no_grad():
    ref = model(x, t).sample.permute(0, 2, 3, 1).numpy()
  ours = module.apply({"params": params}, jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                      jnp.asarray(t.numpy()))
  return {"network": "DDPM CIFAR-10 UNet2DModel (google/ddpm-cifar10-32 config)",
          "params": info["num_params"], "import_seconds": round(seconds, 1),
          "relative_error": rel(ours, ref), "batch": 4}


def dit(folder) -> dict:
  torch.manual_seed(0)
  model = perturb(diffusers.DiTTransformer2DModel(**DIT_XL2_256), 3)
  first = model.transformer_blocks[0].norm1.emb.state_dict()
  for block in model.transformer_blocks[1:]:
    block.norm1.emb.load_state_dict(first)
  model.save_pretrained(folder / "dit", safe_serialization=True)
  x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(4))
  t, y = torch.tensor([10.0, 870.0]), torch.tensor([207, 1000])  # the null class too
  with torch.no_grad():
    ref = model(x, timestep=t, class_labels=y).sample.permute(0, 2, 3, 1).numpy()
  module = DiT(**importers.dit_kwargs_from_diffusers(DIT_XL2_256, release_function=False))
  params, info = importers.import_checkpoint(
      folder / "dit" / "diffusion_pytorch_model.safetensors", "diffusers_dit", module,
      (32, 32, 4))
  xs, ts, ys = (jnp.asarray(x.permute(0, 2, 3, 1).numpy()), jnp.asarray(t.numpy()),
                jnp.asarray(y.numpy()))
  out = {"network": "DiT-XL/2 256 DiTTransformer2DModel (facebook/DiT-XL-2-256 config)",
         "params": info["num_params"], "batch": 2,
         "relative_error_diffusers": rel(module.apply({"params": params}, xs, ts, ys), ref)}
  del params
  # The release's function and file: diffusers with the release's two constants.
  for block in model.transformer_blocks:
    block.norm1.emb.time_proj.downscale_freq_shift = 0
    block.norm3.eps = 1e-6
  with torch.no_grad():
    ref = model(x, timestep=t, class_labels=y).sample.permute(0, 2, 3, 1).numpy()
  sd = model.state_dict()
  emb = "transformer_blocks.0.norm1.emb"
  release = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"],
             "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
             "y_embedder.embedding_table.weight": sd[f"{emb}.class_embedder.embedding_table.weight"],
             "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
             "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
             "final_layer.linear.weight": sd["proj_out_2.weight"],
             "final_layer.linear.bias": sd["proj_out_2.bias"],
             "pos_embed": model.pos_embed.pos_embed.reshape(1, 256, 1152).clone()}
  for leaf in ("weight", "bias"):
    release[f"t_embedder.mlp.0.{leaf}"] = sd[f"{emb}.timestep_embedder.linear_1.{leaf}"]
    release[f"t_embedder.mlp.2.{leaf}"] = sd[f"{emb}.timestep_embedder.linear_2.{leaf}"]
    for i in range(28):
      b = f"transformer_blocks.{i}"
      release[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([sd[f"{b}.attn1.to_{q}.{leaf}"]
                                                         for q in "qkv"])
      release[f"blocks.{i}.attn.proj.{leaf}"] = sd[f"{b}.attn1.to_out.0.{leaf}"]
      release[f"blocks.{i}.mlp.fc1.{leaf}"] = sd[f"{b}.ff.net.0.proj.{leaf}"]
      release[f"blocks.{i}.mlp.fc2.{leaf}"] = sd[f"{b}.ff.net.2.{leaf}"]
      release[f"blocks.{i}.adaLN_modulation.1.{leaf}"] = sd[f"{b}.norm1.linear.{leaf}"]
  torch.save(release, folder / "DiT-XL-2-256x256-random.pt")
  del model, sd, release
  module = DiT(**importers.dit_kwargs_from_diffusers(DIT_XL2_256, release_function=True))
  params, _ = importers.import_checkpoint(folder / "DiT-XL-2-256x256-random.pt", "dit", module,
                                          (32, 32, 4))
  out["relative_error_release"] = rel(module.apply({"params": params}, xs, ts, ys), ref)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="", help="results .json (default: print only)")
  args = parser.parse_args()
  torch.set_num_threads(2)
  result = {"torch": torch.__version__, "diffusers": diffusers.__version__, "dtype": "float32",
            "tolerance": 1e-4}
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    for name, fn in (("ddpm_cifar10", ddpm), ("dit_xl2_256", dit)):
      start = time.time()
      result[name] = fn(folder)
      result[name]["seconds"] = round(time.time() - start, 1)
      print(json.dumps({name: result[name]}), flush=True)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
