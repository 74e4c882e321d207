"""Shared sections of the GAN configs (configs/gan_*.py): the ``gan`` method with its
``generator``, ``discriminator``, ``optim_d`` and ``gan`` sections, and the data settings the
family configs' arguments pick. The defaults of these sections live here, not in
configs/base.py; every field is described in diffjax/methods/gan.py.

Arguments of every family config (``--config configs/gan_<family>.py:<arg>``):
  (none)   the paper's recipe on CIFAR-10 from TFDS, 32x32
  fmnist   Fashion-MNIST 32x32 from ArrayRecord files (``data/fashion_mnist``; convert the idx
           files with ``python -m diffjax.data.convert idx``), CPU-sized networks
  tiny     a smoke run on the embedded 8x8 digits resized to 16x16, tiny networks
"""

import ml_collections

from configs import base
import diffjax.methods.gan  # noqa: F401  (registers the "gan" method)


def get_gan_base() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.method.name = "gan"

  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = True
  c.data.batch_size = 64
  c.data.num_workers = 2

  c.generator = ml_collections.ConfigDict()
  c.generator.name = "dcgan-64-g"  # a variant from diffjax.models (<family>-<size>-g)
  c.generator.dtype = "float32"
  c.generator.conditional = False  # condition both networks on the data's labels
  c.generator.kwargs = ml_collections.ConfigDict()
  c.discriminator = ml_collections.ConfigDict()
  c.discriminator.name = "dcgan-64-d"
  c.discriminator.dtype = "float32"
  c.discriminator.kwargs = ml_collections.ConfigDict()

  # optim: the generator's optimiser; optim_d: the discriminator's (two time scales).
  c.optim.grad_clip = 0.0  # the GAN papers do not clip
  c.optim_d = c.optim.copy_and_resolve_references()

  c.gan = ml_collections.ConfigDict()
  c.gan.loss = "non_saturating"  # non_saturating | hinge | wgan_gp
  c.gan.n_critic = 1  # discriminator updates per generator update
  c.gan.gp_weight = 10.0  # WGAN-GP lambda (loss=wgan_gp)
  c.gan.drift = 0.0  # ProGAN's eps * D(x)^2 on reals
  c.gan.r1_gamma = 0.0  # R1 on reals (lazy: every d_reg_every discriminator updates, x k)
  c.gan.r2_gamma = 0.0  # R2 on fakes (same schedule)
  c.gan.d_reg_every = 16
  c.gan.pl_weight = 0.0  # StyleGAN2 path-length regularisation (lazy: every g_reg_every)
  c.gan.g_reg_every = 4
  c.gan.pl_decay = 0.01
  c.gan.pl_batch_shrink = 2
  c.gan.style_mixing = 0.0  # StyleGAN2 mixing probability
  c.gan.ortho_weight = 0.0  # BigGAN orthogonal regularisation of the generator
  c.gan.augment = ""  # "" | diffaugment
  c.gan.augment_policy = "color,translation,cutout"
  c.gan.truncation_psi = 1.0  # StyleGAN2 truncation at sampling (1 = none)
  c.gan.truncation = 0.0  # BigGAN truncated-normal threshold at sampling (0 = none)
  c.gan.growth_stable_steps = 0  # ProGAN: steps per stable phase
  c.gan.growth_fade_steps = 0  # ProGAN: steps per fade-in

  c.train.ema_warmup = True
  c.sample.num_images = 64
  c.sample.upscale = 2
  c.checkpoint.every_steps = 5000
  c.logging.log_every = 100
  c.eval.num_samples = 10_000
  return c


def set_optimizers(c, lr_g: float, lr_d: float, b1: float, b2: float, eps: float = 1e-8):
  for section, lr in ((c.optim, lr_g), (c.optim_d, lr_d)):
    section.name = "adam"
    section.lr = lr
    section.b1 = b1
    section.b2 = b2
    section.eps = eps
    section.warmup_steps = 0
    section.schedule = "constant"
    section.grad_clip = 0.0


def apply_arg(c, arg, family: str, cpu_kwargs: dict | None = None):
  """The data and network sizes of ``arg`` (see the module docstring) for ``family``."""
  if arg == "fmnist":
    c.experiment = f"gan_{family}_fmnist"
    c.data.source = "array_record"
    c.data.path = "data/fashion_mnist"
    c.data.name = ""
    c.data.image_size = 32
    c.data.channels = 1
    c.data.random_flip = False
    c.data.num_workers = 1
    c.eval.feature_net = "domain"  # Inception features mean little on 28x28 grey clothes
    c.eval.num_samples = 2000
    c.eval.classifier_steps = 1500
    for key, value in (cpu_kwargs or {}).items():
      section, field = key.split(".")
      c[section].kwargs[field] = value
  elif arg == "tiny":
    c = base.tiny(c)
    c.experiment = f"gan_{family}_tiny"
    c.data.source = "digits"
    c.data.name = ""
    c.data.image_size = 16
    c.data.channels = 1
    c.data.random_flip = False
    c.generator.name = f"{family}-tiny-g"
    c.discriminator.name = f"{family}-tiny-d"
    c.generator.kwargs = ml_collections.ConfigDict()
    c.discriminator.kwargs = ml_collections.ConfigDict()
    c.eval.feature_net = "domain"
    c.sample.upscale = 2
  elif arg:
    raise ValueError(f"configs/gan_{family}.py takes no argument, 'fmnist' or 'tiny', "
                     f"got {arg!r}")
  return c
