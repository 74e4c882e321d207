"""Generative adversarial networks as a method: roles ``generator`` (with EMA, used for
sampling and evaluation) and ``discriminator``, each with its own optimiser.

Config sections read: ``generator`` and ``discriminator`` (a network by variant name from
`diffjax.models`, with ``dtype`` and ``kwargs``; ``generator.conditional`` conditions both on
the data's labels), ``optim`` (the generator's optimiser) and ``optim_d`` (the
discriminator's: two-time-scale learning rates, Heusel et al. 2017), and ``gan``:

  loss              ``non_saturating`` (Goodfellow et al. 2014), ``hinge`` (Lim & Ye 2017;
                    Miyato et al. 2018) or ``wgan_gp`` (Gulrajani et al. 2017)
  n_critic          discriminator updates per generator update; the step's batch of reals is
                    split into that many parts, one per discriminator update
  gp_weight         lambda of the WGAN-GP gradient penalty (``wgan_gp`` only)
  drift             ProGAN's drift term ``eps * D(x)^2`` on reals
  r1_gamma, r2_gamma, d_reg_every
                    R1 / R2 (Mescheder et al. 2018): ``gamma / 2 * E ||grad_x D(x)||^2`` on
                    reals / fakes, lazily every ``d_reg_every`` discriminator updates and then
                    scaled by ``d_reg_every`` (StyleGAN2's lazy regularisation)
  pl_weight, g_reg_every, pl_decay, pl_batch_shrink
                    StyleGAN2's path-length regularisation, lazily every ``g_reg_every``
                    generator updates scaled by it, on ``batch / pl_batch_shrink`` latents
  style_mixing      StyleGAN2's mixing probability (two latents, a random crossover layer)
  ortho_weight      BigGAN's orthogonal regularisation of the generator's weights
  augment, augment_policy
                    ``diffaugment``: DiffAugment (Zhao et al. 2020), the same differentiable
                    augmentations of reals and fakes before every discriminator call
                    (``color``, ``translation``, ``cutout``); "" for none
  truncation_psi    StyleGAN2's truncation at sampling (1: none)
  truncation        BigGAN's truncated-normal threshold at sampling (0: none)
  growth_stable_steps, growth_fade_steps
                    ProGAN's schedule (steps per stable phase and per fade-in)

One update (`GanMethod.update`, pure and jitted inside the shared train step) is
``n_critic`` discriminator updates (a ``lax.scan``) then one generator update. Lazy
regularisers switch on ``state.step`` with ``lax.cond``, so only their steps pay for the
double back-propagation, and a resumed run repeats them exactly. Non-parameter state lives in
the networks' collections: batch statistics and spectral-norm vectors (updated by the
network's own update only), StyleGAN2's ``w_avg``, the path-length mean (``gan_stats``) and
ProGAN's current ``(level, alpha)`` (``progress``, read by ``generate``).

Metrics: ``loss`` (``d_loss + g_loss``, for the shared non-finite policy), ``d_loss``,
``g_loss``, ``d_real`` / ``d_fake`` (mean logits), the regularisers (0 on steps where a lazy
one is not computed) and both gradient norms.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffjax import models
from diffjax.fields import FieldChecker
from diffjax.methods.base import Method, MethodContext, Network
from diffjax.methods.registry import register_method
from diffjax.models.gan.biggan import orthogonal_penalty, truncated_normal
from diffjax.models.gan.progan import fade_reals, growth_at
from diffjax.spec import DTYPES, OptimSpec, items
from diffjax.training.step import apply_gradients, split_micro_batches

LOSSES = ("non_saturating", "hinge", "wgan_gp")
AUGMENTS = ("", "diffaugment")
AUGMENT_POLICIES = ("color", "translation", "cutout")
STATS = "gan_stats"  # the generator's path-length mean
PROGRESS = "progress"  # ProGAN's (level, alpha), for generate


# --- losses (closed forms; tested against their formulas) --------------------------------------
def d_adversarial(loss: str, real_logits, fake_logits):
  """The discriminator's adversarial loss, mean over the batch."""
  if loss == "non_saturating":
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  if loss == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  return jnp.mean(fake_logits) - jnp.mean(real_logits)  # wgan(-gp): the critic's loss


