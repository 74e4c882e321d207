"""Reading published weight files strictly: ``.safetensors`` (the ``safetensors`` library, no
PyTorch), PyTorch's zip-format ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``:
unpickled here with only the few globals state dicts use, so nothing in the file is executed;
legacy non-zip files need PyTorch), the SHA-256 of a source file, and the strict matching of
named tensors to a network's parameters that every importer shares (`strict_map`): every
tensor must map to exactly one parameter with the shape the network expects and every
parameter must be found, or the import stops with every offending name listed.

Used by the autoencoder import (`diffjax.models.vae_weights`) and the denoiser importers
(`diffjax.models.importers`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import pathlib
import pickle
import re
import struct
import zipfile
from typing import Any, Callable, Iterable

import numpy as np

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class WeightImportError(ValueError):
  """A weight file that does not fit the network; the message names the tensors."""


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("DIFFJAX_CACHE", pathlib.Path.home() / ".cache" / "diffjax"))


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# diffusers' deprecated attention names (files saved before diffusers 0.15) -> current ones
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def canonical_attention_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """diffusers-named tensors with deprecated attention names renamed to the current ones.

  Raises:
    WeightImportError: a file holding both the old and the new name of one tensor.
  """
  out = {}
  for name, value in tensors.items():
    m = re.match(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$", name)
    new = f"{m.group(1)}{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}" if m else name
    if new in out:
      raise WeightImportError(f"tensor {name!r} duplicates {new!r} (old and new attention "
                              f"names in one file)")
    out[new] = value
  return out


def names(items: list[str], limit: int = 12) -> str:
  """``'a', 'b', ... and N more``: a readable list of tensor names for error messages."""
  shown = ", ".join(repr(n) for n in items[:limit])
  return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- .safetensors ---------------------------------------------------------------------------
def read_header(path) -> dict[str, dict[str, Any]]:
  """The tensor table of a ``.safetensors`` file, checked against the file's size.

  Raises:
    WeightImportError: not a safetensors file, a damaged header, a tensor whose byte range
      does not match its shape and dtype, or a file that ends before some tensor's bytes (those
      tensors are named).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightImportError(f"{path}: no such file")
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise WeightImportError(f"{path}: not a safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
      raise WeightImportError(f"{path}: truncated or not a safetensors file: its header claims "
                              f"{n} bytes but the file holds {size - 8} after the length")
    raw = f.read(n)
  try:
    header = json.loads(raw)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WeightImportError(f"{path}: damaged safetensors header ({e})") from None
  header.pop("__metadata__", None)
  data_size = size - 8 - n
  beyond, bad = [], []
  for name, entry in header.items():
    try:
      dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
      bad.append(f"{name!r}: malformed entry {entry!r}")
      continue
    if dtype not in _DTYPE_BYTES:
      bad.append(f"{name!r}: unknown dtype {dtype!r}")
    elif end - start != math.prod(shape) * _DTYPE_BYTES[dtype]:
      bad.append(f"{name!r}: {end - start} bytes cannot hold {dtype} {tuple(shape)}")
    if end > data_size:
      beyond.append((start, name))
  if beyond:
    missing = [name for _, name in sorted(beyond)]
    raise WeightImportError(
        f"{path} is truncated: its data ends at byte {data_size}, before the end of "
        f"{len(missing)} tensor(s): {names(missing)} (download or copy it again)")
  if bad:
    raise WeightImportError(f"{path}: damaged tensor table: " + "; ".join(bad[:10]))
  return header


def read_safetensors(path) -> dict[str, np.ndarray]:
  """Every tensor of a checked (`read_header`) ``.safetensors`` file as float32 numpy."""
  from safetensors import safe_open
  header = read_header(path)
  not_float = sorted(k for k, v in header.items() if v["dtype"] not in _FLOAT_DTYPES)
  if not_float:
    raise WeightImportError(f"{path}: tensors of non-float dtype {names(not_float)}")
  out = {}
  with safe_open(str(path), framework="numpy") as f:
    for name in f.keys():
      if header[name]["dtype"] == "BF16":
        continue  # numpy has no bfloat16: read below through JAX
      out[name] = np.asarray(f.get_tensor(name), np.float32)
  bf16 = [k for k, v in header.items() if v["dtype"] == "BF16"]
  if bf16:
    import jax.numpy as jnp
    with safe_open(str(path), framework="flax") as f:
      for name in bf16:
        out[name] = np.asarray(f.get_tensor(name).astype(jnp.float32))
  return out


# --- PyTorch zip files ------------------------------------------------------------------------
def _storage_dtypes() -> dict[str, Any]:
  import ml_dtypes  # a JAX dependency: numpy's bfloat16
  return {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
          "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64,
          "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
          "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Storage:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *args):
  del args  # requires_grad, backward hooks, metadata
  if not size:
    return storage[offset].copy()
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *args):
  del args
  return data


class _AttributeDict(dict):
  """An object unpickled as a dict of its attributes: ``argparse.Namespace`` (training
  checkpoints of DiT store their ``args``) and TorchScript modules (``torch.jit.save`` files,
  e.g. the FID Inception network)."""

  def __setstate__(self, state):
    self.update(state if isinstance(state, dict) else {"__state__": state})


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._storages: dict[str, np.ndarray] = {}
    self._dtypes = _storage_dtypes()

  def find_class(self, module: str, name: str):
    if module.startswith("__torch__"):  # a scripted module's class
      return _AttributeDict
    if module == "torch.jit._pickle" and name.startswith("build_"):  # scripted lists etc.
      return lambda x: x
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in self._dtypes:
      return _Storage(self._dtypes[name])
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "argparse" and name == "Namespace":
      return _AttributeDict
    if module == "copyreg" and name == "_reconstructor":  # how a plain object is pickled
      return lambda cls, base, state: cls()
    raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a weight file")

  def persistent_load(self, pid):
    kind, storage, key, _location, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      self._storages[key] = np.frombuffer(raw, storage.dtype, count=numel)
    return self._storages[key]


def read_torch(path) -> Any:
  """The object a zip-format ``torch.save`` or ``torch.jit.save`` file holds (a state dict;
  a scripted module as nested dicts of its attributes), tensors as numpy arrays; a legacy
  (non-zip) file is read through PyTorch when it is installed.

  Raises:
    WeightImportError: no such file, not a PyTorch file, a global a state dict does not use.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightImportError(f"{path}: no such file")
  if not zipfile.is_zipfile(path):
    try:
      import torch
    except ImportError:
      raise WeightImportError(f"{path} is not a zip-format PyTorch file; reading a legacy "
                              f"torch.save file needs PyTorch installed") from None
    try:
      obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle: not a weight file
      raise WeightImportError(f"{path}: not a readable PyTorch file ({e})") from None
    return _tensors_to_numpy(obj)
  try:
    with zipfile.ZipFile(path) as archive:
      pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if not pkl:
        raise WeightImportError(f"{path}: no data.pkl inside; not a PyTorch file")
      prefix = pkl[0].rsplit("/", 1)[0]
      with archive.open(pkl[0]) as f:
        return _Unpickler(f, archive, prefix).load()
  except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError) as e:
    raise WeightImportError(f"{path}: damaged or unsupported PyTorch file ({e})") from None


def _tensors_to_numpy(obj):
  if hasattr(obj, "detach") and hasattr(obj, "float"):
    return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.numpy()
  if isinstance(obj, dict):
    return {k: _tensors_to_numpy(v) for k, v in obj.items()}
  return obj


def flat_tensors(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dicts of arrays flattened to ``{"a.b.weight": array}``."""
  out = {}
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      out.update(flat_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def read_tensors(path, *, prefer: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], str]:
  """``({name: float32 array}, note)`` of a ``.safetensors``, PyTorch or ``.npz`` file.

  ``prefer``: for a PyTorch checkpoint holding several state dicts (a training checkpoint's
  ``{"model", "ema", "opt", "args"}``), the first of these keys present is read (``note`` says
  which); a plain state dict is read whole.
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    return read_safetensors(path), ""
  if suffix == ".npz":
    if not path.is_file():
      raise WeightImportError(f"{path}: no such file")
    with np.load(path) as f:
      return {k: np.asarray(f[k], np.float32) for k in f.files}, ""
  if suffix in TORCH_SUFFIXES:
    obj = read_torch(path)
    note = ""
    if isinstance(obj, dict):
      for key in prefer:
        if isinstance(obj.get(key), dict):
          obj, note = obj[key], f"the {key!r} entry of a checkpoint holding {sorted(obj)}"
          break
    tensors = flat_tensors(obj)
    if not tensors:
      raise WeightImportError(f"{path}: holds no tensors")
    not_float = sorted(k for k, v in tensors.items() if not np.issubdtype(v.dtype, np.floating)
                       and v.dtype.name != "bfloat16")
    if not_float:
      raise WeightImportError(f"{path}: tensors of non-float dtype {names(not_float)} (a "
                              f"training checkpoint? its model or EMA entry is a state dict)")
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}, note
  raise WeightImportError(f"{path}: unknown weight file type {suffix or '(no suffix)'!r}; "
                          f"expected .safetensors, .npz or a PyTorch file "
                          f"({', '.join(TORCH_SUFFIXES)})")


# --- names and layouts ------------------------------------------------------------------------
def flatten(tree, path=()) -> Iterable[tuple[tuple[str, ...], Any]]:
  if isinstance(tree, dict) or hasattr(tree, "items"):
    for k in sorted(tree):
      yield from flatten(tree[k], path + (k,))
  else:
    yield path, tree


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return out


def to_flax(tensor: np.ndarray, kind: str) -> np.ndarray:
  """A PyTorch tensor in Flax's layout: ``conv`` [O, I, kh, kw] -> [kh, kw, I, O], ``linear``
  [out, in] -> [in, out]; anything else as is."""
  if kind == "conv":
    return np.transpose(tensor, (2, 3, 1, 0))
  if kind == "linear":
    return np.transpose(tensor, (1, 0))
  return tensor


def torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  """The PyTorch shape of a Flax parameter of ``shape`` (inverse of `to_flax`)."""
  if kind == "conv":
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  if kind == "linear":
    return tuple(reversed(shape))
  return tuple(shape)


def strict_map(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]],
               what: str, *, source: str = "") -> None:
  """Checks that ``tensors`` (name -> array) are exactly ``expected`` (name -> shape).

  Raises:
    WeightImportError: ``"<source>: the weights do not fit <what>: missing tensor(s) ... |
      unexpected tensor(s) ... | wrong shape(s): ..."`` with every offending name.
  """
  where = f"{source}: " if source else ""
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  wrong = [f"{n!r} has shape {tuple(tensors[n].shape)}, the network expects {expected[n]}"
           for n in sorted(set(expected) & set(tensors))
           if tuple(tensors[n].shape) != tuple(expected[n])]
  if missing or unexpected or wrong:
    problems = []
    if missing:
      problems.append(f"missing tensor(s) {names(missing)}")
    if unexpected:
      problems.append(f"unexpected tensor(s) {names(unexpected)}")
    if wrong:
      problems.append("wrong shape(s): " + "; ".join(wrong[:10]) +
                      (f"; and {len(wrong) - 10} more" if len(wrong) > 10 else ""))
    raise WeightImportError(f"{where}the weights do not fit {what}: " + " | ".join(problems))


def params_sha256(params, unbox: Callable | None = None) -> str:
  """SHA-256 of a parameter tree (names, shapes and float32 bytes, in sorted order)."""
  h = hashlib.sha256()
  for path, leaf in flatten(unbox(params) if unbox else params):
    arr = np.ascontiguousarray(np.asarray(leaf, np.float32))
    h.update("/".join(path).encode())
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
  return h.hexdigest()
