"""Importing published denoiser checkpoints (diffjax.models.importers).

Parity against the reference implementations from PyPI: diffusers' ``UNet2DModel`` and
``DiTTransformer2DModel`` built with the published checkpoints' configurations, shrunk where
the full networks are too slow for CPU CI (widths, depth, resolution; the block structure,
normalisation, embeddings and attention layout are the published ones), random weights,
saved in the published formats, converted, outputs compared on the same inputs within 1e-4
relative in float32. The DiT release's ``.pt`` and ADM's state dicts have no PyPI reference
implementation: they are written here with the published naming and shapes from the same random
weights (diffusers computes the DiT release's function with its two differing constants set to
the release's, and ADM's with ``scale_shift`` residual blocks, residual resampling and ADM's
embedding), then converted and compared the same way. At full size the tensor names and shapes
are compared without computing anything: diffusers' models built on the ``meta`` device with the
published configurations, and ADM's published parameter counts.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import importers
from diffjax.models.dit import DiT
from diffjax.models.registry import get_model
from diffjax.models.unet import UNet
from diffjax.models.weight_files import WeightImportError, read_tensors

torch = pytest.importorskip("torch", reason="PyTorch not installed (requirements-test.txt)")
diffusers = pytest.importorskip("diffusers", reason="diffusers not installed "
                                "(requirements-test.txt)")

# google/ddpm-cifar10-32's UNet2DModel configuration (config.json on the Hub).
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3,
                    block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                      "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, freq_shift=1,
                    flip_sin_to_cos=False, downsample_padding=0, act_fn="silu",
                    center_input_sample=False, time_embedding_type="positional",
                    mid_block_scale_factor=1)
# google/ddpm-church-256 / ddpm-celebahq-256: six levels, attention at 16x16.
DDPM_256 = dict(DDPM_CIFAR10, sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512),
                down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
# facebook/DiT-XL-2-256's DiTTransformer2DModel configuration.
DIT_XL2_256 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                   num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
                   activation_fn="gelu-approximate", norm_type="ada_norm_zero",
                   norm_elementwise_affine=False, attention_bias=True)


def _rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _perturb(model, seed):
  """Random weights everywhere (diffusers zero-initialises some layers)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _nhwc(x):
  return np.asarray(x.permute(0, 2, 3, 1))


def _inputs(shape, classes=0, seed=0):
  gen = torch.Generator().manual_seed(seed)
  x = torch.randn((2, shape[2], shape[0], shape[1]), generator=gen)
  t = torch.tensor([3.0, 817.0])  # 0-based step indices, as both papers' networks take them
  y = torch.tensor([1, classes - 1]) if classes else None
  return x, t, y


def _ours(module, params, x, t, y):
  out = module.apply({"params": params}, jnp.asarray(_nhwc(x)), jnp.asarray(t.numpy()),
                     None if y is None else jnp.asarray(y.numpy()))
  return np.asarray(out)


# --- diffusers UNet2DModel (DDPM) ---------------------------------------------------------------
@pytest.mark.parametrize("layout,small", [
    ("cifar10", dict(DDPM_CIFAR10, sample_size=16, block_out_channels=(32, 64, 64, 64),
                     norm_num_groups=8)),
    ("256px", dict(DDPM_256, sample_size=32, block_out_channels=(16, 16, 32, 32, 64, 64),
                   norm_num_groups=8)),
])
def test_diffusers_unet_parity(tmp_path, layout, small):
  model = _perturb(diffusers.UNet2DModel(**small), seed=1)
  model.save_pretrained(tmp_path, safe_serialization=True)
  kwargs = importers.unet_kwargs_from_diffusers(tmp_path / "config.json")
  module = UNet(**kwargs)
  size = small["sample_size"]
  params, info = importers.import_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors",
                                             "diffusers_unet", module, (size, size, 3))
  assert info["notes"] == [] and len(info["source_sha256"]) == 64
  assert info["num_params"] == sum(p.numel() for p in model.parameters())
  x, t, _ = _inputs((size, size, 3))
  with torch.no_grad():
    ref = _nhwc(model(x, t).sample)
  assert _rel(_ours(module, params, x, t, None), ref) < 1e-4, layout


