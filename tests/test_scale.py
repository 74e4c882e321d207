"""Scale features on fake CPU devices: data parallel, FSDP and DP x FSDP x tensor meshes train
like one device and really split the parameters and optimiser state; gradient accumulation
equals one step on the whole batch; rematerialisation changes memory, not results."""

import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from configs import default
from diffjax import data, host, parallel
from diffjax.experiment import build_spec
from diffjax.fields import ConfigError
from diffjax.jobs.common import checkpointer, state_setup
from diffjax.jobs.train import compile_step
from diffjax.methods.diffusion import loss_fn
from diffjax.training.setup import jit_train_step
from dit_tiny_config import DIT
from launch_util import tiny_config

MESHES = {
    "one device": ({"data": 1, "fsdp": 1, "tensor": 1}, "data_parallel"),
    "dp8": ({"data": 8, "fsdp": 1, "tensor": 1}, "data_parallel"),
    "fsdp8": ({"data": 1, "fsdp": 8, "tensor": 1}, "fsdp"),
    "dp2 fsdp2 tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, "fsdp_tensor"),
}


def _spec(model: str):
  c = default.get_config("tiny")
  c.model.name = model
  c.model.kwargs = {}
  c.data.batch_size = 16
  return build_spec(c, num_devices=8)


def _batches(spec, n=4):
  it = iter(data.make_dataset(data.digits_source("train"), data.PipelineOptions(
      8, 1, False, spec.data.batch_size, 0, 0)))
  return [next(it) for _ in range(n)]


def _train(spec, mesh_shape, rules, batches):
  devices = jax.devices()[:int(np.prod(list(mesh_shape.values())))]
  mesh = parallel.make_mesh(mesh_shape, devices)
  setup = state_setup(spec, mesh, parallel.get_rules(rules))
  step = jit_train_step(setup, mesh, spec.train, spec.faults)
  state = setup.init(jax.random.PRNGKey(0))
  bytes_on_device0 = sum(s.data.nbytes for leaf in jax.tree.leaves(state)
                         for s in leaf.addressable_shards if s.device == devices[0])
  losses = []
  for b in batches:
    state, metrics = step(state, parallel.global_batch(b, parallel.batch_sharding(mesh)))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state.params), bytes_on_device0


def test_every_mesh_trains_like_one_device_and_shards_the_state():
  # DiT: its heads and MLP exercise the tensor rules; UNets' data parallelism is covered in
  # test_training and FSDP across processes in test_launch.
  spec = _spec("DiT-tiny")
  batches = _batches(spec)
  runs = {name: _train(spec, shape, rules, batches) for name, (shape, rules) in MESHES.items()}
  losses1, params1, bytes1 = runs["one device"]
  assert losses1[0] != losses1[-1]
  for name, (losses, params, _) in runs.items():
    np.testing.assert_allclose(losses, losses1, rtol=3e-5, err_msg=name)
    # Adam's first steps move each weight by about lr (1e-3) whatever its gradient's size, so
    # reduction-order noise in near-zero gradients shows in the weights; a tenth of a step.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params1)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4, err_msg=name)
  # Data parallel replicates everything; FSDP over 8 keeps about an eighth of the state per
  # device (norm scales, biases of odd sizes and scalars stay whole), tensor x FSDP a quarter.
  assert runs["dp8"][2] == bytes1
  assert runs["fsdp8"][2] < 0.2 * bytes1
  assert runs["dp2 fsdp2 tensor2"][2] < 0.35 * bytes1


class _Device:
  """What mesh_utils reads of a device, for layouts of hosts and slices this machine lacks."""
  platform = device_kind = "cpu"

  def __init__(self, id, process_index, slice_index=None):
    self.id, self.process_index = id, process_index
    if slice_index is not None:
      self.slice_index = slice_index

  def __repr__(self):
    return f"dev{self.id}"


