"""Class-conditional MNIST (28x28) from TFDS.

  python launch.py --config configs/mnist.py --workdir runs/mnist
  python launch.py --config configs/mnist.py:cpu --workdir runs/mnist_cpu   # laptop budget

Without internet, convert the idx files you have and read them as ArrayRecord:
  python -m diffjax.data.convert idx --output data/mnist --split train \\
      --images train-images-idx3-ubyte.gz --labels train-labels-idx1-ubyte.gz
  ... --config.data.source=array_record --config.data.path=data/mnist
"""

from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "mnist"
  c.data.source = "tfds"
  c.data.name = "mnist"
  c.data.split = "train"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 128
  c.data.num_workers = 2

  c.model.name = "unet-mnist"
  c.model.conditional = True
  c.model.kwargs.class_dropout = 0.1
  c.model.kwargs.ch = 64
  c.model.kwargs.num_res_blocks = 2
  c.model.kwargs.dropout = 0.1

  c.diffusion.schedule = "cosine"
  c.diffusion.parameterization = "v"

  c.optim.lr = 2e-4
  c.optim.warmup_steps = 1000
  c.train.num_steps = 50_000
  c.train.ema_decay = 0.9995

  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.num_images = 100
  c.sample.guidance_scale = 2.0
  c.sample.every_steps = 5000
  c.sample.upscale = 2
  c.checkpoint.every_steps = 5000
  c.logging.log_every = 100
  # Inception features mean little on 28x28 grey digits: a classifier trained on the data.
  c.eval.feature_net = "domain"
  c.eval.num_samples = 10_000
  return apply_arg(c, arg)


def apply_arg(c, arg):
  """``cpu``: a smaller network and budget for a 2-core CPU; ``tiny``: a smoke run."""
  if arg == "cpu":
    c.model.kwargs.ch = 32
    c.model.kwargs.num_res_blocks = 1
    c.model.kwargs.dropout = 0.0
    c.data.batch_size = 64
    c.data.num_workers = 1
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"
    c.train.num_steps = 2500
    c.train.ema_decay = 0.999
    c.sample.every_steps = 500
    c.checkpoint.every_steps = 500
    c.logging.log_every = 50
  elif arg == "tiny":
    c = base.tiny(c)
    c.model.name = "unet-tiny"
    c.data.image_size = 8
  elif arg:
    raise ValueError(f"expected no argument, 'cpu' or 'tiny', got {arg!r}")
  return c
