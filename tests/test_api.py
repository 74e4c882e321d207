"""diffjax.load: a trained run from Python (the README's example runs here as written), equal
to what the jobs restore and sample."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import diffusion, images
from diffjax.jobs.common import checkpointer, experiment_spec, state_setup
from launch_util import ROOT, launch

STEPS = 10


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The default config's tiny variant trained for a few steps through launch.py."""
  w = tmp_path_factory.mktemp("api") / "runs" / "default"
  launch("--config", "configs/default.py:tiny", "--workdir", w, f"--config.train.num_steps={STEPS}",
         "--config.sample.at_end=False")
  return w


def test_the_readme_example_runs_as_written(run, monkeypatch, capsys):
  readme = (ROOT / "README.md").read_text()
  block = re.search(r"<!-- python-example[^>]*-->\s*```python\n(.*?)```", readme, re.S).group(1)
  monkeypatch.chdir(run.parents[1])  # where "runs/default" is
  exec(compile(block.replace("\n  ", "\n").strip(), "README.md", "exec"), {})
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == "(20, 8, 8, 1) uint8"
  assert printed[1] == f"{STEPS} (4, 8, 8, 1)"


def test_load_restores_the_ema_and_samples_like_the_sampler_api(run):
  model = diffjax.load(run)
  assert model.step == STEPS and model.method.name == "diffusion"
  # The EMA parameters, equal to the full checkpoint's, and nothing of the optimiser.
  spec = experiment_spec(model.config)
  setup = state_setup(spec, model.mesh)
  ckpt = checkpointer(spec, run)
  state, _, _ = ckpt.restore_latest(setup.abstract)
  ckpt.close()
  assert set(model.variables) == {"denoiser"} and set(model.variables["denoiser"]) == {"params"}
  for a, b in zip(jax.tree.leaves(model.variables["denoiser"]["params"]),
                  jax.tree.leaves(state.nets["denoiser"].ema_params)):
    np.testing.assert_array_equal(a, b)
  # sample() == the diffusion API on model.denoiser() with the same key (first chunk: key 0).
  labels = np.array([0, 1, 2, 7, 7, 9], np.int32)
  x = model.sample(labels=labels, sampler="ddim", num_steps=8, guidance=1.0, seed=3)
  assert x.shape == (6, 8, 8, 1) and x.dtype == np.uint8 and x.std() > 0
  ref = diffusion.sample(model.denoiser(), model.schedule, (6, 8, 8, 1),
                         jax.random.fold_in(jax.random.PRNGKey(3), 0), sampler="ddim",
                         num_steps=8, cond=jnp.asarray(labels))
  ref = images.to_uint8(jnp.clip(ref, -1, 1))
  assert np.abs(x.astype(int) - ref.astype(int)).max() <= 1  # sharded vs unsharded rounding
  np.testing.assert_array_equal(model.sample(labels=labels, sampler="ddim", num_steps=8,
                                             guidance=1.0, seed=3), x)
  assert not np.array_equal(model.sample(labels=labels, sampler="ddim", num_steps=8,
                                         guidance=1.0, seed=4), x)


def test_load_errors_name_the_problem(run, tmp_path):
  with pytest.raises(ValueError, match="holds no config.json"):
    diffjax.load(tmp_path)
  with pytest.raises(Exception, match=f"no checkpoint of step 3 in .*steps \\[{STEPS}\\]"):
    diffjax.load(run, step=3)
  model = diffjax.load(run)
  with pytest.raises(ValueError, match="got 2 labels for n=3"):
    model.sample(3, labels=[1, 2])
  with pytest.raises(ValueError, match="sampler 'ddim' got unknown option"):
    model.sample(2, sampler="ddim", s_churn=1.0)


