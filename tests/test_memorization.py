"""The memorisation check: planted copies of training images are found, real held-out images
are not reported, in pixel space on the digits; and through the eval job."""

import json

import numpy as np

from diffjax import data
from diffjax.evaluation import memorization
from launch_util import launch


def _digits(split):
  src = data.digits_source(split)
  return np.stack([src[i]["image"] for i in range(len(src))])


def test_planted_copies_are_found_and_held_out_images_are_not():
  train, test = _digits("train"), _digits("test")
  rng = np.random.default_rng(0)
  # Copies of 20 training images with +-8 of pixel noise (of 0..255), and 90 real test images
  # the threshold never saw (the other 90 calibrate it).
  copies = np.clip(train[:20].astype(int) + rng.integers(-8, 9, train[:20].shape), 0, 255)
  calibration, unseen = test[:90], test[90:]
  generated = np.concatenate([copies, unseen]).astype(np.float32)
  result = memorization.check(generated, train.astype(np.float32),
                              calibration.astype(np.float32))
  flagged = result["distances"] < result["threshold"]
  assert flagged[:20].all()  # recall 1 on the planted copies
  assert not flagged[20:].any()  # no real held-out image reported
  assert result["copy_fraction"] == 20 / 110
  np.testing.assert_array_equal(result["nearest"][:20], np.arange(20))
  # Brute force: the nearest neighbour by an explicit double loop.
  q = generated[25].ravel().astype(np.float64)
  d = [np.linalg.norm(q - t.ravel()) for t in train.astype(np.float64)]
  assert result["nearest"][25] == int(np.argmin(d))
  assert np.isclose(result["distances"][25], min(d))
  pairs = memorization.closest_pairs(copies.astype(np.uint8), train, memorization.check(
      copies.astype(np.float32), train.astype(np.float32), calibration.astype(np.float32)), 4)
  assert pairs.shape == (8, 8, 8, 1)


def test_the_eval_job_reports_the_copy_fraction(tmp_path):
  common = ["--config", "tests/dit_tiny_config.py", "--workdir", tmp_path / "run",
            "--config.eval.classifier_steps=60", "--config.sample.at_end=False"]
  launch(*common, "--config.train.num_steps=4")
  launch(*common, "--mode", "ref_stats")
  launch(*common, "--mode", "eval", "--config.eval.num_samples=48",
         "--config.eval.memorization=True", "--config.eval.name=copies")
  result = json.loads((tmp_path / "run" / "eval" / "copies.json").read_text())
  m = result["memorization"]
  assert 0 <= m["copy_fraction"] <= 1 and m["threshold"] > 0
  assert m["median_heldout_distance"] > m["threshold"]
  assert (tmp_path / "run" / "eval" / "copies_closest_pairs.png").exists()
