"""Named GAN variants: ``<family>-<size>-g`` (generator) and ``<family>-<size>-d``
(discriminator), at the papers' sizes plus small ones for CPU runs and tests.

The resolution, image channels and class count come from the data when a GAN method builds
them (``resolution``, ``channels``, ``num_classes`` are overridden); the names fix the widths
and depths of each paper's configuration. Parameter counts of the paper-sized variants are
checked against the papers' (or their reference code's) in tests/test_gan_models.py.
"""

from __future__ import annotations

from diffjax.models.gan.biggan import BigGANDiscriminator, BigGANGenerator
from diffjax.models.gan.dcgan import DCGANDiscriminator, DCGANGenerator
from diffjax.models.gan.progan import ProGANDiscriminator, ProGANGenerator
from diffjax.models.gan.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from diffjax.models.registry import register_variant

# --- DCGAN (Radford et al. 2016): 64x64, ngf = ndf = 64, z 100 (the reference example) -------
register_variant("dcgan-64-g", DCGANGenerator, resolution=64, width=64, z_dim=100)
register_variant("dcgan-64-d", DCGANDiscriminator, width=64)
register_variant("dcgan-tiny-g", DCGANGenerator, resolution=16, width=8, z_dim=16)
register_variant("dcgan-tiny-d", DCGANDiscriminator, width=8)

# --- ProGAN (Karras et al. 2018, Table 2: CelebA-HQ 1024x1024) ---------------------------------
register_variant("progan-1024-g", ProGANGenerator, resolution=1024, z_dim=512, fmap_base=8192,
                 fmap_max=512)
register_variant("progan-1024-d", ProGANDiscriminator, resolution=1024, fmap_base=8192,
                 fmap_max=512)
# The paper's CIFAR-10 network (32x32, its appendix: widths as the 1024 one's top levels).
register_variant("progan-32-g", ProGANGenerator, resolution=32, z_dim=512, fmap_base=8192,
                 fmap_max=512)
register_variant("progan-32-d", ProGANDiscriminator, resolution=32, fmap_base=8192,
                 fmap_max=512)
# Tiny: every level computed and selected (the "blend" structure), far cheaper on CPU.
register_variant("progan-tiny-g", ProGANGenerator, resolution=16, z_dim=16, fmap_base=64,
                 fmap_max=16, structure="blend")
register_variant("progan-tiny-d", ProGANDiscriminator, resolution=16, fmap_base=64,
                 fmap_max=16, mbstd_group=2, structure="blend")

# --- BigGAN (Brock et al. 2019): ImageNet 128x128, ch 96, z 120, shared embedding 128 ---------
register_variant("biggan-128-g", BigGANGenerator, resolution=128, ch=96, z_dim=120,
                 shared_dim=128, attention=64, num_classes=1000)
register_variant("biggan-128-d", BigGANDiscriminator, ch=96, attention=64, num_classes=1000)
# CIFAR-10 layout of the reference code (32x32, ch 64 as in its CIFAR script), no attention.
register_variant("biggan-32-g", BigGANGenerator, resolution=32, ch=64, z_dim=128,
                 shared_dim=128, attention=0, num_classes=10)
register_variant("biggan-32-d", BigGANDiscriminator, ch=64, attention=0, num_classes=10)
register_variant("biggan-tiny-g", BigGANGenerator, resolution=16, ch=4, z_dim=18,
                 shared_dim=8, attention=8, num_classes=10)
register_variant("biggan-tiny-d", BigGANDiscriminator, ch=4, attention=8, num_classes=10)

# --- StyleGAN2 (Karras et al. 2020), config F at 1024x1024 -------------------------------------
register_variant("stylegan2-1024-g", StyleGAN2Generator, resolution=1024, z_dim=512, w_dim=512,
                 mapping_layers=8, channel_base=32768, channel_max=512)
register_variant("stylegan2-1024-d", StyleGAN2Discriminator, channel_base=32768,
                 channel_max=512)
# The StyleGAN2-ADA paper's CIFAR-10 configuration (widths 512 everywhere, mapping depth 2).
register_variant("stylegan2-32-g", StyleGAN2Generator, resolution=32, z_dim=512, w_dim=512,
                 mapping_layers=2, channel_base=16384, channel_max=512)
register_variant("stylegan2-32-d", StyleGAN2Discriminator, channel_base=16384, channel_max=512)
register_variant("stylegan2-tiny-g", StyleGAN2Generator, resolution=16, z_dim=16, w_dim=16,
                 mapping_layers=2, channel_base=128, channel_max=16)
register_variant("stylegan2-tiny-d", StyleGAN2Discriminator, channel_base=128, channel_max=16,
                 mbstd_group=2)
