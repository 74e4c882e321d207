"""Flax linen networks. They map ``(x, noise_level, labels) -> array`` and know nothing of
diffusion, data or training."""

from diffjax.models.dit import DiT
from diffjax.models.registry import get_model, register_variant, variant_hparams, variant_names
from diffjax.models.unet import UNet
