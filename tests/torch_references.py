"""Reference implementations from PyPI that several tests compare against, loaded the same way
everywhere (skipped, with the requirement file named, where the package is absent)."""

import sys
import types

import pytest


def pytorch_fid_frechet():
  """pytorch-fid's own ``calculate_frechet_distance``. Its package imports torchvision for its
  Inception model only, so torchvision is stubbed for the import and the stub removed after
  (it would make diffusers believe torchvision is installed)."""
  torch = pytest.importorskip("torch", reason="PyTorch not installed (requirements-test.txt)")
  stub = {}
  if "torchvision" not in sys.modules:
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.0"
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.inception = types.ModuleType("torchvision.models.inception")
    for name in ("InceptionA", "InceptionC", "InceptionE"):
      setattr(tv.models.inception, name, torch.nn.Module)
    stub = {"torchvision": tv, "torchvision.transforms": tv.transforms,
            "torchvision.models": tv.models, "torchvision.models.inception": tv.models.inception}
    sys.modules.update(stub)
  try:
    fid_score = pytest.importorskip("pytorch_fid.fid_score", reason="pytorch-fid not installed "
                                    "(requirements-test-nodeps.txt)")
  finally:
    for name in stub:
      sys.modules.pop(name, None)
  return fid_score.calculate_frechet_distance
