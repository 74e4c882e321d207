"""A/B of XLA_FLAGS, other environment variables or config overrides on one config's train
step: the two settings alternate, each in a fresh process, on the same machine in the same run,
so host-to-host differences cannot decide it.

  python experiments/benchmarks/throughput/flag_ab.py --config cifar10_ddpm \\
      --a=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution \\
      --b=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution --results ab_ynn_cpu
  bash experiments/benchmarks/throughput/gpu.sh ab --config cifar10_ddpm@128 --dtype bfloat16 \\
      --b=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONVOLUTION \\
      --results ab_command_buffer_gpu                                     # on a GPU
  python experiments/benchmarks/throughput/flag_ab.py --config cifar10_ddpm \\
      --a_env=GLIBC_TUNABLES=glibc.malloc.hugetlb=0 --results ab_hugetlb_cpu   # malloc huge pages
  python experiments/benchmarks/throughput/flag_ab.py --config dit_b2_latent --dtype bfloat16 \
      --a_set=model.kwargs.lean_residuals=False --results ab_lean_residuals_cpu  # a config field

Each round runs A then B (``train_throughput.py --only=jax``, median step time of its windows);
the table gives every round's step time, the medians, each setting's compiled memory per device
(XLA's estimate: arguments + temporaries) and B's speed relative to A. Writes
``<results>.md`` and ``<results>.json`` beside this file.

Settings that differ only in config fields can instead share one process (``--same_process``:
both steps built side by side, ``rounds * windows`` timing windows each, alternating A B, B A,
...; ``train_throughput.py --interleave``). On a noisy CPU host that is the better measure:
fresh processes of one and the same setting differed by up to 25% per round
(``ab_same_setting_unet_cpu.md``). Both steps are in memory at once.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from diffjax.host import cpu_description  # noqa: E402

flags.DEFINE_string("config", "cifar10_ddpm", "a train_throughput.py row name "
                    "(module[@batch][+path=value])")
flags.DEFINE_string("a", "", "XLA_FLAGS of setting A (added to the environment's)")
flags.DEFINE_string("b", "", "XLA_FLAGS of setting B (added to the environment's)")
flags.DEFINE_multi_string("a_env", [], "NAME=VALUE set in setting A's environment")
flags.DEFINE_multi_string("b_env", [], "NAME=VALUE set in setting B's environment")
flags.DEFINE_multi_string("a_set", [], "path=value config override of setting A "
                          "(appended to --config as +path=value)")
flags.DEFINE_multi_string("b_set", [], "path=value config override of setting B")
flags.DEFINE_integer("rounds", 2, "A, B rounds")
flags.DEFINE_integer("steps", 5, "timed steps per window")
flags.DEFINE_integer("windows", 2, "windows per process")
flags.DEFINE_string("dtype", "", "compute dtype override, as train_throughput.py")
flags.DEFINE_string("attention", "", "DiT attention, as train_throughput.py")
flags.DEFINE_bool("same_process", False, "time A and B in one process, alternating windows "
                  "(settings that differ only in --a_set/--b_set)")
flags.DEFINE_string("results", "flag_ab", "file stem of the results beside this script")
FLAGS = flags.FLAGS

HERE = pathlib.Path(__file__).resolve().parent


def parse_env(pairs: list[str], flag: str) -> dict[str, str]:
  """``["NAME=VALUE", ...]`` as a dict; a pair without ``=`` is a usage error."""
  bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
  if bad:
    raise app.UsageError(f"--{flag} wants NAME=VALUE, got {bad[0]!r}")
  return dict(p.split("=", 1) for p in pairs)


def setting_env(flags_value: str, extra_env: dict[str, str]) -> dict[str, str]:
  """The environment of a setting: ``XLA_FLAGS += flags_value``, then ``extra_env``."""
  env = {**os.environ, **extra_env}
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags_value}".strip()
  return env


def check_setting(name: str, flags_value: str, extra_env: dict[str, str]) -> None:
  """Starts JAX under the setting and runs one tiny computation, so that a flag XLA does not
  know (it aborts the process) fails here in seconds, with XLA's message, before any round."""
  done = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; "
                         "jnp.zeros(2).sum().block_until_ready()"],
                        env=setting_env(flags_value, extra_env), capture_output=True, text=True)
  if done.returncode:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    why = next((ln for ln in reversed(lines) if "flag" in ln.lower()), lines[-1] if lines else "")
    raise app.UsageError(f"setting {name} ({flags_value or '-'}): JAX did not start "
                         f"(exit {done.returncode}): {why.strip()[:300]}")


def setting_config(overrides: list[str], flag: str) -> str:
  """``--config`` with a setting's ``path=value`` overrides as ``+path=value``."""
  bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0] or "+" in o]
  if bad:
    raise app.UsageError(f"--{flag} wants path=value (no '+'), got {bad[0]!r}")
  return FLAGS.config + "".join(f"+{o}" for o in overrides)


def check_config(name: str, config: str) -> None:
  """Validates a setting's config (overrides included, network traced on the data shape) in a
  child process, so a misspelt field fails here, naming it, before any round."""
  code = ("import sys; sys.path[:0] = sys.argv[1:3]; import train_throughput as tt; "
          "from diffjax.experiment import build_spec; n, _, o = tt.parse_name(sys.argv[3]); "
          "build_spec(tt.get_config(n, o), num_devices=1)")
  done = subprocess.run([sys.executable, "-c", code, str(HERE), str(HERE.parents[2]), config],
                        capture_output=True, text=True)
  if done.returncode:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    raise app.UsageError(f"setting {name} ({config}): the config is not valid: "
                         f"{lines[-1].strip()[:400] if lines else done.returncode}")


