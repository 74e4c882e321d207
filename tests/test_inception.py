"""The FID Inception network and FID against the reference implementations.

* Pool features of the Flax network equal the TorchScript FID network's (run by PyTorch) on
  real images from ../shared/assets to within 1e-4 relative error.
* FID between two real image sets equals pytorch-fid's ``calculate_frechet_distance`` on the
  same features to 1e-3.

Skipped with the reason when PyTorch, pytorch-fid or the assets are absent (CI installs
requirements-test*.txt, so they run there).
"""

import io
import pathlib
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffjax.evaluation import inception, inception_weights, metrics
from diffjax.models import weight_files
from torch_references import pytorch_fid_frechet

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "assets"
TORCHSCRIPT = ASSETS / "inception" / "inception-2015-12-05-fid.torchscript.pt"
CIFAR = ASSETS / "data" / "cifar10_jpeg" / "cifar10-jpeg-q75.tar.gz"
FACES = ASSETS / "faces" / "orl_faces_400x112x92.npz"

needs_assets = pytest.mark.skipif(not TORCHSCRIPT.exists(),
                                  reason=f"shared assets not found at {ASSETS}")


def test_resize_matrices_follow_their_definitions():
  # TF1 legacy (no half-pixel centres): output j samples input j * in / out.
  m = inception.resize_matrix(4, 6, half_pixel=False)
  for j in range(6):
    src = j * 4 / 6
    lo = int(np.floor(src))
    expected = np.zeros(4)
    expected[lo] += 1 - (src - lo)
    expected[min(lo + 1, 3)] += src - lo
    np.testing.assert_allclose(m[j], expected, atol=1e-12)
  np.testing.assert_allclose(m.sum(1), 1.0)
  assert np.allclose(inception.resize_matrix(5, 5, True), np.eye(5))


def test_half_pixel_resize_equals_torch_interpolate():
  torch = pytest.importorskip("torch", reason="PyTorch not installed (requirements-test.txt)")
  x = np.random.default_rng(0).integers(0, 256, (2, 32, 20, 3)).astype(np.uint8)
  ours = np.asarray(inception.preprocess(x, "pytorch_fid", size=45))
  t = torch.from_numpy(x.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(t, size=(45, 45), mode="bilinear", align_corners=False)
  ref = (2 * ref - 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=5e-6)  # float32 rounding; 1 level = 7.8e-3


@needs_assets
def test_torch_free_reader_equals_torch():
  torch = pytest.importorskip("torch", reason="PyTorch not installed (requirements-test.txt)")
  ours = weight_files.flat_tensors(weight_files.read_torch(TORCHSCRIPT))
  ref = {k: v.numpy() for k, v in torch.jit.load(str(TORCHSCRIPT)).state_dict().items()}
  assert ours.keys() == ref.keys() and len(ref) == 376
  assert all(np.array_equal(ours[k], ref[k]) for k in ref)


def _real_images(n_cifar=6, n_faces=2) -> np.ndarray:
  """uint8 [n, 299, 299, 3]: CIFAR-10 JPEGs and ORL faces, resized the TF way."""
  imgs = []
  with tarfile.open(CIFAR) as tar:
    names = sorted(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))[:n_cifar]
    for name in names:
      imgs.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(name).read())).convert("RGB")))
  small = np.stack(imgs)
  faces = np.load(FACES)["images"][:n_faces]
  faces = np.repeat(faces[..., None], 3, axis=-1).astype(np.uint8)
  return [small, faces]


@pytest.fixture(scope="module")
def flax_inception(tmp_path_factory):
  path = inception_weights.ensure(tmp_path_factory.mktemp("cache"), source=str(TORCHSCRIPT))
  params, sha = inception_weights.load(path)
  model = inception.FIDInceptionV3()
  # XLA's default -O2 here, not the session's -O0 (conftest.py): for this network it compiles
  # as fast and runs 2.3x faster (2.6 s -> 1.15 s per batch of 8 at 299x299 on 2 cores).
  return jax.jit(lambda p, x: model.apply({"params": p}, x)["pool"],
                 compiler_options={"xla_backend_optimization_level": 2}), params, sha


@needs_assets
def test_flax_inception_features_equal_the_torchscript_network(flax_inception):
  torch = pytest.importorskip("torch", reason="PyTorch not installed (requirements-test.txt)")
  apply, params, sha = flax_inception
  reference = torch.jit.load(str(TORCHSCRIPT)).eval()
  # 32x32 CIFAR-10 and 112x92 faces, each resized to 299x299 ([-1, 1]), in one batch of 8
  # (the batch size the FID test below uses: one compiled program for both).
  x = np.concatenate([np.asarray(inception.preprocess(b, "tf")) for b in _real_images()])
  ours = np.asarray(apply(params, jnp.asarray(x)))
  with torch.no_grad():
    ref = reference(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
  assert ours.shape == ref.shape == (8, 2048)
  rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
  assert rel.max() < 1e-4, rel
  assert len(sha) == 64


def test_frechet_distance_equals_pytorch_fid_on_synthetic_features():
  reference_fd = pytorch_fid_frechet()
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.2
  b = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.25 + 0.1
  s1, s2 = metrics.statistics(a), metrics.statistics(b)
  assert metrics.frechet_distance(*s1, *s2) == pytest.approx(reference_fd(*s1, *s2), abs=1e-3)


@needs_assets
def test_fid_between_real_image_sets_equals_pytorch_fid(flax_inception):
  reference_fd = pytorch_fid_frechet()
  apply, params, _ = flax_inception
  with tarfile.open(CIFAR) as tar:
    members = sorted(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))
    pick = lambda prefix: [n for n in members if n.startswith(prefix)][::100][:32]
    sets = [np.stack([np.asarray(Image.open(io.BytesIO(tar.extractfile(n).read()))
                                 .convert("RGB")) for n in pick(p)])
            for p in ("train/", "test/")]
  feats = [np.concatenate([np.asarray(apply(params, inception.preprocess(s[i:i + 8], "tf")))
                           for i in range(0, len(s), 8)]) for s in sets]
  s1, s2 = metrics.statistics(feats[0]), metrics.statistics(feats[1])
  ours = metrics.frechet_distance(*s1, *s2)
  reference = reference_fd(*s1, *s2)
  print(f"FID {ours!r} vs pytorch-fid {reference!r}")
  assert ours == pytest.approx(reference, rel=1e-6)  # 32 samples, 2048-d: singular covariances
  assert ours > 0


def test_missing_weights_say_which_file_to_put_where(tmp_path):
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth") as err:
    inception_weights.ensure(tmp_path / "empty")
  assert "python -m diffjax.evaluation.inception_weights --source" in str(err.value)
  assert str(tmp_path / "empty") in str(err.value)


def test_wrong_weight_file_is_rejected(tmp_path):
  bad = tmp_path / "not_inception.pt"
  bad.write_bytes(b"no zip")
  with pytest.raises(ValueError):
    inception_weights.convert(str(bad))
