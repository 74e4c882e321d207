"""Run set-up shared by the jobs (no job imports another): the experiment spec for this
runtime, the mesh, data, state restored for inference, sharded generation and logging."""

from __future__ import annotations

import json
import os
import pathlib
import time

import flax.linen as nn
import jax
import numpy as np

from diffjax import data as data_lib
from diffjax import images, parallel
from diffjax.experiment import ExperimentSpec, build_spec
from diffjax.fields import ConfigError
from diffjax.generate import Generator, grid_labels
from diffjax.parallel import distributed
from diffjax.spec import mesh_size
from diffjax.training import Checkpointer, posthoc_ema, state_meta
from diffjax.training.setup import StateSetup, setup_state


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[diffjax] {message}", flush=True)


def experiment_spec(config) -> ExperimentSpec:
  """The config checked against this runtime's devices and processes."""
  try:
    return build_spec(config, num_devices=jax.device_count(),
                      num_processes=jax.process_count())
  except ConfigError as e:
    cores = os.cpu_count() or 1
    if ("devices, but" in str(e) and jax.default_backend() == "cpu"
        and jax.device_count() < cores):  # the mesh asks for devices launch.py did not make
      reason = distributed.cpu_split_reason(config.data.batch_size, cores, jax.device_count())
      raise ConfigError(f"{e}\n  ({reason})") from None
    raise


def make_mesh(spec: ExperimentSpec):
  try:
    return parallel.make_mesh(mesh_size(spec.mesh, jax.device_count()), dcn=dict(spec.mesh.dcn))
  except ValueError as e:  # the dcn sizes do not match the slices / processes found
    raise ConfigError(f"mesh: {e}") from e


def state_setup(spec: ExperimentSpec, mesh, rules=None) -> StateSetup:
  """The method's state layout on ``mesh`` (``rules``: default the config's)."""
  rules = parallel.get_rules(spec.mesh.rules) if rules is None else rules
  return setup_state(spec.method, mesh, rules, offload_opt_state=spec.train.offload_opt_state,
                     posthoc_profiles=len(spec.train.posthoc_ema_stds))


def checkpointer(spec: ExperimentSpec, workdir: pathlib.Path) -> Checkpointer:
  return Checkpointer(workdir / "checkpoints", spec.checkpoint,
                      state_meta(spec.method.networks, spec.train.posthoc_ema_stds),
                      verify=spec.faults.verify_checkpoints, log=log)


def data_source(spec: ExperimentSpec, split: str | None = None):
  d = spec.data
  try:
    source = data_lib.make_source(d.source, name=d.name, split=split or d.split,
                                  data_dir=d.data_dir, path=d.path, image_key=d.image_key,
                                  label_key=d.label_key)
  except ValueError as e:
    raise ConfigError(f"config.data: {e}") from e
  return data_lib.GuardedSource(source, spec.faults.bad_records,
                                name=f"{d.source} {d.name or d.path or ''} {split or d.split}")


def data_iterator(spec: ExperimentSpec, source, mesh, start_batch: int = 0):
  """This process's checkpointable batch iterator, starting at global batch ``start_batch``:
  the rows of every global batch that this process's devices on ``mesh`` hold."""
  d = spec.data
  options = data_lib.PipelineOptions(
      image_size=d.image_size, channels=d.channels, random_flip=d.random_flip,
      batch_size=d.batch_size, num_workers=d.num_workers, seed=spec.train.seed,
      augment=d.augment)
  rows = parallel.process_batch_rows(mesh.devices, d.batch_size)
  return iter(data_lib.make_dataset(source, options, process_count=jax.process_count(),
                                    rows=rows, start_batch=start_batch))


def abstract_batch(spec: ExperimentSpec, sharding, batch_size: int | None = None) -> dict:
  """The global batch's shapes and dtypes (``batch_size``: default the config's)."""
  b = batch_size or spec.data.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, *spec.data.image_shape), np.float32,
                                         sharding=sharding),
           "label": jax.ShapeDtypeStruct((b,), np.int32, sharding=sharding)}
  if spec.data.augment is not None:  # EDM's augmentation labels
    from diffjax.data.augment import AUGMENT_DIM
    batch["augment_labels"] = jax.ShapeDtypeStruct((b, AUGMENT_DIM), np.float32,
                                                   sharding=sharding)
  return batch


def restore_for_inference(spec: ExperimentSpec, workdir: pathlib.Path, mesh, step=None):
  """``({role: Flax variables}, step)`` of the latest checkpoint (or ``step``): the EMA
  parameters where a network keeps one, nothing else (no optimiser state). ConfigError if
  there is none."""
  ckpt = checkpointer(spec, workdir)
  abstract = state_setup(spec, mesh).abstract
  try:
    variables, step = ckpt.restore_variables(abstract, step)
  finally:
    ckpt.close()
  if variables is None and spec.init.path:  # nothing trained here: the imported checkpoint
    variables, step = imported_variables(spec, abstract), 0
  if variables is None:
    raise ConfigError(f"no checkpoint in {workdir / 'checkpoints'}; train first "
                      f"(--mode train), point --workdir at a trained run, or import a "
                      f"published checkpoint (init.checkpoint, init.format)")
  if spec.sample.posthoc_ema_std:
    for role, params in posthoc_params(spec, workdir, abstract, step).items():
      variables[role] = {**variables[role], "params": params}
  for role, (other, other_step) in spec.method.auxiliary_networks().items():
    other = pathlib.Path(other)
    aux = build_spec(run_config(other), num_devices=1, check_network=False)
    aux_vars, _ = restore_for_inference(aux, other, mesh, None if other_step < 0 else other_step)
    variables[role] = next(iter(aux_vars.values()))  # the other run's first network
  return variables, step


