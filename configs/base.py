"""Shared defaults for every experiment. Experiment files call `get_base_config()` and change
what they need; `--config.a.b=value` overrides any field from the command line (a misspelt
field is an error: the config is locked).

Sections: method, data, model, diffusion, optim, train, sample, checkpoint, logging, eval,
faults, estimate, mesh. Free-form sections (``model.kwargs``, ``diffusion.schedule_kwargs``,
``diffusion.parameterization_kwargs``, ``diffusion.t_sampler_kwargs``, ``sample.options``) take
any keyword their target accepts, also from the command line
(``--config.model.kwargs.remat=full``); the target's signature is checked before any compute.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "unnamed"
  c.seed = 0

  c.method = ml_collections.ConfigDict()
  c.method.name = "diffusion"  # the objective (diffjax.methods): diffusion

  c.data = ml_collections.ConfigDict()
  c.data.source = "digits"  # digits | tfds | array_record
  c.data.name = ""  # TFDS dataset name (source=tfds), e.g. "cifar10"
  c.data.split = "train"
  c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default)
  c.data.path = ""  # ArrayRecord file, glob or folder (source=array_record)
  c.data.image_key = "image"
  c.data.label_key = "label"
  c.data.image_size = 8  # images are centre-cropped to square and resized to this
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.batch_size = 128  # global, over all processes and devices
  c.data.num_workers = 0  # Grain worker processes per host (0 = in the main process)
  c.data.prefetch = 1  # batches sent to the devices ahead of the step that uses them
  # EDM's non-leaky geometric augmentation (diffjax/data/augment.py): each transform with
  # probability p x its multiplier, the network conditioned on the augmentation labels
  # (model.kwargs.augment_dim=9). p = 0: off (batches exactly as without it). EDM CIFAR-10:
  # p = 0.12 with these multipliers.
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.p = 0.0
  c.data.augment.xflip = 1e8
  c.data.augment.yflip = 1.0
  c.data.augment.scale = 1.0
  c.data.augment.rotate_frac = 1.0
  c.data.augment.aniso = 1.0
  c.data.augment.translate_frac = 1.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet-digits"  # a variant name from diffjax.models
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  c.model.conditional = True  # condition on data labels (null class = num_classes)
  c.model.kwargs = ml_collections.ConfigDict()  # field overrides of the variant

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "cosine"
  c.diffusion.schedule_kwargs = ml_collections.ConfigDict()
  c.diffusion.parameterization = "eps"  # eps | x0 | v | flow | edm
  c.diffusion.parameterization_kwargs = ml_collections.ConfigDict()
  c.diffusion.weighting = "simple"  # simple | x0 | snr | min_snr | edm
  c.diffusion.min_snr_gamma = 5.0
  c.diffusion.t_sampler = "uniform"  # uniform | lognormal | logit_normal
  c.diffusion.t_sampler_kwargs = ml_collections.ConfigDict()
  # Learned variances (Nichol & Dhariwal 2021; ADM, DiT): the network outputs twice the data
  # channels (model.kwargs.out_channels), trained with L_simple + vlb_weight * N * L_vlb term;
  # the ddpm sampler then uses them (unless sample.options.variance names a fixed one). Needs a
  # discrete chain (linear, cosine_discrete) and the uniform t_sampler.
  c.diffusion.learn_sigma = False
  c.diffusion.vlb_weight = 0.001

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # adam | adamw
  c.optim.lr = 2e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"  # constant | cosine (after warm-up)
  c.optim.grad_clip = 1.0  # global-norm clipping; 0 disables

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step))
  c.train.grad_accum = 1  # micro-batches per step (gradients summed in a scan; same result)
  # Keep the optimiser state (Adam's two moments: twice the parameters) in pinned host memory
  # between steps; each step copies it in and out. Frees accelerator memory, costs transfers.
  c.train.offload_opt_state = False
  # Post-hoc EMA (Karras et al. 2024): power-function EMA profiles of these relative standard
  # deviations, snapshot every posthoc_ema_every steps; any EMA length is reconstructed from
  # them afterwards (sample.posthoc_ema_std). () = off.
  c.train.posthoc_ema_stds = ()
  c.train.posthoc_ema_every = 0

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.spacing = "auto"  # the sampler's own time grid (diffusion.default_spacing)
  c.sample.options = ml_collections.ConfigDict()  # sampler options, e.g. eta, s_churn
  c.sample.guidance_scale = 1.0  # classifier-free guidance (1 = none), or autoguidance's weight
  c.sample.guidance_interval = ()  # (lo, hi) in sigma/alpha: guide only there (() = always)
  c.sample.guidance_rescale = 0.0  # Lin et al.'s rescale phi of CFG (0 = off)
  # Autoguidance (Karras et al. 2024): a weaker model of the same task (smaller, or trained
  # for less: another run's workdir, its checkpoint `step`, -1 = latest) guides instead of the
  # unconditional branch.
  c.sample.autoguidance = ml_collections.ConfigDict()
  c.sample.autoguidance.workdir = ""
  c.sample.autoguidance.step = -1
  c.sample.num_images = 64  # images in a grid / in --mode sample
  c.sample.every_steps = 0  # sample grid during training (0 = never before the end)
  c.sample.at_end = True  # sample grid when training finishes
  c.sample.upscale = 1  # nearest-neighbour upscaling of grid images (small images)
  c.sample.posthoc_ema_std = 0.0  # > 0: sample with that post-hoc EMA (0 = the tracked EMA)
  c.sample.clip_denoised = False  # clip x0_hat to [-1, 1] at every step (DDPM, ADM pixels)
  c.sample.guidance_channels = 0  # guide only the first k channels (0 = all; the DiT release: 3)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 3  # latest checkpoints kept
  c.checkpoint.best_metric = ""  # also keep the best checkpoint by this logged metric
  c.checkpoint.best_mode = "min"  # min | max
  c.checkpoint.async_save = True

  c.logging = ml_collections.ConfigDict()
  c.logging.log_every = 50
  c.logging.tensorboard = True

  c.eval = ml_collections.ConfigDict()
  c.eval.feature_net = "inception"  # inception (standard FID) | domain (classifier on the data)
  c.eval.protocol = "tf"  # Inception input protocol: tf | pytorch_fid
  c.eval.inception_cache = ""  # folder of inception_fid.npz ("" = ~/.cache/diffjax)
  c.eval.inception_source = ""  # weight file to convert when the cache is empty
  c.eval.download_inception = False  # fetch pytorch-fid's weights when missing (needs internet)
  c.eval.classifier_steps = 1500  # training steps of the domain classifier
  c.eval.ref_split = "test"  # real split the statistics come from
  c.eval.ref_data_path = ""  # ArrayRecord files of that split ("" = data.path)
  c.eval.ref_path = ""  # reference .npz ("" = <workdir>/eval/ref_<net>_<split>.npz)
  c.eval.num_samples = 50_000
  c.eval.batch_size = 500  # images generated per call
  c.eval.seeds = 1  # independent sample sets: mean and 95% interval
  c.eval.name = ""  # output name ("" = derived from sampler and sample count)
  c.eval.every_steps = 0  # in-training evaluation period (0 = off)
  c.eval.train_num_samples = 1000  # samples per in-training evaluation
  c.eval.kid_subset_size = 1000
  c.eval.pr_k = 3
  c.eval.likelihood = ""  # "" | ode | vlb (test-split bits/dim)
  c.eval.likelihood_num = 1000
  c.eval.likelihood_batch = 100
  # One-checkpoint sweep: sample-section fields with lists of values, e.g.
  # --config.eval.grid.sampler="('ddim','heun')" --config.eval.grid.num_steps="(10,20)"; every
  # combination is scored against the same reference (finished cells are kept on relaunch).
  c.eval.grid = ml_collections.ConfigDict()
  # Memorisation check: a sample is a copy when its nearest training image (in the feature
  # net's space) is closer than factor x the quantile of held-out real images' distances.
  c.eval.memorization = False
  c.eval.memorization_quantile = 0.01
  c.eval.memorization_factor = 0.5
  # Published reference statistics (diffjax/evaluation/reference.py): diffjax (--mode
  # ref_stats) | adm (guided-diffusion's VIRTUAL_*.npz batches) | edm (EDM's fid.py ref, e.g.
  # cifar10-32x32.npz) | ttur (TTUR's fid_stats_*.npz) | pytorch_fid (its --save-stats). Each
  # records the Inception protocol it was computed with; another protocol is refused.
  c.eval.ref_format = "diffjax"
  # Samples in [-1, 1] -> uint8 before the feature net: round ((x + 1) * 127.5 rounded: EDM's
  # and DiT's x * 127.5 + 128 truncated, diffusers' pipelines) | floor (truncated: ADM's
  # guided-diffusion sample.py).
  c.eval.sample_uint8 = "round"

  c.faults = ml_collections.ConfigDict()
  c.faults.nonfinite = "skip"  # non-finite loss/gradients: skip (the update) | abort
  c.faults.max_consecutive_skips = 10  # abort after this many skipped updates in a row (0 = never)
  c.faults.loss_spike_factor = 0.0  # also skip updates with loss > factor x running mean (0 = off)
  c.faults.bad_records = "skip"  # unreadable data record: skip (count, use the next one) | stop
  c.faults.verify_checkpoints = True  # hash checkpoint files; verify before restoring
  c.faults.inject_nan_steps = ()  # fault injection (tests): steps whose loss becomes NaN
  c.faults.inject_preemption_steps = ()  # fault injection (tests): act as if SIGTERM came

  c.estimate = ml_collections.ConfigDict()  # launch.py --mode estimate (cost before a run)
  c.estimate.chip = "h100"  # h100 | h200 | a100 | tpu-v4 | tpu-v5e | tpu-v5p | tpu-v6e
  c.estimate.num_devices = 8
  c.estimate.mfu = 0.4  # assumed model FLOPs utilisation
  c.estimate.images_per_s = 0.0  # measured throughput on that hardware (0 = unknown)

  # Start from a published checkpoint (diffjax/models/importers.py): --mode sample / eval use it
  # until the run has checkpoints of its own; --mode train fine-tunes from it.
  # (init.checkpoint, not init.from: ml_collections cannot parse a Python keyword on the command
  # line)
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""  # the checkpoint file ("" = none)
  c.init.format = ""  # diffusers_unet | diffusers_dit | dit | adm | adm_new_attention_order

  c.mesh = ml_collections.ConfigDict()
  # Device mesh: one size per axis, -1 fills the remaining devices.
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # How much of the data / fsdp axis spans TPU slices (multi-slice) or hosts (GPU, CPU): the
  # axis is dcn_<axis> groups of slices or processes times the rest within each, so only its
  # collectives cross the slow links. 1: everything within (one slice or host per axis group).
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1
  # Parameter sharding: data_parallel | fsdp | fsdp_tensor (see diffjax/parallel/rules.py).
  c.mesh.rules = "data_parallel"

  # Latent diffusion: the autoencoder of the experiment (diffjax.methods.autoencoder). The
  # diffusion method freezes it and trains on its normalised latents (sampling decodes); the
  # autoencoder method trains it; --mode encode writes its latents. "" = pixel space.
  c.latent = ml_collections.ConfigDict()
  c.latent.autoencoder = ""  # variant (diffjax.models.registry.AUTOENCODERS), e.g. sd-vae
  c.latent.kwargs = ml_collections.ConfigDict()  # field overrides (scaling_factor, ...)
  c.latent.weights = ""  # diffusers .safetensors or diffjax .npz (--mode encode writes one)
  c.latent.cache_dir = ""  # converted .safetensors files ("" = ~/.cache/diffjax)
  c.latent.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.latent.sample_posterior = True  # encoding in the update: z ~ q(z|x) (False: its mean)
  c.latent.channel_stats = False  # normalise with the latent dataset's per-channel mean/std
  c.latent.chunk = 0  # encode / decode this many images at a time (0 = the whole batch)

  # --mode encode: latents of the data's splits as ArrayRecord shards with a manifest
  # (diffjax/jobs/encode.py); with the autoencoder method, reconstruction metrics too.
  c.encode = ml_collections.ConfigDict()
  c.encode.output = ""  # folder of the latents ("" = <workdir>/latents)
  c.encode.splits = ""  # comma-separated ("" = data.split and eval.ref_split)
  c.encode.flip = False  # also encode horizontally flipped copies (data.random_flip reads them)
  c.encode.batch_size = 64  # images per device call
  c.encode.shard_size = 10_000  # images per shard
  c.encode.dtype = "float16"  # storage of the posterior moments: float16 | float32
  c.encode.max_images = 0  # per split (0 = all)
  c.encode.tile = 0  # encode tiles of this side, blended (0 = whole images)
  c.encode.eval_split = ""  # split whose reconstructions are scored (PSNR, SSIM, rFID)
  c.encode.eval_num = 1000  # images scored
  c.encode.eval_fid = True  # rFID with eval.feature_net (needs its weights)
  c.encode.inject_kill_after_shards = 0  # fault injection (tests): die mid-way through a shard
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a laptop-sized smoke run (the `:tiny` config argument)."""
  c.train.num_steps = min(c.train.num_steps, 20)
  c.data.batch_size = min(c.data.batch_size, 16)
  c.data.num_workers = 0
  c.sample.num_steps = min(c.sample.num_steps, 8)
  c.sample.num_images = min(c.sample.num_images, 16)
  c.sample.every_steps = 0
  c.checkpoint.every_steps = 10
  c.logging.log_every = 5
  c.model.dtype = "float32"
  c.eval.num_samples = min(c.eval.num_samples, 256)
  c.eval.train_num_samples = min(c.eval.train_num_samples, 256)
  c.eval.kid_subset_size = min(c.eval.kid_subset_size, 100)
  c.eval.classifier_steps = min(c.eval.classifier_steps, 200)
  c.eval.likelihood_num = min(c.eval.likelihood_num, 64)
  return c
