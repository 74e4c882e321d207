"""Reproduction: DiT-XL/2 on ImageNet 256x256 (Peebles & Xie 2023: FID 2.27, 50k samples,
classifier-free guidance 1.5, 250 respaced DDPM steps) from the published checkpoint.

The checkpoint: the DiT release's ``DiT-XL-2-256x256.pt`` (format ``dit``; EMA weights), or
facebook/DiT-XL-2-256's ``transformer/diffusion_pytorch_model.safetensors`` with
``--config.init.format=diffusers_dit`` (the same weights). The network computes the release's
function (frequency shift 0, MLP LayerNorm epsilon 1e-6; diffusers' port differs in both) with
learned-sigma outputs (8 channels). Sampling as the release's ``sample_ddp.py``: the 250 steps
guided-diffusion's ``space_timesteps(1000, "250")`` keeps, ancestral with the learned variances,
guidance 1.5 on the first 3 of the 4 latent channels (the release's "for exact reproducibility"
choice), no clipping; latents decoded by sd-vae-ft-ema (``latent.weights``; the release's
``--vae`` also offers ft-mse). Score: FID of 50,000 samples against guided-diffusion's
``VIRTUAL_imagenet256_labeled.npz`` (its stored statistics; TF-graph protocol), samples to
uint8 by rounding (the release's ``clamp(127.5 x + 128, 0, 255)`` cast). Labels: balanced over the
1000 classes (the release draws them uniformly at random).

  python experiments/repro/run.py --paper dit_xl2_256 --checkpoint weights/DiT-XL-2-256x256.pt \\
      --reference refs/VIRTUAL_imagenet256_labeled.npz \\
      --vae weights/sd-vae-ft-ema/diffusion_pytorch_model.safetensors

``:twin``: the same recipe (learned variances, respacing, channel-limited guidance) on a
random-weight DiT of the release's layout in pixel space (16x16x3, no autoencoder), 10 steps.
"""

from configs import latent_imagenet256_dit

# Where the user puts the published files (or --config.init.checkpoint / --config.eval.ref_path).
CHECKPOINT = "weights/DiT-XL-2-256x256.pt"
REFERENCE = "refs/VIRTUAL_imagenet256_labeled.npz"


def get_config(arg=None):
  if arg not in (None, "twin"):
    raise ValueError(f"expected no argument or 'twin', got {arg!r}")
  c = latent_imagenet256_dit.get_config()
  c.experiment = "repro_dit_xl2_256"
  c.data.source = "tfds"  # sampling and scoring read no data
  c.data.name = "imagenet2012"
  c.data.path = ""
  c.data.num_workers = 0
  c.model.name = "DiT-XL/2"
  c.model.kwargs.out_channels = 8  # learned sigma
  c.diffusion.learn_sigma = True
  c.diffusion.parameterization_kwargs.noise_input = "step_index"
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 250
  c.sample.spacing = "respaced"
  c.sample.options.variance = "learned"
  c.sample.guidance_scale = 1.5
  c.sample.guidance_channels = 3
  c.sample.clip_denoised = False
  c.init.format = "dit"
  c.init.checkpoint = CHECKPOINT
  c.eval.ref_path = REFERENCE
  c.eval.feature_net = "inception"
  c.eval.protocol = "tf"
  c.eval.ref_format = "adm"
  c.eval.sample_uint8 = "round"
  c.eval.num_samples = 50_000
  c.eval.seeds = 1
  c.eval.batch_size = 250
  if arg == "twin":
    c.latent.autoencoder = ""
    c.latent.weights = ""
    c.data.image_size = 16
    c.data.num_classes = 10
    c.model.dtype = "float32"
    c.model.name = "DiT-tiny"
    c.model.kwargs.out_channels = 6
    c.sample.num_steps = 10
    c.sample.guidance_channels = 2
    c.eval.batch_size = 8
    c.eval.kid_subset_size = 8
  return c
