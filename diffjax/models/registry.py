"""Named network variants: ``get_model("DiT-B/2", num_classes=10)``.

A variant is a name for a module class plus its paper hyper-parameters; keyword overrides
replace any of them (e.g. ``dtype``, ``num_classes``, ``dropout``). Names are checked when a
model is built, with the allowed names in the error.
"""

from __future__ import annotations

import flax.linen as nn

from diffjax.models.autoencoder import AutoencoderKL
from diffjax.models.dit import DiT
from diffjax.models.unet import UNet
from diffjax.registry import Registry

MODELS = Registry("model variant")


def register_variant(name: str, module: type[nn.Module], **hparams) -> None:
  """Adds a named variant; a duplicate name raises."""
  MODELS.add(name, module, **hparams)


def variant_names() -> tuple[str, ...]:
  return MODELS.names()


def get_model(name: str, **overrides) -> nn.Module:
  """Builds a variant, with keyword overrides of its fields.

  Raises:
    ValueError: unknown variant name, or an override that is not a field of the module.
  """
  return MODELS.build(name, **overrides)


# --- UNets -------------------------------------------------------------------------------------
# Ho et al. 2020, CIFAR-10 (35.7M parameters).
register_variant("ddpm-cifar10", UNet, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                 attn_resolutions=(16,), dropout=0.1)
# Dhariwal & Nichol 2021, ImageNet 64x64 class-conditional (their Table 14 hyper-parameters).
register_variant("adm-imagenet64", UNet, ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3,
                 attn_resolutions=(32, 16, 8), head_channels=64, dropout=0.1,
                 resblock_updown=True, scale_shift_norm=True, num_classes=1000)
# DDPM++ as configured for CIFAR-10 by Karras et al. 2022 (Song et al.'s architecture).
register_variant("ddpmpp-cifar10", UNet, ch=128, ch_mult=(2, 2, 2), num_res_blocks=4,
                 attn_resolutions=(16,), dropout=0.13, resblock_updown=True, skip_rescale=True)
# Small UNets for 8x8 / 28x28 data on a laptop CPU.
register_variant("unet-digits", UNet, ch=64, ch_mult=(1, 2), num_res_blocks=2,
                 attn_resolutions=(4,), dropout=0.0, num_heads=4, norm_groups=16)
register_variant("unet-mnist", UNet, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2,
                 attn_resolutions=(7,), dropout=0.1, num_heads=4, norm_groups=16)
# Tiny variants for tests.
register_variant("unet-tiny", UNet, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(4,), dropout=0.0, num_heads=2, norm_groups=4)

# --- DiT (Peebles & Xie 2023, Table 1) ---------------------------------------------------------
_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
for _size, (_depth, _hidden, _heads) in _DIT_SIZES.items():
  for _patch in (2, 4, 8):
    register_variant(f"DiT-{_size}/{_patch}", DiT, depth=_depth, hidden_size=_hidden,
                     num_heads=_heads, patch_size=_patch)
register_variant("DiT-tiny", DiT, depth=2, hidden_size=64, num_heads=4, patch_size=2,
                 num_classes=10)

# --- Autoencoders of latent diffusion (diffjax.models.autoencoder) -----------------------------
# A table of its own: a variant here is a frozen or trained autoencoder (config.latent.*), not a
# denoiser (model.name). Architectures and latent factors as in each model's diffusers config.
AUTOENCODERS = Registry("autoencoder variant")
# stabilityai/sd-vae-ft-ema and -mse, SD 1.x/2.x (83.7M parameters, 8x downsampling, 4 channels).
AUTOENCODERS.add("sd-vae", AutoencoderKL, scaling_factor=0.18215)
# SDXL's VAE: the same architecture, retrained; its own scaling factor.
AUTOENCODERS.add("sdxl-vae", AutoencoderKL, scaling_factor=0.13025)
# SD3 and FLUX.1: 16 latent channels, no quant convolutions, scaling and shift.
AUTOENCODERS.add("sd3-vae", AutoencoderKL, latent_channels=16, use_quant_conv=False,
                 use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609)
AUTOENCODERS.add("flux-vae", AutoencoderKL, latent_channels=16, use_quant_conv=False,
                 use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
# Small autoencoders trained here: 28x28 greyscale (Fashion-MNIST) or 32x32 RGB -> 4x
# downsampling, 4 channels (7x7x4 / 8x8x4 latents).
AUTOENCODERS.add("vae-f4-small", AutoencoderKL, in_channels=1, out_channels=1,
                 block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
                 scaling_factor=1.0)
# Tests: two levels (2x downsampling), widths 16/32.
AUTOENCODERS.add("vae-tiny", AutoencoderKL, in_channels=1, out_channels=1,
                 block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                 scaling_factor=1.0)
