"""DCGAN (Radford et al. 2016): the paper's recipe. Adam 2e-4 with beta1 0.5 for both
networks, batch 128, the non-saturating loss, latents N(0, 1) of size 100, no clipping; the
generator's EMA (not in the paper) is what sampling and evaluation use.

  python launch.py --config configs/gan_dcgan.py --workdir runs/dcgan_c10
  python launch.py --config configs/gan_dcgan.py:fmnist --workdir runs/dcgan_fmnist
  python launch.py --config configs/gan_dcgan.py:tiny --workdir runs/dcgan_tiny   # smoke run
"""

from configs import gan_base


def get_config(arg=None):
  c = gan_base.get_gan_base()
  c.experiment = "gan_dcgan_cifar10"
  c.generator.name = "dcgan-64-g"  # 64x64 widths; a 32x32 run has one stride-2 layer less
  c.discriminator.name = "dcgan-64-d"
  c.data.batch_size = 128
  gan_base.set_optimizers(c, 2e-4, 2e-4, 0.5, 0.999)
  c.gan.loss = "non_saturating"
  c.train.num_steps = 100_000
  c.train.ema_decay = 0.999
  return gan_base.apply_arg(c, arg, "dcgan", {"generator.width": 32,
                                              "discriminator.width": 32})


def get_sweep():
  """Loss and augmentation ablation:
  python launch.py --config configs/gan_dcgan.py:fmnist --workdir runs/dcgan_sweep --sweep"""
  return [
      {"name": "non_saturating", "gan.loss": "non_saturating"},
      {"name": "hinge", "gan.loss": "hinge"},
      {"name": "non_saturating_diffaugment", "gan.loss": "non_saturating",
       "gan.augment": "diffaugment"},
  ]
