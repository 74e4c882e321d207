"""ProGAN (Karras et al. 2018): WGAN-GP (lambda 10) with the drift term eps = 0.001, Adam
0.001 with betas (0, 0.99), equalised learning rate, pixel norm, minibatch std, progressive
growing from 4x4 with a fade-in and a stable phase per level (the paper: 600k images each;
here ``gan.growth_stable_steps`` / ``gan.growth_fade_steps``), generator EMA 0.999.

  python launch.py --config configs/gan_progan.py --workdir runs/progan_c10
  python launch.py --config configs/gan_progan.py:fmnist --workdir runs/progan_fmnist
  python launch.py --config configs/gan_progan.py:tiny --workdir runs/progan_tiny   # smoke run
"""

from configs import gan_base


def get_config(arg=None):
  c = gan_base.get_gan_base()
  c.experiment = "gan_progan_cifar10"
  c.generator.name = "progan-32-g"
  c.discriminator.name = "progan-32-d"
  c.data.batch_size = 64
  gan_base.set_optimizers(c, 0.001, 0.001, 0.0, 0.99)
  c.gan.loss = "wgan_gp"
  c.gan.gp_weight = 10.0
  c.gan.drift = 0.001
  c.gan.growth_stable_steps = 600_000 // 64
  c.gan.growth_fade_steps = 600_000 // 64
  c.train.num_steps = 12 * 600_000 // 64
  c.train.ema_decay = 0.999
  c = gan_base.apply_arg(c, arg, "progan", {"generator.fmap_base": 512,
                                            "generator.fmap_max": 64, "generator.z_dim": 64,
                                            "discriminator.fmap_base": 512,
                                            "discriminator.fmap_max": 64,
                                            "generator.structure": "blend",
                                            "discriminator.structure": "blend"})
  if arg == "tiny":
    c.gan.growth_stable_steps = 4
    c.gan.growth_fade_steps = 4
  return c
