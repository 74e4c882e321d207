"""End to end through launch.py, as users run it: each data source kind, sampling, sweeps, bad
configs, and two processes on localhost (preempted and resumed)."""

import json
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffjax import data
from diffjax.data import convert, records
from diffjax.testing import fault_injection as fi
from diffjax.training.logger import read_metrics
from launch_util import ROOT, launch, subprocess_env

TINY = ["--config", "configs/default.py:tiny", "--config.sample.num_images=10"]
# The data-source and multi-process tests: DiT-tiny, half the time.
DIT_CONFIG = "tests/dit_tiny_config.py"
TINY_DIT = ["--config", DIT_CONFIG]


def test_digits_train_and_sample(tmp_path):
  """Train, then sample from the checkpoint. (Resuming: test_faults, through launch.py too.)"""
  w = tmp_path / "run"
  first = launch(*TINY, "--workdir", w, "--config.train.num_steps=10")
  assert "step 10/10" in first.stdout
  assert (w / "samples" / "step_0000010.png").exists()
  assert (w / "config.json").exists() and list((w / "tensorboard").glob("events.*"))
  rows = read_metrics(w)
  assert {"loss", "grad_norm", "lr", "steps_per_sec", "images_per_sec"} <= set(rows[-1])
  sampled = launch(*TINY, "--workdir", w, "--mode", "sample", "--config.sample.sampler=heun",
                   "--config.sample.num_steps=4")
  assert "wrote 10 samples from step 10" in sampled.stdout
  npz = np.load(next((w / "samples").glob("heun4*_step10.npz")))
  assert npz["images"].shape == (10, 8, 8, 1) and npz["images"].dtype == np.uint8
  np.testing.assert_array_equal(npz["labels"], np.arange(10) % 10)
  # Real samples, not a constant image: they vary within and across images, and equal the
  # sampler API's draw from the checkpoint's EMA denoiser with the job's key (seed + 2, first
  # chunk).
  x = npz["images"].astype(np.float64)
  assert x.std() > 5 and np.mean(x.std(axis=(1, 2, 3))) > 5 and len(np.unique(x)) > 20
  import jax
  import jax.numpy as jnp
  import diffjax
  from diffjax import diffusion, images
  model = diffjax.load(w)
  ref = diffusion.sample(model.denoiser(), model.schedule, (10, 8, 8, 1),
                         jax.random.fold_in(jax.random.PRNGKey(2), 0), sampler="heun",
                         num_steps=4, cond=jnp.asarray(npz["labels"]), guidance_scale=2.0,
                         null_cond=10)  # the default config's classifier-free guidance
  ref = images.to_uint8(jnp.clip(ref, -1, 1)).astype(np.float64)
  assert np.abs(ref - x).max() <= 1, np.abs(ref - x).max()


def test_array_record_source(tmp_path):
  src = data.digits_source("test")
  recs = [records.encode_record(records.encode_png(src[i]["image"]), src[i]["label"])
          for i in range(len(src))]
  convert.write_shards(recs, tmp_path / "digits_ar", "train", num_shards=2)
  out = launch(*TINY_DIT, "--workdir", tmp_path / "run", "--config.train.num_steps=4",
               "--config.data.source=array_record",
               f"--config.data.path={tmp_path / 'digits_ar'}", "--config.sample.at_end=False")
  assert "180 training examples" in out.stdout and "step 4/4" in out.stdout


def test_tfds_source_through_mock_data(tmp_path):
  wrapper = textwrap.dedent(f"""
      import runpy, sys
      import tensorflow_datasets as tfds
      sys.argv = ["launch.py", "--config", {DIT_CONFIG!r},
                  "--workdir", {str(tmp_path / 'run')!r}, "--config.train.num_steps=3",
                  "--config.data.source=tfds", "--config.data.name=mnist",
                  "--config.data.image_size=8", "--config.sample.at_end=False"]
      with tfds.testing.mock_data(num_examples=40):
        runpy.run_path("launch.py", run_name="__main__")
      """)
  result = subprocess.run([sys.executable, "-c", wrapper], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "40 training examples" in result.stdout and "step 3/3" in result.stdout


@pytest.mark.parametrize("override,message", [
    ("--config.optim.lr=-0.1", "config.optim.lr: must be > 0, got -0.1"),
    ("--config.model.name=UNet-XXL", "config.model.name: got 'UNet-XXL'; allowed:"),
    ("--config.data.batch_size=12", "config.data.batch_size: 12 is not divisible by the 8"),
    ("--config.sample.sampler=dpm", "config.sample.sampler: got 'dpm'; allowed: ddpm"),
    ("--config.optim.lrr=1", "--config.optim.lrr: no such config field"),
    ("--config.diffusion.schedule=cosin", "config.diffusion.schedule: got 'cosin'; allowed: "),
])
def test_bad_configs_fail_before_compute_with_the_field_named(tmp_path, override, message):
  result = launch(*TINY, "--workdir", tmp_path / "run", override, check=False, timeout=120)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/nope.py"],
     "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    ([*TINY, "--config.data.batch_size=abc"], "error: --config.data.batch_size=abc: not a value "
     "of that field's type (invalid literal for int() with base 10: 'abc')"),
    ([*TINY, "runs/x"], "error: bad command line: unexpected argument(s) ['runs/x']; every "
     "option is a --flag"),
])
def test_command_line_mistakes_are_one_line_errors(tmp_path, args, message):
  result = launch(*args, "--workdir", tmp_path / "run", check=False, timeout=120)
  assert result.returncode == 2 and result.stderr.strip() == message