def g_adversarial(loss: str, fake_logits):
  """The generator's adversarial loss: ``-log sigmoid(D(G(z)))`` (non-saturating) or
  ``-D(G(z))`` (hinge and WGAN)."""
  if loss == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  return -jnp.mean(fake_logits)


def gradient_penalty_r1(d_fn, x):
  """``E ||grad_x D(x)||^2`` (R1 on reals, R2 on fakes; the caller scales by gamma / 2)."""
  grads = jax.grad(lambda x_: jnp.sum(d_fn(x_)))(x)
  return jnp.mean(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1))


def gradient_penalty_wgan(d_fn, real, fake, rng):
  """WGAN-GP: ``E (||grad D(x_hat)|| - 1)^2`` at random points between reals and fakes."""
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
  x_hat = eps * real + (1.0 - eps) * fake
  grads = jax.grad(lambda x_: jnp.sum(d_fn(x_)))(x_hat)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))


# --- DiffAugment (Zhao et al. 2020) -----------------------------------------------------------
def diff_augment(x, rng, policy: tuple[str, ...]):
  """DiffAugment's differentiable augmentations of ``x [B, H, W, C]`` in [-1, 1], each drawn
  per image: ``color`` (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]),
  ``translation`` (integer shifts up to 1/8 of the size, zero fill) and ``cutout`` (a zeroed
  square of half the size at a random centre)."""
  b, h, w, c = x.shape
  keys = jax.random.split(rng, 6)
  if "color" in policy:
    x = x + (jax.random.uniform(keys[0], (b, 1, 1, 1)) - 0.5)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * (jax.random.uniform(keys[1], (b, 1, 1, 1)) * 2.0) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * (jax.random.uniform(keys[2], (b, 1, 1, 1)) + 0.5) + mean
  rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  if "translation" in policy:
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    ty = jax.random.randint(keys[3], (b, 1, 1), -sh, sh + 1)
    tx = jax.random.randint(keys[4], (b, 1, 1), -sw, sw + 1)
    src_r, src_c = rows - ty, cols - tx  # output (r, c) reads input (r - ty, c - tx)
    valid = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
    gathered = jax.vmap(lambda img, r, cc: img[r, cc])(
        x, jnp.clip(src_r, 0, h - 1), jnp.clip(src_c, 0, w - 1))
    x = jnp.where(valid[..., None], gathered, 0.0)
  if "cutout" in policy:
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    ko, kc = jax.random.split(keys[5])
    oy = jax.random.randint(ko, (b, 1, 1), 0, h + (1 - ch % 2))
    ox = jax.random.randint(kc, (b, 1, 1), 0, w + (1 - cw % 2))
    inside = ((rows >= oy - ch // 2) & (rows < oy - ch // 2 + ch)
              & (cols >= ox - cw // 2) & (cols < ox - cw // 2 + cw))
    x = jnp.where(inside[..., None], 0.0, x)
  return x


# --- specs -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NetSpec:
  """A network section (``generator`` / ``discriminator``): variant name, dtype, kwargs."""

  name: str
  dtype: str
  kwargs: tuple[tuple[str, Any], ...]

  def build(self, **data_fields):
    """The module, with the data's fields (resolution, channels, classes) where it has them."""
    accepted = models.MODELS.get(self.name).keywords
    kwargs = {k: v for k, v in data_fields.items() if k in accepted}
    kwargs.update(self.kwargs)
    kwargs["dtype"] = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
    return models.get_model(self.name, **kwargs)

  @classmethod
  def from_config(cls, m, ck: FieldChecker, section: str) -> "NetSpec":
    ck.one_of(m.get("dtype", "float32"), DTYPES, f"{section}.dtype")
    kwargs = items(m.get("kwargs"))
    if ck.one_of(m.get("name", ""), models.variant_names(), f"{section}.name"):
      kwargs = ck.keywords(models.MODELS, m.name, kwargs, f"{section}.kwargs")
      data_fields = {"resolution", "channels", "num_classes"} & {k for k, _ in kwargs}
      ck.require(not data_fields, f"{section}.kwargs",
                 f"{sorted(data_fields)} come from the data section (data.image_size, "
                 f"data.channels, data.num_classes), not from the network's kwargs")
    return cls(m.get("name", ""), m.get("dtype", "float32"), kwargs)


@dataclasses.dataclass(frozen=True)
class GanSpec:
  """The ``gan`` config section (see the module docstring)."""

  loss: str = "non_saturating"
  n_critic: int = 1
  gp_weight: float = 10.0
  drift: float = 0.0
  r1_gamma: float = 0.0
  r2_gamma: float = 0.0
  d_reg_every: int = 16
  pl_weight: float = 0.0
  g_reg_every: int = 4
  pl_decay: float = 0.01
  pl_batch_shrink: int = 2
  style_mixing: float = 0.0
  ortho_weight: float = 0.0
  augment: str = ""
  augment_policy: tuple[str, ...] = AUGMENT_POLICIES
  truncation_psi: float = 1.0
  truncation: float = 0.0
  growth_stable_steps: int = 0
  growth_fade_steps: int = 0

  @classmethod
  def from_config(cls, g, ck: FieldChecker) -> "GanSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    given = set(g.keys()) if g is not None else set()
    ck.require(not given - known, "gan", f"unknown field(s) {sorted(given - known)}; allowed: "
               f"{', '.join(sorted(known))}")
    values = {k: g[k] for k in given & known}
    spec = cls(**{k: v for k, v in values.items() if k != "augment_policy"})
    ck.one_of(spec.loss, LOSSES, "gan.loss")
    ck.one_of(spec.augment, AUGMENTS, "gan.augment")
    for field in ("n_critic", "d_reg_every", "g_reg_every", "pl_batch_shrink"):
      ck.positive_int(getattr(spec, field), f"gan.{field}")
    for field in ("growth_stable_steps", "growth_fade_steps"):
      ck.positive_int(getattr(spec, field), f"gan.{field}", minimum=0)
    for field in ("gp_weight", "drift", "r1_gamma", "r2_gamma", "pl_weight", "ortho_weight",
                  "truncation"):
      ck.require(getattr(spec, field) >= 0, f"gan.{field}",
                 f"must be >= 0, got {getattr(spec, field)}")
    ck.require(0 <= spec.style_mixing <= 1, "gan.style_mixing",
               f"must be a probability in [0, 1], got {spec.style_mixing}")
    ck.require(0 < spec.pl_decay <= 1, "gan.pl_decay", f"must be in (0, 1], got {spec.pl_decay}")
    ck.require(0 < spec.truncation_psi <= 1, "gan.truncation_psi",
               f"must be in (0, 1], got {spec.truncation_psi}")
    policy = values.get("augment_policy", ",".join(AUGMENT_POLICIES))
    policy = tuple(p.strip() for p in (policy.split(",") if isinstance(policy, str)
                                       else policy) if p.strip())
    bad = [p for p in policy if p not in AUGMENT_POLICIES]
    ck.require(not bad, "gan.augment_policy",
               f"unknown augmentation(s) {bad}; allowed: {', '.join(AUGMENT_POLICIES)} "
               f"(comma-separated)")
    return dataclasses.replace(spec, augment_policy=policy)


def _apply(module, params, collections, *args, mutable: bool, **kwargs):
  """``(output, collections)``: ``module`` applied to ``params`` plus its other collections;
  with ``mutable`` the collections it updates are returned updated."""
  variables = {"params": params, **(collections or {})}
  own = [c for c in (collections or {}) if c not in (STATS, PROGRESS)]
  if mutable and own:
    out, updated = module.apply(variables, *args, mutable=own, **kwargs)
    return out, {**collections, **updated}
  return module.apply(variables, *args, **kwargs), collections


@register_method("gan")
class GanMethod(Method):
  """A generator and a discriminator trained adversarially (see the module docstring)."""

  def __init__(self, generator: NetSpec, discriminator: NetSpec, gan: GanSpec,
               optim_g: OptimSpec, optim_d: OptimSpec, data, *, conditional: bool):
    self.spec, self.conditional = gan, conditional
    self.num_classes, self.image_shape = data.num_classes, data.image_shape
    self.batch_size = data.batch_size
    fields = dict(resolution=data.image_size, channels=data.channels,
                  num_classes=data.num_classes if conditional else 0)
    self.generator, self.discriminator = generator.build(**fields), discriminator.build(**fields)
    self.g_spec, self.d_spec = generator, discriminator
    self.z_dim = self.generator.z_dim
    self.style_based = hasattr(self.generator, "synthesis")
    self.progressive = bool(getattr(self.generator, "progressive", False))
    if self.progressive and not getattr(self.discriminator, "progressive", False):
      raise ValueError("a progressive generator needs a progressive discriminator (progan-*-d)")
    self.networks = {
        "generator": Network.trained(self.generator, self._init_g, optim_g, ema=True),
        "discriminator": Network.trained(self.discriminator, self._init_d, optim_d, ema=False)}

  @classmethod
  def from_config(cls, config, ck: FieldChecker, ctx: MethodContext) -> "GanMethod | None":
    for section in ("generator", "discriminator", "gan", "optim_d"):
      if section not in config:
        ck.require(False, section, f"the gan method needs a '{section}' section (see "
                   f"configs/gan_base.py)")
    if ck.errors:
      return None
    g = NetSpec.from_config(config.generator, ck, "generator")
    d = NetSpec.from_config(config.discriminator, ck, "discriminator")
    gan = GanSpec.from_config(config.gan, ck)
    optim_g = OptimSpec.from_config(config.optim, ck, total_steps=ctx.train.num_steps)
    optim_d = OptimSpec.from_config(config.optim_d, ck, total_steps=ctx.train.num_steps,
                                    section="optim_d")
    conditional = bool(config.generator.get("conditional", False))
    if conditional:
      ck.require(ctx.data.num_classes > 0, "generator.conditional",
                 "a conditional GAN needs data.num_classes > 0")
    ck.require(ctx.train.grad_accum == 1, "train.grad_accum",
               "the gan method does not accumulate gradients (batch statistics and the "
               "discriminator's updates see whole batches); use 1")
    if isinstance(gan.n_critic, int) and gan.n_critic > 0:
      ck.require(ctx.data.batch_size % gan.n_critic == 0, "gan.n_critic",
                 f"data.batch_size {ctx.data.batch_size} does not split into {gan.n_critic} "
                 f"discriminator updates")
    if gan.loss == "wgan_gp" and config.faults.get("loss_spike_factor", 0.0) > 0:
      ck.require(False, "faults.loss_spike_factor",
                 "the WGAN critic's loss is signed, so a spike threshold relative to its "
                 "running mean is meaningless; use 0 (off) with gan.loss=wgan_gp")
    if ck.errors:
      return None
    method = ck.attempt("generator.name / discriminator.name", lambda: cls(
        g, d, gan, optim_g, optim_d, ctx.data, conditional=conditional))
    if method is None:
      return None
    if gan.pl_weight > 0 or gan.style_mixing > 0 or gan.truncation_psi != 1.0:
      ck.require(method.style_based, "gan.pl_weight / style_mixing / truncation_psi",
                 f"path-length regularisation, style mixing and truncation_psi need a "
                 f"style-based generator (stylegan2-*), not {g.name!r}")
    group = getattr(method.discriminator, "mbstd_group", 0)
    per_update = ctx.data.batch_size // gan.n_critic
    if group:
      ck.require(per_update % min(group, per_update) == 0, "discriminator.kwargs.mbstd_group",
                 f"the minibatch-std group {group} does not divide the {per_update} images of "
                 f"each discriminator update (data.batch_size / gan.n_critic)")
    if method.progressive:
      ck.require(gan.growth_stable_steps > 0, "gan.growth_stable_steps",
                 "a progressive (ProGAN) generator needs its growth schedule: "
                 "growth_stable_steps > 0")
    if ctx.check_network and not ck.errors:
      ck.attempt("generator / discriminator", method._check_networks)
    return method

  # --- networks -----------------------------------------------------------------------------
  def _growth(self, step):
    if not self.progressive:
      return None
    s = self.spec
    return growth_at(step, self.generator.num_levels, s.growth_stable_steps, s.growth_fade_steps)

  def _net_kwargs(self, growth):
    return {} if growth is None else {"growth": growth}

  def _init_g(self, rng):
    z = jnp.zeros((2, self.z_dim), jnp.float32)
    y = jnp.zeros((2,), jnp.int32) if self.conditional else None
    growth = self._growth(0)
    variables = dict(self.generator.init({"params": rng}, z, y, train=False,
                                         **self._net_kwargs(growth)))
    if self.spec.pl_weight > 0:
      variables[STATS] = {"pl_mean": jnp.zeros((), jnp.float32)}
    if self.progressive:
      variables[PROGRESS] = {"level": growth[0], "alpha": growth[1]}
    return variables

  def _init_d(self, rng):
    x = jnp.zeros((4, *self.image_shape), jnp.float32)
    y = jnp.zeros((4,), jnp.int32) if self.conditional else None
    return self.discriminator.init({"params": rng}, x, y, train=False,
                                   **self._net_kwargs(self._growth(0)))

  def _check_networks(self):
    g_vars = jax.eval_shape(self._init_g, jax.random.PRNGKey(0))
    d_vars = jax.eval_shape(self._init_d, jax.random.PRNGKey(0))
    z = jax.ShapeDtypeStruct((4, self.z_dim), jnp.float32)
    y = jax.ShapeDtypeStruct((4,), jnp.int32) if self.conditional else None
    growth = self._growth(0)
    out = jax.eval_shape(lambda v, z_, y_: self.generator.apply(
        v, z_, y_, **self._net_kwargs(growth)), g_vars, z, y)
    if tuple(out.shape[1:]) != self.image_shape:
      raise ValueError(f"the generator makes {tuple(out.shape[1:])} images, the data are "
                       f"{self.image_shape}")
    jax.eval_shape(lambda v, x_, y_: self.discriminator.apply(
        v, x_, y_, **self._net_kwargs(growth)), d_vars, out, y)

  # --- the pieces of an update --------------------------------------------------------------
  def _labels(self, rng, n):
    if not self.conditional:
      return None
    return jax.random.randint(rng, (n,), 0, self.num_classes, jnp.int32)

  def _ws(self, g_params, g_cols, z, labels, rng, *, train: bool, mutable: bool):
    """``(ws [B, num_ws, w_dim], collections)`` of a style-based generator, with style mixing
    (a second latent from a random crossover layer on, with probability ``style_mixing``)."""
    g = self.generator
    w, cols = _apply(g, g_params, g_cols, z, labels, train=train, mutable=mutable,
                     method="mapping")
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], g.num_ws, w.shape[-1]))
    if self.spec.style_mixing > 0:
      k_mix, k_cut, k_p = jax.random.split(rng, 3)
      z2 = jax.random.normal(k_mix, z.shape, z.dtype)
      w2, _ = _apply(g, g_params, cols, z2, labels, train=False, mutable=False,
                     method="mapping")
      cutoff = jax.random.randint(k_cut, (), 1, g.num_ws)
      cutoff = jnp.where(jax.random.uniform(k_p) < self.spec.style_mixing, cutoff, g.num_ws)
      ws = jnp.where(jnp.arange(g.num_ws)[None, :, None] < cutoff, ws, w2[:, None])
    return ws, cols

  def _fake(self, g_params, g_cols, z, labels, rng, *, growth, train: bool, mutable: bool):
    """``(images, updated collections)`` of the generator in training."""
    g = self.generator
    if not self.style_based:
      return _apply(g, g_params, g_cols, z, labels, train=train, mutable=mutable,
                    **self._net_kwargs(growth))
    k_ws, k_noise = jax.random.split(rng)
    ws, cols = self._ws(g_params, g_cols, z, labels, k_ws, train=train, mutable=mutable)
    img, _ = _apply(g, g_params, cols, ws, k_noise, mutable=False, method="synthesis")
    return img, cols

  def _d(self, d_params, d_cols, x, labels, rng, *, growth, train: bool, mutable: bool):
    """``(logits, collections)`` of the discriminator on ``x`` after augmentation."""
    if self.spec.augment:
      x = diff_augment(x, rng, self.spec.augment_policy)
    return _apply(self.discriminator, d_params, d_cols, x, labels, train=train,
                  mutable=mutable, **self._net_kwargs(growth))

  def _d_update(self, state_d, g_net, reals, labels, rng, d_step, growth):
    """One discriminator update on one part of the batch; ``d_step`` counts discriminator
    updates since the start (lazy R1/R2)."""
    s = self.spec
    net_d = state_d
    k_z, k_y, k_gen, k_aug_r, k_aug_f, k_gp, k_aug_reg = jax.random.split(rng, 7)
    b = reals.shape[0]
    z = jax.random.normal(k_z, (b, self.z_dim), jnp.float32)
    fake_labels = self._labels(k_y, b)
    fakes, _ = self._fake(g_net.params, g_net.collections, z, fake_labels, k_gen,
                          growth=growth, train=True, mutable=True)
    fakes = jax.lax.stop_gradient(fakes)
    if self.progressive:
      reals = fade_reals(reals, growth, self.image_shape[0])
    reg_now = (d_step % s.d_reg_every) == 0

    def loss_fn(params):
      cols = net_d.collections
      real_logits, cols = self._d(params, cols, reals, labels, k_aug_r, growth=growth,
                                  train=True, mutable=True)
      fake_logits, cols = self._d(params, cols, fakes, fake_labels, k_aug_f, growth=growth,
                                  train=True, mutable=True)
      adv = d_adversarial(s.loss, real_logits, fake_logits)
      terms = {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
      total = adv
      # Penalties see the discriminator as a function of its input, with the statistics of
      # this update (no further state change).
      d_of = lambda x, y, key: self._d(params, cols, x, y, key, growth=growth, train=False,
                                       mutable=False)[0]
      if s.loss == "wgan_gp" and s.gp_weight > 0:
        gp = gradient_penalty_wgan(lambda x: d_of(x, labels, k_aug_reg), reals, fakes, k_gp)
        terms["gp"] = gp
        total = total + s.gp_weight * gp
      if s.drift > 0:
        total = total + s.drift * jnp.mean(jnp.square(real_logits))
      for name, gamma, x, y in (("r1", s.r1_gamma, reals, labels),
                                ("r2", s.r2_gamma, fakes, fake_labels)):
        if gamma > 0:
          pen = jax.lax.cond(reg_now, lambda: gradient_penalty_r1(
              lambda x_: d_of(x_, y, k_aug_reg), x), lambda: jnp.zeros((), jnp.float32))
          terms[name] = pen
          total = total + (s.d_reg_every * gamma / 2) * pen
      terms["d_loss"] = adv
      return total, (terms, cols)

    (_, (terms, cols)), grads = jax.value_and_grad(loss_fn, has_aux=True)(net_d.params)
    net_d = apply_gradients(net_d, self.networks["discriminator"].optimizer, grads)
    net_d = net_d.replace(collections=cols)
    terms["grad_norm_d"] = optax.tree.norm(grads)
    return net_d, terms

  def _path_length(self, g_params, g_cols, b, rng, pl_mean):
    """StyleGAN2's path-length penalty and the updated running mean of path lengths."""
    g = self.generator
    k_z, k_y, k_gen, k_noise = jax.random.split(rng, 4)
    n = max(1, b // self.spec.pl_batch_shrink)
    z = jax.random.normal(k_z, (n, self.z_dim), jnp.float32)
    ws, _ = self._ws(g_params, g_cols, z, self._labels(k_y, n), k_gen, train=False,
                     mutable=False)
    h, w = self.image_shape[:2]
    noise = jax.random.normal(k_noise, (n, *self.image_shape)) / math.sqrt(h * w)

    def projected(ws_):
      img, _ = _apply(g, g_params, g_cols, ws_, k_gen, mutable=False, method="synthesis")
      return jnp.sum(img * noise)

    grads = jax.grad(projected)(ws)
    lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=-1), axis=-1))
    new_mean = jax.lax.stop_gradient(pl_mean + self.spec.pl_decay * (jnp.mean(lengths) - pl_mean))
    return jnp.mean(jnp.square(lengths - new_mean)), new_mean

  def _g_update(self, g_net, d_net, b, rng, step, growth):
    s = self.spec
    k_z, k_y, k_gen, k_aug, k_pl = jax.random.split(rng, 5)
    z = jax.random.normal(k_z, (b, self.z_dim), jnp.float32)
    labels = self._labels(k_y, b)
    stats = (g_net.collections or {}).get(STATS)
    reg_now = (step % s.g_reg_every) == 0

    def loss_fn(params):
      fakes, cols = self._fake(params, g_net.collections, z, labels, k_gen, growth=growth,
                                  train=True, mutable=True)
      logits, _ = self._d(d_net.params, d_net.collections, fakes, labels, k_aug, growth=growth,
                          train=True, mutable=True)  # batch statistics; updates discarded
      adv = g_adversarial(s.loss, logits)
      total, terms = adv, {"g_loss": adv}
      if s.pl_weight > 0:
        pen, new_mean = jax.lax.cond(
            reg_now, lambda: self._path_length(params, g_net.collections, b, k_pl,
                                               stats["pl_mean"]),
            lambda: (jnp.zeros((), jnp.float32), stats["pl_mean"]))
        terms["pl"] = pen
        total = total + s.g_reg_every * s.pl_weight * pen
        cols = {**cols, STATS: {"pl_mean": new_mean}}
      if s.ortho_weight > 0:
        ortho = orthogonal_penalty(params)
        terms["ortho"] = ortho
        total = total + s.ortho_weight * ortho
      return total, (terms, cols)

    (_, (terms, cols)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_net.params)
    g_net = apply_gradients(g_net, self.networks["generator"].optimizer, grads)
    if self.progressive:
      cols = {**cols, PROGRESS: {"level": growth[0], "alpha": growth[1]}}
    g_net = g_net.replace(collections=cols)
    terms["grad_norm_g"] = optax.tree.norm(grads)
    return g_net, terms

  # --- the update ---------------------------------------------------------------------------
  def update(self, state, batch, rng):
    s = self.spec
    growth = self._growth(state.step)
    g_net, d_net = state.nets["generator"], state.nets["discriminator"]
    rng_d, rng_g = jax.random.split(rng)
    labels = batch["label"] if self.conditional else None
    if s.n_critic == 1:
      d_net, d_terms = self._d_update(d_net, g_net, batch["image"], labels, rng_d, state.step,
                                      growth)
    else:
      parts = split_micro_batches({"image": batch["image"], "label": batch["label"]},
                                  s.n_critic)

      def body(net, xs):
        part, i = xs
        return self._d_update(net, g_net, part["image"],
                              part["label"] if self.conditional else None,
                              jax.random.fold_in(rng_d, i), state.step * s.n_critic + i, growth)

      # Unrolled: XLA:CPU runs convolutions inside a while loop far slower (measured 20x at
      # -O0 on the tiny BigGAN step); n_critic is small.
      d_net, d_terms = jax.lax.scan(body, d_net, (parts, jnp.arange(s.n_critic)), unroll=True)
      d_terms = jax.tree.map(jnp.mean, d_terms)
    b = batch["image"].shape[0] // s.n_critic
    g_net, g_terms = self._g_update(g_net, d_net, b, rng_g, state.step, growth)
    state = state.with_net("discriminator", d_net).with_net("generator", g_net)
    metrics = {**d_terms, **g_terms}
    metrics["loss"] = metrics["d_loss"] + metrics["g_loss"]
    return state, metrics

  # --- sampling -----------------------------------------------------------------------------
  def latents(self, rng, n: int):
    """Sampling latents: standard normal, truncated at ``gan.truncation`` when set."""
    return truncated_normal(rng, (n, self.z_dim), self.spec.truncation)

  def generate(self, variables, rng, labels):
    g_vars = dict(variables["generator"])
    k_z, k_noise = jax.random.split(rng)
    z = self.latents(k_z, labels.shape[0])
    y = labels if self.conditional else None
    progress = g_vars.pop(PROGRESS, None)
    g_vars.pop(STATS, None)
    if self.style_based:
      x = self.generator.apply(g_vars, z, y, noise_rng=k_noise, psi=self.spec.truncation_psi)
    elif self.progressive:
      x = self.generator.apply(g_vars, z, y, growth=(progress["level"], progress["alpha"]))
    else:
      x = self.generator.apply(g_vars, z, y, train=False)
    return jnp.clip(x, -1.0, 1.0)

  def sampling_info(self) -> dict[str, Any]:
    return {"name": "gan", "generator": self.g_spec.name,
            "truncation_psi": self.spec.truncation_psi, "truncation": self.spec.truncation}

  def sampling_tag(self) -> str:
    tag = "gan"
    if self.spec.truncation_psi != 1.0:
      tag += f"_psi{self.spec.truncation_psi:g}"
    if self.spec.truncation > 0:
      tag += f"_trunc{self.spec.truncation:g}"
    return tag

