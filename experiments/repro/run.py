"""One command per paper: sample from the user's published checkpoint with the paper's sampler,
score against the paper's reference statistics with its protocol, and write a results file
comparing with the paper's number.

  python experiments/repro/run.py --paper ddpm_cifar10 --checkpoint CKPT --reference REF \\
      [--vae VAE] [--workdir DIR] [--num_samples N] [--seeds S] [--twin [--make_twin DIR]]
      [-- --config.x=y ...]

``experiments/repro/<paper>/paper.json`` names the config, the paper's value, the tolerance
and the files. The eval job runs through launch.py as a user would run it
(``--mode eval`` with ``init.checkpoint`` and ``eval.ref_path``); its JSON is then compared:
``reproduced`` when the mean over seed sets lies within the tolerance of the paper's value with
the paper's sample count, ``not reproduced`` otherwise, ``not comparable`` with fewer samples,
and ``pipeline check`` for ``--twin`` (a random-weight network of the same layout, the config's
``:twin`` variant: the whole path on a CPU, no comparison; ``--make_twin DIR`` writes a
random-weight checkpoint with the published tensor names and a random reference in the paper's
formats). Results: ``results_<tag>.json`` and ``.md`` in ``--out`` (default: the paper's
folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from diffjax.models.weight_files import sha256_file  # noqa: E402  (numpy only)


def make_twin(paper: dict, folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """A random-weight checkpoint of the config's ``:twin`` network written with the published
  tensor names of ``paper``'s format, and a random reference in the paper's reference format
  (2048-d statistics; guided-diffusion batches also get four images), for a CPU check of the
  whole path."""
  import importlib

  import numpy as np
  from safetensors.numpy import save_file

  from diffjax.experiment import build_spec
  from diffjax.models import importers
  from diffjax.models.layers import sincos_2d_position_embedding
  config = importlib.import_module(paper["config"][:-3].replace("/", ".")).get_config("twin")
  spec = build_spec(config, num_devices=1, check_network=False)
  module, x_shape = spec.method.module, spec.method.x_shape
  fmt = config.init.format
  rng = np.random.default_rng(0)
  tensors = {k: (0.05 * rng.standard_normal(v)).astype(np.float32)
             for k, v in importers.published_table(fmt, module, x_shape).items()}
  if "pos_embed" in tensors:  # the DiT release's fixed table
    grid = (x_shape[0] // module.patch_size, x_shape[1] // module.patch_size)
    tensors["pos_embed"] = sincos_2d_position_embedding(*grid, module.hidden_size)[None]
  folder.mkdir(parents=True, exist_ok=True)
  checkpoint = folder / f"twin_{fmt}.safetensors"
  save_file(tensors, str(checkpoint))
  a = rng.standard_normal((2048, 32))
  arrays = {"mu": 0.1 * rng.standard_normal(2048), "sigma": a @ a.T / 32}
  if config.eval.ref_format == "adm":
    arrays["arr_0"] = rng.integers(0, 256, (4, spec.data.image_size, spec.data.image_size, 3),
                                   dtype=np.uint8)
  reference = folder / f"twin_reference_{config.eval.ref_format}.npz"
  np.savez(reference, **arrays)
  return checkpoint, reference


def verdict(paper: dict, result: dict, twin: bool) -> str:
  if twin:
    return "pipeline check (random-weight twin): no comparison with the paper"
  if result["num_samples"] < paper["num_samples"]:
    return (f"not comparable: {result['num_samples']} samples per set, the paper "
            f"{paper['num_samples']}")
  mean = result["intervals"][paper["metric"]]["mean"]
  ok = abs(mean - paper["value"]) <= paper["tolerance"]
  return "reproduced" if ok else "not reproduced"


def markdown(record: dict) -> str:
  p, m = record["paper"], record["measured"]
  lines = [f"# {record['name']}: {p['paper']}", "",
           f"Verdict: **{record['verdict']}**", "",
           "| | value |", "|---|---|",
           f"| paper {p['metric'].upper()} | {p['value']} (tolerance +-{p['tolerance']}) |",
           f"| measured mean over {m['seeds']} seed set(s) of {m['num_samples']} | "
           f"{m['mean']:.4f} |",
           f"| min / max | {m['min']:.4f} / {m['max']:.4f} |"]
  if "ci95_low" in m:
    lines.append(f"| 95% interval of the mean | {m['ci95_low']:.4f} .. {m['ci95_high']:.4f} |")
  lines += ["", f"Per seed: {', '.join(f'{v:.4f}' for v in m['per_seed'])}", "",
            f"Checkpoint: `{record['checkpoint']['path']}` (sha256 "
            f"{record['checkpoint']['sha256']})",
            f"Reference: `{record['reference']['path']}` "
            f"({record['reference']['fingerprint'].get('published', 'diffjax')}, sha256 "
            f"{record['reference']['fingerprint'].get('file_sha256', '?')}, protocol "
            f"{record['reference']['fingerprint'].get('protocol')})",
            f"Sampler: {json.dumps(record['sampler'])}; samples to uint8: "
            f"{record['sample_uint8']}", "", "Command:", "", "```",
            " ".join(record["command"]), "```", ""]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--paper", required=True,
                      help="a folder of experiments/repro holding paper.json")
  parser.add_argument("--checkpoint", default="", help="the published checkpoint file")
  parser.add_argument("--reference", default="", help="the paper's reference statistics")
  parser.add_argument("--make_twin", default="",
                      help="with --twin: write a random-weight checkpoint and reference of the "
                           "paper's formats into this folder and use them")
  parser.add_argument("--vae", default="", help="autoencoder weights (latent models)")
  parser.add_argument("--workdir", default="", help="run folder (default runs/repro_<paper>)")
  parser.add_argument("--num_samples", type=int, default=0, help="per seed set (default: paper)")
  parser.add_argument("--seeds", type=int, default=0, help="seed sets (default: paper.json)")
  parser.add_argument("--twin", action="store_true",
                      help="the config's :twin variant (random-weight twin, CPU check)")
  parser.add_argument("--out", default="", help="results folder (default: the paper's folder)")
  parser.add_argument("--timeout", type=float, default=None, help="seconds for the eval job")
  args, extra = parser.parse_known_args(argv)
  extra = [a for a in extra if a != "--"]
  folder = ROOT / "experiments" / "repro" / args.paper
  if not (folder / "paper.json").exists():
    choices = sorted(p.parent.name for p in (ROOT / "experiments" / "repro").glob("*/paper.json"))
    parser.error(f"no paper {args.paper!r}; choose one of {', '.join(choices)}")
  paper = json.loads((folder / "paper.json").read_text())
  if args.make_twin:
    if not args.twin:
      parser.error("--make_twin writes files for the :twin config: add --twin")
    args.checkpoint, args.reference = map(str, make_twin(paper, pathlib.Path(args.make_twin)))
  if not args.checkpoint or not args.reference:
    parser.error("--checkpoint and --reference are required (or --twin --make_twin DIR)")
  workdir = pathlib.Path(args.workdir or ROOT / "runs" / f"repro_{args.paper}")
  num_samples = args.num_samples or paper["num_samples"]
  seeds = args.seeds or paper["seeds"]
  tag = ("twin_" if args.twin else "") + f"n{num_samples}x{seeds}"
  name = f"repro_{tag}"
  command = [sys.executable, "launch.py", "--config",
             paper["config"] + (":twin" if args.twin else ""), "--workdir", str(workdir),
             "--mode", "eval", f"--config.init.checkpoint={args.checkpoint}",
             f"--config.eval.ref_path={args.reference}",
             f"--config.eval.num_samples={num_samples}", f"--config.eval.seeds={seeds}",
             f"--config.eval.name={name}"]
  if args.vae:
    command.append(f"--config.latent.weights={args.vae}")
  command += extra
  print("[repro] " + " ".join(command), flush=True)
  start = time.time()
  done = subprocess.run(command, cwd=ROOT, timeout=args.timeout)
  if done.returncode != 0:
    print(f"[repro] the eval job failed (exit {done.returncode})", file=sys.stderr)
    return done.returncode
  result = json.loads((workdir / "eval" / f"{name}.json").read_text())
  interval = result["intervals"][paper["metric"]]
  record = {
      "name": args.paper, "paper": paper, "verdict": verdict(paper, result, args.twin),
      "measured": {**interval, "num_samples": result["num_samples"], "seeds": result["seeds"],
                   "per_seed": [s[paper["metric"]] for s in result["per_seed"]]},
      "other_metrics": result["metrics"], "sampler": result["sampler"],
      "sample_uint8": result.get("sample_uint8"),
      "checkpoint": {"path": str(pathlib.Path(args.checkpoint).absolute()),
                     "sha256": sha256_file(args.checkpoint)},
      "reference": {"path": str(pathlib.Path(args.reference).absolute()),
                    "fingerprint": result["reference_fingerprint"]},
      "feature_net": result["feature_net"], "eval_json": str(workdir / "eval" / f"{name}.json"),
      "command": command, "seconds": round(time.time() - start, 1),
      "host": platform.node(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
  out = pathlib.Path(args.out) if args.out else folder
  out.mkdir(parents=True, exist_ok=True)
  (out / f"results_{tag}.json").write_text(json.dumps(record, indent=1) + "\n")
  (out / f"results_{tag}.md").write_text(markdown(record))
  print(f"[repro] {record['verdict']}: {paper['metric']} {interval['mean']:.4f} (paper "
        f"{paper['value']} +-{paper['tolerance']}); wrote {out / f'results_{tag}.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
