"""Sanity figure for the FID pipeline: Inception FID / KID between CIFAR-10 train and test images.

Reads the JPEG archive of ../shared/assets (CIFAR-10 re-encoded as JPEG quality ~75, so both
sides carry the same compression), takes the first ``--train_per_class`` train and
``--test_per_class`` test images of every class (sorted by file name), computes the standard
Inception pool features with diffjax's Flax network and compares:

* train (first half) vs test: the train/test gap, the classic "FID of the data itself";
* train (first half) vs train (second half), equal sizes: the floor that finite sample size
  alone gives, so the first number can be read (FID is biased upwards at small N; KID is not).

Writes results.json and results.md beside this file.

  python experiments/cifar10_jpeg_fid/run.py                                # CPU subset
  python experiments/cifar10_jpeg_fid/run.py --train_per_class 5000 --test_per_class 1000
  # ^ the full 50k-vs-10k protocol (about 1 minute on one GPU)
"""

import collections
import io
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("archive", str(ROOT.parent / "shared" / "assets" / "data" / "cifar10_jpeg" /
                                   "cifar10-jpeg-q75.tar.gz"), "CIFAR-10 JPEG archive")
flags.DEFINE_integer("train_per_class", 200, "train images per class (split in two halves)")
flags.DEFINE_integer("test_per_class", 100, "test images per class")
flags.DEFINE_string("weights_source", str(ROOT.parent / "shared" / "assets" / "inception" /
                                          "inception-2015-12-05-fid.torchscript.pt"),
                    "Inception weight file to convert if the cache is empty")
flags.DEFINE_integer("batch", 64, "images per call")
FLAGS = flags.FLAGS


def read_split(archive: str, split: str, per_class: int):
  """The first ``per_class`` images of each class of ``split`` as uint8 [N, 32, 32, 3]."""
  import numpy as np
  from PIL import Image

  from diffjax.data.convert import _iter_tar
  taken = collections.Counter()
  images, labels = [], []
  for cls, _, data in _iter_tar(archive, split):
    if taken[cls] < per_class:
      taken[cls] += 1
      images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
      labels.append(cls)
  return np.stack(images), np.asarray(labels)


def main(argv):
  del argv
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    from diffjax.parallel.distributed import split_host_into_devices
    split_host_into_devices(FLAGS.batch)
  import jax
  import numpy as np

  from diffjax import parallel
  from diffjax.evaluation import features, metrics
  start = time.time()
  train, train_labels = read_split(FLAGS.archive, "train", FLAGS.train_per_class)
  test, _ = read_split(FLAGS.archive, "test", FLAGS.test_per_class)
  # Halves with the same class balance: alternate images of each class.
  order = np.argsort(train_labels, kind="stable")
  half_a, half_b = train[order[0::2]], train[order[1::2]]
  print(f"train halves {len(half_a)} + {len(half_b)}, test {len(test)} images", flush=True)
  mesh = parallel.make_mesh({"data": jax.device_count(), "fsdp": 1, "tensor": 1})
  net = features.inception_net(mesh, source=FLAGS.weights_source, batch_size=FLAGS.batch)
  feats = {name: net(x, progress=True)["pool"].astype(np.float64)
           for name, x in (("train_a", half_a), ("train_b", half_b), ("test", test))}
  stats = {k: metrics.statistics(v) for k, v in feats.items()}

  def compare(a, b):
    kid, kid_std = metrics.kernel_inception_distance(feats[a], feats[b])
    return {"fid": round(metrics.frechet_distance(*stats[a], *stats[b]), 3),
            "kid_x1000": round(1e3 * kid, 3), "kid_std_x1000": round(1e3 * kid_std, 3),
            "n": [len(feats[a]), len(feats[b])]}

  result = {"archive": os.path.basename(FLAGS.archive), "network": net.fingerprint,
            "train_vs_test": compare("train_a", "test"),
            "train_vs_train": compare("train_a", "train_b"),
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "seconds": round(time.time() - start)}
  out = pathlib.Path(__file__).parent
  (out / "results.json").write_text(json.dumps(result, indent=1))
  rows = [("train vs test", result["train_vs_test"]),
          ("train vs train (other half)", result["train_vs_train"])]
  (out / "results.md").write_text(
      "| comparison | images | FID | KID x 1e3 (std) |\n|---|---|---|---|\n" +
      "".join(f"| {name} | {r['n'][0]} vs {r['n'][1]} | {r['fid']} | {r['kid_x1000']} "
              f"({r['kid_std_x1000']}) |\n" for name, r in rows))
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  from diffjax.host import reexec_with_huge_pages
  reexec_with_huge_pages()  # huge pages for XLA:CPU's buffers (see diffjax/host.py)
  app.run(main)
