"""StyleGAN2 (Karras et al. 2020), config F's recipe: Adam 0.002 with betas (0, 0.99) for both
networks, the non-saturating loss, lazy R1 (gamma 10 at 1024x1024 FFHQ; 0.01 for CIFAR-10 as
in StyleGAN2-ADA's cifar configuration) every 16 discriminator updates, path-length
regularisation (weight 2) every 4 generator updates on half the batch, style mixing with
probability 0.9, batch 32, generator EMA with a half-life of 10k images.

  python launch.py --config configs/gan_stylegan2.py --workdir runs/sg2_c10
  python launch.py --config configs/gan_stylegan2.py:fmnist --workdir runs/sg2_fmnist
  python launch.py --config configs/gan_stylegan2.py:tiny --workdir runs/sg2_tiny   # smoke run
"""

from configs import gan_base


def get_config(arg=None):
  c = gan_base.get_gan_base()
  c.experiment = "gan_stylegan2_cifar10"
  c.generator.name = "stylegan2-32-g"
  c.discriminator.name = "stylegan2-32-d"
  c.data.batch_size = 32
  gan_base.set_optimizers(c, 0.0025, 0.0025, 0.0, 0.99)
  c.gan.loss = "non_saturating"
  c.gan.r1_gamma = 0.01
  c.gan.d_reg_every = 16
  c.gan.pl_weight = 2.0
  c.gan.g_reg_every = 4
  c.gan.pl_batch_shrink = 2
  c.gan.style_mixing = 0.9
  c.train.num_steps = 600_000
  c.train.ema_decay = 0.5 ** (32 / 10_000)  # half-life of 10k images at batch 32
  c = gan_base.apply_arg(c, arg, "stylegan2", {
      "generator.channel_base": 1024, "generator.channel_max": 64, "generator.z_dim": 64,
      "generator.w_dim": 64, "discriminator.channel_base": 1024,
      "discriminator.channel_max": 64})
  if arg == "fmnist":
    c.gan.r1_gamma = 0.1
  if arg == "tiny":
    c.gan.d_reg_every = 4
    c.gan.g_reg_every = 2
  return c
