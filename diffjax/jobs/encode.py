"""The encode job (``--mode encode``): a dataset's latents under an autoencoder, as ArrayRecord
shards with a manifest (`diffjax.data.latents`), and the autoencoder's reconstruction quality.

The autoencoder is the one the config names: with ``method.name=autoencoder`` the EMA
parameters of ``--workdir``'s latest checkpoint (exported beside the latents as
``autoencoder.npz``, for ``latent.weights`` of the latent diffusion run); otherwise
``latent.autoencoder`` with ``latent.weights`` (e.g. the SD VAE from its ``.safetensors``).

Each split (``encode.splits``) is cut into shards of ``encode.shard_size`` images; process p of
P encodes shards p, p + P, ... with the batch split over its devices, so a job spreads over
hosts and devices. A shard is written under a temporary name, renamed when complete, then
marked done (``<shard>.done.json``: SHA-256, count, per-channel sums); a relaunch after a kill
skips verified shards and redoes the rest, and as every batch of a shard is the same in every
run, the shards equal an uninterrupted run's byte for byte. The manifest is written last. The
output folder records what it was encoded with (autoencoder fingerprint, storage, flips, sizes,
source data) and refuses a relaunch with other settings.

With ``encode.eval_split``, reconstructions (decoded posterior means) of ``encode.eval_num``
images of that split are scored: PSNR and SSIM against the originals (uint8, as saved images
are), and rFID, the Frechet distance between the features (``eval.feature_net``) of the
reconstructions and of the originals; written to ``reconstruction_<split>.json`` with a grid of
originals above their reconstructions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffjax import images, parallel, workdir as workdir_lib
from diffjax.data import latents as latent_data
from diffjax.data.convert import sha256_file
from diffjax.data.pipeline import preprocess
from diffjax.evaluation import metrics
from diffjax.evaluation.evaluator import feature_net, split_source
from diffjax.evaluation.reference import data_fingerprint
from diffjax.experiment import ExperimentSpec
from diffjax.fields import ConfigError, FieldChecker
from diffjax.jobs.common import experiment_spec, log, make_mesh, restore_for_inference
from diffjax.methods.autoencoder import AutoencoderMethod, psnr, ssim
from diffjax.models import vae_weights
from diffjax.models.autoencoder import architecture, normalization, posterior, tiled_encode


@dataclasses.dataclass(frozen=True)
class EncodeSpec:
  """The ``encode`` config section."""

  output: str
  splits: tuple[str, ...]
  flip: bool
  batch_size: int
  shard_size: int
  dtype: str
  max_images: int
  tile: int
  eval_split: str
  eval_num: int
  eval_fid: bool
  inject_kill_after_shards: int

  @classmethod
  def from_config(cls, config) -> "EncodeSpec":
    e, ck = config.encode, FieldChecker()
    for field in ("batch_size", "shard_size", "eval_num"):
      ck.positive_int(e[field], f"encode.{field}")
    for field in ("max_images", "tile", "inject_kill_after_shards"):
      ck.positive_int(e[field], f"encode.{field}", minimum=0)
    ck.one_of(e.dtype, latent_data.STORAGE_DTYPES, "encode.dtype")
    splits = tuple(s.strip() for s in e.splits.split(",") if s.strip()) if e.splits else tuple(
        dict.fromkeys([config.data.split, config.eval.ref_split]))
    ck.require(all(s.replace("_", "").replace("-", "").isalnum() for s in splits),
               "encode.splits", f"split names must be letters, digits, - or _, got {splits}")
    if ck.errors:
      raise ConfigError("invalid config:\n  " + "\n  ".join(ck.errors))
    return cls(e.output, splits, bool(e.flip), e.batch_size, e.shard_size, e.dtype,
               e.max_images, e.tile, e.eval_split, e.eval_num, bool(e.eval_fid),
               e.inject_kill_after_shards)


@dataclasses.dataclass
class Autoencoder:
  module: Any
  variables: dict
  record: dict[str, Any]  # fingerprint, variant, architecture, normalisation, weights
  reconstruct: Any  # (variables, images) -> images


def _check_workdir(workdir: pathlib.Path, config) -> None:
  """The workdir holds this experiment (differences in the encode section allowed)."""
  path = workdir / "config.json"
  if not path.exists():
    raise ConfigError(f"no trained autoencoder in {workdir} (no config.json): train it first "
                      f"(--mode train) or point --workdir at its run")
  saved = json.loads(path.read_text())
  current = json.loads(config.to_json_best_effort())
  saved.pop("encode", None)
  current.pop("encode", None)
  diffs = workdir_lib.identity_differences(saved, current)
  if diffs:
    raise ConfigError(f"workdir {workdir} holds a different experiment:\n  " + "\n  ".join(diffs))


def load_autoencoder(spec: ExperimentSpec, config, workdir: pathlib.Path, out: pathlib.Path,
                     mesh) -> Autoencoder:
  method = spec.method
  if isinstance(method, AutoencoderMethod):
    _check_workdir(workdir, config)
    variables, step = restore_for_inference(spec, workdir, mesh)
    ae_vars = jax.tree.map(_to_host, variables["autoencoder"])
    weights = out / "autoencoder.npz"
    record = vae_weights.params_sha256(ae_vars["params"])
    if jax.process_index() == 0:
      out.mkdir(parents=True, exist_ok=True)
      vae_weights.save_npz(weights, ae_vars["params"], method.module,
                           trained=f"{workdir} step {step}", variant=method.latent.autoencoder)
    record = {"fingerprint": vae_weights.fingerprint(method.module, record),
              "params_sha256": record, "trained": f"{workdir} step {step}"}
    module, variant, reconstruct = method.module, method.latent.autoencoder, method.reconstruct
  elif getattr(method, "latent", None) is not None:
    if method.latent.pre_encoded:
      raise ConfigError("data.source=latents: the data are latents already; encode the image "
                        "dataset they came from")
    module, variant = method.latent.module, method.latent.spec.autoencoder
    try:
      params, info = method.latent.spec.load(module)
    except ValueError as e:
      raise ConfigError(f"latent.weights: {e}") from None
    weights = pathlib.Path(method.latent.spec.weights).absolute()
    ae_vars = {"params": params}
    record = {"fingerprint": info["fingerprint"], "params_sha256": info["params_sha256"]}
    reconstruct = lambda v, x: jnp.clip(module.apply(v, x), -1.0, 1.0)
  else:
    raise ConfigError("--mode encode needs an autoencoder: method.name=autoencoder (its trained "
                      "--workdir) or latent.autoencoder with latent.weights")
  record.update(variant=variant, architecture=architecture(module),
                normalization=normalization(module), weights=str(weights))
  return Autoencoder(module, ae_vars, record, reconstruct)


def _to_host(x) -> np.ndarray:
  """A (possibly sharded, multi-process) array as a numpy array on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _pixel_path(spec: ExperimentSpec, split: str) -> str:
  """Where a split's images are: eval.ref_data_path for the reference split if set (as
  evaluation reads it), data.path otherwise."""
  if split == spec.eval.ref_split and spec.eval.ref_data_path:
    return spec.eval.ref_data_path
  return spec.data.path


