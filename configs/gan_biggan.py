"""BigGAN (Brock et al. 2019): class-conditional, hinge loss, Adam with lr 1e-4 (G) and 4e-4
(D), betas (0, 0.999), eps 1e-6, two discriminator updates per generator update, orthogonal
regularisation 1e-4 of the generator, spectral normalisation in both networks, generator EMA
0.9999; truncation at sampling with ``--config.gan.truncation=<threshold>``.

  python launch.py --config configs/gan_biggan.py --workdir runs/biggan_c10
  python launch.py --config configs/gan_biggan.py:fmnist --workdir runs/biggan_fmnist
  python launch.py --config configs/gan_biggan.py:tiny --workdir runs/biggan_tiny   # smoke run
"""

from configs import gan_base


def get_config(arg=None):
  c = gan_base.get_gan_base()
  c.experiment = "gan_biggan_cifar10"
  c.generator.name = "biggan-32-g"
  c.discriminator.name = "biggan-32-d"
  c.generator.conditional = True
  c.data.batch_size = 50
  gan_base.set_optimizers(c, 1e-4, 4e-4, 0.0, 0.999, eps=1e-6)
  c.gan.loss = "hinge"
  c.gan.n_critic = 2
  c.gan.ortho_weight = 1e-4
  c.train.num_steps = 500_000
  c.train.ema_decay = 0.9999
  c = gan_base.apply_arg(c, arg, "biggan", {"generator.ch": 16, "discriminator.ch": 16,
                                            "generator.z_dim": 64, "generator.shared_dim": 32})
  if arg in ("fmnist", "tiny"):
    c.data.batch_size = 64 if arg == "fmnist" else 16
  return c
