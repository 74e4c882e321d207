"""Autoencoders of latent diffusion: training one (method ``autoencoder``) and using one frozen
(`LatentAutoencoder`, which the diffusion method builds from the ``latent`` config section).

The ``latent`` section names the autoencoder of an experiment: a variant of
``diffjax.models.registry.AUTOENCODERS`` (``latent.autoencoder``), field overrides
(``latent.kwargs``: widths, latent channels, ``scaling_factor``, ``shift_factor``,
``latents_mean`` / ``latents_std``), its weights (``latent.weights``: a diffusers
``.safetensors`` file or a diffjax ``.npz``, `diffjax.models.vae_weights`), compute dtype and
memory options. The autoencoder method trains that network (from scratch, or fine-tunes the
weights); latent diffusion freezes it; ``--mode encode`` writes its latents.

The autoencoder method (Rombach et al. 2022, after Esser et al. 2021's VQGAN losses), roles
``autoencoder`` (EMA kept), ``discriminator`` (when ``method.disc_weight > 0``) and
``perceptual`` (frozen, when ``method.perceptual_weight > 0``). Per step:

  rec   = mean |x - x_hat| (``method.rec_loss = "l1"``) or mean (x - x_hat)^2 (``"l2"``), with
          x_hat decoded from a posterior sample
  nll   = rec + perceptual_weight * mean_b d(x, x_hat), d the feature distance of
          `perceptual_distance` on a user-given feature network (``method.perceptual_net``)
  kl    = mean_b KL(q(z|x) || N(0, I)) / (pixels per image)
  loss  = nll + kl_weight * kl + lambda * f * g,  g = -mean D(x_hat)  (hinge generator loss)

with lambda the adaptive weight ``disc_weight * ||grad_L nll|| / (||grad_L g|| + 1e-4)`` at the
decoder's last convolution L (clipped to [0, 1e4], not differentiated) and f = 1 from step
``method.disc_start`` on, 0 before. Reconstruction and KL are both divided by the pixels of an
image, so ``kl_weight`` means what it means in the reference (per-image sums; SD used 1e-6).
The discriminator (a PatchGAN) minimises ``f * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
/ 2``. ``generate`` decodes standard-normal latents (what the KL term pulls the posterior
towards); reconstruction quality on a held-out split (PSNR, SSIM, rFID) is measured by
``--mode encode`` (``encode.eval_split``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.fields import FieldChecker
from diffjax.methods.base import Method, MethodContext, Network
from diffjax.methods.registry import register_method
from diffjax.models import vae_weights
from diffjax.models.autoencoder import (AutoencoderKL, PatchDiscriminator, kl_divergence,
                                       map_batches, sample_posterior)
from diffjax.models.registry import AUTOENCODERS
from diffjax.spec import DTYPES, OptimSpec, items
from diffjax.training.step import apply_gradients, value_and_grad


# --- the latent section -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LatentSpec:
  """The ``latent`` config section: which autoencoder, with which weights."""

  autoencoder: str
  kwargs: tuple[tuple[str, Any], ...]
  dtype: str = "float32"
  weights: str = ""
  cache_dir: str = ""
  sample_posterior: bool = True
  chunk: int = 0
  channel_stats: bool = False

  def build(self, **overrides) -> AutoencoderKL:
    kwargs = {**dict(self.kwargs), **overrides}
    kwargs["dtype"] = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
    return AUTOENCODERS.build(self.autoencoder, **kwargs)

  def load(self, module: AutoencoderKL) -> tuple[dict, dict[str, Any]]:
    """``(params, identity record)`` of ``latent.weights`` for ``module``."""
    return vae_weights.load_weights(self.weights, module, cache_dir=self.cache_dir or None)

  @classmethod
  def from_config(cls, lat, ck: FieldChecker) -> "LatentSpec | None":
    """None when the section is absent or names no autoencoder (pixel-space models)."""
    if lat is None or not lat.get("autoencoder", ""):
      return None
    ck.one_of(lat.get("dtype", "float32"), DTYPES, "latent.dtype")
    kwargs = items(lat.get("kwargs"))
    if ck.one_of(lat.autoencoder, AUTOENCODERS.names(), "latent.autoencoder"):
      kwargs = ck.keywords(AUTOENCODERS, lat.autoencoder, kwargs, "latent.kwargs")
      ck.require("dtype" not in dict(kwargs), "latent.kwargs", "set latent.dtype instead")
    chunk = lat.get("chunk", 0)
    ck.positive_int(chunk, "latent.chunk", minimum=0)
    weights = lat.get("weights", "")
    if weights:
      ck.require(weights.endswith((".safetensors", ".npz")), "latent.weights",
                 f"must be a diffusers .safetensors file or a diffjax .npz, got {weights!r}")
    return cls(lat.autoencoder, kwargs, lat.get("dtype", "float32"), weights,
               lat.get("cache_dir", ""), bool(lat.get("sample_posterior", True)),
               chunk if isinstance(chunk, int) else 0, bool(lat.get("channel_stats", False)))


def loaded_init(module, example, load: Callable[[], dict]) -> Callable:
  """An init function whose parameters are ``load()``'s arrays (carrying ``module``'s logical
  axis names, so they are created directly in their shardings). The arrays enter through a
  host callback when the state is created, never as constants of a compiled program."""

  @functools.lru_cache(maxsize=1)
  def boxed():
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), example)["params"]

  @functools.lru_cache(maxsize=1)
  def host_values():
    return jax.tree.map(lambda v: np.asarray(v, np.float32), load())

  def init(rng):
    del rng
    abstract = nn.meta.unbox(boxed())
    values = jax.pure_callback(host_values, abstract)
    is_box = lambda x: isinstance(x, nn.Partitioned)
    return {"params": jax.tree.map(lambda b, v: b.replace_boxed(v) if is_box(b) else v,
                                   boxed(), values, is_leaf=is_box)}

  return init


class LatentAutoencoder:
  """The frozen autoencoder of a latent diffusion model: the network (role ``autoencoder``),
  pixels <-> normalised latents, and the checks against a latent dataset.

  Attributes:
    module: the `AutoencoderKL` (with the latent dataset's per-channel statistics when
      ``latent.channel_stats``).
    pixel_shape: ``(H, W, C)`` of the images; latent_shape: ``(h, w, c)`` of the latents.
    pre_encoded: batches hold raw latents (data.source=latents) instead of images.
  """

  def __init__(self, spec: LatentSpec, module: AutoencoderKL, pixel_shape, *,
               pre_encoded: bool):
    self.spec, self.module, self.pixel_shape = spec, module, tuple(pixel_shape)
    self.latent_shape = module.latent_shape(pixel_shape)
    self.pre_encoded = pre_encoded
    example = jnp.zeros((1, *self.pixel_shape), jnp.float32)
    self.network = Network.frozen(module, loaded_init(module, example,
                                                      lambda: spec.load(module)[0]))

  @classmethod
  def from_config(cls, config, ck: FieldChecker, ctx: MethodContext
                  ) -> "LatentAutoencoder | None":
    """The ``latent`` section checked against the data: weights present, latent sizes, and
    for a pre-encoded dataset the autoencoder it was encoded with (its manifest's
    fingerprint) and its per-channel statistics."""
    spec = LatentSpec.from_config(config.get("latent"), ck)
    info = getattr(ctx.data, "latents", None)
    if ctx.data.source == "latents" and info is None:
      return None  # the latent dataset itself is the problem (reported under data.path)
    if spec is None:
      name = info.autoencoder_name if info is not None else ""
      ck.require(info is None, "latent.autoencoder",
                 f"data.source=latents holds latents of autoencoder {name!r}: name it "
                 f"(latent.autoencoder, latent.weights) so samples can be decoded")
      return None
    if not spec.weights and info is not None and info.autoencoder_weights:
      spec = dataclasses.replace(spec, weights=info.autoencoder_weights)  # the manifest's
    ck.require(bool(spec.weights), "latent.weights",
               "a frozen autoencoder needs weights: a diffusers .safetensors file or the "
               "autoencoder.npz that --mode encode writes beside its latents")
    if spec.weights and ctx.check_network:
      ck.require(os.path.isfile(spec.weights), "latent.weights", f"no such file {spec.weights!r}")
    overrides = {}
    if spec.channel_stats:
      if ck.require(info is not None, "latent.channel_stats",
                    "per-channel statistics come from a latent dataset (data.source=latents); "
                    "otherwise give latent.kwargs.latents_mean / latents_std"):
        overrides = {"latents_mean": info.channel_mean, "latents_std": info.channel_std}
    if ck.errors:
      return None
    module = ck.attempt("latent.autoencoder / latent.kwargs", lambda: spec.build(**overrides))
    if module is None:
      return None
    d = ctx.data
    pixel_shape = d.pixel_shape if hasattr(d, "pixel_shape") else d.image_shape
    if ck.attempt("latent.autoencoder", lambda: module.latent_shape(pixel_shape)) is None:
      return None
    if info is not None and ctx.check_network and os.path.isfile(spec.weights):
      expected = ck.attempt("latent.weights", lambda: vae_weights.weights_fingerprint(
          spec.weights, module, cache_dir=spec.cache_dir or None))
      ck.require(expected is None or expected == info.autoencoder, "latent.weights",
                 f"the latents in {info.path} were encoded by autoencoder "
                 f"{info.autoencoder_name!r} with fingerprint {info.autoencoder[:16]}..., but "
                 f"latent.autoencoder={spec.autoencoder!r} with weights {spec.weights} is "
                 f"{(expected or '?')[:16]}...: encode the data again (--mode encode) with this "
                 f"autoencoder or name the one it was encoded with")
      ck.require(tuple(info.latent_shape) == module.latent_shape(pixel_shape), "data.path",
                 f"latents of shape {tuple(info.latent_shape)}, the autoencoder makes "
                 f"{module.latent_shape(pixel_shape)}")
    return cls(spec, module, pixel_shape, pre_encoded=info is not None)

  # --- pixels <-> normalised latents --------------------------------------------------------
  def latents(self, params, batch_images, rng):
    """The batch's ``image`` entry as normalised latents for the denoiser (no gradient):
    raw latents of a latent dataset normalised, or images encoded (posterior sample or mean)
    then normalised."""
    if self.pre_encoded:
      z = batch_images
    else:
      mean, logvar = self.encode(params, batch_images)
      z = sample_posterior(mean, logvar, rng) if self.spec.sample_posterior else mean
    return jax.lax.stop_gradient(self.module.normalize_latents(z.astype(jnp.float32)))

  def encode(self, params, images):
    """``(mean, logvar)`` of images, ``latent.chunk`` images at a time."""
    fn = lambda x: self.module.apply({"params": params}, x, method="encode")
    return map_batches(fn, images, self.spec.chunk)

  def decode(self, variables, z_normalized):
    """Images float32 in [-1, 1] from normalised latents, ``latent.chunk`` at a time."""
    raw = self.module.denormalize_latents(z_normalized)
    fn = lambda z: self.module.apply(variables, z, method="decode")
    return jnp.clip(map_batches(fn, raw, self.spec.chunk), -1.0, 1.0)


# --- the autoencoder method -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AutoencoderLossSpec:
  """The ``method`` section of the autoencoder method (see the module docstring)."""

  rec_loss: str = "l1"
  kl_weight: float = 1e-6
  perceptual_weight: float = 0.0
  perceptual_net: str = ""
  disc_weight: float = 0.0
  disc_start: int = 0
  disc_channels: int = 64
  disc_layers: int = 3
  disc_lr: float = 0.0  # 0: optim.lr
  ema: bool = True

  @classmethod
  def from_config(cls, m, ck: FieldChecker) -> "AutoencoderLossSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    given = set(m.keys()) - {"name"}
    ck.require(not given - known, "method", f"unknown field(s) {sorted(given - known)} of "
               f"method autoencoder; allowed: {', '.join(sorted(known))}")
    values = {k: m[k] for k in given & known}
    spec = cls(**values)
    ck.one_of(spec.rec_loss, ("l1", "l2"), "method.rec_loss")
    for field in ("kl_weight", "perceptual_weight", "disc_weight", "disc_lr"):
      ck.require(getattr(spec, field) >= 0, f"method.{field}",
                 f"must be >= 0, got {getattr(spec, field)}")
    ck.positive_int(spec.disc_start, "method.disc_start", minimum=0)
    ck.positive_int(spec.disc_channels, "method.disc_channels")
    ck.positive_int(spec.disc_layers, "method.disc_layers")
    if spec.perceptual_weight > 0:
      ck.require(bool(spec.perceptual_net), "method.perceptual_net",
                 "perceptual_weight > 0 needs a feature-network file "
                 "(diffjax.models.vae_weights.save_feature_net)")
      if spec.perceptual_net:
        ck.require(os.path.isfile(spec.perceptual_net), "method.perceptual_net",
                   f"no such file {spec.perceptual_net!r}")
    return spec


def perceptual_distance(taps_x, taps_y):
  """Per-example distance of two lists of feature maps [B, h, w, c]: for each map, features
  unit-normalised over channels, squared differences summed over channels and averaged over
  positions (LPIPS, Zhang et al. 2018, with unit layer weights); summed over the maps. [B]."""
  total = 0.0
  for fx, fy in zip(taps_x, taps_y):
    nx = fx / (jnp.linalg.norm(fx, axis=-1, keepdims=True) + 1e-10)
    ny = fy / (jnp.linalg.norm(fy, axis=-1, keepdims=True) + 1e-10)
    total = total + jnp.mean(jnp.sum(jnp.square(nx - ny), axis=-1), axis=(1, 2))
  return total


def psnr(x, y, peak_to_peak: float = 2.0):
  """Per-example PSNR in dB of images in a range of width ``peak_to_peak`` ([-1, 1]: 2). [B]."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)).reshape(
      x.shape[0], -1), axis=-1)
  return 10.0 * jnp.log10(peak_to_peak ** 2 / jnp.maximum(mse, 1e-20))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-r ** 2 / (2 * sigma ** 2))
  return (g / g.sum()).astype(np.float32)


