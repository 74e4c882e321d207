"""The experiment specification: a validated, typed view of a config, built once at job start.

Only jobs read a ConfigDict; they call `build_spec` first, which checks every field (names
against the registries, value ranges, batch divisibility by devices and processes) and raises
one `ConfigError` listing every problem with the field it concerns, before any compute.
Everything below the jobs takes these frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from diffjax import diffusion, models
from diffjax.fields import ConfigError, FieldChecker
from diffjax.parallel.rules import RULE_SETS

DATA_SOURCES = ("digits", "tfds", "array_record")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
FEATURE_NETS = ("inception", "domain")
MESH_AXES = ("data", "fsdp", "tensor")
DCN_AXES = ("data", "fsdp")  # mesh axes that may span TPU slices or hosts (mesh.dcn_<axis>)


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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
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


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
  schedule: diffusion.Schedule
  parameterization: diffusion.Parameterization
  weighting: str
  min_snr_gamma: float
  t_sampler: str
  t_sampler_options: tuple[tuple[str, Any], ...]

  @property
  def sigma_data(self) -> float:
    return getattr(self.parameterization, "sigma_data", 0.5)


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


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  num_steps: int
  ema_decay: float
  ema_warmup: bool
  seed: int
  grad_accum: int = 1
  offload_opt_state: bool = False


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  sampler: str
  num_steps: int
  spacing: str
  options: tuple[tuple[str, Any], ...]
  guidance_scale: float
  num_images: int
  every_steps: int
  upscale: int
  at_end: bool = True


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  every_steps: int
  keep: int
  best_metric: str
  best_mode: str
  async_save: bool


@dataclasses.dataclass(frozen=True)
class LoggingSpec:
  log_every: int
  tensorboard: bool


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


@dataclasses.dataclass(frozen=True)
class FaultSpec:
  nonfinite: str
  max_consecutive_skips: int
  loss_spike_factor: float
  bad_records: str
  verify_checkpoints: bool
  inject_nan_steps: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  shape: tuple[tuple[str, int], ...]  # (axis name, size or -1)
  rules: str = "data_parallel"  # parameter sharding rule set (diffjax.parallel.rules)
  dcn: tuple[tuple[str, int], ...] = ()  # (axis, how much of it spans slices / hosts)


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  experiment: str
  data: DataSpec
  model: ModelSpec
  diffusion: DiffusionSpec
  optim: OptimSpec
  train: TrainSpec
  sample: SampleSpec
  checkpoint: CheckpointSpec
  logging: LoggingSpec
  mesh: MeshSpec
  eval: EvalSpec
  faults: FaultSpec


def _items(section) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted(section.to_dict().items())) if section is not None else ()


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


def _check_network(model, data: DataSpec, conditional: bool) -> None:
  """Traces the network on one example of the data's shape (no compute)."""
  import jax
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((1, data.image_size, data.image_size, data.channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if conditional else None
  try:
    jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)
  except Exception as e:  # any tracing failure means the network does not fit the data
    raise ValueError(f"the network does not fit {data.image_size}x{data.image_size}x"
                     f"{data.channels} images: {type(e).__name__}: {str(e).splitlines()[0]}")


def build_spec(config, *, num_devices: int = 1, num_processes: int | None = None,
               check_network: bool = True) -> ExperimentSpec:
  """Validates a config and returns its typed spec.

  Args:
    config: the experiment ConfigDict (see configs/base.py).
    num_devices: global device count (batch divisibility, mesh).
    num_processes: process count (per-process batch, groups across hosts); None: not known
      (a config checked for another machine), the checks that need it are left out.
    check_network: trace the network on the data shape (catches sizes it cannot take).

  Raises:
    ConfigError: listing every invalid field.
  """
  ck = FieldChecker()
  d = config.data
  ck.one_of(d.source, DATA_SOURCES, "data.source")
  if d.source == "tfds":
    ck.require(bool(d.name), "data.name", "source=tfds needs a TFDS dataset name, e.g. 'cifar10'")
  if d.source == "array_record":
    ck.require(bool(d.path), "data.path", "source=array_record needs a file, glob or folder")
  ck.positive_int(d.image_size, "data.image_size")
  ck.require(d.channels in (1, 3), "data.channels", f"must be 1 or 3, got {d.channels!r}")
  ck.positive_int(d.num_classes, "data.num_classes", minimum=0)
  ck.positive_int(d.num_workers, "data.num_workers", minimum=0)
  ck.positive_int(d.get("prefetch", 1), "data.prefetch", minimum=0)
  if ck.positive_int(d.batch_size, "data.batch_size"):
    ck.require(d.batch_size % (num_processes or 1) == 0, "data.batch_size",
               f"{d.batch_size} is not divisible by the {num_processes} processes")
  data = DataSpec(d.source, d.name, d.split, d.data_dir, d.path, d.image_key, d.label_key,
                  d.image_size, d.channels, d.num_classes, bool(d.random_flip), d.batch_size,
                  d.num_workers, d.get("prefetch", 1))

  m = config.model
  ck.one_of(m.dtype, DTYPES, "model.dtype")
  if m.conditional:
    ck.require(d.num_classes > 0, "model.conditional",
               "a conditional model needs data.num_classes > 0")
  model = ModelSpec(m.name, m.dtype, bool(m.conditional), _items(m.kwargs))
  if ck.one_of(m.name, models.variant_names(), "model.name"):
    network = ck.attempt("model.kwargs",
                         lambda: model.build(d.num_classes if m.conditional else 0))
    if network is not None and check_network and not ck.errors:
      ck.attempt("model.name / model.kwargs",
                 lambda: _check_network(network, data, bool(m.conditional)))

  df = config.diffusion
  schedule = ck.attempt("diffusion.schedule",
                        lambda: diffusion.get_schedule(df.schedule, **df.schedule_kwargs))
  param = ck.attempt("diffusion.parameterization", lambda: diffusion.get_parameterization(
      df.parameterization, **df.parameterization_kwargs))
  ck.one_of(df.weighting, diffusion.WEIGHTINGS, "diffusion.weighting")
  ck.require(df.min_snr_gamma > 0, "diffusion.min_snr_gamma",
             f"must be > 0, got {df.min_snr_gamma}")
  if ck.one_of(df.t_sampler, diffusion.T_SAMPLERS, "diffusion.t_sampler") and schedule:
    import jax  # the check draws nothing; it only validates the option names
    ck.attempt("diffusion.t_sampler_kwargs", lambda: jax.eval_shape(
        lambda k: diffusion.sample_t(k, 2, schedule, df.t_sampler, **df.t_sampler_kwargs),
        jax.random.PRNGKey(0)))
  diff = DiffusionSpec(schedule, param, df.weighting, float(df.min_snr_gamma), df.t_sampler,
                       _items(df.t_sampler_kwargs))

  o, t = config.optim, config.train
  ck.one_of(o.name, OPTIMIZERS, "optim.name")
  ck.one_of(o.schedule, LR_SCHEDULES, "optim.schedule")
  ck.require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
  ck.require(0 <= o.b1 < 1, "optim.b1", f"must be in [0, 1), got {o.b1}")
  ck.require(0 <= o.b2 < 1, "optim.b2", f"must be in [0, 1), got {o.b2}")
  ck.require(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
  ck.require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
  ck.require(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 disables), got {o.grad_clip}")
  ck.positive_int(o.warmup_steps, "optim.warmup_steps", minimum=0)
  ck.positive_int(t.num_steps, "train.num_steps")
  ck.require(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
  optim = OptimSpec(o.name, float(o.lr), float(o.b1), float(o.b2), float(o.eps),
                    float(o.weight_decay), o.warmup_steps, o.schedule, float(o.grad_clip),
                    t.num_steps)
  ck.positive_int(t.grad_accum, "train.grad_accum")
  ck.require(isinstance(t.get("offload_opt_state", False), bool), "train.offload_opt_state",
             f"must be True or False, got {t.get('offload_opt_state')!r}")
  train = TrainSpec(t.num_steps, float(t.ema_decay), bool(t.ema_warmup), config.seed,
                    t.grad_accum if isinstance(t.grad_accum, int) else 1,
                    bool(t.get("offload_opt_state", False)))

  s = config.sample
  ck.one_of(s.sampler, tuple(diffusion.SAMPLERS), "sample.sampler")
  ck.one_of(s.spacing, diffusion.SPACINGS, "sample.spacing")
  ck.positive_int(s.num_steps, "sample.num_steps")
  ck.positive_int(s.num_images, "sample.num_images")
  ck.positive_int(s.every_steps, "sample.every_steps", minimum=0)
  ck.positive_int(s.upscale, "sample.upscale")
  ck.require(s.guidance_scale >= 0, "sample.guidance_scale",
             f"must be >= 0, got {s.guidance_scale}")
  if s.guidance_scale != 1.0:
    ck.require(bool(m.conditional), "sample.guidance_scale",
               "classifier-free guidance needs a conditional model (model.conditional=True)")
  if s.sampler in diffusion.SAMPLERS:
    allowed = diffusion.SAMPLERS[s.sampler][1]
    unknown = sorted(set(s.options.to_dict()) - set(allowed))
    ck.require(not unknown, "sample.options",
               f"sampler {s.sampler!r} has no option(s) {unknown}; allowed: {sorted(allowed)}")
  sample = SampleSpec(s.sampler, s.num_steps, s.spacing, _items(s.options),
                      float(s.guidance_scale), s.num_images, s.every_steps, s.upscale,
                      bool(s.at_end))

  c = config.checkpoint
  ck.positive_int(c.every_steps, "checkpoint.every_steps")
  ck.positive_int(c.keep, "checkpoint.keep")
  ck.one_of(c.best_mode, ("min", "max"), "checkpoint.best_mode")
  checkpoint = CheckpointSpec(c.every_steps, c.keep, c.best_metric, c.best_mode,
                              bool(c.async_save))
  ck.positive_int(config.logging.log_every, "logging.log_every")
  logging_spec = LoggingSpec(config.logging.log_every, bool(config.logging.tensorboard))

  e = config.eval
  ck.one_of(e.feature_net, FEATURE_NETS, "eval.feature_net")
  ck.one_of(e.protocol, ("tf", "pytorch_fid"), "eval.protocol")
  ck.one_of(e.likelihood, ("", "ode", "vlb"), "eval.likelihood")
  if e.likelihood == "vlb" and schedule is not None:
    ck.require(schedule.num_timesteps is not None, "eval.likelihood",
               f"vlb needs a discrete schedule (e.g. linear), not {schedule.name!r}")
  if e.feature_net == "domain":
    ck.require(d.num_classes > 0, "eval.feature_net",
               "the domain classifier needs labelled data (data.num_classes > 0)")
  for field in ("classifier_steps", "num_samples", "batch_size", "seeds", "train_num_samples",
                "kid_subset_size", "pr_k", "likelihood_num", "likelihood_batch"):
    ck.positive_int(e[field], f"eval.{field}")
  ck.positive_int(e.every_steps, "eval.every_steps", minimum=0)
  if isinstance(e.num_samples, int) and e.num_samples < 2:
    ck.require(False, "eval.num_samples", "needs at least 2 samples for a covariance")
  eval_spec = EvalSpec(e.feature_net, e.protocol, e.inception_cache, e.inception_source,
                       bool(e.download_inception), e.classifier_steps, e.ref_split,
                       e.ref_data_path, e.ref_path, e.num_samples, e.batch_size, e.seeds, e.name,
                       e.every_steps, e.train_num_samples, e.kid_subset_size, e.pr_k,
                       e.likelihood, e.likelihood_num, e.likelihood_batch)

  f = config.faults
  ck.one_of(f.nonfinite, ("skip", "abort"), "faults.nonfinite")
  ck.one_of(f.bad_records, ("skip", "stop"), "faults.bad_records")
  ck.positive_int(f.max_consecutive_skips, "faults.max_consecutive_skips", minimum=0)
  ck.require(f.loss_spike_factor == 0 or f.loss_spike_factor > 1, "faults.loss_spike_factor",
             f"must be 0 (off) or > 1, got {f.loss_spike_factor}")
  faults = FaultSpec(f.nonfinite, f.max_consecutive_skips, float(f.loss_spike_factor),
                     f.bad_records, bool(f.verify_checkpoints),
                     tuple(int(s) for s in f.inject_nan_steps))

  dcn = tuple((a, config.mesh.get(f"dcn_{a}", 1)) for a in DCN_AXES)
  mesh = MeshSpec(tuple((a, config.mesh[a]) for a in MESH_AXES), config.mesh.rules, dcn)
  ck.one_of(config.mesh.rules, RULE_SETS, "mesh.rules")
  for axis in MESH_AXES:
    size = config.mesh[axis]
    ck.require(isinstance(size, int) and (size >= 1 or size == -1), f"mesh.{axis}",
               f"must be a positive integer or -1, got {size!r}")
  for axis, across in dcn:
    ck.positive_int(across, f"mesh.dcn_{axis}")
  if not ck.errors:
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
      ck.require(d.batch_size % batch_devices == 0, "data.batch_size",
                 f"{d.batch_size} is not divisible by the {batch_devices} devices of the "
                 f"mesh's data and fsdp axes")
      ck.require(d.batch_size % (batch_devices * train.grad_accum) == 0, "train.grad_accum",
                 f"batch {d.batch_size} does not split into {train.grad_accum} micro-batches "
                 f"over {batch_devices} devices (need batch % (devices x grad_accum) == 0)")

  if ck.errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(ck.errors))
  return ExperimentSpec(config.experiment, data, model, diff, optim, train, sample, checkpoint,
                        logging_spec, mesh, eval_spec, faults)
