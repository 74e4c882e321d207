"""Reproduction: DDPM on CIFAR-10 (Ho et al. 2020: FID 3.17, 50k samples, 1000 ancestral steps)
from the published checkpoint, sampled and scored as the paper did.

The checkpoint: google/ddpm-cifar10-32's ``diffusion_pytorch_model.safetensors`` (or ``.bin``),
the TF checkpoint of Ho et al. ported to diffusers' ``UNet2DModel``; its network is the
``ddpm-cifar10`` variant with DDPM's timestep embedding ([sin, cos], frequencies over
``dim / 2 - 1``) and takes the 0-based step index. Sampling: the 1000-step chain with
``sigma_t^2 = beta_t`` and x0 clipped to [-1, 1] at every step (Ho et al.'s sampler; diffusers'
DDPMScheduler with ``variance_type="fixed_large"``, ``clip_sample=True``). Score: FID of 50,000
samples against the CIFAR-10 training set's Inception statistics (EDM's ``cifar10-32x32.npz``,
or TTUR's ``fid_stats_cifar10_train.npz`` with ``--config.eval.ref_format=ttur``; both TF-graph
protocol), over ``eval.seeds`` seed sets; samples to uint8 by rounding (diffusers' pipeline).

  python experiments/repro/run.py --paper ddpm_cifar10 \\
      --checkpoint weights/ddpm-cifar10-32/diffusion_pytorch_model.safetensors \\
      --reference refs/cifar10-32x32.npz

``:twin`` is the same recipe on a random-weight network of the same layout at a fraction of
the width, 10 respaced steps: for checking the whole path on a CPU.
"""

from configs import cifar10_ddpm

# Where the user puts the published files (or --config.init.checkpoint / --config.eval.ref_path).
CHECKPOINT = "weights/ddpm-cifar10-32/diffusion_pytorch_model.safetensors"
REFERENCE = "refs/cifar10-32x32.npz"


def get_config(arg=None):
  if arg not in (None, "twin"):
    raise ValueError(f"expected no argument or 'twin', got {arg!r}")
  c = cifar10_ddpm.get_config()
  c.experiment = "repro_ddpm_cifar10"
  c.data.num_workers = 0
  c.model.kwargs.embedding_freq_shift = 1.0  # Ho et al.'s embedding
  c.model.kwargs.embedding_sin_first = True
  c.diffusion.parameterization_kwargs.noise_input = "step_index"
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 1000
  c.sample.spacing = "uniform"  # the chain itself
  c.sample.options.variance = "large"  # sigma_t^2 = beta_t
  c.sample.clip_denoised = True
  c.init.format = "diffusers_unet"
  c.init.checkpoint = CHECKPOINT
  c.eval.ref_path = REFERENCE
  c.eval.feature_net = "inception"
  c.eval.protocol = "tf"
  c.eval.ref_format = "edm"
  c.eval.sample_uint8 = "round"
  c.eval.num_samples = 50_000
  c.eval.seeds = 3
  c.eval.batch_size = 1000
  if arg == "twin":
    c.model.kwargs.ch = 16
    c.model.kwargs.norm_groups = 8
    c.sample.num_steps = 10
    c.sample.spacing = "respaced"
    c.eval.batch_size = 8
    c.eval.kid_subset_size = 8
  return c
