"""Named network variants: ``get_model("DiT-B/2", num_classes=10)``.

A variant is a name for a module class plus its paper hyper-parameters; keyword overrides
replace any of them (e.g. ``dtype``, ``num_classes``, ``dropout``). Names are checked when a
model is built, with the allowed names in the error.
"""

from __future__ import annotations

import flax.linen as nn

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
