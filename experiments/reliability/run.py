"""Fault-injection campaign: many interruptions of real launch.py runs, each checked bit for bit
against an uninterrupted run; plus bad configs. Writes results.json and results.md here.

  python experiments/reliability/run.py [--sigterm 6] [--sigkill 6] [--workdir /tmp/reliability]

The scenarios are those of tests/test_faults.py (diffjax/testing/fault_injection.py), with more
cases, on the UNet of the default config's tiny variant (the tests use DiT-tiny).
"""

import json
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("sigterm", 6, "SIGTERM cases (random steps)")
flags.DEFINE_integer("sigkill", 6, "SIGKILL cases (half mid-save, half at random times)")
flags.DEFINE_string("workdir", "/tmp/diffjax-reliability", "scratch folder")
flags.DEFINE_integer("seed", 0, "random seed of the injection points")
flags.DEFINE_bool("configs_only", False, "redo only the bad-config cases; keep the recorded "
                  "interruption cases of results.json")
FLAGS = flags.FLAGS

# Bad configs: (override, text the error must contain). Each must exit 2 before any compute.
BAD_CONFIGS = [
    ("--config.optim.lr=-1", "config.optim.lr"),
    ("--config.optim.lrr=1", "--config.optim.lrr: no such config field"),
    ("--config.optim.lr=fast", "--config.optim.lr=fast"),
    ("--config.model.name=UNet-XL", "config.model.name"),
    ("--config.data.source=s3", "config.data.source"),
    ("--config.data.batch_size=-16", "config.data.batch_size"),
    ("--config.data.image_size=0", "config.data.image_size"),
    ("--config.diffusion.schedule=cosin", "config.diffusion.schedule"),
    ("--config.diffusion.parameterization=epsilon", "config.diffusion.parameterization"),
    ("--config.diffusion.weighting=snrr", "config.diffusion.weighting"),
    ("--config.sample.sampler=dpm", "config.sample.sampler"),
    ("--config.sample.num_steps=0", "config.sample.num_steps"),
    ("--config.train.ema_decay=1.5", "config.train.ema_decay"),
    ("--config.mesh.fsdp=3", "config.mesh"),
    ("--config.train.num_steps=-5", "config.train.num_steps"),
    ("--config.checkpoint.keep=0", "config.checkpoint.keep"),
    ("--config.faults.nonfinite=ignore", "config.faults.nonfinite"),
    ("--config.data.source=array_record", "config.data.path"),
    ("--config.eval.feature_net=clip", "config.eval.feature_net"),
    ("--config.model.kwargs.ch=-4", "config.model.name / model.kwargs"),
    ("--config.train.grad_accum=3", "config.train.grad_accum"),
    ("--config.mesh.rules=zero3", "config.mesh.rules"),
    ("--config.mesh.dcn_data=2", "config.mesh.dcn_*"),  # one process: nothing to span
    ("--config.mesh.dcn_fsdp=0", "config.mesh.dcn_fsdp"),
]


def run_interruptions(scenario, rng, root) -> list[dict]:
  """SIGTERM, SIGKILL and damaged-checkpoint cases, each against an uninterrupted run."""
  from diffjax.testing import fault_injection as fi
  from diffjax.testing.launching import launch
  reference = scenario.reference_run(fi.fresh(root / "reference"))
  rows = []
  for i in range(FLAGS.sigterm):
    step = rng.randint(2, scenario.steps - 2)
    r = scenario.sigterm_at(fi.fresh(root / f"sigterm{i}"), step, second_signal=(i % 2 == 1))
    r.update(kind="SIGTERM" + (" x2" if i % 2 else ""), at=step,
             identical=fi.identical(fi.final_arrays(root / f"sigterm{i}"), reference))
    r.pop("stderr")
    rows.append(r)
    print(json.dumps(r), flush=True)
  for i in range(FLAGS.sigkill):
    w = fi.fresh(root / f"sigkill{i}")
    if i % 2 == 0:
      r = scenario.sigkill_mid_save(w, nth_save=rng.randint(2, 8))
      r["kind"] = "SIGKILL mid-save"
    else:
      t = rng.uniform(8.0, 25.0)
      r = scenario.sigkill_after(w, t)
      r.update(kind="SIGKILL at random time", at=round(t, 1))
    r["identical"] = fi.identical(fi.final_arrays(w), reference)
    rows.append(r)
    print(json.dumps(r), flush=True)
  for mode in ("truncate", "alter"):
    w = fi.fresh(root / f"damage_{mode}")
    launch(*scenario.base_args(w, steps=16))
    r = scenario.damage_latest(w, mode)
    r.update(kind=f"damaged checkpoint ({mode})", identical=fi.identical(fi.final_arrays(w),
                                                                         reference))
    rows.append(r)
    print(json.dumps(r), flush=True)
  return rows