def _images(source, spec: ExperimentSpec, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
  """Images ``lo..hi`` float32 [-1, 1], preprocessed as training reads them (no flips)."""
  d, rng = spec.data, np.random.default_rng(0)
  examples = [preprocess(source[i], rng, image_size=d.image_size, channels=d.channels,
                         random_flip=False) for i in range(lo, hi)]
  return (np.stack([e["image"] for e in examples]),
          np.asarray([e["label"] for e in examples], np.int64))


class _Encoder:
  """Posterior moments of image batches, split over this process's devices."""

  def __init__(self, ae: Autoencoder, mesh, tile: int):
    self.mesh, self.sharding = mesh, parallel.batch_sharding(mesh)
    self.devices = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
    module, variables = ae.module, ae.variables
    self._moments = jax.jit(lambda x: module.apply(variables, x, method="moments"),
                            out_shardings=self.sharding)
    self.tile, self.downsampling = tile, module.downsampling

  def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    padded = -(-n // self.devices) * self.devices
    if padded > n:
      x = np.concatenate([x, np.repeat(x[-1:], padded - n, 0)])
    arr = jax.device_put(x, self.sharding)
    if self.tile:
      mean, logvar = tiled_encode(self._moments, arr, self.tile, self.downsampling)
    else:
      mean, logvar = posterior(self._moments(arr))
    return np.asarray(mean)[:n], np.asarray(logvar)[:n]


def _identity(spec: ExperimentSpec, e: EncodeSpec, ae: Autoencoder) -> dict[str, Any]:
  return {"autoencoder": ae.record["fingerprint"], "dtype": e.dtype, "flips": e.flip,
          "shard_size": e.shard_size, "tile": e.tile, "image_size": spec.data.image_size,
          "channels": spec.data.channels, "max_images": e.max_images}


def _check_output(out: pathlib.Path, identity: dict[str, Any]) -> None:
  path = out / "encode.json"
  if path.exists():
    saved = json.loads(path.read_text())
    diffs = [f"{k}: folder has {saved.get(k)!r}, this launch {v!r}" for k, v in identity.items()
             if saved.get(k) != v]
    if diffs:
      raise ConfigError(f"{out} holds latents encoded with other settings; use another "
                        f"encode.output or the same settings:\n  " + "\n  ".join(diffs))
  elif jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1, sort_keys=True))


