"""Weights of `AutoencoderKL`: strict import of diffusers' ``.safetensors`` files, a converted
cache, and the ``.npz`` files diffjax writes for autoencoders it trained.

Import (``diffusion_pytorch_model.safetensors`` of sd-vae-ft-ema / -mse, SDXL's, SD3's and
FLUX's VAEs in the diffusers layout) reads the file with the ``safetensors`` library (no
PyTorch). It is strict: the header is checked first (a file that ends before a tensor's bytes
names that tensor), then every tensor must map to exactly one parameter of the network with the
shape the network expects, and every parameter must be found; anything else stops the import
with the names listed. Attention weights under diffusers' deprecated names (``query``, ``key``,
``value``, ``proj_attn``, as older checkpoints such as sd-vae-ft-ema store them) are accepted as
the current ones (``to_q`` ...). Half- and bfloat16 tensors are converted to float32.

A converted file is cached once as ``vae_<sha256 of the source>.npz`` (default
``~/.cache/diffjax``, or ``$DIFFJAX_CACHE``) holding the parameters, the source's SHA-256, the
architecture and the SHA-256 of the parameters themselves, which is what identifies an
autoencoder (`fingerprint`): latent datasets record it and training on them checks it.

  python -m diffjax.models.vae_weights --source vae/diffusion_pytorch_model.safetensors \\
      --variant sd-vae [--config vae/config.json] [--cache_dir DIR]
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.autoencoder import AutoencoderKL, ConvStack, architecture, normalization
from diffjax.models import weight_files
from diffjax.models.weight_files import (WeightImportError, default_cache_dir, flatten, names,
                                         read_header, read_safetensors, sha256_file, strict_map,
                                         to_flax, torch_shape, unflatten)

FORMAT = "diffjax-autoencoder"  # the .npz files of this module
# Reading files, hashing and the strict name/shape check are shared with the denoiser importers
# (diffjax.models.weight_files); the names stay importable from here.
_names = names
_to_flax, _torch_shape, _flatten, _unflatten = to_flax, torch_shape, flatten, unflatten


# --- diffusers names <-> Flax parameters -----------------------------------------------------
_RENAMES = [
    (re.compile(r"^(down|up)_blocks_(\d+)_resnets_(\d+)$"), r"\1_blocks.\2.resnets.\3"),
    (re.compile(r"^down_blocks_(\d+)_downsample$"), r"down_blocks.\1.downsamplers.0"),
    (re.compile(r"^up_blocks_(\d+)_upsample$"), r"up_blocks.\1.upsamplers.0"),
    (re.compile(r"^resnets_(\d+)$"), r"resnets.\1"),
    (re.compile(r"^attentions_(\d+)$"), r"attentions.\1"),
]
_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}


def diffusers_name(path: tuple[str, ...]) -> tuple[str, str]:
  """``(diffusers tensor name, kind)`` of a Flax parameter path; kind is ``conv``, ``linear``
  or ``vector`` (how the tensor is laid out in PyTorch)."""
  *modules, leaf = path
  wrapper = modules[-1]  # layers.Conv / Dense / GroupNorm wrap flax's module named like this
  kind = {"conv": "conv", "dense": "linear", "norm": "vector"}[wrapper]
  if leaf == "bias":
    kind = "vector"
  parts = []
  for m in modules[:-1]:
    if m in ("trunk", "attention"):
      continue  # diffjax-only nesting (decoder trunk, the attention layer inside its block)
    for pattern, repl in _RENAMES:
      if pattern.match(m):
        m = pattern.sub(repl, m)
        break
    parts.append(_ATTENTION.get(m, m))
  return ".".join(parts + ["weight" if leaf in ("kernel", "scale") else "bias"]), kind


def abstract_params(module: AutoencoderKL) -> dict:
  """The parameter shapes of ``module`` (no compute)."""
  side = 2 * module.downsampling
  x = jax.ShapeDtypeStruct((1, side, side, module.in_channels), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  return nn.meta.unbox(variables["params"])


def from_diffusers(tensors: dict[str, np.ndarray], module: AutoencoderKL, source: str = "") -> dict:
  """Flax parameters of ``module`` from diffusers-named tensors, strictly.

  Raises:
    WeightImportError: tensors the network has no place for, parameters the file lacks, or
      shapes that differ; every offending name is listed (in diffusers' names).
  """
  tensors = weight_files.canonical_attention_names(tensors)
  expected = {}
  for path, leaf in _flatten(abstract_params(module)):
    name, kind = diffusers_name(path)
    expected[name] = (path, kind, tuple(leaf.shape))
  strict_map(tensors, {name: _torch_shape(shape, kind)
                       for name, (_, kind, shape) in expected.items()},
             describe(module), source=source)
  return _unflatten({path: _to_flax(tensors[name], kind).astype(np.float32)
                     for name, (path, kind, _) in expected.items()})


def describe(module: AutoencoderKL) -> str:
  a = architecture(module)
  return (f"AutoencoderKL(block_out_channels={tuple(a['block_out_channels'])}, "
          f"layers_per_block={a['layers_per_block']}, latent_channels={a['latent_channels']}, "
          f"quant_conv={a['use_quant_conv']}, post_quant_conv={a['use_post_quant_conv']})")


# --- identity ---------------------------------------------------------------------------------
def params_sha256(params) -> str:
  """SHA-256 of a parameter tree (names, shapes and float32 bytes, in sorted order)."""
  return weight_files.params_sha256(params, nn.meta.unbox)


def fingerprint(module: AutoencoderKL, params_hash: str) -> str:
  """What identifies an autoencoder: its architecture and its parameters' SHA-256."""
  blob = json.dumps({"architecture": architecture(module), "params_sha256": params_hash},
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


# --- .npz files (cache and diffjax's own) -----------------------------------------------------
def save_npz(path, params, module: AutoencoderKL, **info) -> dict[str, Any]:
  """Writes ``params`` of ``module`` with their identity; returns the identity record."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  params = nn.meta.unbox(params)
  flat = {"/".join(p): np.asarray(v, np.float32) for p, v in _flatten(params)}
  record = {"format": FORMAT, "architecture": architecture(module),
            "normalization": normalization(module), "params_sha256": params_sha256(params),
            **info}
  record["fingerprint"] = fingerprint(module, record["params_sha256"])
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, __info__=np.array(json.dumps(record, sort_keys=True)), **flat)
  tmp.replace(path)
  return record


def read_npz_info(path) -> dict[str, Any]:
  """The identity record of a diffjax autoencoder ``.npz`` (no parameters read)."""
  try:
    with np.load(path) as f:
      if "__info__" not in f.files:
        raise WeightImportError(f"{path}: not a diffjax autoencoder file (no __info__ entry)")
      return json.loads(str(f["__info__"]))
  except (OSError, ValueError) as e:
    if isinstance(e, WeightImportError):
      raise
    raise WeightImportError(f"{path}: unreadable autoencoder file ({e})") from None


def load_npz(path, module: AutoencoderKL) -> tuple[dict, dict[str, Any]]:
  """``(params, identity record)`` of a diffjax autoencoder ``.npz``, checked strictly
  against ``module`` (architecture, every parameter name and shape)."""
  info = read_npz_info(path)
  if info.get("architecture") != architecture(module):
    diffs = [f"{k}: file has {info.get('architecture', {}).get(k)!r}, the config "
             f"{v!r}" for k, v in architecture(module).items()
             if info.get("architecture", {}).get(k) != v]
    raise WeightImportError(f"{path} holds another autoencoder architecture: " +
                            "; ".join(diffs))
  expected = {"/".join(p): tuple(v.shape) for p, v in _flatten(abstract_params(module))}
  with np.load(path) as f:
    got = {k: f[k] for k in f.files if k != "__info__"}
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  wrong = [f"{k!r} has shape {got[k].shape}, the network expects {expected[k]}"
           for k in sorted(set(expected) & set(got)) if tuple(got[k].shape) != expected[k]]
  if missing or unexpected or wrong:
    raise WeightImportError(f"{path}: missing {_names(missing)}; unexpected "
                            f"{_names(unexpected)}; " + "; ".join(wrong[:10]))
  params = _unflatten({tuple(k.split("/")): v.astype(np.float32) for k, v in got.items()})
  if params_sha256(params) != info["params_sha256"]:
    raise WeightImportError(f"{path}: its parameters do not hash to the SHA-256 it records "
                            f"(damaged file)")
  return params, info


def cache_path(source_sha256: str, cache_dir=None) -> pathlib.Path:
  return pathlib.Path(cache_dir or default_cache_dir()) / f"vae_{source_sha256[:20]}.npz"


def import_safetensors(source, module: AutoencoderKL, *, cache_dir=None,
                       use_cache: bool = True) -> tuple[dict, dict[str, Any]]:
  """``(params, identity record)`` of a diffusers ``.safetensors`` file for ``module``,
  converted once and then read from the cache (matched on the source's SHA-256 and the
  architecture)."""
  source = pathlib.Path(source)
  read_header(source)  # a damaged file is named before it is hashed or cached
  source_sha = sha256_file(source)
  target = cache_path(source_sha, cache_dir)
  if use_cache and target.exists():
    try:
      params, info = load_npz(target, module)
      if info.get("source_sha256") == source_sha:
        return params, info
    except WeightImportError:
      pass  # converted for another architecture or damaged: convert again
  params = from_diffusers(read_safetensors(source), module, str(source))
  info = {"source": str(source.absolute()), "source_sha256": source_sha}
  if use_cache:
    try:
      info = save_npz(target, params, module, **info)
    except OSError:  # a read-only cache folder must not stop the import
      info = {**info, "params_sha256": params_sha256(params)}
  else:
    info = {**info, "params_sha256": params_sha256(params)}
  info.setdefault("fingerprint", fingerprint(module, info["params_sha256"]))
  return params, info


def load_weights(path, module: AutoencoderKL, *, cache_dir=None) -> tuple[dict, dict[str, Any]]:
  """``(params, identity record)`` from a diffusers ``.safetensors`` file or a diffjax
  ``.npz``; the record holds ``fingerprint`` and ``params_sha256``."""
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    return import_safetensors(path, module, cache_dir=cache_dir)
  if path.suffix == ".npz":
    if not path.is_file():
      raise WeightImportError(f"{path}: no such file")
    return load_npz(path, module)
  raise WeightImportError(f"{path}: autoencoder weights must be a diffusers .safetensors file "
                          f"or a diffjax .npz, got {path.suffix or 'no suffix'!r}")


def weights_fingerprint(path, module: AutoencoderKL, *, cache_dir=None) -> str:
  """The `fingerprint` of the autoencoder ``path`` holds, read from its record where it has
  one (diffjax ``.npz`` files, converted caches) instead of hashing the parameters again."""
  path = pathlib.Path(path)
  if path.suffix == ".npz" and path.is_file():
    info = read_npz_info(path)
    if info.get("architecture") == architecture(module):
      return info["fingerprint"]
  return load_weights(path, module, cache_dir=cache_dir)[1]["fingerprint"]


# --- diffusers config.json --------------------------------------------------------------------
def config_from_diffusers(config: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
  """`AutoencoderKL` keyword arguments of a diffusers ``AutoencoderKL`` ``config.json``.

  Raises:
    WeightImportError: a configuration this network does not implement (another activation,
      block type or normalisation).
  """
  if not isinstance(config, dict):
    config = json.loads(pathlib.Path(config).read_text())
  if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    raise WeightImportError(f"not an AutoencoderKL config: _class_name "
                            f"{config.get('_class_name')!r}")
  problems = []
  if config.get("act_fn", "silu") != "silu":
    problems.append(f"act_fn {config['act_fn']!r} (only silu)")
  for key, want in (("down_block_types", "DownEncoderBlock2D"),
                    ("up_block_types", "UpDecoderBlock2D")):
    if any(t != want for t in config.get(key, [want])):
      problems.append(f"{key} {config[key]} (only {want})")
  if problems:
    raise WeightImportError("unsupported AutoencoderKL configuration: " + "; ".join(problems))
  out = {"in_channels": config.get("in_channels", 3),
         "out_channels": config.get("out_channels", 3),
         "block_out_channels": tuple(config.get("block_out_channels", (64,))),
         "layers_per_block": config.get("layers_per_block", 1),
         "latent_channels": config.get("latent_channels", 4),
         "norm_num_groups": config.get("norm_num_groups", 32),
         "use_quant_conv": bool(config.get("use_quant_conv", True)),
         "use_post_quant_conv": bool(config.get("use_post_quant_conv", True)),
         "mid_block_add_attention": bool(config.get("mid_block_add_attention", True)),
         "scaling_factor": float(config.get("scaling_factor", 0.18215)),
         "shift_factor": float(config.get("shift_factor") or 0.0)}
  for key in ("latents_mean", "latents_std"):
    if config.get(key) is not None:
      out[key] = tuple(float(v) for v in config[key])
  return out


# --- feature networks of perceptual losses ------------------------------------------------------
FEATURE_FORMAT = "diffjax-feature-net"


def save_feature_net(path, ops, arrays: dict[str, dict[str, np.ndarray]], *, in_channels: int,
                     input_size: int = 0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     source: str = "") -> pathlib.Path:
  """Writes a `ConvStack` feature network: ``ops`` as its docstring describes them and, per
  convolution name, ``{"kernel": [kh, kw, in, out], "bias": [out]}``."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  spec = {"format": FEATURE_FORMAT, "ops": [list(op) for op in ops], "in_channels": in_channels,
          "input_size": input_size, "mean": list(mean), "std": list(std), "source": source}
  flat = {f"{name}/{k}": np.asarray(v, np.float32) for name, d in arrays.items()
          for k, v in d.items()}
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, __feature_net__=np.array(json.dumps(spec)), **flat)
  tmp.replace(path)
  return path


