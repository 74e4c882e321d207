"""DiT on 256x256 ImageNet in the latent space of Stable Diffusion's VAE (Peebles & Xie 2023):
DiT-XL/2 by default, DiT-B/2 with ``:B``.

The paper's recipe: sd-vae-ft-ema latents (4x32x32, scaling 0.18215), horizontal flips as the
only augmentation, linear betas over 1000 steps with eps-prediction, AdamW at a constant 1e-4
without weight decay, warm-up or clipping, batch 256, EMA 0.9999, label dropout 0.1;
sampling with 250 DDPM steps and classifier-free guidance 1.5. Like DiT, the network learns the
variances too (8 output channels, Nichol & Dhariwal's hybrid loss with lambda 0.001) and samples
with them on guided-diffusion's respacing of the chain. bfloat16 compute for the DiT; the VAE
decodes in float32, 64 images at a time. (configs/repro_dit_xl2_256.py samples and scores the
published DiT-XL/2 checkpoint.)

Once: the VAE's weights (``diffusion_pytorch_model.safetensors`` of stabilityai/sd-vae-ft-ema,
in the diffusers layout) under weights/sd-vae-ft-ema/, ImageNet prepared for TFDS
(``tfds build imagenet2012 --file_format=array_record``), then the latents of the training
set and their flipped copies (the ``:encode`` variant reads the images; 1.28M x 2 latents of
4x32x32 in float16, about 21 GB):

  python launch.py --config configs/latent_imagenet256_dit.py:encode --workdir data/in256 \\
      --mode encode
  python launch.py --config configs/latent_imagenet256_dit.py --workdir runs/dit_xl2 \\
      --config.data.path=data/in256/latents
  python launch.py --config configs/latent_imagenet256_dit.py:B --workdir runs/dit_b2 \\
      --config.data.path=data/in256/latents

Evaluation compares 50,000 decoded samples with the training images the latents came from
(``eval.ref_split=train``: ``--mode ref_stats`` reads them through the manifest).
"""

from configs import base

WEIGHTS = "weights/sd-vae-ft-ema/diffusion_pytorch_model.safetensors"


def get_config(arg=None):
  if arg not in (None, "B", "encode", "B_encode"):
    raise ValueError(f"configs/latent_imagenet256_dit.py takes no argument, 'B', 'encode' or "
                     f"'B_encode', got {arg!r}")
  size = "B" if arg in ("B", "B_encode") else "XL"
  c = base.get_base_config()
  c.experiment = f"imagenet256_dit_{size.lower()}2"
  c.data.source = "latents"
  c.data.path = "data/in256/latents"
  c.data.split = "train"
  c.data.image_size = 256
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.random_flip = True  # picks the encoded flipped copy
  c.data.batch_size = 256
  c.data.num_workers = 16

  c.latent.autoencoder = "sd-vae"
  c.latent.weights = WEIGHTS
  c.latent.dtype = "float32"
  c.latent.chunk = 64

  c.model.name = f"DiT-{size}/2"
  c.model.dtype = "bfloat16"
  c.model.conditional = True
  c.model.kwargs.class_dropout = 0.1
  c.model.kwargs.out_channels = 8  # eps and the learned variances of the 4 latent channels

  c.diffusion.schedule = "linear"
  c.diffusion.parameterization = "eps"
  c.diffusion.weighting = "simple"
  c.diffusion.learn_sigma = True
  c.diffusion.parameterization_kwargs.noise_input = "step_index"  # the release's input

  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.train.num_steps = 400_000
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = False

  c.sample.sampler = "ddpm"
  c.sample.num_steps = 250
  c.sample.spacing = "respaced"
  c.sample.guidance_scale = 1.5
  c.sample.num_images = 64
  c.sample.every_steps = 20_000
  c.checkpoint.every_steps = 10_000
  c.logging.log_every = 100
  c.eval.feature_net = "inception"
  c.eval.ref_split = "train"
  c.eval.num_samples = 50_000

  c.encode.splits = "train"
  c.encode.flip = True
  c.encode.batch_size = 256
  c.encode.shard_size = 10_000
  c.encode.dtype = "float16"
  if arg in ("encode", "B_encode"):  # the images the latents are made of
    c.data.source = "tfds"
    c.data.name = "imagenet2012"
    c.data.path = ""
    c.data.random_flip = False
  return c
