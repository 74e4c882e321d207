"""pytorch-fid's ``.pth`` weight file (the other source `inception_weights` converts): a state
dict in pytorch-fid's layer names and layout, written by ``torch.save`` from the TorchScript FID
network's weights, converts to the same Flax weights as the TorchScript file itself (whose
features are checked against PyTorch in test_inception.py), plus the 1008-way ``fc`` layer;
zip-format files are read without PyTorch, legacy ones through it."""

import pathlib

import numpy as np
import pytest

from diffjax.evaluation import inception_weights

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "assets"
TORCHSCRIPT = ASSETS / "inception" / "inception-2015-12-05-fid.torchscript.pt"


@pytest.mark.skipif(not TORCHSCRIPT.exists(), reason=f"shared assets not found at {ASSETS}")
@pytest.mark.parametrize("zip_format", [True, False])
def test_pytorch_fid_state_dict_converts_like_the_torchscript_file(tmp_path, zip_format):
  torch = pytest.importorskip("torch", reason="PyTorch not installed (requirements-test.txt)")
  reference = inception_weights.convert(str(TORCHSCRIPT))
  rng = np.random.default_rng(0)
  state = {}  # pytorch-fid: <block>.<branch>.conv.weight [out, in, kh, kw], <...>.bn.* (eps 1e-3)
  gammas = {}
  for name, entry in reference.items():
    key = name.replace("/", ".")
    gammas[name] = rng.uniform(0.5, 2.0, entry["beta"].shape).astype(np.float32)
    state[f"{key}.conv.weight"] = np.transpose(entry["kernel"], (3, 2, 0, 1))
    state[f"{key}.bn.weight"] = gammas[name]
    state[f"{key}.bn.bias"] = entry["beta"]
    state[f"{key}.bn.running_mean"] = entry["mean"]
    state[f"{key}.bn.running_var"] = entry["var"]
    state[f"{key}.bn.num_batches_tracked"] = np.array(0, np.int64)
  fc_w = rng.normal(size=(1008, 2048)).astype(np.float32)
  fc_b = rng.normal(size=1008).astype(np.float32)
  state.update({"fc.weight": fc_w, "fc.bias": fc_b})
  path = tmp_path / "pt_inception.pth"
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path,
             _use_new_zipfile_serialization=zip_format)
  got = inception_weights.convert(str(path))
  assert set(got) == set(reference) | {"fc"} and len(reference) == 94
  for name, entry in reference.items():
    for leaf in ("kernel", "beta", "mean", "var"):
      np.testing.assert_array_equal(got[name][leaf], entry[leaf], err_msg=f"{name}/{leaf}")
    np.testing.assert_array_equal(got[name]["gamma"], gammas[name])
  np.testing.assert_array_equal(got["fc"]["kernel"], fc_w.T)
  np.testing.assert_array_equal(got["fc"]["bias"], fc_b)
  # Through the cache as the jobs read it: the fc layer (for the Inception Score) included.
  params, sha = inception_weights.load(inception_weights.ensure(tmp_path / "cache", str(path)))
  assert params["fc"]["kernel"].shape == (2048, 1008) and len(sha) == 64
