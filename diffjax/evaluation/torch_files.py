"""Reads PyTorch weight files without PyTorch.

Handles the zip container that ``torch.save`` (since 1.6) and ``torch.jit.save`` write: a
pickle (``data.pkl``) whose tensors point at raw little-endian storages stored as separate zip
entries. TorchScript modules unpickle as nested attribute dicts; tensors become numpy arrays.
Only the few globals such files use are allowed, so nothing in the file is executed.
Older non-zip ``torch.save`` files need PyTorch (`load_with_torch`).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchObject(dict):
  """A TorchScript module (or other scripted object) as a dict of its attributes; subclasses
  made per scripted type carry its name in ``type_name``."""

  type_name = ""

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.update(state)
    else:
      self["__state__"] = state


class _StorageType:
  def __init__(self, name: str):
    self.dtype = _STORAGE_DTYPES[name]


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


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._storages: dict[str, np.ndarray] = {}
    self._classes: dict[str, type] = {}

  def find_class(self, module: str, name: str):
    if module.startswith("__torch__"):
      full = f"{module}.{name}"
      if full not in self._classes:
        self._classes[full] = type(name, (TorchObject,), {"type_name": full})
      return self._classes[full]
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch.jit._pickle" and name.startswith("build_"):
      return lambda x: x
    raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a weight file")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      self._storages[key] = np.frombuffer(raw, storage_type.dtype, count=numel)
    return self._storages[key]


def load_zip_pickle(path: str) -> Any:
  """Unpickles a zip-format ``torch.save`` / ``torch.jit.save`` file into numpy objects.

  Raises:
    ValueError: the file is not a zip-format PyTorch file.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a zip-format PyTorch file (a legacy torch.save file needs "
                     f"PyTorch installed to convert it)")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
      raise ValueError(f"{path}: no data.pkl inside; not a PyTorch file")
    prefix = pkl[0].rsplit("/", 1)[0]
    with archive.open(pkl[0]) as f:
      return _Unpickler(f, archive, prefix).load()


def named_tensors(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Flattens nested TorchScript objects / state dicts into ``{"a.b.weight": array}``."""
  out = {}
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      out.update(named_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def load_with_torch(path: str) -> dict[str, np.ndarray]:
  """Any PyTorch weight file (state dict or TorchScript) through PyTorch itself."""
  import torch  # optional dependency, only for legacy files
  try:
    module = torch.jit.load(path, map_location="cpu")
    state = module.state_dict()
  except RuntimeError:
    state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state.items()}
