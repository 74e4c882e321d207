"""Denoising diffusion as a method: one trained network, role ``denoiser``, with EMA.

Reads the config sections ``model`` (the network), ``diffusion`` (schedule, parameterisation,
loss weighting, time sampler), ``optim`` and the sampler fields of ``sample`` (``sampler``,
``num_steps``, ``spacing``, ``options``, ``guidance_scale``). The update is the denoising loss
of `diffjax.diffusion.denoising_loss`; ``generate`` runs the configured sampler (with
classifier-free guidance when ``sample.guidance_scale != 1``) on the denoiser the
parameterisation makes of the network.

Latent diffusion (Rombach et al. 2022): with ``latent.autoencoder`` set, a frozen autoencoder
(role ``autoencoder``, `diffjax.methods.autoencoder.LatentAutoencoder`) maps the batch's images
to normalised latents in the update (or normalises the raw latents of a pre-encoded dataset,
``data.source=latents``), the denoiser is trained on those, and ``generate`` decodes its samples
to pixels, so grids and evaluation see images as for a pixel-space model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffjax import diffusion
from diffjax.diffusion import learned_variance, likelihood
from diffjax.fields import FieldChecker
from diffjax.methods.base import Method, MethodContext, Network
from diffjax.methods.registry import register_method
from diffjax.spec import DataSpec, ModelSpec, OptimSpec, TrainSpec, items
from diffjax.training.step import apply_gradients, value_and_grad


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
  """The ``diffusion`` config section."""

  schedule: diffusion.Schedule
  parameterization: diffusion.Parameterization
  weighting: str
  min_snr_gamma: float
  t_sampler: str
  t_sampler_options: tuple[tuple[str, Any], ...]
  learn_sigma: bool = False  # Nichol & Dhariwal's learned variances (hybrid loss)
  vlb_weight: float = 0.001  # their lambda

  @property
  def sigma_data(self) -> float:
    return getattr(self.parameterization, "sigma_data", 0.5)

  @classmethod
  def from_config(cls, df, ck: FieldChecker) -> "DiffusionSpec":
    schedule = param = None
    if ck.one_of(df.schedule, diffusion.SCHEDULES.names(), "diffusion.schedule"):
      schedule = ck.attempt("diffusion.schedule_kwargs", lambda: diffusion.get_schedule(
          df.schedule, **df.schedule_kwargs))
    if ck.one_of(df.parameterization, diffusion.PARAMETERIZATIONS.names(),
                 "diffusion.parameterization"):
      param = ck.attempt("diffusion.parameterization_kwargs",
                         lambda: diffusion.get_parameterization(df.parameterization,
                                                                **df.parameterization_kwargs))
    ck.one_of(df.weighting, diffusion.WEIGHTINGS, "diffusion.weighting")
    ck.require(df.min_snr_gamma > 0, "diffusion.min_snr_gamma",
               f"must be > 0, got {df.min_snr_gamma}")
    if ck.one_of(df.t_sampler, diffusion.T_SAMPLERS, "diffusion.t_sampler") and schedule:
      # draws nothing: only validates the option names and values
      ck.attempt("diffusion.t_sampler_kwargs", lambda: jax.eval_shape(
          lambda k: diffusion.sample_t(k, 2, schedule, df.t_sampler, **df.t_sampler_kwargs),
          jax.random.PRNGKey(0)))
    learn_sigma, vlb_weight = bool(df.get("learn_sigma", False)), df.get("vlb_weight", 0.001)
    if learn_sigma:
      if schedule and param:
        ck.attempt("diffusion.learn_sigma", lambda: learned_variance.check_schedule(schedule,
                                                                                    param))
      ck.require(df.t_sampler == "uniform", "diffusion.t_sampler",
                 "learned variances train on the chain's steps: t_sampler must be uniform")
      ck.require(vlb_weight >= 0, "diffusion.vlb_weight", f"must be >= 0, got {vlb_weight}")
    return cls(schedule, param, df.weighting, float(df.min_snr_gamma), df.t_sampler,
               items(df.t_sampler_kwargs), learn_sigma, float(vlb_weight))


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """The sampler fields of the ``sample`` config section."""

  sampler: str
  num_steps: int
  spacing: str
  options: tuple[tuple[str, Any], ...]
  guidance_scale: float
  guidance_interval: tuple[float, float] | None = None
  guidance_rescale: float = 0.0
  guide_workdir: str = ""  # autoguidance: the guiding run
  guide_step: int = -1
  clip_denoised: bool = False  # clip x0_hat to [-1, 1] at every step (DDPM, ADM pixels)
  guidance_channels: int = 0  # guide only the first k output channels (0: all; DiT: 3)
  # Ancestral sampling with the network's learned variances: ddpm with options.variance
  # "learned", or without a variance option when the network learns them (set by the method).
  learned_variance: bool = False

  @property
  def guided(self) -> bool:
    return self.guidance_scale != 1.0

  @classmethod
  def from_config(cls, s, ck: FieldChecker, *, conditional: bool) -> "SamplerSpec":
    ck.one_of(s.sampler, diffusion.SAMPLERS.names(), "sample.sampler")
    ck.one_of(s.spacing, diffusion.SPACINGS, "sample.spacing")
    ck.positive_int(s.num_steps, "sample.num_steps")
    ck.require(s.guidance_scale >= 0, "sample.guidance_scale",
               f"must be >= 0, got {s.guidance_scale}")
    auto = s.get("autoguidance") or {}
    guide = str(auto.get("workdir", "") or "")
    if s.guidance_scale != 1.0 and not guide:
      ck.require(conditional, "sample.guidance_scale",
                 "classifier-free guidance needs a conditional model (model.conditional=True)")
    interval = tuple(float(v) for v in (s.get("guidance_interval") or ()))
    ck.require(not interval or (len(interval) == 2 and 0 <= interval[0] < interval[1]),
               "sample.guidance_interval",
               f"must be () or (lo, hi) with 0 <= lo < hi in sigma/alpha, got {interval}")
    rescale = float(s.get("guidance_rescale", 0.0))
    ck.require(0.0 <= rescale <= 1.0, "sample.guidance_rescale",
               f"must be in [0, 1], got {rescale}")
    ck.require(not (rescale and guide), "sample.guidance_rescale",
               "rescale applies to classifier-free guidance, not to autoguidance")
    options = items(s.options)
    if s.sampler in diffusion.SAMPLERS:
      options = ck.keywords(diffusion.SAMPLERS, s.sampler, options, "sample.options")
    channels = s.get("guidance_channels", 0)
    ck.positive_int(channels, "sample.guidance_channels", minimum=0)
    return cls(s.sampler, s.num_steps, s.spacing, options, float(s.guidance_scale),
               interval or None, rescale, guide, int(auto.get("step", -1)),
               bool(s.get("clip_denoised", False)), channels if isinstance(channels, int) else 0)


def loss_fn(params, batch, rng, *, model, spec: DiffusionSpec, conditional: bool,
            train: bool = True, noise=None):
  """Mean denoising loss of a batch; also returns ``{"per_example": losses [B], "t": [B]}``.

  ``noise``: optional ``(t, eps)`` for the batch, as `draw_noise` makes them (micro-batches of
  one step take their slices of the whole batch's draw); by default they are drawn from ``rng``.
  """
  rng_loss, rng_dropout = jax.random.split(rng)
  labels = batch["label"] if conditional else None
  # EDM's augmentation labels (diffjax.data.augment), when the pipeline makes them.
  extra = {"augment_labels": batch["augment_labels"]} if "augment_labels" in batch else {}

  def net_fn(x, level, cond):
    return model.apply({"params": params}, x, level, cond, train=train,
                       rngs={"dropout": rng_dropout}, **extra)

  t, eps = noise if noise is not None else (None, None)
  if spec.learn_sigma:
    per_example, aux = learned_variance.hybrid_loss(
        net_fn, batch["image"], rng_loss, spec.schedule, spec.parameterization, cond=labels,
        vlb_weight=spec.vlb_weight, weighting=spec.weighting,
        t_sampler_options=dict(spec.t_sampler_options), min_snr_gamma=spec.min_snr_gamma,
        t=t, eps=eps)
    return jnp.mean(per_example), {"per_example": per_example, "t": aux["t"],
                                   "mse": jnp.mean(aux["mse"]), "vlb": jnp.mean(aux["vlb"])}
  per_example, aux = diffusion.denoising_loss(
      net_fn, batch["image"], rng_loss, spec.schedule, spec.parameterization, cond=labels,
      weighting=spec.weighting, t_sampler=spec.t_sampler,
      t_sampler_options=dict(spec.t_sampler_options), min_snr_gamma=spec.min_snr_gamma,
      sigma_data=spec.sigma_data, t=t, eps=eps)
  return jnp.mean(per_example), {"per_example": per_example, "t": aux["t"]}


# Bin edges of the training loss by noise level (log-SNR); the outer bins are open.
LOGSNR_BINS = (-7.5, -5.0, -2.5, 0.0, 2.5, 5.0, 7.5)


def loss_by_logsnr(per_example, logsnr) -> dict[str, jax.Array]:
  """``loss_by_logsnr/<bin>@sum`` and ``@count`` metrics: the training loop's log window sums
  both over its steps and logs their ratio, the mean loss of each noise level."""
  edges = (-jnp.inf, *LOGSNR_BINS, jnp.inf)
  out = {}
  for lo, hi in zip(edges[:-1], edges[1:]):
    name = f"loss_by_logsnr/{lo:g}..{hi:g}"
    inside = (logsnr >= lo) & (logsnr < hi)
    out[f"{name}@sum"] = jnp.sum(jnp.where(inside, per_example, 0.0))
    out[f"{name}@count"] = jnp.sum(inside).astype(jnp.float32)
  return out


def draw_noise(rng, shape, spec: DiffusionSpec):
  """The ``(t, eps)`` that `loss_fn` would draw from ``rng`` for a batch of ``shape``."""
  rng_loss, _ = jax.random.split(rng)
  rng_t, rng_eps = jax.random.split(rng_loss)
  t = diffusion.sample_t(rng_t, shape[0], spec.schedule, spec.t_sampler,
                         **dict(spec.t_sampler_options))
  return t, jax.random.normal(rng_eps, shape, jnp.float32)


def _guide_method(workdir: str, main: "DiffusionMethod") -> "DiffusionMethod":
  """The diffusion method of another run (its ``config.json``) to guide ``main`` with: the same
  data shape, schedule and conditioning; its network may be smaller."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{workdir} holds no config.json: not a diffjax run to guide with")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  ck = FieldChecker()
  data = DataSpec.from_config(config.data, ck, num_processes=None)
  train = TrainSpec.from_config(config.train, ck, seed=config.seed)
  config.sample.autoguidance.workdir = ""  # the guide is not guided itself
  guide = DiffusionMethod.from_config(config, ck, MethodContext(data, train, False))
  if ck.errors or guide is None:
    raise ValueError(f"the config of {workdir} does not build: {'; '.join(ck.errors)}")
  if (guide.x_shape, guide.conditional, guide.diffusion.schedule) != (
      main.x_shape, main.conditional, main.diffusion.schedule):
    raise ValueError(f"the guiding run {workdir} models other data (shape, conditioning or "
                     f"schedule differ from this run's)")
  return guide


