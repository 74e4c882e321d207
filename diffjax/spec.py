"""Typed, validated views of the config's method-independent sections.

Each ``*Spec`` builds itself from its config section with ``from_config(section, ck, ...)``:
it checks every field through the shared `FieldChecker` ``ck`` (which collects every problem,
so one error lists them all) and returns the frozen dataclass (or a best-effort one when some
fields are bad; the caller raises once ``ck.errors`` is complete). `diffjax.experiment` puts
them together with the method's own spec into an `ExperimentSpec`. Below the jobs, code takes
these dataclasses, never a ConfigDict.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from diffjax import models
from diffjax.fields import ConfigError, FieldChecker
from diffjax.parallel.rules import RULE_SETS

__all__ = ["ConfigError", "FieldChecker"]  # re-exported: jobs catch ConfigError from here

DATA_SOURCES = ("digits", "tfds", "array_record", "latents")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
FEATURE_NETS = ("inception", "domain")
# eval.ref_format: diffjax's own reference files, or a paper's (diffjax.evaluation.reference.
# PUBLISHED); eval.sample_uint8: how samples in [-1, 1] become uint8 (diffjax.images.to_uint8).
REF_FORMATS = ("diffjax", "adm", "edm", "ttur", "pytorch_fid")
SAMPLE_UINT8 = ("round", "floor")
MESH_AXES = ("data", "fsdp", "tensor")
DCN_AXES = ("data", "fsdp")  # mesh axes that may span TPU slices or hosts (mesh.dcn_<axis>)


def items(section) -> tuple[tuple[str, Any], ...]:
  """A free-form config section (``kwargs``, ``options``) as sorted, hashable pairs."""
  if section is None:
    return ()
  return tuple(sorted((section.to_dict() if hasattr(section, "to_dict") else
                       dict(section)).items()))


@dataclasses.dataclass(frozen=True)
class DataSpec:
  source: str
  name: str
  split: str
  data_dir: str
  path: str
  image_key: str
  label_key: str
  image_size: int
  channels: int
  num_classes: int
  random_flip: bool
  batch_size: int
  num_workers: int
  prefetch: int = 1
  latents: Any = None  # source=latents: the dataset's diffjax.data.latents.LatentDataInfo
  augment: Any = None  # EDM's augmentation: diffjax.data.augment.AugmentOptions, None = off

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """Shape of a batch's ``image`` entry: the images, or a latent dataset's latents."""
    return self.latents.latent_shape if self.latents is not None else self.pixel_shape

  @property
  def pixel_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.channels)

  @classmethod
  def from_config(cls, d, ck: FieldChecker, *, num_processes: int | None) -> "DataSpec":
    ck.one_of(d.source, DATA_SOURCES, "data.source")
    if d.source == "tfds":
      ck.require(bool(d.name), "data.name",
                 "source=tfds needs a TFDS dataset name, e.g. 'cifar10'")
    if d.source == "array_record":
      ck.require(bool(d.path), "data.path", "source=array_record needs a file, glob or folder")
    latent_info = None
    if d.source == "latents" and ck.require(bool(d.path), "data.path",
                                            "source=latents needs the folder --mode encode wrote"):
      from diffjax.data.latents import dataset_info  # the manifest, checked before any compute
      latent_info = ck.attempt("data.path", lambda: dataset_info(
          d.path, d.split, image_size=d.image_size, channels=d.channels,
          random_flip=bool(d.random_flip)))
    ck.positive_int(d.image_size, "data.image_size")
    ck.require(d.channels in (1, 3), "data.channels", f"must be 1 or 3, got {d.channels!r}")
    ck.positive_int(d.num_classes, "data.num_classes", minimum=0)
    ck.positive_int(d.num_workers, "data.num_workers", minimum=0)
    ck.positive_int(d.get("prefetch", 1), "data.prefetch", minimum=0)
    if ck.positive_int(d.batch_size, "data.batch_size"):
      ck.require(d.batch_size % (num_processes or 1) == 0, "data.batch_size",
                 f"{d.batch_size} is not divisible by the {num_processes} processes")
    augment = None
    if d.get("augment") is not None and d.augment.get("p", 0.0):
      from diffjax.data.augment import AugmentOptions  # EDM's non-leaky augmentation
      augment = ck.attempt("data.augment", lambda: AugmentOptions(**d.augment.to_dict()))
      ck.require(d.source != "latents", "data.augment",
                 "augments images, not the latents of a latent dataset")
    return cls(d.source, d.name, d.split, d.data_dir, d.path, d.image_key, d.label_key,
               d.image_size, d.channels, d.num_classes, bool(d.random_flip), d.batch_size,
               d.num_workers, d.get("prefetch", 1), latent_info, augment)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A network by variant name (``diffjax.models``) with field overrides."""

  name: str
  dtype: str
  conditional: bool
  kwargs: tuple[tuple[str, Any], ...]

  def build(self, num_classes: int):
    """The Flax module, with label conditioning wired to the dataset's classes."""
    import jax.numpy as jnp  # local: keeps this module importable without touching devices
    kwargs = dict(self.kwargs)
    kwargs["num_classes"] = num_classes if self.conditional else 0
    kwargs["dtype"] = jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32
    return models.get_model(self.name, **kwargs)

  @classmethod
  def from_config(cls, m, ck: FieldChecker, *, num_classes: int,
                  section: str = "model") -> "ModelSpec":
    """Checks the name against the registry and ``kwargs`` against the variant's fields."""
    ck.one_of(m.dtype, DTYPES, f"{section}.dtype")
    conditional = bool(m.get("conditional", False))
    if conditional:
      ck.require(num_classes > 0, f"{section}.conditional",
                 "a conditional model needs data.num_classes > 0")
    kwargs = items(m.get("kwargs"))
    if ck.one_of(m.name, models.variant_names(), f"{section}.name"):
      kwargs = ck.keywords(models.MODELS, m.name, kwargs, f"{section}.kwargs")
    return cls(m.name, m.dtype, conditional, kwargs)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  name: str
  lr: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  warmup_steps: int
  schedule: str
  grad_clip: float
  total_steps: int

  @classmethod
  def from_config(cls, o, ck: FieldChecker, *, total_steps: int,
                  section: str = "optim") -> "OptimSpec":
    ck.one_of(o.name, OPTIMIZERS, f"{section}.name")
    ck.one_of(o.schedule, LR_SCHEDULES, f"{section}.schedule")
    ck.require(o.lr > 0, f"{section}.lr", f"must be > 0, got {o.lr}")
    ck.require(0 <= o.b1 < 1, f"{section}.b1", f"must be in [0, 1), got {o.b1}")
    ck.require(0 <= o.b2 < 1, f"{section}.b2", f"must be in [0, 1), got {o.b2}")
    ck.require(o.eps > 0, f"{section}.eps", f"must be > 0, got {o.eps}")
    ck.require(o.weight_decay >= 0, f"{section}.weight_decay",
               f"must be >= 0, got {o.weight_decay}")
    ck.require(o.grad_clip >= 0, f"{section}.grad_clip",
               f"must be >= 0 (0 disables), got {o.grad_clip}")
    ck.positive_int(o.warmup_steps, f"{section}.warmup_steps", minimum=0)
    return cls(o.name, float(o.lr), float(o.b1), float(o.b2), float(o.eps),
               float(o.weight_decay), o.warmup_steps, o.schedule, float(o.grad_clip),
               total_steps)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  num_steps: int
  ema_decay: float
  ema_warmup: bool
  seed: int
  grad_accum: int = 1
  offload_opt_state: bool = False
  posthoc_ema_stds: tuple[float, ...] = ()  # power-function EMA profiles tracked (EDM2)
  posthoc_ema_every: int = 0  # their snapshot interval in steps

  @classmethod
  def from_config(cls, t, ck: FieldChecker, *, seed: int) -> "TrainSpec":
    ck.positive_int(t.num_steps, "train.num_steps")
    ck.require(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    ck.positive_int(t.grad_accum, "train.grad_accum")
    offload = t.get("offload_opt_state", False)
    ck.require(isinstance(offload, bool), "train.offload_opt_state",
               f"must be True or False, got {offload!r}")
    stds = tuple(float(v) for v in (t.get("posthoc_ema_stds") or ()))
    every = t.get("posthoc_ema_every", 0)
    for v in stds:
      ck.require(0 < v < 12 ** -0.5, "train.posthoc_ema_stds",
                 f"relative standard deviations must be in (0, 0.2887), got {v}")
    if stds:
      ck.positive_int(every, "train.posthoc_ema_every")
    return cls(t.num_steps, float(t.ema_decay), bool(t.ema_warmup), seed,
               t.grad_accum if isinstance(t.grad_accum, int) else 1, bool(offload), stds,
               every if isinstance(every, int) else 0)


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """Sample grids (during training and ``--mode sample``); how a method samples (its sampler,
  steps, guidance) is in the method's own spec."""

  num_images: int
  every_steps: int
  upscale: int
  at_end: bool = True
  posthoc_ema_std: float = 0.0  # sample with the EMA of this sigma_rel, reconstructed (EDM2)

  @classmethod
  def from_config(cls, s, ck: FieldChecker) -> "SampleSpec":
    ck.positive_int(s.num_images, "sample.num_images")
    ck.positive_int(s.every_steps, "sample.every_steps", minimum=0)
    ck.positive_int(s.upscale, "sample.upscale")
    std = float(s.get("posthoc_ema_std", 0.0))
    ck.require(std == 0 or 0 < std < 12 ** -0.5, "sample.posthoc_ema_std",
               f"must be 0 (the tracked EMA) or in (0, 0.2887), got {std}")
    return cls(s.num_images, s.every_steps, s.upscale, bool(s.at_end), std)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  every_steps: int
  keep: int
  best_metric: str
  best_mode: str
  async_save: bool

  @classmethod
  def from_config(cls, c, ck: FieldChecker) -> "CheckpointSpec":
    ck.positive_int(c.every_steps, "checkpoint.every_steps")
    ck.positive_int(c.keep, "checkpoint.keep")
    ck.one_of(c.best_mode, ("min", "max"), "checkpoint.best_mode")
    return cls(c.every_steps, c.keep, c.best_metric, c.best_mode, bool(c.async_save))


@dataclasses.dataclass(frozen=True)
class LoggingSpec:
  log_every: int
  tensorboard: bool

  @classmethod
  def from_config(cls, lg, ck: FieldChecker) -> "LoggingSpec":
    ck.positive_int(lg.log_every, "logging.log_every")
    return cls(lg.log_every, bool(lg.tensorboard))


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  feature_net: str
  protocol: str
  inception_cache: str
  inception_source: str
  download_inception: bool
  classifier_steps: int
  ref_split: str
  ref_data_path: str
  ref_path: str
  num_samples: int
  batch_size: int
  seeds: int
  name: str
  every_steps: int
  train_num_samples: int
  kid_subset_size: int
  pr_k: int
  likelihood: str
  likelihood_num: int
  likelihood_batch: int
  grid: tuple[tuple[str, tuple], ...] = ()  # (sample field, its values) of a sweep
  memorization: bool = False  # nearest training image of each sample (copy check)
  memorization_quantile: float = 0.01
  memorization_factor: float = 0.5
  ref_format: str = "diffjax"  # a published reference file's format (REF_FORMATS)
  sample_uint8: str = "round"  # samples -> uint8 (SAMPLE_UINT8)

  @classmethod
  def from_config(cls, e, ck: FieldChecker, *, num_classes: int,
                  sample_fields: tuple[str, ...] = ()) -> "EvalSpec":
    ck.one_of(e.feature_net, FEATURE_NETS, "eval.feature_net")
    ck.one_of(e.protocol, ("tf", "pytorch_fid"), "eval.protocol")
    ck.one_of(e.likelihood, ("", "ode", "vlb"), "eval.likelihood")
    if e.feature_net == "domain":
      ck.require(num_classes > 0, "eval.feature_net",
                 "the domain classifier needs labelled data (data.num_classes > 0)")
    for field in ("classifier_steps", "num_samples", "batch_size", "seeds", "train_num_samples",
                  "kid_subset_size", "pr_k", "likelihood_num", "likelihood_batch"):
      ck.positive_int(e[field], f"eval.{field}")
    ck.positive_int(e.every_steps, "eval.every_steps", minimum=0)
    if isinstance(e.num_samples, int) and e.num_samples < 2:
      ck.require(False, "eval.num_samples", "needs at least 2 samples for a covariance")
    ck.require(0 < e.get("memorization_quantile", 0.01) < 1, "eval.memorization_quantile",
               f"must be in (0, 1), got {e.get('memorization_quantile')}")
    ck.require(e.get("memorization_factor", 0.5) > 0, "eval.memorization_factor",
               f"must be > 0, got {e.get('memorization_factor')}")
    ref_format, sample_uint8 = e.get("ref_format", "diffjax"), e.get("sample_uint8", "round")
    ck.one_of(ref_format, REF_FORMATS, "eval.ref_format")
    ck.one_of(sample_uint8, SAMPLE_UINT8, "eval.sample_uint8")
    if ref_format != "diffjax":
      ck.require(bool(e.ref_path), "eval.ref_path",
                 f"eval.ref_format={ref_format!r} reads a published file: give its path")
      ck.require(e.feature_net == "inception", "eval.feature_net",
                 f"published {ref_format!r} statistics are of Inception features")
    grid = []
    for field, values in items(e.get("grid")):
      values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
      ck.require(field in sample_fields, f"eval.grid.{field}",
                 f"not a field of the sample section; allowed: {', '.join(sample_fields)}")
      ck.require(bool(values), f"eval.grid.{field}", "needs at least one value")
      grid.append((field, values))
    return cls(e.feature_net, e.protocol, e.inception_cache, e.inception_source,
               bool(e.download_inception), e.classifier_steps, e.ref_split, e.ref_data_path,
               e.ref_path, e.num_samples, e.batch_size, e.seeds, e.name, e.every_steps,
               e.train_num_samples, e.kid_subset_size, e.pr_k, e.likelihood,
               e.likelihood_num, e.likelihood_batch, tuple(grid),
               bool(e.get("memorization", False)), float(e.get("memorization_quantile", 0.01)),
               float(e.get("memorization_factor", 0.5)), ref_format, sample_uint8)


@dataclasses.dataclass(frozen=True)
class InitSpec:
  """The ``init`` section: start sampling, evaluation or training from a published checkpoint
  (``init.checkpoint``, a file) imported by `diffjax.models.importers` (``init.format``). A run's
  own checkpoints take precedence: training resumes from them, and sampling and evaluation use
  them once the run has any."""

  path: str = ""
  format: str = ""

  @classmethod
  def from_config(cls, i, ck: FieldChecker, *, check_files: bool = True) -> "InitSpec":
    if i is None:
      return cls()
    from diffjax.models.importers import FORMATS  # the converters' table
    path, fmt = str(i.get("checkpoint", "") or ""), str(i.get("format", "") or "")
    if path:
      ck.one_of(fmt, tuple(FORMATS), "init.format")
      if check_files:
        ck.require(os.path.isfile(path), "init.checkpoint", f"no such checkpoint file {path!r}")
    else:
      ck.require(not fmt, "init.checkpoint", f"init.format={fmt!r} is set but "
                 f"init.checkpoint (the file) is not")
    return cls(path, fmt)


@dataclasses.dataclass(frozen=True)
class FaultSpec:
  nonfinite: str
  max_consecutive_skips: int
  loss_spike_factor: float
  bad_records: str
  verify_checkpoints: bool
  inject_nan_steps: tuple[int, ...]
  inject_preemption_steps: tuple[int, ...] = ()

  @classmethod
  def from_config(cls, f, ck: FieldChecker) -> "FaultSpec":
    ck.one_of(f.nonfinite, ("skip", "abort"), "faults.nonfinite")
    ck.one_of(f.bad_records, ("skip", "stop"), "faults.bad_records")
    ck.positive_int(f.max_consecutive_skips, "faults.max_consecutive_skips", minimum=0)
    ck.require(f.loss_spike_factor == 0 or f.loss_spike_factor > 1, "faults.loss_spike_factor",
               f"must be 0 (off) or > 1, got {f.loss_spike_factor}")
    return cls(f.nonfinite, f.max_consecutive_skips, float(f.loss_spike_factor), f.bad_records,
               bool(f.verify_checkpoints), tuple(int(s) for s in f.inject_nan_steps),
               tuple(int(s) for s in f.get("inject_preemption_steps", ())))


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  shape: tuple[tuple[str, int], ...]  # (axis name, size or -1)
  rules: str = "data_parallel"  # parameter sharding rule set (diffjax.parallel.rules)
  dcn: tuple[tuple[str, int], ...] = ()  # (axis, how much of it spans slices / hosts)

  @classmethod
  def from_config(cls, m, ck: FieldChecker, *, num_devices: int, num_processes: int | None,
                  batch_size: int, grad_accum: int) -> "MeshSpec":
    """Also checks that the mesh covers the devices and the batch splits over it."""
    dcn = tuple((a, m.get(f"dcn_{a}", 1)) for a in DCN_AXES)
    mesh = cls(tuple((a, m[a]) for a in MESH_AXES), m.rules, dcn)
    ck.one_of(m.rules, RULE_SETS, "mesh.rules")
    for axis in MESH_AXES:
      ck.require(isinstance(m[axis], int) and (m[axis] >= 1 or m[axis] == -1), f"mesh.{axis}",
                 f"must be a positive integer or -1, got {m[axis]!r}")
    for axis, across in dcn:
      ck.positive_int(across, f"mesh.dcn_{axis}")
    if ck.errors:  # the checks below need valid sizes
      return mesh
    sizes = ck.attempt("mesh", lambda: mesh_size(mesh, num_devices))
    groups = math.prod(across for _, across in dcn)
    ck.require(num_processes is None or num_processes % groups == 0, "mesh.dcn_*",
               f"{groups} groups of slices or hosts do not divide the job's "
               f"{num_processes} process(es)")
    for axis, across in dcn:
      ck.require(not sizes or sizes[axis] % across == 0, f"mesh.dcn_{axis}",
                 f"{across} does not divide mesh.{axis}={sizes and sizes[axis]} (the part "
                 f"of the axis across slices or hosts times the part within each)")
    if sizes:
      batch_devices = sizes["data"] * sizes["fsdp"]
      ck.require(batch_size % batch_devices == 0, "data.batch_size",
                 f"{batch_size} is not divisible by the {batch_devices} devices of the "
                 f"mesh's data and fsdp axes")
      ck.require(batch_size % (batch_devices * grad_accum) == 0, "train.grad_accum",
                 f"batch {batch_size} does not split into {grad_accum} micro-batches "
                 f"over {batch_devices} devices (need batch % (devices x grad_accum) == 0)")
    return mesh


def mesh_size(mesh: MeshSpec, num_devices: int) -> dict[str, int]:
  """Resolves -1 in the mesh shape; raises ConfigError when it cannot cover the devices."""
  sizes = dict(mesh.shape)
  fill = [a for a, s in sizes.items() if s == -1]
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if len(fill) > 1:
    raise ConfigError(f"at most one mesh axis may be -1, got {fill}")
  if fill:
    if num_devices % fixed:
      raise ConfigError(f"fixed mesh axes multiply to {fixed}, which does not divide "
                        f"the {num_devices} devices")
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"mesh {sizes} covers {math.prod(sizes.values())} devices, "
                      f"but {num_devices} are present")
  return sizes
