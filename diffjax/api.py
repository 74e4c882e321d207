"""A trained run from Python (notebooks, scripts): ``diffjax.load(workdir)``.

::

  import diffjax
  model = diffjax.load("runs/default")                  # the latest checkpoint
  images = model.sample(20, sampler="heun", num_steps=18, guidance=2.0, seed=0)  # uint8
  denoise = model.denoiser()                            # for diffjax.diffusion.sample

The run's own ``config.json`` describes it (not a config file that may have changed since);
only what inference needs is restored (the EMA parameters where kept, no optimiser state).
Arrays live on a data-parallel mesh over this process's devices. A run of a method that a
config file registered needs that module imported first.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from diffjax import parallel
from diffjax.experiment import ExperimentSpec, build_spec
from diffjax.generate import Generator
from diffjax.jobs import evaluate as evaluate_job
from diffjax.jobs import ref_stats as ref_stats_job
from diffjax.jobs.common import generate_images, restore_for_inference, run_config

_CHUNK = 256  # images per device call


def _spec(config, mesh_devices: int) -> ExperimentSpec:
  """The spec of ``config`` for inference on ``mesh_devices`` devices: the training mesh does
  not apply (a run trained on 8 devices loads on 1). The training batch is kept where it
  divides over these devices, so the method's own batch rules (a GAN's ``n_critic`` split)
  still hold; otherwise it is scaled by the device count."""
  config = config.copy_and_resolve_references()
  config.mesh.update(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1)
  if config.data.batch_size % mesh_devices:
    config.data.batch_size *= mesh_devices
  config.train.grad_accum = 1
  return build_spec(config, num_devices=mesh_devices, check_network=False)


class Model:
  """A checkpoint of a run, ready to sample and evaluate (see `load`)."""

  def __init__(self, workdir: str | pathlib.Path, step: int | None = None):
    self.workdir = pathlib.Path(workdir).absolute()
    self.config = run_config(self.workdir)
    self.mesh = parallel.make_mesh({"data": jax.local_device_count(), "fsdp": 1, "tensor": 1},
                                   jax.local_devices())
    self.spec = _spec(self.config, jax.local_device_count())
    self.variables, self.step = restore_for_inference(self.spec, self.workdir, self.mesh, step)
    self._generators: dict = {}

  @property
  def method(self):
    return self.spec.method

  def _with(self, **sample) -> ExperimentSpec:
    """The spec with ``sample.<field>`` replaced where a value is given."""
    given = {k: v for k, v in sample.items() if v is not None}
    if not given:
      return self.spec
    config = self.config.copy_and_resolve_references()
    if "sampler" in given and "options" not in given:
      given["options"] = {}  # another sampler's options would not apply
    for field, value in given.items():
      config.sample[field] = value
    return _spec(config, self.mesh.size)

  def sample(self, n: int | None = None, labels=None, *, sampler: str | None = None,
             num_steps: int | None = None, guidance: float | None = None,
             spacing: str | None = None, seed: int = 0, **options) -> np.ndarray:
    """``n`` images as uint8 ``[n, H, W, C]`` (``labels``: int classes, default balanced).

    Sampler settings default to the run's config (``sample.*``); ``options`` are the
    sampler's own (``eta``, ``s_churn``, ...).
    """
    spec = self._with(sampler=sampler, num_steps=num_steps, guidance_scale=guidance,
                      spacing=spacing, options=options or None)
    if labels is not None:
      labels = np.asarray(labels, np.int32)
      n = len(labels) if n is None else n
      if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for n={n} images")
    n = spec.sample.num_images if n is None else n
    key = spec.method.sampling_tag(), tuple(sorted(options.items()))
    if key not in self._generators:  # one compiled sampler per setting
      self._generators[key] = Generator(spec.method.generate, self.mesh)
    return generate_images(self._generators[key], self.variables, spec, n,
                           jax.random.PRNGKey(seed), _CHUNK, labels)[0]

  def denoiser(self):
    """``denoise(x_t, t, labels) -> x0_hat`` of a diffusion run's network (EMA parameters),
    for `diffjax.diffusion.sample` with ``model.schedule``."""
    if not hasattr(self.method, "denoiser"):
      raise ValueError(f"method {self.method.name!r} has no denoiser")
    return self.method.denoiser(self.variables["denoiser"])

  @property
  def schedule(self):
    return self.method.diffusion.schedule

  def evaluate(self, num_samples: int | None = None, seeds: int | None = None,
               reference: bool = True) -> dict:
    """Scores this checkpoint as ``--mode eval`` does (``eval.*`` of the run's config, with
    ``num_samples`` / ``seeds`` replaced where given); computes the reference statistics
    first when they are missing and ``reference`` is set. Returns the result dict."""
    config = self.config.copy_and_resolve_references()
    if num_samples is not None:
      config.eval.num_samples = num_samples
    if seeds is not None:
      config.eval.seeds = seeds
    spec = _spec(config, self.mesh.size)
    from diffjax.evaluation.evaluator import ref_path
    if reference and not ref_path(spec.eval, self.workdir).exists():
      ref_stats_job.compute_reference(spec, self.workdir, self.mesh)
    return evaluate_job.score(spec, self.workdir, self.mesh, self.variables, self.step)


def load(workdir: str | pathlib.Path, step: int | None = None) -> Model:
  """The run in ``workdir`` at checkpoint ``step`` (default: the latest that verifies)."""
  return Model(workdir, step)
