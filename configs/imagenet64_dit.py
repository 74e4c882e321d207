"""DiT-B/4 on 64x64 ImageNet pixels (TFDS imagenet_resized/64x64), class-conditional.

DiT's recipe (Peebles & Xie 2023) applied to pixels: linear betas over 1000 steps,
eps-prediction, AdamW 1e-4 without weight decay, batch 256, EMA 0.9999, label dropout 0.1 for
classifier-free guidance, random flips, bfloat16 compute; sampling with 250 DDPM steps and
guidance 1.5. (DiT also learns the variances: diffusion.learn_sigma=True with
model.kwargs.out_channels=6, as configs/latent_imagenet256_dit.py does; this pixel-space recipe
keeps the fixed ones.)

TFDS needs the ImageNet archives prepared once (manual download):
  tfds build imagenet_resized/64x64 --file_format=array_record

  python launch.py --config configs/imagenet64_dit.py --workdir runs/in64_dit
"""

from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "imagenet64_dit"
  c.data.source = "tfds"
  c.data.name = "imagenet_resized/64x64"
  c.data.split = "train"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.random_flip = True
  c.data.batch_size = 256
  c.data.num_workers = 16

  c.model.name = "DiT-B/4"
  c.model.dtype = "bfloat16"
  c.model.conditional = True
  c.model.kwargs.class_dropout = 0.1

  c.diffusion.schedule = "linear"
  c.diffusion.parameterization = "eps"
  c.diffusion.weighting = "simple"

  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0
  c.train.num_steps = 400_000
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = False

  c.sample.sampler = "ddpm"
  c.sample.num_steps = 250
  c.sample.guidance_scale = 1.5
  c.sample.num_images = 64
  c.sample.every_steps = 20_000
  c.checkpoint.every_steps = 10_000
  c.logging.log_every = 100

  if arg == "tiny":
    c = base.tiny(c)
    c.model.name = "DiT-tiny"
    c.model.kwargs.patch_size = 8
    c.data.num_classes = 10
    c.data.image_size = 32
  elif arg:
    raise ValueError(f"expected no argument or 'tiny', got {arg!r}")
  return c