def main(argv):
  del argv
  from diffjax.testing import fault_injection as fi
  from diffjax.testing.launching import launch
  scenario = fi.Scenario("configs/default.py:tiny")  # the UNet of the recorded results
  rng = random.Random(FLAGS.seed)
  root = pathlib.Path(FLAGS.workdir)
  start = time.time()
  out = pathlib.Path(__file__).parent
  if FLAGS.configs_only:
    previous = json.loads((out / "results.json").read_text())
    rows, start = previous["cases"], start - previous["summary"]["seconds"]
  else:
    rows = run_interruptions(scenario, rng, root)
  records = scenario.bad_records(fi.fresh(root / "records"))
  records.pop("stderr")
  print(json.dumps(records), flush=True)
  bad = []
  for override, needle in BAD_CONFIGS:
    res = launch(*scenario.base_args(fi.fresh(root / "bad"), steps=2), override, check=False)
    clear = res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr
    bad.append({"override": override, "exit_code": res.returncode, "clear_message": clear,
                "message": res.stderr.strip().splitlines()[-1][:200] if res.stderr else ""})
  interrupts = [r for r in rows if r["kind"].startswith(("SIGTERM", "SIGKILL"))]
  summary = {
      "interruptions_injected": len(interrupts),
      "resumed_exactly": sum(r["identical"] for r in interrupts),
      "sigterm_steps_lost_beyond_last_checkpoint": sum(
          r["steps_lost"] for r in rows if r["kind"].startswith("SIGTERM")),
      "damaged_checkpoints_detected": sum(r.get("warned", False) for r in rows),
      "damaged_checkpoint_runs_identical": sum(
          r["identical"] for r in rows if r["kind"].startswith("damaged")),
      "bad_configs_tried": len(bad), "bad_configs_clear": sum(b["clear_message"] for b in bad),
      "corrupt_records_in_data": records["corrupt"],
      "corrupt_record_reads_skipped_and_counted": records["counted"],  # ~2 epochs: each read twice
      "stop_policy_exit_code_and_record_named": f"{records['stop_exit_code']}, "
                                                f"{records['stop_named_the_record']}",
      "seconds": round(time.time() - start)}
  (out / "results.json").write_text(json.dumps({"summary": summary, "cases": rows,
                                                "bad_records": records, "bad_configs": bad},
                                               indent=1))
  lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary.items()]
  lines += ["", "| case | injected at | resumed from | identical to uninterrupted |",
            "|---|---|---|---|"]
  lines += [f"| {r['kind']} | {r.get('at', r.get('damaged_step', ''))} | "
            f"{r['resumed_from'] if r['resumed_from'] is not None else 'start (killed before the first save)'} | "
            f"{r['identical']} |" for r in rows]
  lines += ["", "| bad override | exit code | clear message | message |", "|---|---|---|---|"]
  lines += [f"| `{b['override']}` | {b['exit_code']} | {b['clear_message']} | "
            f"{b['message'].strip().replace('|', '/')} |" for b in bad]
  (out / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
