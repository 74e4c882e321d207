"""GAN networks: DCGAN, ProGAN, BigGAN and StyleGAN2 generators and discriminators, their
shared layers, and their named variants (registered in `diffjax.models.MODELS` on import).

A generator maps ``(z [B, z_dim], labels [B] or None, train) -> images [B, H, W, C]``; a
discriminator maps ``(images, labels, train) -> logits [B]``; ProGAN's both also take
``growth = (level, alpha)``. They know nothing of losses or training (see
`diffjax.methods.gan`).
"""

from diffjax.models.gan.biggan import BigGANDiscriminator, BigGANGenerator
from diffjax.models.gan.dcgan import DCGANDiscriminator, DCGANGenerator
from diffjax.models.gan.progan import ProGANDiscriminator, ProGANGenerator, growth_at
from diffjax.models.gan.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from diffjax.models.gan import variants  # noqa: F401  (registers the named variants)