def _op(op: list) -> tuple:
  if op[0] == "conv":
    name, features, kernel, stride, padding, relu = op[1:]
    padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return ("conv", name, int(features), int(kernel), int(stride), padding, bool(relu))
  return tuple(op)


def load_feature_net(path) -> tuple[ConvStack, dict, dict[str, Any]]:
  """``(module, params, info)`` of a feature-network file (`save_feature_net`), its arrays
  checked against the network they describe; ``info["sha256"]`` is the file's hash."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightImportError(f"feature network {path}: no such file")
  try:
    with np.load(path) as f:
      spec = json.loads(str(f["__feature_net__"]))
      arrays = {k: f[k] for k in f.files if k != "__feature_net__"}
  except (OSError, KeyError, ValueError) as e:
    raise WeightImportError(f"{path}: not a diffjax feature-network file ({e})") from None
  module = ConvStack(tuple(_op(op) for op in spec["ops"]), spec["in_channels"],
                     spec.get("input_size", 0), tuple(spec["mean"]), tuple(spec["std"]))
  side = max(spec.get("input_size", 0), 64)
  x = jax.ShapeDtypeStruct((1, side, side, spec["in_channels"]), jnp.float32)
  expected = {"/".join(p[:-1] + (p[-1],)): tuple(v.shape) for p, v in _flatten(nn.meta.unbox(
      jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]))}
  got = {}
  for key, value in arrays.items():
    name, leaf = key.rsplit("/", 1)
    got[f"{name}/conv/{leaf}"] = value
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  wrong = [f"{k!r} has shape {got[k].shape}, the network expects {expected[k]}"
           for k in sorted(set(expected) & set(got)) if tuple(got[k].shape) != expected[k]]
  if missing or unexpected or wrong:
    raise WeightImportError(f"{path}: the arrays do not fit the ops it lists: missing "
                            f"{_names(missing)}; unexpected {_names(unexpected)}; " +
                            "; ".join(wrong[:10]))
  params = _unflatten({tuple(k.split("/")): v.astype(np.float32) for k, v in got.items()})
  return module, params, {"sha256": sha256_file(path), "source": spec.get("source", "")}


def inception_stem(params: dict, *, eps: float = 1e-3):
  """``(ops, arrays)`` of the FID Inception-v3's first five convolutions with their batch
  normalisation folded in (``kernel * gamma / sqrt(var + eps)``, ``beta - mean * ...``) and
  its two max pools, tapping the 64- and 192-channel maps; ``params`` as
  ``diffjax.evaluation.inception_weights.load`` returns them. For `save_feature_net` with
  ``mean = std = (0.5,) * 3`` (the network's [-1, 1] input)."""
  convs = {"Conv2d_1a_3x3": (32, 3, 2, "VALID"), "Conv2d_2a_3x3": (32, 3, 1, "VALID"),
           "Conv2d_2b_3x3": (64, 3, 1, ((1, 1), (1, 1))), "Conv2d_3b_1x1": (80, 1, 1, "VALID"),
           "Conv2d_4a_3x3": (192, 3, 1, "VALID")}
  arrays = {}
  for name in convs:
    p = params[name]
    scale = np.asarray(p["gamma"]) / np.sqrt(np.asarray(p["var"]) + eps)
    arrays[name] = {"kernel": np.asarray(p["kernel"]) * scale,
                    "bias": np.asarray(p["beta"]) - np.asarray(p["mean"]) * scale}
  conv = lambda name: ("conv", name, *convs[name], True)
  ops = [conv("Conv2d_1a_3x3"), conv("Conv2d_2a_3x3"), conv("Conv2d_2b_3x3"), ("tap",),
         ("maxpool", 3, 2), conv("Conv2d_3b_1x1"), conv("Conv2d_4a_3x3"), ("tap",)]
  return ops, arrays


def main(argv):
  from absl import flags

  from diffjax.models.registry import AUTOENCODERS
  del argv
  f = flags.FLAGS
  kwargs = config_from_diffusers(f.config) if f.config else {}
  module = AUTOENCODERS.build(f.variant, **kwargs)
  params, info = import_safetensors(f.source, module, cache_dir=f.cache_dir)
  n = sum(int(np.size(v)) for v in jax.tree.leaves(params))
  print(f"{f.source}: {n / 1e6:.2f}M parameters imported; cached in "
        f"{cache_path(info['source_sha256'], f.cache_dir)}; fingerprint {info['fingerprint']}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("source", None, "diffusers .safetensors file of an AutoencoderKL")
  flags.DEFINE_string("variant", "sd-vae", "autoencoder variant (diffjax.models.registry)")
  flags.DEFINE_string("config", None, "diffusers config.json (overrides the variant's fields)")
  flags.DEFINE_string("cache_dir", None, "cache folder (default ~/.cache/diffjax)")
  flags.mark_flags_as_required(["source"])
  app.run(main)
