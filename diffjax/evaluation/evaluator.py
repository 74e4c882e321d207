"""Scoring generated images against a dataset: the feature network of ``eval.feature_net``,
reference statistics of the real ``eval.ref_split`` (fingerprinted, so statistics of other
data or another network are refused), and the `Evaluator` that the eval job and the training
loop's periodic evaluation share."""

from __future__ import annotations

import pathlib
from typing import Callable

import jax
import numpy as np

from diffjax import data as data_lib
from diffjax import images
from diffjax.evaluation import domain_classifier, features, memorization, metrics, reference
from diffjax.fields import ConfigError
from diffjax.spec import DataSpec, EvalSpec


def classifier_dir(workdir: pathlib.Path) -> pathlib.Path:
  return workdir / "eval" / "domain_classifier"


def ref_path(e: EvalSpec, workdir: pathlib.Path) -> pathlib.Path:
  """Where the reference statistics are (``eval.ref_path``, or named after net and split)."""
  if e.ref_path:
    return pathlib.Path(e.ref_path)
  suffix = f"_{e.protocol}" if e.feature_net == "inception" else ""
  return workdir / "eval" / f"ref_{e.feature_net}{suffix}_{e.ref_split}.npz"


def split_source(d: DataSpec, split: str, path: str = ""):
  """The data source of ``split`` (at ``path``, default ``data.path``)."""
  return data_lib.make_source(d.source, name=d.name, split=split, data_dir=d.data_dir,
                              path=path or d.path, image_key=d.image_key,
                              label_key=d.label_key)


def ref_source(d: DataSpec, e: EvalSpec):
  return split_source(d, e.ref_split, e.ref_data_path)


def real_images(d: DataSpec, source) -> tuple[np.ndarray, np.ndarray]:
  """Every image of a source, preprocessed like training data, as uint8 [N, H, W, C]."""
  options = data_lib.PipelineOptions(d.image_size, d.channels, False, 500,
                                     num_workers=d.num_workers)
  xs, ys = [], []
  for batch in data_lib.iterate_once(source, options):
    xs.append(images.to_uint8(batch["image"]))
    ys.append(np.asarray(batch["label"]))
  return np.concatenate(xs), np.concatenate(ys)


def feature_net(d: DataSpec, e: EvalSpec, workdir: pathlib.Path, mesh, *, seed: int = 0,
                train_if_missing: bool = False,
                log: Callable[[str], None] = print) -> features.FeatureNet:
  """The Inception network, or the domain classifier of ``workdir`` (trained on the training
  split first when missing and ``train_if_missing``)."""
  if e.feature_net == "inception":
    try:
      return features.inception_net(mesh, cache_dir=e.inception_cache or None,
                                    source=e.inception_source or None,
                                    download=e.download_inception, protocol=e.protocol)
    except (FileNotFoundError, ValueError) as err:  # no weights yet, or not Inception's
      raise ConfigError(f"eval.feature_net=inception: {err}\nOr convert on the fly with "
                        f"--config.eval.inception_source=<that file>.") from None
  directory = classifier_dir(workdir)
  try:
    return features.domain_net(mesh, directory)
  except FileNotFoundError:
    if not train_if_missing:
      raise ConfigError(f"no domain classifier in {directory}; run --mode ref_stats first")
  x, y = real_images(d, split_source(d, d.split))
  log(f"training the domain classifier on {len(x)} {d.split} images")
  params = domain_classifier.train(x, y, d.num_classes, steps=e.classifier_steps, seed=seed,
                                   log=log)
  if jax.process_index() == 0:
    domain_classifier.save(directory, params, {
        "num_classes": d.num_classes, "image_size": d.image_size, "channels": d.channels,
        "trained_on": d.split, "steps": e.classifier_steps})
  return features.domain_net(mesh, directory)


def expected_fingerprint(d: DataSpec, e: EvalSpec, net: features.FeatureNet, source) -> dict:
  return {**reference.data_fingerprint(
      d.source, name=d.name, split=e.ref_split, path=e.ref_data_path or d.path,
      image_size=d.image_size, channels=d.channels, source=source), **net.fingerprint}


class Evaluator:
  """Feature net and checked reference, built once; scores sets of generated images."""

  def __init__(self, d: DataSpec, e: EvalSpec, workdir: pathlib.Path, mesh):
    self.eval = e
    self.net = feature_net(d, e, workdir, mesh)
    path = ref_path(e, workdir)
    fmt = getattr(e, "ref_format", "diffjax")
    try:
      self.ref = reference.load_any(path, fmt)
    except FileNotFoundError:
      raise ConfigError(f"no reference statistics at {path}; compute them first with "
                        f"--mode ref_stats (same config) or set eval.ref_path") from None
    except ValueError as err:
      raise ConfigError(f"eval.ref_path: {err}") from None
    try:
      if fmt == "diffjax":
        reference.check(self.ref["fingerprint"],
                        expected_fingerprint(d, e, self.net, ref_source(d, e)), path)
      else:  # a paper's file: same features and protocol, no local data to compare with
        reference.check_published(self.ref["fingerprint"], self.net.fingerprint, d.image_size,
                                  path)
    except reference.ReferenceMismatch as err:
      raise ConfigError(str(err)) from None
    if self.ref.get("images") is not None:  # ADM's batches: features of their images
      self.ref["features"] = self.net(self.ref.pop("images"))["pool"]
    self.path = path
    self._data = d
    self._train = None

  def training_set(self) -> tuple[np.ndarray, np.ndarray]:
    """The training split as uint8 images and their features (computed once)."""
    if self._train is None:
      x, _ = real_images(self._data, split_source(self._data, self._data.split))
      self._train = (x, self.net(x)["pool"])
    return self._train

  def memorization(self, generated_uint8: np.ndarray) -> tuple[dict, np.ndarray]:
    """The copy check of `diffjax.evaluation.memorization` against the training split, with
    the threshold from the reference's held-out features; and the closest pairs (uint8)."""
    e = self.eval
    train_x, train_f = self.training_set()
    result = memorization.check(self.net(generated_uint8)["pool"], train_f,
                                self.ref["features"], quantile=e.memorization_quantile,
                                factor=e.memorization_factor)
    pairs = memorization.closest_pairs(generated_uint8, train_x, result)
    return {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}, pairs

  def score(self, generated_uint8: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    e = self.eval
    feats = self.net(generated_uint8)
    pool = feats["pool"]
    mu, sigma = metrics.statistics(pool)
    out = {"fd": metrics.frechet_distance(mu, sigma, self.ref["mu"], self.ref["sigma"])}
    if self.ref["features"] is not None:  # published mu/sigma-only files have none
      kid, _ = metrics.kernel_inception_distance(pool, self.ref["features"],
                                                 subset_size=e.kid_subset_size)
      out["kid"] = kid
      out["precision"], out["recall"] = metrics.precision_recall(self.ref["features"], pool,
                                                                 k=e.pr_k)
    if self.net.name == "inception" and self.net.has_logits:
      out["inception_score"] = metrics.inception_score(feats["logits"])[0]
    if self.net.name == "domain" and labels is not None:
      out["class_accuracy"] = float(np.mean(feats["logits"].argmax(1) == labels))
    return out