def test_diffusers_unet_legacy_bin_names_equal_safetensors(tmp_path):
  """Older DDPM checkpoints (``diffusion_pytorch_model.bin``, deprecated attention names) import
  to the same parameters as the current ``.safetensors``."""
  small = dict(DDPM_CIFAR10, sample_size=8, block_out_channels=(16, 32, 32, 32),
               norm_num_groups=8)
  model = _perturb(diffusers.UNet2DModel(**small), seed=2)
  model.save_pretrained(tmp_path, safe_serialization=True)
  legacy = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.").replace(".to_out.0.", ".proj_attn."): v
            for k, v in model.state_dict().items()}
  assert sum(".query." in k for k in legacy) == 12  # 6 attention blocks, weight and bias
  torch.save(legacy, tmp_path / "diffusion_pytorch_model.bin")
  module = UNet(**importers.unet_kwargs_from_diffusers(tmp_path / "config.json"))
  new, _ = importers.import_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors",
                                       "diffusers_unet", module, (8, 8, 3))
  old, _ = importers.import_checkpoint(tmp_path / "diffusion_pytorch_model.bin",
                                       "diffusers_unet", module, (8, 8, 3))
  jax.tree.map(np.testing.assert_array_equal, new, old)


def test_published_ddpm_layouts_match_the_full_size_diffusers_tables():
  """The converter's tensor table of the full-size DDPM networks equals diffusers' state dict
  built with the published configurations (on the meta device: nothing allocated)."""
  for config, size in ((DDPM_CIFAR10, 32), (DDPM_256, 256)):
    with torch.device("meta"):
      model = diffusers.UNet2DModel(**config)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = UNet(**importers.unet_kwargs_from_diffusers(config))
    assert _table("diffusers_unet", module, (size, size, 3)) == theirs
  # Ho et al.'s CIFAR-10 network: 35,746,307 parameters, in diffjax's variant too.
  assert sum(np.prod(s) for s in theirs.values()) > 0
  cifar = get_model("ddpm-cifar10", embedding_freq_shift=1, embedding_sin_first=True)
  table = _table("diffusers_unet", cifar, (32, 32, 3))
  assert sum(int(np.prod(s)) for s in table.values()) == 35_746_307


_table = importers.published_table


# --- DiT: diffusers and the release -------------------------------------------------------------
SMALL_DIT = dict(DIT_XL2_256, num_attention_heads=4, attention_head_dim=16, num_layers=2,
                 sample_size=8, num_embeds_ada_norm=10)


def _diffusers_dit(seed=3):
  model = _perturb(diffusers.DiTTransformer2DModel(**SMALL_DIT), seed)
  # The published conversion copies the DiT's one timestep/label embedder into every block.
  first = model.transformer_blocks[0].norm1.emb.state_dict()
  for block in model.transformer_blocks[1:]:
    block.norm1.emb.load_state_dict(first)
  return model


def _dit_forward(model, x, t, y):
  with torch.no_grad():
    return _nhwc(model(x, timestep=t, class_labels=y).sample)


def test_diffusers_dit_parity_with_learned_sigma_channels(tmp_path):
  model = _diffusers_dit()
  model.save_pretrained(tmp_path, safe_serialization=True)
  kwargs = importers.dit_kwargs_from_diffusers(tmp_path / "config.json", release_function=False)
  assert kwargs["out_channels"] == 8 and kwargs["freq_shift"] == 1.0
  module = DiT(**kwargs)
  params, info = importers.import_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors",
                                             "diffusers_dit", module, (8, 8, 4))
  assert "1 per-block copies" in info["notes"][0]
  x, t, y = _inputs((8, 8, 4), classes=10)
  ref = _dit_forward(model, x, t, y)
  assert ref.shape == (2, 8, 8, 8)
  assert _rel(_ours(module, params, x, t, y), ref) < 1e-4


