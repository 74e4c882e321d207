"""Flax linen networks. They map ``(x, noise_level, labels) -> array`` and know nothing of
diffusion, data or training."""

from diffjax.models.dit import DiT
from diffjax.models.registry import MODELS, get_model, register_variant, variant_names
from diffjax.models.unet import UNet
from diffjax.models import gan  # noqa: E402,F401  (GAN networks; registers their variants)
