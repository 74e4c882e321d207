"""AutoencoderKL trained on Fashion-MNIST (28x28 grey -> 7x7x4 latents, ``vae-f4-small``):
the first stage of the small latent-diffusion pipeline (experiments/latent_fmnist/).

L1 reconstruction + KL (weight 1e-6, as Stable Diffusion's autoencoders) from scratch; the
PatchGAN and perceptual terms are options (``--config.method.disc_weight=0.5``,
``--config.method.perceptual_weight=1 --config.method.perceptual_net=FILE``, a feature network
written with diffjax.models.vae_weights.save_feature_net).

  python -m diffjax.data.convert idx --output data/fashion_mnist --split train \\
      --images ../shared/assets/data/fashion_mnist/train-images-idx3-ubyte.gz \\
      --labels ../shared/assets/data/fashion_mnist/train-labels-idx1-ubyte.gz   # and test
  python launch.py --config configs/autoencoder_fmnist.py --workdir runs/ae_fmnist
  INCEPTION=../shared/assets/inception/inception-2015-12-05-fid.torchscript.pt
  python launch.py --config configs/autoencoder_fmnist.py --workdir runs/ae_fmnist \\
      --mode encode --config.eval.inception_source=$INCEPTION

``:tiny`` is a smoke run on the 8x8 digits (``vae-tiny``, 4x4x4 latents) for the tests.
"""

from configs import base


def autoencoder_method(c, **overrides):
  """The autoencoder method's fields (diffjax.methods.autoencoder.AutoencoderLossSpec)."""
  c.method.name = "autoencoder"
  c.method.rec_loss = "l1"
  c.method.kl_weight = 1e-6
  c.method.perceptual_weight = 0.0
  c.method.perceptual_net = ""
  c.method.disc_weight = 0.0  # > 0: PatchGAN with hinge loss and the adaptive weight
  c.method.disc_start = 0  # the discriminator's terms start at this step
  c.method.disc_channels = 64
  c.method.disc_layers = 3
  c.method.disc_lr = 0.0  # 0: optim.lr
  c.method.ema = True
  for k, v in overrides.items():
    c.method[k] = v
  return c


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "autoencoder_fmnist"
  autoencoder_method(c)
  c.data.source = "array_record"
  c.data.path = "data/fashion_mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 64
  c.data.num_workers = 1
  c.latent.autoencoder = "vae-f4-small"

  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.optim.grad_clip = 1.0
  c.train.num_steps = 1500
  c.train.ema_decay = 0.999
  c.sample.num_images = 64
  c.sample.upscale = 2
  c.checkpoint.every_steps = 500
  c.logging.log_every = 50

  c.eval.feature_net = "inception"  # rFID: Inception features of reconstructions vs originals
  c.eval.ref_split = "test"
  c.eval.ref_data_path = "data/fashion_mnist_test"
  c.encode.eval_split = "test"
  c.encode.eval_num = 2000
  c.encode.shard_size = 10_000
  c.encode.batch_size = 250

  if arg == "tiny":
    c = base.tiny(c)
    c.data.source = "digits"
    c.data.path = ""
    c.data.image_size = 8
    c.data.num_workers = 0
    c.latent.autoencoder = "vae-tiny"
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.sample.upscale = 4
    c.eval.feature_net = "domain"
    c.eval.ref_data_path = ""
    c.encode.eval_num = 64
    c.encode.batch_size = 16
    c.encode.shard_size = 256
  elif arg:
    raise ValueError(f"configs/autoencoder_fmnist.py takes no argument or 'tiny', got {arg!r}")
  return c
