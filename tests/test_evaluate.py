"""Evaluation end to end through launch.py with the domain classifier: reference statistics,
in-training evaluation, the eval job with several seeds and bits/dim, and refusal of a
mismatched reference."""

import json

import pytest

from diffjax.training.logger import read_metrics
from launch_util import launch

# DiT-tiny (tests/dit_tiny_config.py): the subject is evaluation, not the network.
COMMON = ["--config", "tests/dit_tiny_config.py", "--config.eval.feature_net=domain",
          "--config.eval.classifier_steps=60", "--config.sample.at_end=False",
          "--config.eval.kid_subset_size=16", "--config.eval.batch_size=24"]


def test_reference_train_eval_and_mismatch(tmp_path):
  w = tmp_path / "run"
  missing = launch(*COMMON, "--workdir", w, "--mode", "eval", check=False)
  assert missing.returncode == 2 and "no domain classifier" in missing.stderr

  launch(*COMMON, "--workdir", w, "--mode", "ref_stats")
  ref = json.loads((w / "eval" / "ref_domain_test.json").read_text())
  assert ref["num_images"] == 180 and 0.0 <= ref["classifier_accuracy"] <= 1.0
  assert ref["fingerprint"]["split"] == "test" and len(ref["fingerprint"]["weights_sha256"]) == 64

  launch(*COMMON, "--workdir", w, "--config.train.num_steps=6", "--config.eval.every_steps=3",
         "--config.eval.train_num_samples=24")
  logged = [m for m in read_metrics(w) if "eval/fd" in m]
  assert [m["step"] for m in logged] == [3, 6]
  assert {"eval/kid", "eval/precision", "eval/recall", "eval/class_accuracy"} <= set(logged[0])

  launch(*COMMON, "--workdir", w, "--mode", "eval", "--config.eval.num_samples=24",
         "--config.eval.seeds=2", "--config.eval.likelihood=ode",
         "--config.eval.likelihood_num=4", "--config.eval.likelihood_batch=4",
         "--config.eval.name=smoke")
  result = json.loads((w / "eval" / "smoke.json").read_text())
  assert result["checkpoint_step"] == 6 and result["seeds"] == 2
  m = result["metrics"]
  assert m["fd"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["class_accuracy"] <= 1
  # Each metric is the mean over the seeds' sample sets, with Student's t 95% interval
  # mean +- t(0.975, n - 1) s / sqrt(n) (s: sample standard deviation over the seeds).
  import numpy as np
  import scipy.stats
  for key in ("fd", "kid", "precision", "recall", "class_accuracy"):
    values = np.array([p[key] for p in result["per_seed"]])
    assert len(values) == 2 and m[key] == pytest.approx(values.mean(), rel=1e-12, abs=1e-15)
    half = scipy.stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
    interval = result["intervals"][key]
    assert interval["ci95_low"] == pytest.approx(values.mean() - half, rel=1e-9, abs=1e-12)
    assert interval["ci95_high"] == pytest.approx(values.mean() + half, rel=1e-9, abs=1e-12)
  fds = [p["fd"] for p in result["per_seed"]]
  assert fds[0] != fds[1]  # two seeds, two sample sets
  assert m["bits_per_dim"] > 0 and m["likelihood_images"] == 4
  assert (w / "eval" / "smoke.png").exists()

  other = launch(*COMMON, "--workdir", w, "--mode", "eval", "--config.eval.ref_split=train",
                 "--config.eval.ref_path=" + str(w / "eval" / "ref_domain_test.npz"),
                 check=False)
  assert other.returncode == 2, other.stderr
  assert "computed for different data" in other.stderr
  assert "split: reference has 'test', evaluation expects 'train'" in other.stderr


def test_missing_inception_weights_are_one_clear_error(tmp_path):
  """Before any data is read: the exact commands to obtain and convert the file, exit 2."""
  result = launch("--config", "configs/cifar10_ddpm.py:tiny", "--workdir", tmp_path / "run",
                  "--mode", "ref_stats", f"--config.eval.inception_cache={tmp_path / 'empty'}",
                  check=False)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith("error: eval.feature_net=inception: The FID Inception weights "
                                  f"are not in {tmp_path / 'empty'}")
  assert "python -m diffjax.evaluation.inception_weights --source" in result.stderr
  assert "--config.eval.inception_source=<that file>" in result.stderr