def _as_release(model) -> dict:
  """The diffusers DiT's weights under the DiT release's names and layout (its models.py)."""
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  emb = "transformer_blocks.0.norm1.emb"
  out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"],
         "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
         "t_embedder.mlp.0.weight": sd[f"{emb}.timestep_embedder.linear_1.weight"],
         "t_embedder.mlp.0.bias": sd[f"{emb}.timestep_embedder.linear_1.bias"],
         "t_embedder.mlp.2.weight": sd[f"{emb}.timestep_embedder.linear_2.weight"],
         "t_embedder.mlp.2.bias": sd[f"{emb}.timestep_embedder.linear_2.bias"],
         "y_embedder.embedding_table.weight": sd[f"{emb}.class_embedder.embedding_table.weight"],
         "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
         "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
         "final_layer.linear.weight": sd["proj_out_2.weight"],
         "final_layer.linear.bias": sd["proj_out_2.bias"]}
  for i in range(len(model.transformer_blocks)):
    b = f"transformer_blocks.{i}"
    for leaf in ("weight", "bias"):
      out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat(
          [sd[f"{b}.attn1.to_{q}.{leaf}"] for q in "qkv"])
      out[f"blocks.{i}.attn.proj.{leaf}"] = sd[f"{b}.attn1.to_out.0.{leaf}"]
      out[f"blocks.{i}.mlp.fc1.{leaf}"] = sd[f"{b}.ff.net.0.proj.{leaf}"]
      out[f"blocks.{i}.mlp.fc2.{leaf}"] = sd[f"{b}.ff.net.2.{leaf}"]
      out[f"blocks.{i}.adaLN_modulation.1.{leaf}"] = sd[f"{b}.norm1.linear.{leaf}"]
  grid = SMALL_DIT["sample_size"] // SMALL_DIT["patch_size"]
  hidden = SMALL_DIT["num_attention_heads"] * SMALL_DIT["attention_head_dim"]
  out["pos_embed"] = model.pos_embed.pos_embed.reshape(1, grid * grid, hidden).clone()
  return out


def test_dit_release_checkpoint_parity(tmp_path):
  """A ``DiT-XL-2-256x256.pt``-style state dict (and a ``train.py`` checkpoint, whose ``ema``
  is read) -> diffjax's DiT with the release's constants; the reference is diffusers' DiT with
  its two differing constants set to the release's (frequency shift 0, MLP LayerNorm eps
  1e-6)."""
  import argparse
  model = _diffusers_dit(seed=4)
  for block in model.transformer_blocks:
    block.norm1.emb.time_proj.downscale_freq_shift = 0
    block.norm3.eps = 1e-6
  release = _as_release(model)
  torch.save(release, tmp_path / "DiT-tiny.pt")
  junk = {k: torch.zeros_like(v) for k, v in release.items()}
  torch.save({"model": junk, "ema": release, "opt": {"state": {}, "param_groups": []},
              "args": argparse.Namespace(model="DiT-XL/2", image_size=256)},
             tmp_path / "0400000.pt")
  kwargs = importers.dit_kwargs_from_diffusers(SMALL_DIT, release_function=True)
  module = DiT(**kwargs)
  x, t, y = _inputs((8, 8, 4), classes=10, seed=5)
  ref = _dit_forward(model, x, t, y)
  params, info = importers.import_checkpoint(tmp_path / "DiT-tiny.pt", "dit", module, (8, 8, 4))
  assert _rel(_ours(module, params, x, t, y), ref) < 1e-4
  assert any("pos_embed" in n for n in info["notes"])
  from_training, info = importers.import_checkpoint(tmp_path / "0400000.pt", "dit", module,
                                                    (8, 8, 4))
  assert info["notes"][0].startswith("read the 'ema' entry")
  jax.tree.map(np.testing.assert_array_equal, params, from_training)