def ssim(x, y, data_range: float = 2.0, window: int = 11, sigma: float = 1.5):
  """Per-example SSIM (Wang et al. 2004) of images [B, H, W, C]: an 11x11 Gaussian window
  (sigma 1.5), K1 = 0.01, K2 = 0.03, statistics over the window without Bessel's correction,
  the map averaged over positions the window fits in and over channels (as
  ``skimage.metrics.structural_similarity(gaussian_weights=True)``). Images need sides of at
  least ``window``. [B]."""
  if min(x.shape[1:3]) < window:
    raise ValueError(f"SSIM's {window}x{window} window needs images at least that large, got "
                     f"{x.shape[1]}x{x.shape[2]}")
  g = jnp.asarray(_gaussian_window(window, sigma))
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)

  def blur(a):  # separable 'valid' filtering of [B, H, W, C]
    b, h, w, c = a.shape
    a = a.transpose(0, 3, 1, 2).reshape(b * c, h, w, 1)
    k_h = g.reshape(window, 1, 1, 1)
    k_w = g.reshape(1, window, 1, 1)
    dn = ("NHWC", "HWIO", "NHWC")
    hi = jax.lax.Precision.HIGHEST
    a = jax.lax.conv_general_dilated(a, k_h, (1, 1), "VALID", dimension_numbers=dn, precision=hi)
    a = jax.lax.conv_general_dilated(a, k_w, (1, 1), "VALID", dimension_numbers=dn, precision=hi)
    return a.reshape(b, c, *a.shape[1:3])

  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = blur(x), blur(y)
  sxx = blur(x * x) - mx * mx
  syy = blur(y * y) - my * my
  sxy = blur(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def hinge_d_loss(logits_real, logits_fake):
  """The discriminator's hinge loss, ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(grad_nll, grad_g, disc_weight: float):
  """``disc_weight * ||grad_nll|| / (||grad_g|| + 1e-4)`` clipped to [0, 1e4] (no gradient)."""
  w = optax.tree.norm(grad_nll) / (optax.tree.norm(grad_g) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, 1e4) * disc_weight)


def _with_head(params, kernel):
  """``params`` with the decoder's last convolution kernel replaced."""
  conv_out = {**params["decoder"]["conv_out"],
              "conv": {**params["decoder"]["conv_out"]["conv"], "kernel": kernel}}
  return {**params, "decoder": {**params["decoder"], "conv_out": conv_out}}


@register_method("autoencoder")
class AutoencoderMethod(Method):
  """Trains `AutoencoderKL` (``latent`` section) with the losses of the module docstring."""

  def __init__(self, latent: LatentSpec, loss: AutoencoderLossSpec, optim: OptimSpec,
               optim_d: OptimSpec, image_shape, *, grad_accum: int = 1):
    self.latent, self.loss_spec, self.image_shape = latent, loss, tuple(image_shape)
    self.grad_accum = grad_accum
    self.module = latent.build()
    self.latent_shape = self.module.latent_shape(self.image_shape)
    example = jnp.zeros((1, *self.image_shape), jnp.float32)
    if latent.weights:  # fine-tuning an existing autoencoder
      init_ae = loaded_init(self.module, example, lambda: latent.load(self.module)[0])
    else:
      init_ae = lambda rng: self.module.init(rng, example)
    networks = {"autoencoder": Network.trained(self.module, init_ae, optim, ema=loss.ema)}
    self.discriminator = self.perceptual = None
    if loss.disc_weight > 0:
      groups = math.gcd(32, loss.disc_channels)
      self.discriminator = PatchDiscriminator(loss.disc_channels, loss.disc_layers, groups)
      networks["discriminator"] = Network.trained(
          self.discriminator, lambda rng: self.discriminator.init(rng, example), optim_d,
          ema=False)
    if loss.perceptual_weight > 0:
      module, params, self.perceptual_info = vae_weights.load_feature_net(loss.perceptual_net)
      self.perceptual = module
      networks["perceptual"] = Network.frozen(module, loaded_init(module, example,
                                                                  lambda: params))
    self.networks = networks

  @classmethod
  def from_config(cls, config, ck: FieldChecker, ctx: MethodContext
                  ) -> "AutoencoderMethod | None":
    latent = LatentSpec.from_config(config.get("latent"), ck)
    ck.require(latent is not None, "latent.autoencoder",
               f"the autoencoder method trains the network latent.autoencoder names; "
               f"allowed: {', '.join(AUTOENCODERS.names())}")
    ck.require(ctx.data.source != "latents", "data.source",
               "an autoencoder trains on images, not on latents")
    loss = AutoencoderLossSpec.from_config(config.method, ck)
    optim = OptimSpec.from_config(config.optim, ck, total_steps=ctx.train.num_steps)
    optim_d = dataclasses.replace(optim, lr=loss.disc_lr or optim.lr)
    if loss.disc_weight > 0:
      ck.require(ctx.train.grad_accum == 1, "train.grad_accum",
                 "the discriminator's update reads the step's reconstructions: use "
                 "train.grad_accum=1 with method.disc_weight > 0")
    if latent is not None and latent.weights and ctx.check_network:
      ck.require(os.path.isfile(latent.weights), "latent.weights",
                 f"no such file {latent.weights!r}")
    if ck.errors:
      return None
    return ck.attempt("latent / method", lambda: cls(
        latent, loss, optim, optim_d, ctx.data.image_shape, grad_accum=ctx.train.grad_accum))

  # --- pieces ---------------------------------------------------------------------------------
  def _perceptual(self, params, x, y):
    if self.perceptual is None:
      return jnp.zeros((x.shape[0],), jnp.float32)
    fx = self.perceptual.apply({"params": params}, x)
    fy = self.perceptual.apply({"params": params}, y)
    return perceptual_distance(jax.lax.stop_gradient(fx), fy)

  def _rec(self, x, y):
    d = x - y
    return jnp.mean(jnp.abs(d)) if self.loss_spec.rec_loss == "l1" else jnp.mean(jnp.square(d))

  def disc_factor(self, step):
    """1 from step ``method.disc_start`` on, 0 before (0 without a discriminator)."""
    if self.discriminator is None:
      return jnp.zeros((), jnp.float32)
    return (step >= self.loss_spec.disc_start).astype(jnp.float32)

  def _loss(self, params, batch, eps, *, fixed, factor):
    s = self.loss_spec
    x = batch["image"]
    apply = functools.partial(self.module.apply, {"params": params})
    mean, logvar = apply(x, method="encode")
    z = mean + jnp.exp(0.5 * logvar) * eps
    h = apply(z, method="decode_features")
    x_hat = apply(h, method="decode_head")
    pixels = math.prod(x.shape[1:])
    perceptual = fixed.get("perceptual")
    nll_of = lambda y: self._rec(x, y) + s.perceptual_weight * jnp.mean(
        self._perceptual(perceptual, x, y))
    nll = nll_of(x_hat)
    kl = jnp.mean(kl_divergence(mean, logvar)) / pixels
    loss = nll + s.kl_weight * kl
    metrics = {"rec": self._rec(x, x_hat), "kl": kl, "mse": jnp.mean(jnp.square(x - x_hat)),
               "psnr": jnp.mean(psnr(x, x_hat))}
    if self.perceptual is not None:
      metrics["perceptual"] = jnp.mean(self._perceptual(perceptual, x, x_hat))
    if self.discriminator is not None:
      d_params = fixed["discriminator"]
      g_of = lambda y: -jnp.mean(self.discriminator.apply({"params": d_params}, y))
      g = g_of(x_hat)
      kernel = params["decoder"]["conv_out"]["conv"]["kernel"]
      h_fixed = jax.lax.stop_gradient(h)
      head = lambda k: self.module.apply({"params": _with_head(params, k)}, h_fixed,
                                         method="decode_head")
      grad_nll = jax.grad(lambda k: nll_of(head(k)))(kernel)
      grad_g = jax.grad(lambda k: g_of(head(k)))(kernel)
      d_weight = adaptive_weight(grad_nll, grad_g, s.disc_weight)
      loss = loss + d_weight * factor * g
      metrics.update(g_loss=g, d_weight=d_weight)
    return loss, (metrics, x_hat)

  # --- Method interface -----------------------------------------------------------------------
  def update(self, state, batch, rng):
    x = batch["image"]
    eps = jax.random.normal(rng, (x.shape[0], *self.latent_shape), jnp.float32)
    factor = self.disc_factor(state.step)
    fixed = {r: state.nets[r].params for r in self.networks if r != "autoencoder"}
    net = state.nets["autoencoder"]
    (loss, (metrics, x_hat)), grads = value_and_grad(
        functools.partial(self._loss, fixed=fixed, factor=factor), net.params, batch, eps,
        grad_accum=self.grad_accum)
    state = state.with_net("autoencoder", apply_gradients(
        net, self.networks["autoencoder"].optimizer, grads))
    metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
    if self.discriminator is not None:
      fake = jax.lax.stop_gradient(x_hat)

      def d_loss(p, batch, _):
        real_logits = self.discriminator.apply({"params": p}, batch["image"])
        fake_logits = self.discriminator.apply({"params": p}, fake)
        return factor * hinge_d_loss(real_logits, fake_logits), (jnp.mean(real_logits),
                                                                 jnp.mean(fake_logits))

      d_net = state.nets["discriminator"]
      (dl, (real_mean, fake_mean)), d_grads = value_and_grad(d_loss, d_net.params, batch)
      state = state.with_net("discriminator", apply_gradients(
          d_net, self.networks["discriminator"].optimizer, d_grads))
      metrics.update(d_loss=dl, logits_real=real_mean, logits_fake=fake_mean,
                     disc_factor=factor, grad_norm_disc=optax.tree.norm(d_grads))
    return state, metrics

  def generate(self, variables, rng, labels):
    z = jax.random.normal(rng, (labels.shape[0], *self.latent_shape), jnp.float32)
    return jnp.clip(self.module.apply(variables["autoencoder"], z, method="decode"), -1.0, 1.0)

  def sampling_info(self) -> dict[str, Any]:
    return {"name": "prior", "latent_shape": list(self.latent_shape)}

  def sampling_tag(self) -> str:
    return "prior"

  # --- used by --mode encode ------------------------------------------------------------------
  def reconstruct(self, variables, images):
    """Images decoded from their posterior means."""
    return jnp.clip(self.module.apply(variables, images), -1.0, 1.0)