def run_throughput(flags_value: str, extra_env: dict[str, str], *args: str):
  """One ``train_throughput.py --only=jax`` process (``args`` added) under ``XLA_FLAGS +=
  flags_value`` and ``extra_env``: what it wrote to its ``--row_file``, or None if it failed
  (with its exit status)."""
  with tempfile.TemporaryDirectory() as tmp:
    row_file = pathlib.Path(tmp) / "rows.json"
    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--only=jax",
           f"--steps={FLAGS.steps}", f"--row_file={row_file}", *args]
    cmd += [f"--dtype={FLAGS.dtype}"] if FLAGS.dtype else []
    cmd += [f"--attention={FLAGS.attention}"] if FLAGS.attention else []
    done = subprocess.run(cmd, env=setting_env(flags_value, extra_env))
    if done.returncode or not row_file.exists():
      return None, done.returncode
    return json.loads(row_file.read_text()), 0


def run_once(flags_value: str, extra_env: dict[str, str], config: str) -> dict:
  """One process of train_throughput.py for ``config``: its row."""
  row, code = run_throughput(flags_value, extra_env, f"--configs={config}",
                             f"--windows={FLAGS.windows}")
  return row if row is not None else {"error": f"exited {code}"}


def run_same_process(flags_value: str, extra_env: dict[str, str],
                     configs: dict[str, str]) -> list[dict]:
  """One process of ``train_throughput.py --interleave`` timing every setting's config in
  alternating windows; a row per setting, with ``step_ms_by_window``."""
  rows, code = run_throughput(flags_value, extra_env, f"--configs={','.join(configs.values())}",
                              "--interleave", f"--windows={FLAGS.rounds * FLAGS.windows}")
  if rows is None:
    return [{"setting": name, "error": f"exited {code}"} for name in configs]
  return [dict(row, setting=name) for name, row in zip(configs, rows)]


def main(argv):
  del argv
  settings = {"A": FLAGS.a, "B": FLAGS.b}
  envs = {"A": parse_env(FLAGS.a_env, "a_env"), "B": parse_env(FLAGS.b_env, "b_env")}
  configs = {"A": setting_config(FLAGS.a_set, "a_set"), "B": setting_config(FLAGS.b_set, "b_set")}
  if FLAGS.same_process:
    if FLAGS.a != FLAGS.b or envs["A"] != envs["B"]:
      raise app.UsageError("--same_process: A and B share one process, so they can differ only "
                           "in --a_set/--b_set, not in XLA_FLAGS (--a/--b) or --a_env/--b_env")
    if configs["A"] == configs["B"] or any("," in c for c in configs.values()):
      raise app.UsageError("--same_process wants two different configs without ',': got "
                           f"{configs['A']!r} and {configs['B']!r}")
  for name, value in settings.items():
    check_setting(name, value, envs[name])
    check_config(name, configs[name])
  times = {k: [] for k in settings}
  rows = []
  if FLAGS.same_process:
    rows = run_same_process(FLAGS.a, envs["A"], configs)
    for row in rows:
      print(json.dumps(row), flush=True)
      times[row["setting"]] = row.get("step_ms_by_window", [])
  else:
    for r in range(FLAGS.rounds):
      for name, value in settings.items():
        row = run_once(value, envs[name], configs[name])
        row.update(round=r + 1, setting=name)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if "step_ms" in row:
          times[name].append(row["step_ms"])
  median = {k: statistics.median(v) if v else None for k, v in times.items()}
  ratio = (round(median["A"] / median["B"], 3) if median["A"] and median["B"] else None)
  device = next((r.get("device") for r in rows if r.get("device")), None)
  host_cpu = cpu_description()
  memory = {k: next((r.get("memory_mb_per_device") for r in rows
                     if r["setting"] == k and r.get("memory_mb_per_device")), None)
            for k in settings}
  meta = {"host_cpu": host_cpu, "config": FLAGS.config, "settings": settings,
          "environment": envs, "config_per_setting": configs, "rows": rows,
          "memory_mb_per_device": memory,
          "median_step_ms": median,
          "b_speedup_over_a": ratio, "steps": FLAGS.steps, "windows": FLAGS.windows,
          "same_process": FLAGS.same_process, "device": device}
  (HERE / f"{FLAGS.results}.json").write_text(json.dumps(meta, indent=1))
  how = (f"one process, {FLAGS.rounds * FLAGS.windows} alternating windows of {FLAGS.steps} "
         "steps per setting (A B, B A, ...); step time = median of the windows"
         if FLAGS.same_process else
         f"{FLAGS.rounds} rounds of A then B, each a fresh process; step time = median of "
         f"{FLAGS.windows} windows of {FLAGS.steps} steps")
  lines = [f"A/B of settings on `{FLAGS.config}`, {device} (host: {os.cpu_count()} cores of "
           f"{host_cpu}; {how})", "",
           "| setting | XLA_FLAGS | environment | config | step ms by "
           f"{'window' if FLAGS.same_process else 'round'} | median step ms "
           "| memory MB per device |",
           "|---|---|---|---|---|---|---|"]
  for name, value in settings.items():
    per_round = ", ".join(f"{t:.1f}" for t in times[name]) or "failed"
    med = f"{median[name]:.1f}" if median[name] else "-"
    env = " ".join(f"{k}={v}" for k, v in envs[name].items())
    lines.append(f"| {name} | `{value or '(none)'}` | `{env or '(unchanged)'}` "
                 f"| `{configs[name]}` | {per_round} | {med} | {memory[name] or '-'} |")
  lines += ["", f"B / A speed: {ratio}x" if ratio else "B / A speed: -"]
  (HERE / f"{FLAGS.results}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
