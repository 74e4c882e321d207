"""The embedded default: class-conditional diffusion on scikit-learn's 8x8 digits.

Needs no download (the digits ship inside scikit-learn) and finishes in a few minutes on a
2-core laptop CPU with recognisable digits in ``<workdir>/samples/``.

  python launch.py --config configs/default.py --workdir runs/default
"""

from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "digits"
  c.data.source = "digits"
  c.data.split = "train"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 128

  c.model.name = "unet-digits"
  c.model.conditional = True
  c.model.kwargs.class_dropout = 0.1
  c.model.kwargs.ch = 32
  c.model.kwargs.num_res_blocks = 1

  c.diffusion.schedule = "cosine"
  c.diffusion.parameterization = "v"
  c.diffusion.weighting = "simple"

  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.train.num_steps = 1500
  c.train.ema_decay = 0.999

  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.num_images = 100  # 10 per class, one class per grid column
  c.sample.guidance_scale = 2.0
  c.sample.upscale = 4
  c.checkpoint.every_steps = 500
  c.logging.log_every = 100
  # Inception features mean nothing at 8x8: a classifier trained on the digits (--mode
  # ref_stats trains it) gives FD, KID, precision/recall and class accuracy.
  c.eval.feature_net = "domain"
  c.eval.num_samples = 1000

  if arg == "tiny":
    c = base.tiny(c)
    c.model.name = "unet-tiny"
  elif arg:
    raise ValueError(f"configs/default.py takes no argument or 'tiny', got {arg!r}")
  return c


def get_sweep():
  """A small learning-rate / parameterisation ablation (python launch.py ... --sweep)."""
  return [
      {"name": "eps_lr1e-3", "diffusion.parameterization": "eps", "optim.lr": 1e-3},
      {"name": "v_lr1e-3", "diffusion.parameterization": "v", "optim.lr": 1e-3},
      {"name": "v_lr3e-4", "diffusion.parameterization": "v", "optim.lr": 3e-4},
  ]
