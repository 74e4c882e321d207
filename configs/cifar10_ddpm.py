"""DDPM on CIFAR-10 (Ho et al. 2020): the paper's recipe.

35.7M-parameter UNet, linear betas 1e-4..0.02 over T=1000, eps-prediction with L_simple,
Adam 2e-4 with 5k warm-up steps, batch 128, 800k steps, EMA 0.9999, dropout 0.1, random
horizontal flips, gradient clipping at 1; sampling with 1000 ancestral steps (sigma^2 = beta).

  python launch.py --config configs/cifar10_ddpm.py --workdir runs/cifar10_ddpm
  python launch.py --config configs/cifar10_ddpm.py:tiny --workdir runs/c10_tiny   # smoke run
"""

from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "cifar10_ddpm"
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.split = "train"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = True
  c.data.batch_size = 128
  c.data.num_workers = 4

  c.model.name = "ddpm-cifar10"
  c.model.conditional = False

  c.diffusion.schedule = "linear"
  c.diffusion.schedule_kwargs.beta_start = 1e-4
  c.diffusion.schedule_kwargs.beta_end = 0.02
  c.diffusion.schedule_kwargs.timesteps = 1000
  c.diffusion.parameterization = "eps"
  c.diffusion.weighting = "simple"
  c.diffusion.t_sampler = "uniform"  # uniform over the 1000 discrete steps

  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.train.num_steps = 800_000
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = False

  c.sample.sampler = "ddpm"
  c.sample.num_steps = 1000
  c.sample.options.variance = "large"
  c.sample.num_images = 64
  c.sample.every_steps = 10_000
  c.checkpoint.every_steps = 10_000
  c.logging.log_every = 100

  if arg == "tiny":
    c = base.tiny(c)
    c.model.name = "unet-tiny"
    c.sample.num_steps = 8
  elif arg:
    raise ValueError(f"expected no argument or 'tiny', got {arg!r}")
  return c