def test_published_dit_xl2_tables():
  """DiT-XL/2 at 256x256 (latents 32x32x4, learned sigma): diffusers' table from the published
  configuration on the meta device; the release's names and shapes from its models.py."""
  with torch.device("meta"):
    model = diffusers.DiTTransformer2DModel(**DIT_XL2_256)
  theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  module = DiT(**importers.dit_kwargs_from_diffusers(DIT_XL2_256))
  assert _table("diffusers_dit", module, (32, 32, 4)) == theirs
  release = _table("dit", module, (32, 32, 4))
  block = {"attn.qkv.weight": (3456, 1152), "attn.qkv.bias": (3456,),
           "attn.proj.weight": (1152, 1152), "attn.proj.bias": (1152,),
           "mlp.fc1.weight": (4608, 1152), "mlp.fc1.bias": (4608,),
           "mlp.fc2.weight": (1152, 4608), "mlp.fc2.bias": (1152,),
           "adaLN_modulation.1.weight": (6912, 1152), "adaLN_modulation.1.bias": (6912,)}
  expected = {f"blocks.{i}.{k}": v for i in range(28) for k, v in block.items()}
  expected.update({"x_embedder.proj.weight": (1152, 4, 2, 2), "x_embedder.proj.bias": (1152,),
                   "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.0.bias": (1152,),
                   "t_embedder.mlp.2.weight": (1152, 1152), "t_embedder.mlp.2.bias": (1152,),
                   "y_embedder.embedding_table.weight": (1001, 1152),
                   "pos_embed": (1, 256, 1152),
                   "final_layer.adaLN_modulation.1.weight": (2304, 1152),
                   "final_layer.adaLN_modulation.1.bias": (2304,),
                   "final_layer.linear.weight": (32, 1152), "final_layer.linear.bias": (32,)})
  assert release == expected
  # 675M parameters (Peebles & Xie, Table 1; the release's train.py prints 675,129,632, its
  # fixed pos_embed included).
  assert sum(int(np.prod(s)) for s in release.values()) == 675_129_632


# --- ADM (guided-diffusion) ---------------------------------------------------------------------
# ADM's network in diffusers' building blocks: scale-shift residual blocks, resampling inside
# residual blocks, [cos, sin] embedding without shift, GroupNorm eps 1e-5, head width 16, a
# label table added to the time embedding. Widths shrunk from ADM's 192-256 channels / 32 groups.
ADM_SMALL = dict(sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64, 96),
                 layers_per_block=2,
                 down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D",
                                   "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
                 downsample_type="resnet", upsample_type="resnet",
                 resnet_time_scale_shift="scale_shift", attention_head_dim=16, norm_num_groups=8,
                 attn_norm_num_groups=8, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
                 num_class_embeds=10)
ADM_FLAGS = dict(image_size=16, num_channels=32, channel_mult="1,2,3", num_res_blocks=2,
                 attention_resolutions="8,4", num_head_channels=16, class_cond=True,
                 num_classes=10, learn_sigma=True, resblock_updown=True,
                 use_scale_shift_norm=True)