def import_init(spec: ExperimentSpec, abstract) -> tuple[str, dict]:
  """``(role, parameters)``: ``init.checkpoint`` imported into the method's first network, placed in
  the shardings of ``abstract`` (a state whose leaves carry them). ConfigError if the file does
  not fit the network."""
  from diffjax.models.importers import import_checkpoint  # only runs that import need it
  from diffjax.models.weight_files import WeightImportError
  role = next(iter(spec.method.networks))
  module = spec.method.networks[role].module
  x_shape = getattr(spec.method, "x_shape", spec.data.image_shape)
  try:
    params, info = import_checkpoint(spec.init.path, spec.init.format, module, x_shape)
  except WeightImportError as e:
    raise ConfigError(f"init.checkpoint: {e}") from None
  log(f"imported {info['num_params'] / 1e6:.2f}M parameters into the {role} from "
      f"{info['source']} ({spec.init.format}, sha256 {info['source_sha256'][:16]}...)" +
      "".join(f"\n  note: {n}" for n in info["notes"]))
  shardings = jax.tree.map(lambda a: a.sharding, abstract.nets[role].params)
  return role, jax.device_put(params, shardings)


def imported_variables(spec: ExperimentSpec, abstract) -> dict:
  """``{role: Flax variables}`` for inference from ``init.checkpoint``: the imported first network
  and the others' own initialisation (a frozen autoencoder loads its weights there)."""
  role, params = import_init(spec, abstract)
  variables = {}
  for i, (name, net) in enumerate(spec.method.networks.items()):
    if name == role:
      variables[name] = {"params": params}
      continue
    shardings = jax.tree.map(lambda a: a.sharding, abstract.nets[name].params)
    init = dict(nn.meta.unbox(jax.jit(net.init)(jax.random.fold_in(jax.random.PRNGKey(0), i))))
    variables[name] = {**init, "params": jax.device_put(init.pop("params"), shardings)}
  return variables


def posthoc_params(spec: ExperimentSpec, workdir: pathlib.Path, abstract, step: int) -> dict:
  """``{role: parameters}``: the post-hoc EMA of ``sample.posthoc_ema_std`` at ``step``,
  reconstructed from the run's snapshots (`diffjax.training.posthoc_ema`)."""
  profiles = {role: net.posthoc for role, net in abstract.nets.items() if net.posthoc is not None}
  if not profiles:
    raise ConfigError("sample.posthoc_ema_std needs a run trained with train.posthoc_ema_stds")
  snapshots = posthoc_ema.Snapshots(workdir / "posthoc_ema", spec.train.posthoc_ema_stds)
  try:
    return snapshots.reconstruct(profiles, spec.sample.posthoc_ema_std, step)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
  finally:
    snapshots.close()


def run_config(workdir: pathlib.Path):
  """A run's own resolved config (``<workdir>/config.json``) as a ConfigDict."""
  import ml_collections
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise ConfigError(f"{workdir} holds no config.json: not a diffjax run folder")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def make_generator(spec: ExperimentSpec, mesh) -> Generator:
  return Generator(spec.method.generate, mesh)


def grid_columns(spec: ExperimentSpec) -> int | None:
  """One class per column for conditional methods."""
  return spec.data.num_classes if spec.method.conditional else None


def sample_grid(generate: Generator, params, spec: ExperimentSpec, rng) -> np.ndarray:
  """``sample.num_images`` samples from ``params`` tiled into one uint8 image."""
  x = generate(params, rng, grid_labels(spec.sample.num_images, spec.data.num_classes))
  return images.make_grid(images.to_uint8(x), ncols=grid_columns(spec),
                          upscale=spec.sample.upscale)


def generate_images(generator: Generator, params, spec: ExperimentSpec, n: int, rng,
                    chunk: int, labels=None, rounding: str = "round"
                    ) -> tuple[np.ndarray, np.ndarray]:
  """``n`` uint8 samples of ``labels`` (default: balanced classes), ``chunk`` per device call,
  with progress lines for long runs; ``rounding`` as `images.to_uint8`."""
  labels = grid_labels(n, spec.data.num_classes) if labels is None else np.asarray(labels,
                                                                                    np.int32)
  outs, start = [], time.time()
  for i in range(0, n, chunk):
    outs.append(images.to_uint8(generator(params, jax.random.fold_in(rng, i),
                                          labels[i:i + chunk]), rounding))
    done = min(n, i + chunk)
    if done < n:
      rate = done / (time.time() - start)
      log(f"sampled {done}/{n} images | {rate:.1f} img/s | ETA {(n - done) / rate / 60:.1f} min")
  return np.concatenate(outs), labels