def test_dcn_axes_keep_each_host_or_slice_in_one_block_of_its_axis():
  """mesh.dcn_<axis>: the axis is the groups (processes, or TPU slices when the devices name
  more than one) times the devices within each, so every other axis's collectives stay inside
  one host or slice."""
  # Two hosts of four devices, listed interleaved (the grid must regroup them).
  hosts = [_Device(i, i // 4) for i in (0, 4, 1, 5, 2, 6, 3, 7)]
  where = lambda grid, attr: np.vectorize(lambda d: getattr(d, attr))(grid)
  sizes = {"data": 2, "fsdp": 4, "tensor": 1}
  hsdp = parallel.device_grid(sizes, hosts, {"data": 2})
  np.testing.assert_array_equal(where(hsdp, "process_index")[:, :, 0], [[0] * 4, [1] * 4])
  assert sorted(where(hsdp, "id").ravel()) == list(range(8))
  fsdp_across = parallel.device_grid(sizes, hosts, {"fsdp": 2})
  np.testing.assert_array_equal(where(fsdp_across, "process_index")[:, :, 0],
                                [[0, 0, 1, 1], [0, 0, 1, 1]])
  # The rows of a global batch of 16 each host reads: the rows its devices hold, in one run
  # when the data axis spans the hosts, in two when the fsdp axis does.
  rows = lambda grid, p: parallel.process_batch_rows(grid, 16, process_index=p)
  assert rows(hsdp, 0) == list(range(8)) and rows(hsdp, 1) == list(range(8, 16))
  assert rows(fsdp_across, 0) == [0, 1, 2, 3, 8, 9, 10, 11]
  assert rows(fsdp_across, 1) == [4, 5, 6, 7, 12, 13, 14, 15]
  # Multi-slice: two slices of two hosts each; the groups are the slices, not the four hosts.
  pod = [_Device(i, i // 2, slice_index=i // 4) for i in range(8)]
  assert parallel.granules(pod) == ("slices", 2) and parallel.granules(hosts) == ("processes", 2)
  np.testing.assert_array_equal(where(parallel.device_grid(sizes, pod, {"data": 2}),
                                      "slice_index")[:, :, 0], [[0] * 4, [1] * 4])
  # Without dcn sizes the layout is the one-host layout (the devices' own order on CPU).
  plain = parallel.device_grid(sizes, [_Device(i, 0) for i in range(8)])
  np.testing.assert_array_equal(where(plain, "id").ravel(), range(8))

  with pytest.raises(ValueError, match=r"mesh.dcn_data=4 makes 4 groups, but the 8 devices "
                                       r"are in 2 processes"):
    parallel.device_grid({"data": 4, "fsdp": 2, "tensor": 1}, hosts, {"data": 4})
  with pytest.raises(ValueError, match=r"mesh.fsdp=4 is not a multiple of mesh.dcn_fsdp=3"):
    parallel.device_grid(sizes, hosts, {"fsdp": 3})
  with pytest.raises(ValueError, match="only .* may span"):
    parallel.device_grid(sizes, hosts, {"tensor": 2})


def test_dcn_sizes_are_checked_before_any_compute():
  c = default.get_config("tiny")
  c.mesh.dcn_data = 2
  with pytest.raises(ConfigError, match=r"mesh.dcn_\*: 2 groups .* the job's 1 process"):
    build_spec(c, num_devices=8, num_processes=1, check_network=False)
  c.mesh.dcn_data = 3
  with pytest.raises(ConfigError, match=r"mesh.dcn_data: 3 does not divide mesh.data=8"):
    build_spec(c, num_devices=8, check_network=False)  # process count unknown: not checked
  c.mesh.dcn_data, c.mesh.dcn_fsdp = 2, 0
  with pytest.raises(ConfigError, match=r"mesh.dcn_fsdp: must be an integer >= 1"):
    build_spec(c, num_devices=8, num_processes=2, check_network=False)
  c.mesh.dcn_fsdp = 1
  assert dict(build_spec(c, num_devices=8, num_processes=2, check_network=False).mesh.dcn) == {
      "data": 2, "fsdp": 1}


def test_sharding_report_adds_up_and_odd_sizes_stay_whole():
  spec = _spec("DiT-tiny")
  mesh = parallel.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  setup = state_setup(spec, mesh, parallel.get_rules("fsdp"))
  table, sizes = parallel.sharding_report(setup.abstract, setup.shardings)
  assert sizes["per_device_mb"] < 0.2 * sizes["total_mb"]
  assert "'fsdp'" in table and len(table.splitlines()) == 1 + len(jax.tree.leaves(setup.abstract))
  for leaf, sharding in zip(jax.tree.leaves(setup.abstract), jax.tree.leaves(setup.shardings)):
    for dim, axis in zip(leaf.shape, tuple(sharding.spec)):
      assert axis is None or dim % 8 == 0


def test_unknown_rules_are_a_config_error():
  c = default.get_config("tiny")
  c.mesh.rules = "zero3"
  with pytest.raises(ConfigError, match="mesh.rules"):
    build_spec(c, num_devices=8)


# No dropout, so that micro-batches draw exactly the whole batch's noise.
NO_DROPOUT = {"DiT-tiny": {"class_dropout": 0.0},
              "unet-tiny": {"dropout": 0.0, "class_dropout": 0.0}}


def _plain_spec(model="DiT-tiny", **overrides):
  """The tiny digits config without dropout. DiT-tiny unless the UNet is asked for: the subject
  is the train step, and DiT-tiny's compiles about 3x faster at -O0."""
  return build_spec(tiny_config(**{"model.name": model, "model.kwargs": NO_DROPOUT[model],
                                    "data.batch_size": 16, **overrides}), num_devices=2)


def _steps(spec, batches, devices=2):
  """Runs ``batches`` through the train step compiled ahead of time as `train` compiles it.
  Returns the losses, the final state and parameters (on the host), the setup and the
  compiled step (XLA's memory analysis and program text)."""
  mesh = parallel.make_mesh({"data": devices, "fsdp": 1, "tensor": 1}, jax.devices()[:devices])
  setup = state_setup(spec, mesh)
  step = compile_step(setup, spec, mesh)
  state = setup.init(jax.random.PRNGKey(0))
  losses = []
  for b in batches:
    b = {k: v for k, v in b.items() if k != "bad_records"}  # counted by train(), not stepped
    state, metrics = step(state, parallel.global_batch(b, parallel.batch_sharding(mesh)))
    losses.append(float(metrics["loss"]))
  return types.SimpleNamespace(losses=np.array(losses), state=state, setup=setup, step=step,
                               params=jax.device_get(state.params))


def _residual_bytes(spec, setup, batch):
  """Bytes the backward pass keeps from the forward pass (the vjp's residuals): the
  activation memory that remat trades for recomputation, independent of the backend. Shapes
  only: nothing is computed."""
  params = setup.abstract.nets["denoiser"].params
  loss = lambda p: loss_fn(p, batch, jax.random.PRNGKey(1), model=spec.method.module,
                           spec=spec.method.diffusion, conditional=True)[0]
  residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
  return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(residuals))


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
  batches = _batches(_plain_spec(), n=3)
  whole = _steps(_plain_spec(), batches)
  accumulated = _steps(_plain_spec(**{"train.grad_accum": 4}), batches)
  assert whole.losses[0] != whole.losses[-1]
  np.testing.assert_allclose(accumulated.losses, whole.losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(whole.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)  # see the Adam note above


def test_gradient_accumulation_must_split_the_batch():
  with pytest.raises(ConfigError, match="train.grad_accum"):
    _plain_spec(**{"train.grad_accum": 3})


def test_remat_changes_memory_not_results():
  # The UNet (remat with a static `train` argument): the last check needs activations that
  # dominate the step's temporaries, and DiT-tiny's (lean residuals) do not at 16 images:
  # 2.06 MB with and without remat (23.1 and 15.9 MB at 256).
  unet = lambda **kw: _plain_spec("unet-tiny", **kw)
  batches = _batches(unet(), n=2)
  plain = _steps(unet(), batches)
  remat_spec = unet(**{"model.kwargs": {**NO_DROPOUT["unet-tiny"], "remat": "full"}})
  rematted = _steps(remat_spec, batches)
  np.testing.assert_allclose(rematted.losses, plain.losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(rematted.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  batch = jax.tree.map(jax.numpy.asarray, batches[0])
  kept_plain = _residual_bytes(unet(), plain.setup, batch)
  kept_remat = _residual_bytes(remat_spec, rematted.setup, batch)
  assert kept_remat < 0.5 * kept_plain, (kept_remat, kept_plain)
  # ... and the compiled step's temporaries shrink too. XLA:CPU undid remat (its
  # cse_barrier_expander pass let CSE merge the recomputation back into the forward pass: the
  # same temporaries with and without) until tune_cpu_xla_flags turned that pass off.
  temp_plain = plain.step.memory_analysis().temp_size_in_bytes
  temp_remat = rematted.step.memory_analysis().temp_size_in_bytes
  assert temp_remat < 0.8 * temp_plain, (temp_remat, temp_plain)


def test_estimate_counts_flops_memory_and_time(tmp_path):
  from diffjax.jobs.estimate import PEAK_TFLOPS, estimate
  c = default.get_config("tiny")
  c.model.name, c.model.kwargs = DIT["model.name"], DIT["model.kwargs"]  # 3x faster to compile
  c.data.batch_size = 32
  c.estimate.num_devices, c.estimate.chip, c.estimate.mfu = 4, "tpu-v5p", 0.5
  c.mesh.data, c.mesh.fsdp, c.mesh.rules = 1, -1, "fsdp"
  r = estimate(c, str(tmp_path))
  assert (tmp_path / "estimate.json").exists() and r["mesh"]["fsdp"] == 4
  # A train step costs about 3 forward passes (forward, two backward products per layer).
  spec = build_spec(c, num_devices=4)
  model = spec.method.module
  x = jax.ShapeDtypeStruct((8, 8, 8, 1), np.float32)
  lvl, lab = jax.ShapeDtypeStruct((8,), np.float32), jax.ShapeDtypeStruct((8,), np.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, lvl, lab)
  fwd = jax.jit(lambda p, x, l, y: model.apply(p, x, l, y)).lower(params, x, lvl, lab).compile()
  cost = fwd.cost_analysis()
  forward_gflops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] / 8 / 1e9
  assert 2.5 < r["gflops_per_image"] / forward_gflops < 4.0
  assert r["state_mb_per_device"] < 0.3 * r["state_mb_total"]
  expected = (r["gflops_per_image"] * 1e9 * 32 * r["num_steps"] /
              (4 * PEAK_TFLOPS["tpu-v5p"] * 1e12))
  assert r["seconds_at_peak"] == pytest.approx(expected, rel=2e-2)  # GFLOPs to 4 digits
  assert r["seconds_at_assumed_mfu"] == pytest.approx(2 * r["seconds_at_peak"])
  c.estimate.chip = "tpu-v9"
  with pytest.raises(ConfigError, match="config.estimate.chip"):
    estimate(c)


def test_offloaded_optimizer_state_lives_in_host_memory_and_changes_nothing(tmp_path):
  """train.offload_opt_state: Adam's moments stay in pinned host memory between steps (and
  through a checkpoint round trip); losses and parameters equal the plain run's exactly."""
  batches = _batches(_plain_spec(), n=2)
  plain = _steps(_plain_spec(), batches)
  spec = _plain_spec(**{"train.offload_opt_state": True})
  offloaded = _steps(spec, batches)
  np.testing.assert_array_equal(offloaded.losses, plain.losses)
  for a, b in zip(jax.tree.leaves(offloaded.params), jax.tree.leaves(plain.params)):
    np.testing.assert_array_equal(a, b)
  setup = offloaded.setup
  net_shardings = setup.shardings.nets["denoiser"]
  kinds = {s.memory_kind for s in jax.tree.leaves(net_shardings.opt_state)}
  assert kinds == {"pinned_host"}
  assert {s.memory_kind for s in jax.tree.leaves(net_shardings.params)} == {"device"}
  _, plain_sizes = parallel.sharding_report(plain.setup.abstract, plain.setup.shardings)
  _, sizes = parallel.sharding_report(setup.abstract, setup.shardings)
  assert plain_sizes["host_mb"] == 0 and sizes["host_mb"] > 0
  assert np.isclose(sizes["per_device_mb"] + sizes["host_mb"], plain_sizes["per_device_mb"])
  # A step's output and a restored checkpoint keep the moments on the host.
  state = offloaded.state
  opt_state = lambda s: s.nets["denoiser"].opt_state
  assert {a.sharding.memory_kind for a in jax.tree.leaves(opt_state(state))} == {"pinned_host"}
  ckpt = checkpointer(spec, tmp_path)
  ckpt.save(2, state)
  ckpt.wait()
  restored, _ = ckpt.restore(2, setup.abstract)
  assert {a.sharding.memory_kind for a in jax.tree.leaves(opt_state(restored))} == {"pinned_host"}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_cpu_xla_flags_are_added_once_never_over_the_users_and_take_effect(monkeypatch):
  import re

  from jax import lax

  from diffjax.parallel import distributed
  # This session's backend started with the flags (conftest; jax.devices() starts it now if no
  # test has, before the environment changes below).
  jax.devices()
  # Convolutions and dots compile to XLA's own kernels, not to YNNPACK fusions.
  x, w = np.ones((2, 16, 16, 32), np.float32), np.ones((3, 3, 32, 32), np.float32)
  hlo = jax.jit(lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(
          x, w).compile().as_text()
  assert "convolution(" in hlo and "ynn_fusion" not in hlo
  x, w = np.ones((64, 32), np.float32), np.ones((32, 48), np.float32)
  hlo = jax.jit(lambda x, w: x @ w).lower(x, w).compile().as_text()
  assert " dot(" in hlo and "ynn_fusion" not in hlo
  # Region-based copy insertion: the donated state is updated in place. With XLA's default
  # analysis this data-parallel step copied every parameter and Adam moment first (438 copies;
  # none on one device).
  spec = _plain_spec("unet-tiny")
  mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  hlo = compile_step(state_setup(spec, mesh), spec, mesh).as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  assert re.findall(r"= \S+ copy\(%param", entry) == []

  flags = [f"--{name}={value}" for name, value in distributed.CPU_XLA_FLAGS.items()]
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert distributed.tune_cpu_xla_flags() == flags
  assert distributed.tune_cpu_xla_flags() == []  # already there
  assert all(os.environ["XLA_FLAGS"].count(name) == 1 for name in distributed.CPU_XLA_FLAGS)
  name = next(iter(distributed.CPU_XLA_FLAGS))
  monkeypatch.setenv("XLA_FLAGS", f"--{name}=individual_dot")  # the user's choice stays
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert distributed.split_host_into_devices(16, cores=4) == 4
  assert os.environ["XLA_FLAGS"].split() == [f"--{name}=individual_dot", *flags[1:],
                                             "--xla_force_host_platform_device_count=4"]


def test_huge_page_environment_only_where_it_helps():
  env = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  helps = dict(glibc=(2, 36), thp_mode="madvise", cpu_only=True)
  assert host.huge_page_environment(env, **helps) == {
      "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert host.huge_page_environment({}, **helps) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  for change in [dict(glibc=(2, 34)), dict(glibc=None), dict(thp_mode="always"),
                 dict(thp_mode="never"), dict(thp_mode=None), dict(cpu_only=False)]:
    assert host.huge_page_environment(env, **{**helps, **change}) is None, change
  # The user's own setting (here: off) wins, and is what stops a second re-execution.
  assert host.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **helps) is None
  assert host.huge_page_environment(host.huge_page_environment({}, **helps), **helps) is None


def test_cpu_description_names_model_and_widest_vector_isa():
  def info(*blocks):
    return "\n\n".join("\n".join(f"{k}\t: {v}" for k, v in b.items()) for b in blocks)
  intel = {"processor": "0", "model name": "Intel(R) Xeon(R) CPU @ 2.60GHz",
           "flags": "fpu sse2 avx avx2 avx512f avx512bw", "power management": ""}
  amd = {"processor": "0", "model name": "AMD EPYC", "flags": "fpu sse2 avx avx2 fma"}
  assert host.cpu_description(info(intel, amd)) == "Intel(R) Xeon(R) CPU @ 2.60GHz, AVX-512"
  assert host.cpu_description(info(amd, intel)) == "AMD EPYC, AVX2"  # the first CPU's block
  assert host.cpu_description(info({"processor": "0", "Features": "fp asimd sve"})) == (
      "unknown CPU, SVE")
  assert host.cpu_description("") == "unknown CPU"


# Run as `python -c CHILD arg`: says each start, then whether the kernel may back a fresh
# 64 MiB numpy array with huge pages (the "THPeligible" line of the mapping that holds it).
CHILD = """
import os, sys
print("start", sys.argv[1:], flush=True)
from diffjax.host import reexec_with_huge_pages
reexec_with_huge_pages()
import numpy as np
a = np.ones(1 << 24, np.float32)
address = a.ctypes.data
eligible = None
with open("/proc/self/smaps") as f:
  for line in f:
    head = line.split()[0]
    if "-" in head and ":" not in head:
      lo, hi = (int(p, 16) for p in head.split("-"))
      inside = lo <= address < hi
    elif inside and head == "THPeligible:":
      eligible = line.split()[1]
print("tunables", os.environ.get("GLIBC_TUNABLES"), "eligible", eligible, flush=True)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_reexec_gives_large_allocations_huge_pages_where_it_helps():
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  applies = host.huge_page_environment(env, host.glibc_version(),
                                       host.transparent_huge_pages_mode(),
                                       host.cpu_only_host(env)) is not None
  run = lambda e: subprocess.run([sys.executable, "-c", CHILD, "--flag=1"], env=e, text=True,
                                 capture_output=True, check=True).stdout.splitlines()
  lines = run(env)
  if applies:  # restarted once, same arguments, and the array's mapping asks for huge pages
    assert lines == ["start ['--flag=1']"] * 2 + [
        "tunables glibc.malloc.hugetlb=1 eligible 1"]
  else:
    assert lines[0] == "start ['--flag=1']" and len(lines) == 2 and "hugetlb" not in lines[1]
  # Turned off by the user: no restart, and (where it would apply) no huge pages.
  lines = run({**env, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert lines[0] == "start ['--flag=1']" and len(lines) == 2
  if applies:
    assert lines[1] == "tunables glibc.malloc.hugetlb=0 eligible 0"


# Megatron-LM's tensor parallelism (Shoeybi et al. 2019): attention split by heads (query, key
# and value by their output columns, the output projection by its input rows), the MLP by its
# hidden units, convolutions by output channels; FSDP splits what is left (the model width).
MEGATRON = {"heads": "tensor", "mlp": "tensor", "conv_out": "tensor", "embed": "fsdp",
            "conv_in": "fsdp"}


def test_fsdp_tensor_rules_split_attention_and_mlp_megatron_style():
  """Under ``fsdp_tensor`` on a 2 x 2 x 2 mesh every DiT parameter is split as Megatron's
  layout says (checked by name for attention and MLP), and the state's bytes on one device
  equal a numpy count from the shapes and that layout; under ``fsdp`` the heads are split
  over fsdp and the width kept whole."""
  import flax.linen as nn
  from jax.sharding import PartitionSpec as P
  spec = _spec("DiT-tiny")
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  setup = state_setup(spec, mesh, parallel.get_rules("fsdp_tensor"))
  net = setup.shardings.nets["denoiser"]
  specs = {jax.tree_util.keystr(p): s.spec
           for p, s in jax.tree_util.tree_leaves_with_path(net.params)}
  for b in ("block_0", "block_1"):
    for proj in ("query", "key", "value"):
      assert specs[f"['{b}']['attn']['{proj}']['dense']['kernel']"] == P("fsdp", "tensor")
      assert specs[f"['{b}']['attn']['{proj}']['dense']['bias']"] == P("tensor")
    assert specs[f"['{b}']['attn']['out']['dense']['kernel']"] == P("tensor", "fsdp")
    assert specs[f"['{b}']['mlp_in']['dense']['kernel']"] == P("fsdp", "tensor")
    assert specs[f"['{b}']['mlp_out']['dense']['kernel']"] == P("tensor", "fsdp")
  # Bytes on one device: every array of the state (parameters, EMA, Adam's two moments) split
  # by the Megatron layout of its logical names where the mesh axis divides the dimension.
  names = nn.get_partition_spec(setup.boxed)
  shapes = nn.meta.unbox(setup.boxed)
  is_spec = lambda x: isinstance(x, P)
  expected = total = 0
  logical_leaves = jax.tree.leaves(names, is_leaf=is_spec)  # absent parts (None) drop out
  assert len(logical_leaves) == len(jax.tree.leaves(shapes)) == len(
      jax.tree.leaves(setup.shardings))
  for logical, leaf in zip(logical_leaves, jax.tree.leaves(shapes)):
    local = list(leaf.shape)
    if is_spec(logical):
      for d, name in enumerate(logical):
        axis = MEGATRON.get(name)
        if axis and local[d] % mesh.shape[axis] == 0:
          local[d] //= mesh.shape[axis]
    expected += int(np.prod(local)) * leaf.dtype.itemsize
    total += int(np.prod(leaf.shape)) * leaf.dtype.itemsize
  device0 = sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                for s, a in zip(jax.tree.leaves(setup.shardings), jax.tree.leaves(shapes)))
  assert device0 == expected and expected < 0.3 * total
  fsdp = state_setup(spec, parallel.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}),
                     parallel.get_rules("fsdp")).shardings.nets["denoiser"].params
  assert fsdp["block_0"]["attn"]["query"]["dense"]["kernel"].spec == P(None, "fsdp")
  assert fsdp["block_0"]["mlp_out"]["dense"]["kernel"].spec == P("fsdp", None)
