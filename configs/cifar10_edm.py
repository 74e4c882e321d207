"""EDM on CIFAR-10, class-conditional (Karras et al. 2022, config F, their Table 7).

DDPM++ network (dropout 0.13), EDM preconditioning with sigma_data = 0.5, log-normal noise
levels (P_mean -1.2, P_std 1.2) with the lambda(sigma) weighting, Adam 1e-3 with a 10 Mimg
ramp-up, batch 512, 200 Mimg (390,625 steps), EMA half-life 0.5 Mimg (decay 0.99929 per step),
no gradient clipping; sampling with 18 Heun steps (35 NFE).

EDM's non-leaky geometric augmentation (p = 0.12: x-flips, y-flips, scale, rotation, anisotropic
scale, translation; diffjax/data/augment.py) with its 9 augmentation labels fed to the network
(model.kwargs.augment_dim), sampled with zero labels. EDM's DDPM++ details kept: GroupNorm
epsilon 1e-5, 64 channels per attention head. Not reproduced (diffjax's UNet differs there):
EDM adds the class label (one-hot through a linear layer) and the augmentation labels to the
noise features before the embedding MLP where diffjax adds a class table after it (the
augmentation labels enter where EDM's do); its resampling blocks carry a 1x1 convolution on the
skip path (resample_proj); its weight initialisation (xavier_uniform with EDM's gains).

  python launch.py --config configs/cifar10_edm.py --workdir runs/cifar10_edm
"""

from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "cifar10_edm"
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.batch_size = 512
  c.data.num_workers = 8

  c.model.name = "ddpmpp-cifar10"
  c.model.conditional = True
  c.model.kwargs.class_dropout = 0.0
  c.model.kwargs.dropout = 0.13
  c.model.kwargs.norm_eps = 1e-5  # EDM's GroupNorm
  c.model.kwargs.head_channels = 64  # EDM: channels_per_head 64 (4 heads at 256 channels)
  c.model.kwargs.augment_dim = 9  # the augmentation labels
  c.data.augment.p = 0.12  # EDM's CIFAR-10 setting (multipliers: configs/base.py defaults)

  c.diffusion.schedule = "edm"
  c.diffusion.schedule_kwargs.sigma_min = 0.002
  c.diffusion.schedule_kwargs.sigma_max = 80.0
  c.diffusion.schedule_kwargs.rho = 7.0
  c.diffusion.parameterization = "edm"
  c.diffusion.parameterization_kwargs.sigma_data = 0.5
  c.diffusion.weighting = "simple"  # in EDM's F-space this is exactly lambda(sigma)
  c.diffusion.t_sampler = "lognormal"
  c.diffusion.t_sampler_kwargs.p_mean = -1.2
  c.diffusion.t_sampler_kwargs.p_std = 1.2

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 19_531  # 10 Mimg at batch 512
  c.optim.grad_clip = 0.0
  c.train.num_steps = 390_625  # 200 Mimg
  c.train.ema_decay = 0.99929  # 0.5 ** (512 / 500_000)
  c.train.ema_warmup = False

  c.sample.sampler = "heun"
  c.sample.num_steps = 18
  c.sample.num_images = 100
  c.sample.every_steps = 10_000
  c.checkpoint.every_steps = 10_000
  c.logging.log_every = 100

  if arg == "tiny":
    c = base.tiny(c)
    c.model.name = "unet-tiny"
    c.model.kwargs.dropout = 0.0
    c.model.kwargs.head_channels = 16
  elif arg:
    raise ValueError(f"expected no argument or 'tiny', got {arg!r}")
  return c