def test_the_readme_evaluation_commands_run_and_python_evaluates_alike(run):
  """ref_stats then eval on the default config as the README gives them (its :tiny variant:
  the run was trained with it), with no evaluation setting changed; then Model.evaluate."""
  tiny = ["--config", "configs/default.py:tiny", "--workdir", run]
  launch(*tiny, "--mode", "ref_stats")
  out = launch(*tiny, "--mode", "eval").stdout
  (written,) = (pathlib.Path(run) / "eval").glob("domain_*_n256_step10.json")
  assert f"wrote {written}" in out
  result = diffjax.load(run).evaluate(num_samples=64)
  assert result["checkpoint_step"] == STEPS and result["num_samples"] == 64
  assert result["feature_net"]["feature_net"] == "domain"
  assert (pathlib.Path(run) / "eval" / "ref_domain_test.npz").exists()
  m = result["metrics"]
  assert m["fd"] > 0 and 0 <= m["class_accuracy"] <= 1


def test_autoguidance_by_another_workdir_through_the_sample_job(run):
  """A run guiding itself: D + w (D - D) = D, so autoguided samples equal unguided ones; the
  guide's variables come from the other workdir's checkpoint through the jobs' restore."""
  tiny = ["--config", "configs/default.py:tiny", "--workdir", run, "--mode", "sample",
          "--config.sample.num_images=8", "--config.sample.num_steps=4"]
  launch(*tiny, f"--config.sample.autoguidance.workdir={run}",
         "--config.sample.guidance_scale=3.0")
  launch(*tiny, "--config.sample.guidance_scale=1.0")
  guided = np.load(pathlib.Path(run) / "samples" / f"ddim4_ag3_step{STEPS}.npz")["images"]
  plain = np.load(pathlib.Path(run) / "samples" / f"ddim4_step{STEPS}.npz")["images"]
  assert np.abs(guided.astype(int) - plain.astype(int)).max() <= 1
  other = launch(*tiny, "--config.sample.autoguidance.workdir=/nonexistent",
                 "--config.sample.guidance_scale=3.0", check=False)
  assert other.returncode == 2 and "/nonexistent holds no config.json" in other.stderr


def test_evaluation_grid_on_one_checkpoint_resumes_after_a_kill(run, tmp_path):
  """samplers x step counts x guidance scales against one reference; killed after its first
  finished cell and relaunched, the finished cell is kept, not recomputed."""
  import signal
  import subprocess
  import sys
  import time
  from launch_util import subprocess_env
  tiny = ["--config", "configs/default.py:tiny", "--workdir", str(run), "--mode", "eval",
          "--config.eval.num_samples=32", "--config.eval.name=grid",
          "--config.eval.grid.sampler=('ddim','heun')", "--config.eval.grid.num_steps=(3,6)",
          "--config.eval.grid.guidance_scale=(1.0,2.0)"]
  if not (run / "eval" / "ref_domain_test.npz").exists():  # test order: may be the first
    launch(*tiny[:4], "--mode", "ref_stats")
  grid = pathlib.Path(run) / "eval" / "grid"
  proc = subprocess.Popen([sys.executable, "launch.py", *tiny], cwd=ROOT, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and not list(grid.glob("*.json")):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = {p.name: p.read_text() for p in grid.glob("*.json")}
  assert 1 <= len(first) < 8
  out = launch(*tiny).stdout
  assert out.count("done before, kept") == len(first)
  for name, text in first.items():
    assert (grid / name).read_text() == text
  cells = [p for p in grid.glob("*.json")]
  assert len(cells) == 8 and (grid / "fd_vs_nfe.png").exists()
  table = (grid / "results.md").read_text()
  assert "Best setting (lowest FD)" in table and table.count("\n| ") == 9  # header + 8 cells
  rows = [json.loads(p.read_text()) for p in cells]
  assert {r["nfe"] for r in rows if r["sampler"] == "heun"} == {5, 11}  # 2N - 1
  assert {r["nfe"] for r in rows if r["sampler"] == "ddim"} == {3, 6}