def _as_adm(model, new_order: bool) -> dict:
  """The diffusers model's weights under guided-diffusion's UNetModel names and layout."""
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  out = {"time_embed.0.weight": sd["time_embedding.linear_1.weight"],
         "time_embed.0.bias": sd["time_embedding.linear_1.bias"],
         "time_embed.2.weight": sd["time_embedding.linear_2.weight"],
         "time_embed.2.bias": sd["time_embedding.linear_2.bias"],
         "label_emb.weight": sd["class_embedding.weight"],
         "input_blocks.0.0.weight": sd["conv_in.weight"],
         "input_blocks.0.0.bias": sd["conv_in.bias"],
         "out.0.weight": sd["conv_norm_out.weight"], "out.0.bias": sd["conv_norm_out.bias"],
         "out.2.weight": sd["conv_out.weight"], "out.2.bias": sd["conv_out.bias"]}
  res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
         "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

  def resnet(src, dst):
    for a, b in res.items():
      for leaf in ("weight", "bias"):
        if f"{src}.{a}.{leaf}" in sd:
          out[f"{dst}.{b}.{leaf}"] = sd[f"{src}.{a}.{leaf}"]

  def attention(src, dst, width):
    heads = width // 16
    for leaf in ("weight", "bias"):
      out[f"{dst}.norm.{leaf}"] = sd[f"{src}.group_norm.{leaf}"]
      q, k, v = (sd[f"{src}.to_{n}.{leaf}"] for n in "qkv")
      if new_order:
        fused = torch.cat([q, k, v])
      else:  # heads x [q, k, v] x head_dim
        fused = torch.stack([m.reshape(heads, 16, *m.shape[1:]) for m in (q, k, v)], 1)
        fused = fused.reshape(3 * width, *q.shape[1:])
      out[f"{dst}.qkv.{leaf}"] = fused[..., None] if leaf == "weight" else fused
      proj = sd[f"{src}.to_out.0.{leaf}"]
      out[f"{dst}.proj_out.{leaf}"] = proj[..., None] if leaf == "weight" else proj

  widths = ADM_SMALL["block_out_channels"]
  k = 1
  for level in range(3):
    for i in range(2):
      resnet(f"down_blocks.{level}.resnets.{i}", f"input_blocks.{k}.0")
      if level > 0:
        attention(f"down_blocks.{level}.attentions.{i}", f"input_blocks.{k}.1", widths[level])
      k += 1
    if level < 2:
      resnet(f"down_blocks.{level}.downsamplers.0", f"input_blocks.{k}.0")
      k += 1
  resnet("mid_block.resnets.0", "middle_block.0")
  attention("mid_block.attentions.0", "middle_block.1", widths[-1])
  resnet("mid_block.resnets.1", "middle_block.2")
  k = 0
  for u, level in enumerate(reversed(range(3))):
    for i in range(3):
      resnet(f"up_blocks.{u}.resnets.{i}", f"output_blocks.{k}.0")
      slot = 1
      if level > 0:
        attention(f"up_blocks.{u}.attentions.{i}", f"output_blocks.{k}.1", widths[level])
        slot = 2
      if i == 2 and level > 0:
        resnet(f"up_blocks.{u}.upsamplers.0", f"output_blocks.{k}.{slot}")
      k += 1
  return out


@pytest.mark.parametrize("new_order", [False, True])
def test_adm_state_dict_parity(tmp_path, new_order):
  model = _perturb(diffusers.UNet2DModel(**ADM_SMALL), seed=6)
  flags = dict(ADM_FLAGS, use_new_attention_order=new_order)
  kwargs, fmt = importers.unet_kwargs_from_adm(flags)
  assert fmt == ("adm_new_attention_order" if new_order else "adm")
  module = UNet(**{**kwargs, "norm_groups": 8})  # ADM: 32 groups; shrunk with the widths
  torch.save(_as_adm(model, new_order), tmp_path / "adm.pt")
  params, info = importers.import_checkpoint(tmp_path / "adm.pt", fmt, module, (16, 16, 3))
  assert "no null-class row" in info["notes"][0]
  np.testing.assert_array_equal(params["label_embed"]["embedding"][10], 0.0)
  x, t, y = _inputs((16, 16, 3), classes=10, seed=7)
  with torch.no_grad():
    ref = _nhwc(model(x, t, class_labels=y).sample)
  assert ref.shape == (2, 16, 16, 6)
  assert _rel(_ours(module, params, x, t, y), ref) < 1e-4
  # The other qkv order gives another network: the format is not guessed.
  other = "adm" if new_order else "adm_new_attention_order"
  wrong, _ = importers.import_checkpoint(tmp_path / "adm.pt", other, module, (16, 16, 3))
  assert _rel(_ours(module, wrong, x, t, y), ref) > 1e-2