def _marker(shard: pathlib.Path) -> pathlib.Path:
  return shard.with_name(shard.name + ".done.json")


def _shard_done(shard: pathlib.Path) -> dict[str, Any] | None:
  """The shard's done record if the shard is there and hashes to it."""
  marker = _marker(shard)
  if not (marker.exists() and shard.exists()):
    return None
  try:
    record = json.loads(marker.read_text())
  except json.JSONDecodeError:
    return None
  return record if sha256_file(shard) == record.get("sha256") else None


class _Progress:
  def __init__(self, split: str, total: int, done: int):
    self.split, self.total, self.start_done = split, total, done
    self.done, self.start, self.last = done, time.time(), 0.0

  def add(self, n: int) -> None:
    self.done += n
    now = time.time()
    if (n and now - self.last > 20) or (n and self.done == self.total):
      self.last = now
      rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / rate / 60 if rate > 0 else float("nan")
      log(f"encode {self.split}: {self.done}/{self.total} images | {rate:.1f} img/s | "
          f"ETA {eta:.1f} min")


def _encode_shard(encoder: _Encoder, source, spec: ExperimentSpec, e: EncodeSpec, lo: int,
                  hi: int, path: pathlib.Path, progress: _Progress, kill: bool
                  ) -> dict[str, Any]:
  from array_record.python.array_record_module import ArrayRecordWriter
  sums = None
  tmp = path.with_name(path.name + ".tmp")
  writer = ArrayRecordWriter(str(tmp), "group_size:1")
  for start in range(lo, hi, e.batch_size):
    stop = min(hi, start + e.batch_size)
    x, labels = _images(source, spec, start, stop)
    mean, logvar = encoder(x)
    copies = [np.concatenate([mean, logvar], -1)]
    if e.flip:
      fm, fl = encoder(np.ascontiguousarray(x[:, :, ::-1]))
      copies.append(np.concatenate([fm, fl], -1))
      mean, logvar = np.concatenate([mean, fm]), np.concatenate([logvar, fl])
    if sums is None:
      sums = latent_data.ChannelSums(mean.shape[-1])
    sums.add(mean, logvar)
    moments = np.stack(copies, axis=1).astype(e.dtype)  # [b, F, h, w, 2c]
    for i in range(stop - start):
      writer.write(latent_data.encode_record(moments[i], labels[i], start + i))
    progress.add(stop - start)
    if kill and stop >= (lo + hi) // 2:  # fault injection: a kill mid-way through the shard
      writer.close()
      log(f"fault injection: killed while writing {path.name}")
      os._exit(137)
  writer.close()
  tmp.replace(path)
  record = {"file": path.name, "count": hi - lo, "first_index": lo, "sha256": sha256_file(path),
            "sums": sums.to_json()}
  marker_tmp = _marker(path).with_suffix(".tmp")
  marker_tmp.write_text(json.dumps(record, sort_keys=True))
  marker_tmp.replace(_marker(path))
  return record