def test_a_mesh_the_cpu_split_cannot_cover_says_why(tmp_path):
  """A batch of 13 splits over one CPU device whatever the cores; asking for two says why."""
  env = subprocess_env(XLA_FLAGS="")
  result = launch(*TINY, "--workdir", tmp_path / "run", "--config.data.batch_size=13",
                  "--config.mesh.data=2", env=env, check=False, timeout=120)
  assert result.returncode == 2
  assert "covers 2 devices, but 1 are present" in result.stderr
  assert "runs 1 XLA device(s): launch.py gives each core a device only up to the largest " \
         "divisor of data.batch_size (13)" in result.stderr


def test_workdir_of_another_experiment_is_refused(tmp_path):
  w = tmp_path / "run"
  w.mkdir()
  (w / "config.json").write_text(json.dumps({"experiment": "x", "method": {"name": "diffusion"},
                                             "optim": {"lr": 0.5}}))
  result = launch(*TINY, "--workdir", w, check=False, timeout=120)
  assert result.returncode == 2 and "holds a different experiment" in result.stderr
  assert "optim.lr: workdir has 0.5" in result.stderr


def test_sweep_dry_run_and_run(tmp_path):
  cfg = tmp_path / "sweep_cfg.py"
  cfg.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(ROOT)!r})
      from configs import default

      def get_config(arg=None):
        c = default.get_config("tiny")
        c.train.num_steps = 3
        c.sample.at_end = False
        return c

      def get_sweep():
        # Seeds, not learning rates: the points share one compiled train step.
        return [{{"name": "seed_a", "train.seed": 1}}, {{"train.seed": 2}}]
      """))
  dry = launch("--config", cfg, "--workdir", tmp_path / "sw", "--sweep", "--dry_run")
  lines = [l for l in dry.stdout.splitlines() if "launch.py" in l]
  assert len(lines) == 2 and "--config.train.seed=1" in lines[0]
  assert str(tmp_path / "sw") not in lines[0].split()  # no stray copy of the workdir value
  assert f"--workdir={tmp_path / 'sw' / 'seed_a'}" in lines[0] and "seed=2" in lines[1]
  assert not (tmp_path / "sw").exists()
  launch("--config", cfg, "--workdir", tmp_path / "sw", "--sweep", timeout=600)
  table = (tmp_path / "sw" / "sweep_results.md").read_text()
  assert "seed_a" in table and "seed=2" in table
  assert (tmp_path / "sw" / "sweep_results.csv").read_text().count("\n") == 3


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_one_model_like_one_process_through_a_preemption(tmp_path):
  """Two processes with two CPU devices each == one process with four: FSDP across the
  processes (mesh.dcn_fsdp=2: parameters, optimiser state and batch split over both) and data
  parallel within each. A SIGTERM reaches process 1 alone: JAX's preemption sync point stops
  both at the same step, both save it and exit 42, and the relaunched pair resumes from it and
  finishes with the single process's losses. Hybrid data-across / FSDP-within layouts are in
  test_scale (fake hosts)."""
  common = [*TINY_DIT, "--config.train.num_steps=10", "--config.logging.log_every=1",
            "--config.sample.at_end=False", "--config.mesh.rules=fsdp", "--config.mesh.data=2",
            "--config.mesh.fsdp=2"]
  four_devices = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
  launch(*common, "--workdir", tmp_path / "single", env=four_devices)
  multi = tmp_path / "multi"
  result = fi.two_process_sigterm(multi, [*common, "--config.mesh.dcn_fsdp=2"], at_step=3,
                                  port=_free_port(), devices_each=2)
  assert result["exit_codes"] == [fi.EXIT_PREEMPTED] * 2, result["stderr"]
  step = result["saved_steps"][0]
  assert step is not None and 3 <= step < 10 and result["saved_steps"] == [step, step]
  assert result["resume_exit_codes"] == [0, 0], result["resume_stderr"]
  assert result["resumed_from"] == step
  out = result["stdout"]
  assert ("mesh {'data': 2, 'fsdp': 2, 'tensor': 1} over 4 device(s) in 2 process(es), "
          "{'fsdp': 2} of it across processes\n") in out
  total, per_device = map(float, re.search(r"train state \(\w+ rules\): ([\d.]+) MB in all, "
                                           r"([\d.]+) MB per device", out).groups())
  assert per_device < 0.6 * total
  # Where each device sits (sharding.txt): each process holds one half of the fsdp axis, for
  # both rows of the data axis (a one-host layout would give each process a data row).
  lines = (multi / "sharding.txt").read_text().splitlines()
  layout = json.loads(next(l for l in lines if l.startswith("processes: "))[11:])
  np.testing.assert_array_equal(np.array(layout)[:, :, 0], [[0, 1], [0, 1]])
  single = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "single")}
  resumed = {m["step"]: m["loss"] for m in read_metrics(multi)}  # the relaunch's rows win
  assert sorted(single) == sorted(resumed) == list(range(1, 11))
  np.testing.assert_allclose([resumed[k] for k in single], list(single.values()), rtol=1e-5)
  assert sorted(int(p.name) for p in (multi / "checkpoints").iterdir()
                if p.name.isdigit()) == [step, 10]


def test_fields_added_since_a_run_began_are_named_not_refused():
  from diffjax.workdir import added_fields, identity_differences
  saved = {"train": {"num_steps": 10, "ema_decay": 0.99}}
  later = {"train": {"num_steps": 10, "ema_decay": 0.99, "posthoc_ema_stds": [],
                     "posthoc_ema_every": 0}, "latent": {"dtype": "float32"}}
  assert identity_differences(saved, later) == []
  assert added_fields(saved, later) == ["latent.dtype", "train.posthoc_ema_every",
                                        "train.posthoc_ema_stds"]
  later["train"]["ema_decay"] = 0.9
  assert identity_differences(saved, later) == [
      "train.ema_decay: workdir has 0.99, this launch has 0.9"]