def _check_network(module, data: DataSpec, conditional: bool, shape=None) -> None:
  """Traces the network on one example of the data's shape (or ``shape``; no compute)."""
  x = jax.ShapeDtypeStruct((1, *(shape or data.image_shape)), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if conditional else None
  try:
    jax.eval_shape(module.init, jax.random.PRNGKey(0), x, t, y)
  except Exception as e:  # any tracing failure means the network does not fit the data
    raise ValueError(f"the network does not fit {data.image_size}x{data.image_size}x"
                     f"{data.channels} images: {type(e).__name__}: {str(e).splitlines()[0]}")


def _check_learned_variance(method: "DiffusionMethod", ck: FieldChecker,
                            check_network: bool) -> None:
  """The network's output width and the sampler against ``diffusion.learn_sigma``."""
  s, learn = method.sampler, method.diffusion.learn_sigma
  if s.learned_variance:
    ck.require(learn, "sample.options.variance", "'learned' samples with the network's "
               "learned variances: it needs diffusion.learn_sigma=True")
    ck.require(not (s.guidance_interval or s.guidance_rescale or s.guide_workdir),
               "sample.options.variance", "learned-variance sampling takes classifier-free "
               "guidance without guidance_interval, guidance_rescale or autoguidance")
    ck.require(s.spacing in ("auto", "respaced", "uniform"), "sample.spacing",
               f"learned-variance sampling walks the chain's steps: auto (= respaced), "
               f"respaced or uniform, got {s.spacing!r}")
  ck.require(not s.guidance_channels or s.learned_variance, "sample.guidance_channels",
             "is implemented for learned-variance sampling (sample.options.variance=learned)")
  if not check_network:
    return
  x = jax.ShapeDtypeStruct((1, *method.x_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if method.conditional else None
  try:
    out = jax.eval_shape(method.module.init_with_output, jax.random.PRNGKey(0), x, t, y)[0]
  except Exception:  # pylint: disable=broad-except  (reported by _check_network)
    return
  c = method.x_shape[-1]
  want = 2 * c if learn else c
  ck.require(out.shape[-1] == want, "model.kwargs.out_channels",
             f"the network outputs {out.shape[-1]} channels for {c}-channel data; "
             f"diffusion.learn_sigma={learn} needs {want}" +
             (" (prediction and variance)" if learn else ""))


@register_method("diffusion")
class DiffusionMethod(Method):
  """Denoising diffusion (DDPM, VP/VE, EDM, v-prediction, flow matching by configuration)."""

  def __init__(self, model: ModelSpec, diffusion_spec: DiffusionSpec, sampler: SamplerSpec,
               optim: OptimSpec, data: DataSpec, *, grad_accum: int = 1,
               latent: "LatentAutoencoder | None" = None):
    self.model, self.diffusion, self.sampler, self.optim = model, diffusion_spec, sampler, optim
    self.conditional, self.num_classes = model.conditional, data.num_classes
    self.image_shape = data.image_shape
    self.grad_accum = grad_accum
    self.module = model.build(data.num_classes)
    self.networks = {"denoiser": Network.trained(self.module, self._init, optim, ema=True)}
    # Latent diffusion: the denoiser works on latents; generate() returns decoded pixels.
    self.latent = latent
    self.x_shape = self.image_shape  # what the denoiser sees
    if latent is not None:
      self.image_shape, self.x_shape = latent.pixel_shape, latent.latent_shape
      self.networks["autoencoder"] = latent.network

  @classmethod
  def from_config(cls, config, ck: FieldChecker, ctx: MethodContext) -> "DiffusionMethod | None":
    model = ModelSpec.from_config(config.model, ck, num_classes=ctx.data.num_classes)
    diffusion_spec = DiffusionSpec.from_config(config.diffusion, ck)
    sampler = SamplerSpec.from_config(config.sample, ck, conditional=model.conditional)
    optim = OptimSpec.from_config(config.optim, ck, total_steps=ctx.train.num_steps)
    variance = dict(sampler.options).get("variance")
    sampler = dataclasses.replace(sampler, learned_variance=sampler.sampler == "ddpm" and (
        variance == "learned" or (diffusion_spec.learn_sigma and variance is None)))
    from diffjax.methods.autoencoder import LatentAutoencoder  # registered after diffusion
    latent = LatentAutoencoder.from_config(config, ck, ctx)
    if ck.errors:
      return None
    method = ck.attempt("model.name / model.kwargs", lambda: cls(
        model, diffusion_spec, sampler, optim, ctx.data, grad_accum=ctx.train.grad_accum,
        latent=latent))
    if method is not None and ctx.check_network:
      ck.attempt("model.name / model.kwargs", lambda: _check_network(
          method.module, ctx.data, model.conditional, method.x_shape))
    if method is not None and sampler.guide_workdir:
      method.guide = ck.attempt("sample.autoguidance.workdir",
                                lambda: _guide_method(sampler.guide_workdir, method))
    if method is not None:
      _check_learned_variance(method, ck, ctx.check_network)
    augment = getattr(ctx.data, "augment", None)
    if method is not None and augment is not None:
      from diffjax.models.unet import UNet  # the network that takes augmentation labels
      ck.require(isinstance(method.module, UNet) and method.module.augment_dim == 9,
                 "model.kwargs.augment_dim", "EDM's augmentation (data.augment.p > 0) "
                 "conditions the network on its 9 labels: a UNet with augment_dim=9")
    return method

  # --- networks -----------------------------------------------------------------------------
  def _init(self, rng):
    x = jnp.zeros((1, *self.x_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if self.conditional else None
    return self.module.init({"params": rng, "dropout": rng}, x, jnp.zeros((1,)), labels)

  def denoiser(self, variables):
    """``denoise(x_t, t, labels) -> x0_hat`` of the network with Flax ``variables`` (of its
    prediction channels when it also learns variances)."""
    net_fn = lambda x, level, cond: self.module.apply(variables, x, level, cond)
    if self.diffusion.learn_sigma:
      channels = self.x_shape[-1]
      full = net_fn
      net_fn = lambda x, level, cond: full(x, level, cond)[..., :channels]
    return diffusion.make_denoiser(net_fn, self.diffusion.parameterization,
                                   self.diffusion.schedule)

  # --- training -----------------------------------------------------------------------------
  def loss(self, params, batch, noise, *, rng, train: bool = True):
    """``(mean loss, per-example losses)``; ``noise`` as `draw_noise` makes it, or None."""
    return loss_fn(params, batch, rng, model=self.module, spec=self.diffusion,
                   conditional=self.conditional, train=train, noise=noise)

  def update(self, state, batch, rng):
    net = state.nets["denoiser"]
    if self.latent is not None:  # its own key: the denoising loss draws from rng as before
      batch = {**batch, "image": self.latent.latents(state.nets["autoencoder"].params,
                                                     batch["image"], jax.random.fold_in(rng, 1))}
    # Accumulated micro-batches take their slices of the whole batch's times and noise, so
    # the step equals one on the whole batch; dropout masks are drawn per micro-batch.
    noise = (draw_noise(rng, batch["image"].shape, self.diffusion) if self.grad_accum > 1
             else None)
    (loss, aux), grads = value_and_grad(functools.partial(self.loss, rng=rng), net.params, batch,
                                        noise, grad_accum=self.grad_accum)
    net = apply_gradients(net, self.networks["denoiser"].optimizer, grads)
    # (with accumulation, of the last micro-batch's examples)
    by_level = loss_by_logsnr(aux["per_example"], self.diffusion.schedule.logsnr(aux["t"]))
    if self.diffusion.learn_sigma:  # the hybrid loss's two terms (vlb in bits/dim)
      by_level.update(loss_mse=aux["mse"], loss_vlb=aux["vlb"])
    return state.with_net("denoiser", net), {"loss": loss, "grad_norm": optax.tree.norm(grads),
                                             **by_level}

  # --- sampling -----------------------------------------------------------------------------
  guide: "DiffusionMethod | None" = None  # autoguidance's guiding model (its own network)

  def auxiliary_networks(self) -> dict[str, tuple[str, int]]:
    s = self.sampler
    return {"guide": (s.guide_workdir, s.guide_step)} if s.guide_workdir else {}

  def _generate_learned(self, variables, rng, labels):
    """Ancestral sampling with the learned variances (`learned_variance.sample`)."""
    s = self.sampler
    net_fn = lambda x, level, cond: self.module.apply(variables["denoiser"], x, level, cond)
    scale = variables.get("sampling", {}).get("guidance_scale", s.guidance_scale)
    guided = s.guided and self.conditional
    x = learned_variance.sample(
        net_fn, self.diffusion.parameterization, self.diffusion.schedule,
        (labels.shape[0], *self.x_shape), rng, num_steps=s.num_steps,
        spacing="respaced" if s.spacing == "auto" else s.spacing,
        cond=labels if self.conditional else None, guidance_scale=scale if guided else None,
        null_cond=self.num_classes if guided else None, guidance_channels=s.guidance_channels,
        clip_denoised=s.clip_denoised)
    if self.latent is not None:
      return self.latent.decode(variables["autoencoder"], x)
    return jnp.clip(x, -1.0, 1.0)

  def generate(self, variables, rng, labels):
    s = self.sampler
    if s.learned_variance:
      return self._generate_learned(variables, rng, labels)
    denoise = self.denoiser(variables["denoiser"])
    if s.clip_denoised:  # x0_hat clipped to the data range at every step
      unclipped = denoise
      denoise = lambda x, t, c=None: jnp.clip(unclipped(x, t, c), -1.0, 1.0)
    kwargs = dict(sampler=s.sampler, num_steps=s.num_steps, spacing=s.spacing, **dict(s.options))
    # An evaluation grid passes the scale as an array (``variables["sampling"]``): one compiled
    # sampler then serves every guidance scale of the grid.
    scale = variables.get("sampling", {}).get("guidance_scale", s.guidance_scale)
    guidance = dict(guidance_scale=scale, guidance_interval=s.guidance_interval)
    if s.guided and s.guide_workdir:  # autoguidance; not in training grids (no guide loaded)
      if "guide" in variables:
        guide = self.guide.denoiser(variables["guide"])
        kwargs.update(guidance, guide_fn=guide if self.conditional else
                      (lambda x, t, _g=guide: _g(x, t, None)))
    elif s.guided and self.conditional:  # classifier-free guidance
      kwargs.update(guidance, null_cond=self.num_classes, guidance_rescale=s.guidance_rescale)
    if self.conditional:
      kwargs["cond"] = labels
    else:
      denoise = lambda x, t, _d=denoise: _d(x, t, None)
    shape = (labels.shape[0], *self.x_shape)
    x = diffusion.sample(denoise, self.diffusion.schedule, shape, rng, **kwargs)
    if self.latent is not None:
      return self.latent.decode(variables["autoencoder"], x)
    return jnp.clip(x, -1.0, 1.0)

  def sampling_info(self) -> dict[str, Any]:
    s = self.sampler
    return {"name": s.sampler, "num_steps": s.num_steps, "spacing": s.spacing,
            "options": dict(s.options), "guidance_scale": s.guidance_scale,
            "guidance_interval": s.guidance_interval, "guidance_rescale": s.guidance_rescale,
            "autoguidance": ({"workdir": s.guide_workdir, "step": s.guide_step}
                             if s.guide_workdir else None),
            "clip_denoised": s.clip_denoised, "guidance_channels": s.guidance_channels,
            "learned_variance": s.learned_variance}

  def evaluations_per_image(self) -> int | None:
    """Denoiser evaluations per image (classifier-free guidance runs each on a doubled
    batch; autoguidance adds one guide evaluation each)."""
    s = self.sampler
    if s.learned_variance:
      return learned_variance.evaluations(s.num_steps)
    return diffusion.evaluations(s.sampler, self.diffusion.schedule, s.num_steps, s.spacing,
                                 **dict(s.options))

  def sampling_tag(self) -> str:
    s = self.sampler
    tag = f"{s.sampler}{s.num_steps}"
    if s.guided:
      tag += f"_{'ag' if s.guide_workdir else 'cfg'}{s.guidance_scale:g}"
    if s.guidance_interval:
      tag += f"_int{s.guidance_interval[0]:g}-{s.guidance_interval[1]:g}"
    if s.guidance_rescale:
      tag += f"_rescale{s.guidance_rescale:g}"
    if s.learned_variance:
      tag += "_learnedvar"
    if s.clip_denoised:
      tag += "_clip"
    return tag

  # --- likelihood ---------------------------------------------------------------------------
  def likelihood_error(self, kind: str) -> str | None:
    if self.latent is not None:
      return "bits/dim of a latent diffusion model are not computed (they would be of latents)"
    if kind == "vlb" and self.diffusion.schedule.num_timesteps is None:
      return f"vlb needs a discrete schedule (e.g. linear), not {self.diffusion.schedule.name!r}"
    return None if kind in ("ode", "vlb") else f"unknown likelihood {kind!r}; allowed: ode, vlb"

  def bits_per_dim(self, variables, images_uint8, rng, kind: str):
    """Test-set bits/dim: ``ode`` (probability-flow ODE on uniformly dequantised images) or
    ``vlb`` (the discrete chain's variational bound); of the unconditional (null-class)
    model when the network is conditional."""
    schedule = self.diffusion.schedule
    denoise = self.denoiser(variables["denoiser"])
    n = images_uint8.shape[0]
    cond = jnp.full((n,), self.num_classes, jnp.int32) if self.conditional else None
    fn = lambda xt, t: denoise(xt, t, cond)
    dims = math.prod(images_uint8.shape[1:])
    x = images_uint8.astype(jnp.float32)
    k1, k2 = jax.random.split(rng)
    if kind == "vlb":
      total, _ = likelihood.ddpm_vlb(fn, schedule, x / 127.5 - 1.0, k1)
      return total / (dims * math.log(2.0))
    deq = (x + jax.random.uniform(k2, x.shape)) / 127.5 - 1.0
    logp, _ = likelihood.ode_log_likelihood(fn, schedule, deq, k1)
    return likelihood.bits_per_dim(logp, dims, likelihood.BIN_WIDTH_8BIT)
