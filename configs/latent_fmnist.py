"""Latent diffusion on Fashion-MNIST: a DiT on the 7x7x4 latents of the autoencoder that
configs/autoencoder_fmnist.py trains (read pre-encoded from ``--mode encode``'s shards), and,
for comparison, the same transformer on pixels (``:pixel``: 4x4 patches of the 28x28 images,
the same 49 tokens, so the same compute per step). experiments/latent_fmnist/ runs both.

  python launch.py --config configs/latent_fmnist.py --workdir runs/ldm_fmnist \\
      --config.data.path=runs/ae_fmnist/latents
  python launch.py --config configs/latent_fmnist.py:pixel --workdir runs/pix_fmnist

``latent.weights`` left empty takes the autoencoder the latent dataset's manifest names (the
``autoencoder.npz`` --mode encode wrote beside the shards); its fingerprint is checked either
way. Sampling decodes to pixels, so ``--mode ref_stats`` / ``--mode eval`` score images as for
a pixel model (the reference images are those the latents were encoded from).

``:tiny`` (tests): the 8x8 digits' 4x4x4 latents of ``vae-tiny``; ``:pixel_tiny`` its pixel twin.
"""

from configs import base


def get_config(arg=None):
  c = base.get_base_config()
  c.experiment = "latent_fmnist"
  c.data.source = "latents"
  c.data.path = "runs/ae_fmnist/latents"
  c.data.split = "train"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 64
  c.data.num_workers = 1
  c.latent.autoencoder = "vae-f4-small"
  c.latent.sample_posterior = True
  # The autoencoder trained here has no scaling factor of its own: its latents (per-channel
  # means of 2 to 7, deviations of 1 to 3) are standardised with the latent dataset's
  # per-channel statistics (the manifest's), as EDM2 does.
  c.latent.channel_stats = True

  # A small DiT (1.2M parameters: depth 4, width 128) for a 2-core CPU; patch 1 on the 7x7
  # latents: 49 tokens.
  c.model.name = "DiT-tiny"
  c.model.conditional = True
  c.model.kwargs.patch_size = 1
  c.model.kwargs.depth = 4
  c.model.kwargs.hidden_size = 128
  c.model.kwargs.num_heads = 4
  c.model.kwargs.class_dropout = 0.1

  c.diffusion.schedule = "cosine"
  c.diffusion.parameterization = "v"

  c.optim.name = "adamw"
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.train.num_steps = 3000
  c.train.ema_decay = 0.999

  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.num_images = 100
  c.sample.guidance_scale = 2.0
  c.sample.upscale = 2
  c.checkpoint.every_steps = 500
  c.logging.log_every = 50
  c.eval.feature_net = "inception"
  c.eval.ref_split = "test"
  c.eval.num_samples = 2000
  c.eval.batch_size = 250

  if arg in ("pixel", "pixel_tiny"):
    c.experiment = "pixel_fmnist"
    c.data.source = "array_record"
    c.data.path = "data/fashion_mnist"
    c.eval.ref_data_path = "data/fashion_mnist_test"
    c.latent.autoencoder = ""
    c.latent.channel_stats = False
    c.model.kwargs.patch_size = 4  # 28x28x1 in 4x4 patches: 49 tokens, as the latent model
  if arg in ("tiny", "pixel_tiny"):
    c = base.tiny(c)
    c.data.image_size = 8
    c.data.num_workers = 0
    c.model.name = "DiT-tiny"
    c.model.kwargs = {"class_dropout": 0.1, "patch_size": 1 if arg == "tiny" else 2}
    c.eval.feature_net = "domain"
    c.eval.ref_data_path = ""
    c.eval.batch_size = 64
    c.sample.upscale = 4
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    if arg == "tiny":
      c.data.path = "runs/ae_tiny/latents"
      c.latent.autoencoder = "vae-tiny"
    else:
      c.data.source = "digits"
      c.data.path = ""
  elif arg not in (None, "pixel"):
    raise ValueError(f"configs/latent_fmnist.py takes no argument, 'pixel', 'tiny' or "
                     f"'pixel_tiny', got {arg!r}")
  return c