def _source_record(spec: ExperimentSpec, split: str, source) -> dict[str, Any]:
  d = spec.data
  path = _pixel_path(spec, split)
  path = str(pathlib.Path(path).absolute()) if path else ""
  return {"open": {"kind": d.source, "name": d.name, "split": split, "data_dir": d.data_dir,
                   "path": path, "image_key": d.image_key, "label_key": d.label_key},
          "fingerprint": data_fingerprint(d.source, name=d.name, split=split, path=path,
                                          image_size=d.image_size, channels=d.channels,
                                          source=source)}


def encode(config, workdir: str) -> dict[str, Any]:
  """Writes the latents of every split (resuming a killed run) and the manifest; scores
  reconstructions when asked. Returns the manifest."""
  start_time = time.time()
  spec = experiment_spec(config)
  e = EncodeSpec.from_config(config)
  workdir = pathlib.Path(workdir).absolute()
  out = pathlib.Path(e.output).absolute() if e.output else workdir / "latents"
  mesh = make_mesh(spec)
  local = parallel.make_mesh({"data": jax.local_device_count(), "fsdp": 1, "tensor": 1},
                             jax.local_devices())
  ae = load_autoencoder(spec, config, workdir, out, mesh)
  ae.variables = jax.device_put(ae.variables, parallel.replicated(local))
  identity = _identity(spec, e, ae)
  _check_output(out, identity)
  encoder = _Encoder(ae, local, e.tile)
  pid, nproc = jax.process_index(), jax.process_count()
  log(f"encoding {', '.join(e.splits)} with autoencoder {ae.record['variant']} "
      f"({ae.record['fingerprint'][:12]}) into {out}; {nproc} process(es), "
      f"{jax.local_device_count()} device(s) each")
  written = 0
  plans, timing = {}, {}
  for split in e.splits:
    try:
      source = split_source(spec.data, split, _pixel_path(spec, split))
    except ValueError as err:
      raise ConfigError(f"encode.splits: {err}") from None
    n = len(source) if not e.max_images else min(len(source), e.max_images)
    count = -(-n // e.shard_size)
    plans[split] = (source, n, count)
    mine = list(range(pid, count, nproc))
    done = {k for k in mine if _shard_done(out / latent_data.shard_name(split, k, count))}
    size = lambda k: min(n, (k + 1) * e.shard_size) - k * e.shard_size
    total = sum(size(k) for k in mine)
    progress = _Progress(split, total, sum(size(k) for k in done))
    if done:
      log(f"encode {split}: {len(done)} of {len(mine)} shard(s) already done, verified")
    t0 = time.time()
    for k in mine:
      if k in done:
        continue
      kill = bool(e.inject_kill_after_shards) and written >= e.inject_kill_after_shards
      _encode_shard(encoder, source, spec, e, k * e.shard_size, min(n, (k + 1) * e.shard_size),
                    out / latent_data.shard_name(split, k, count), progress, kill)
      written += 1
    timing[split] = {"seconds": time.time() - t0, "images": progress.done - progress.start_done}
  if nproc > 1:
    multihost_utils.sync_global_devices("diffjax-encode-shards")
  manifest = None
  if pid == 0:
    manifest = _write_manifest(spec, e, ae, out, plans, time.time() - start_time, timing)
    if e.eval_split:
      reconstruction_metrics(spec, e, ae, out, workdir, local)
  if nproc > 1:
    multihost_utils.sync_global_devices("diffjax-encode-manifest")
  return manifest or latent_data.read_manifest(out)


def _write_manifest(spec: ExperimentSpec, e: EncodeSpec, ae: Autoencoder, out: pathlib.Path,
                    plans, seconds: float, timing) -> dict[str, Any]:
  splits, latent_shape = {}, None
  for split, (source, n, count) in plans.items():
    shards, sums = [], None
    for k in range(count):
      path = out / latent_data.shard_name(split, k, count)
      record = _shard_done(path)
      if record is None:
        raise RuntimeError(f"shard {path} is not done after every process finished")
      shard_sums = latent_data.ChannelSums.from_json(record["sums"])
      sums = shard_sums if sums is None else sums.merge(shard_sums)
      shards.append({k: record[k] for k in ("file", "count", "first_index", "sha256")})
    mean, std = sums.mean_std()
    splits[split] = {"count": n, "shards": shards, "channel_mean": mean, "channel_std": std,
                     "source": _source_record(spec, split, source)}
  latent_shape = list(ae.module.latent_shape(spec.data.pixel_shape))
  manifest = {"format": latent_data.FORMAT, "version": latent_data.VERSION,
              "autoencoder": ae.record, "latent_shape": latent_shape,
              "image_size": spec.data.image_size, "channels": spec.data.channels,
              "dtype": e.dtype, "flips": e.flip, "stored": "posterior moments (mean, logvar)",
              "splits": splits, "seconds": seconds,
              "this_launch": {"process": 0, "devices": jax.local_device_count(), **{
                  s: {**t, "images_per_s": t["images"] / max(t["seconds"], 1e-9)}
                  for s, t in timing.items()}}}
  tmp = out / (latent_data.MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1))
  tmp.replace(out / latent_data.MANIFEST)
  counts = ", ".join(f"{s} {v['count']}" for s, v in splits.items())
  log(f"wrote {out / latent_data.MANIFEST}: {counts} latents of shape {latent_shape}")
  return manifest