@pytest.mark.parametrize("size,flags,millions", [
    (64, dict(num_channels=192, num_res_blocks=3, num_head_channels=64,
              use_new_attention_order=True, dropout=0.1), 296),
    (128, dict(num_channels=256, num_res_blocks=2, num_heads=4), 422),
    (256, dict(num_channels=256, num_res_blocks=2, num_head_channels=64), 554),
    (512, dict(num_channels=256, num_res_blocks=2, num_head_channels=64), 559),
])
def test_released_adm_models_have_the_published_sizes(size, flags, millions):
  """The released class-conditional ADM models (guided-diffusion README flags) build with the
  parameter counts of Dhariwal & Nichol's table; their tensor tables use ADM's names."""
  kwargs, fmt = importers.unet_kwargs_from_adm(dict(
      image_size=size, attention_resolutions="32,16,8", class_cond=True, learn_sigma=True,
      resblock_updown=True, use_scale_shift_norm=True, **flags))
  table = _table(fmt, UNet(**kwargs), (size, size, 3))
  count = sum(int(np.prod(s)) for s in table.values())
  assert round(count / 1e6) == millions
  ch = flags["num_channels"]
  stem = ch // 2 if size == 512 else ch  # channel_mult starts at 0.5 at 512x512
  assert table["input_blocks.0.0.weight"] == (stem, 3, 3, 3)
  assert table["label_emb.weight"] == (1000, 4 * ch)
  assert table["out.2.weight"] == (6, stem, 3, 3)
  assert table["middle_block.1.qkv.weight"][1:] == (table["middle_block.1.qkv.weight"][0] // 3, 1)


# --- strictness ---------------------------------------------------------------------------------
def test_import_errors_name_every_tensor(tmp_path):
  from safetensors.torch import load_file, save_file
  small = dict(DDPM_CIFAR10, sample_size=8, block_out_channels=(16, 32, 32, 32),
               norm_num_groups=8)
  model = _perturb(diffusers.UNet2DModel(**small), seed=8)
  model.save_pretrained(tmp_path, safe_serialization=True)
  path = tmp_path / "diffusion_pytorch_model.safetensors"
  module = UNet(**importers.unet_kwargs_from_diffusers(tmp_path / "config.json"))
  tensors = load_file(str(path))
  bad = dict(tensors)
  bad["conv_out.weights"] = bad.pop("conv_out.weight")
  bad["mid_block.resnets.0.conv1.weight"] = torch.zeros(32, 32, 1, 1)
  save_file(bad, str(tmp_path / "bad.safetensors"))
  with pytest.raises(WeightImportError, match=r"missing tensor\(s\) 'conv_out.weight'.*"
                     r"unexpected tensor\(s\) 'conv_out.weights'.*"
                     r"'mid_block.resnets.0.conv1.weight' has shape \(32, 32, 1, 1\), the "
                     r"network expects \(32, 32, 3, 3\)"):
    importers.import_checkpoint(tmp_path / "bad.safetensors", "diffusers_unet", module, (8, 8, 3))
  sigma = dict(tensors)
  sigma["conv_out.weight"] = torch.zeros(6, 16, 3, 3)
  sigma["conv_out.bias"] = torch.zeros(6)
  save_file(sigma, str(tmp_path / "sigma.safetensors"))
  with pytest.raises(WeightImportError, match="learns the variance"):
    importers.import_checkpoint(tmp_path / "sigma.safetensors", "diffusers_unet", module,
                                (8, 8, 3))
  with pytest.raises(WeightImportError, match="imports into a DiT"):
    importers.import_checkpoint(path, "diffusers_dit", module, (8, 8, 3))
  (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
  with pytest.raises(WeightImportError, match="junk.pt"):
    read_tensors(tmp_path / "junk.pt")
  # Another architecture: every tensor of the missing level is named.
  other = UNet(**{**importers.unet_kwargs_from_diffusers(tmp_path / "config.json"),
                  "ch_mult": (1, 2, 2)})
  with pytest.raises(WeightImportError, match=r"unexpected tensor.*down_blocks\.3\.resnets"):
    importers.import_checkpoint(path, "diffusers_unet", other, (8, 8, 3))
  with pytest.raises(WeightImportError, match="downsample_padding=1"):
    importers.unet_kwargs_from_diffusers({**json.loads((tmp_path / "config.json").read_text()),
                                          "downsample_padding": 1})


def test_diffusers_dit_copies_must_agree(tmp_path):
  model = _diffusers_dit(seed=9)
  with torch.no_grad():
    model.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1.0)
  model.save_pretrained(tmp_path, safe_serialization=True)
  module = DiT(**importers.dit_kwargs_from_diffusers(SMALL_DIT, release_function=False))
  with pytest.raises(WeightImportError, match="'transformer_blocks.1.norm1.emb'.*differ"):
    importers.import_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors",
                                "diffusers_dit", module, (8, 8, 4))
