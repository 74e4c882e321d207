"""Reproduction: ADM on ImageNet 64x64, class-conditional without guidance (Dhariwal & Nichol
2021: FID 2.07, 50k samples, 250 respaced steps) from the published checkpoint.

The checkpoint: guided-diffusion's ``64x64_diffusion.pt`` (flags ``--attention_resolutions
32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True
--noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3
--resblock_updown True --use_new_attention_order True --use_scale_shift_norm True``, format
``adm_new_attention_order``): the ``adm-imagenet64`` variant with GroupNorm epsilon 1e-5 and
learned sigma (6 output channels), on the discrete cosine chain. Sampling as its ``sample.py``
with ``--timestep_respacing 250``: ancestral with the learned variances, x0 clipped to [-1, 1];
samples to uint8 by truncation (``((x + 1) * 127.5).clamp(0, 255).to(uint8)``). Score: FID of
50,000 samples against ``VIRTUAL_imagenet64_labeled.npz`` (stored statistics; TF-graph
protocol). Labels: balanced over the 1000 classes (``sample.py`` draws them at random).

  python experiments/repro/run.py --paper adm_imagenet64 --checkpoint weights/64x64_diffusion.pt \\
      --reference refs/VIRTUAL_imagenet64_labeled.npz

``:twin``: the same recipe on a random-weight UNet of ADM's layout at 16x16, 10 classes, 10 steps.
"""

from configs import imagenet64_dit

# Where the user puts the published files (or --config.init.checkpoint / --config.eval.ref_path).
CHECKPOINT = "weights/64x64_diffusion.pt"
REFERENCE = "refs/VIRTUAL_imagenet64_labeled.npz"


def get_config(arg=None):
  if arg not in (None, "twin"):
    raise ValueError(f"expected no argument or 'twin', got {arg!r}")
  c = imagenet64_dit.get_config()
  c.experiment = "repro_adm_imagenet64"
  c.data.num_workers = 0
  c.model.name = "adm-imagenet64"
  c.model.dtype = "float32"
  c.model.kwargs = {}
  c.model.kwargs.out_channels = 6  # learned sigma
  c.model.kwargs.norm_eps = 1e-5
  c.model.kwargs.dropout = 0.1
  c.model.kwargs.class_dropout = 0.0
  c.diffusion.schedule = "cosine_discrete"
  c.diffusion.schedule_kwargs = {}
  c.diffusion.learn_sigma = True
  c.diffusion.parameterization_kwargs.noise_input = "step_index"
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 250
  c.sample.spacing = "respaced"
  c.sample.options.variance = "learned"
  c.sample.guidance_scale = 1.0
  c.sample.clip_denoised = True
  c.init.format = "adm_new_attention_order"
  c.init.checkpoint = CHECKPOINT
  c.eval.ref_path = REFERENCE
  c.eval.feature_net = "inception"
  c.eval.protocol = "tf"
  c.eval.ref_format = "adm"
  c.eval.sample_uint8 = "floor"
  c.eval.num_samples = 50_000
  c.eval.seeds = 1
  c.eval.batch_size = 500
  if arg == "twin":
    c.data.image_size = 16
    c.data.num_classes = 10
    c.model.kwargs.ch = 32
    c.model.kwargs.ch_mult = (1, 2, 3)
    c.model.kwargs.num_res_blocks = 2
    c.model.kwargs.attn_resolutions = (8, 4)
    c.model.kwargs.head_channels = 16
    c.model.kwargs.norm_groups = 8
    c.sample.num_steps = 10
    c.eval.batch_size = 8
    c.eval.kid_subset_size = 8
  return c