def reconstruction_metrics(spec: ExperimentSpec, e: EncodeSpec, ae: Autoencoder,
                           out: pathlib.Path, workdir: pathlib.Path, mesh) -> dict[str, Any]:
  """PSNR, SSIM and rFID of reconstructions of ``encode.eval_split`` (module docstring)."""
  source = split_source(spec.data, e.eval_split, _pixel_path(spec, e.eval_split))
  n = min(e.eval_num, len(source))
  sharding = parallel.batch_sharding(mesh)
  devices = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
  rec_fn = jax.jit(lambda x: ae.reconstruct(ae.variables, x), out_shardings=sharding)
  real, recon = [], []
  t0 = time.time()
  for lo in range(0, n, e.batch_size):
    x, _ = _images(source, spec, lo, min(n, lo + e.batch_size))
    b = len(x)
    pad = -(-b // devices) * devices - b
    xp = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
    y = np.asarray(rec_fn(jax.device_put(xp, sharding)))[:b]
    real.append(images.to_uint8(x))
    recon.append(images.to_uint8(y))
  real, recon = np.concatenate(real), np.concatenate(recon)
  seconds = time.time() - t0
  as_float = lambda u: jnp.asarray(u, jnp.float32) / 127.5 - 1.0
  result: dict[str, Any] = {"split": e.eval_split, "num_images": int(n),
                            "autoencoder": ae.record["fingerprint"],
                            "psnr": float(jnp.mean(psnr(as_float(real), as_float(recon)))),
                            "reconstruct_images_per_s": n / seconds}
  if min(real.shape[1:3]) >= 11:
    result["ssim"] = float(jnp.mean(ssim(as_float(real), as_float(recon))))
  if e.eval_fid:
    net = feature_net(spec.data, spec.eval, workdir, mesh, train_if_missing=True, log=log)
    fr, fg = net(real)["pool"], net(recon)["pool"]
    mu1, s1 = metrics.statistics(fr)
    mu2, s2 = metrics.statistics(fg)
    key = "rfid" if net.name == "inception" else f"rfd_{net.name}"
    result[key] = metrics.frechet_distance(mu1, s1, mu2, s2)
    result["feature_net"] = net.fingerprint
  name = f"reconstruction_{e.eval_split}"
  pairs = []
  for i in range(0, min(n, 32), 8):
    pairs += [real[i:i + 8], recon[i:i + 8]]
  images.save_png(out / f"{name}.png", images.make_grid(np.concatenate(pairs), ncols=8,
                                                        upscale=spec.sample.upscale))
  (out / f"{name}.json").write_text(json.dumps(result, indent=1))
  log(f"reconstructions of {n} {e.eval_split} images: " + ", ".join(
      f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)))
  return result

