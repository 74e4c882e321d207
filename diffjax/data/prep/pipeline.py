"""The preparation pipeline: Beam graph assembly and its run (the job that reads the config,
``launch.py --mode prep``, is `diffjax.jobs.prep`).

  read -> validate (quarantine) -> measure + filters -> outliers -> exact/near de-duplication
  -> faces + captions -> centre-crop/resize per resolution -> ArrayRecord shards
                                                          -> manifest, data card, grids

The graph is runner-independent; ``runner.name`` picks where it runs (DirectRunner with
``runner.num_workers`` processes here; DataflowRunner/FlinkRunner/SparkRunner with their
options in ``runner.options``).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
import traceback

from diffjax.data.prep import report
from diffjax.data.prep.spec import PrepSpec, differing_fields
from diffjax.faults import RunFault
from diffjax.fields import ConfigError


class PrepFailed(RunFault):
  exit_code = 1


WORK = "_work"
STATE = "prep.json"  # written before any work: which dataset this folder holds


def check_output_dir(out_dir: str, spec: PrepSpec) -> dict | None:
  """Refuses a folder that holds something else; returns the previous manifest (or None)."""
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--workdir {out_dir!r} is a file, not a folder")
  if not out.exists() or not any(out.iterdir()):
    return None
  state = out / STATE
  if not state.exists():
    raise ConfigError(f"--workdir {out_dir!r} is not empty and holds no {STATE}: it is not a "
                      f"dataset prepared by diffjax; choose an empty or new folder")
  try:
    previous = json.loads(state.read_text())
  except ValueError as e:
    raise ConfigError(f"{state} is unreadable ({e}); move the folder aside") from e
  if previous.get("fingerprint") != spec.fingerprint:
    diff = differing_fields(previous.get("content", {}), spec.content)
    raise ConfigError(
        f"--workdir {out_dir!r} already holds a different dataset "
        f"({previous.get('dataset')!r}, prepared with other settings: "
        f"{'; '.join(diff[:8]) or 'fingerprint differs'}). Nothing was changed; use a new "
        f"--workdir, or delete that folder to rebuild it.")
  manifest = out / "manifest.json"
  return json.loads(manifest.read_text()) if manifest.exists() else {}


def pipeline_options(spec: PrepSpec):
  from apache_beam.options.pipeline_options import PipelineOptions
  args = [f"--runner={spec.runner}", *spec.runner_options]
  if spec.runner == "DirectRunner":
    args += [f"--direct_num_workers={spec.num_workers}",
             f"--direct_running_mode={spec.runner_mode}",
             "--default_sdk_harness_log_level=ERROR"]
  return PipelineOptions(args)


def build(p, spec: PrepSpec, plan, out_dir: str, work_dir: str):
  """Adds the preparation graph to pipeline ``p``."""
  import apache_beam as beam

  from diffjax.data.prep import inputs
  from diffjax.data.prep import stages as st

  pri = spec.split_priority
  raw = (p | "Units" >> beam.Create(plan.units)
         | "Read" >> beam.ParDo(st.ReadUnits(plan.captions))
         | "Spread" >> beam.Reshuffle())
  opt_out = inputs.read_opt_out(spec.opt_out) if spec.opt_out else frozenset()
  valid = raw | "Validate" >> beam.ParDo(st.Validate(
      spec.max_side, spec.max_pixels, plan.class_names, spec.labels, plan.num_files,
      spec.num_workers, opt_out)).with_outputs(
          st.REJECTED, main="ok")
  measured = valid.ok | "Measure" >> beam.ParDo(st.Measure(
      spec.min_side, spec.min_aspect, spec.max_aspect, spec.min_sharpness,
      spec.min_contrast)).with_outputs(st.REJECTED, main="ok")
  rejected = [valid[st.REJECTED], measured[st.REJECTED]]
  kept = measured.ok

  if spec.outlier_z > 0 and spec.outlier_stats:
    quantiles = (kept | "StatValues" >> beam.FlatMap(st.stat_values, spec.outlier_stats)
                 | "Quartiles" >> beam.ApproximateQuantiles.PerKey(5))
    out = kept | "Outliers" >> beam.ParDo(st.DropOutliers(spec.outlier_z),
                                          beam.pvalue.AsDict(quantiles)).with_outputs(
                                              st.REJECTED, main="ok")
    kept = out.ok
    rejected.append(out[st.REJECTED])

  if spec.exact_dedup or spec.near_dedup:
    keys = kept | "HashKeys" >> beam.Map(lambda ex: (ex["pixhash"] if spec.exact_dedup
                                                     else ex["id"], st.hash_key(ex)))
    exact = (keys | "ByPixels" >> beam.GroupByKey()
             | "Exact" >> beam.ParDo(st.ExactGroups(pri)).with_outputs("drops", main="kept"))
    drops = [exact.drops]
    if spec.near_dedup:
      order = st.dedup.keeper_order(pri)
      near = (exact.kept
              | "Bands" >> beam.FlatMap(st.band_items, spec.num_bands, spec.band_bits,
                                        spec.max_hamming > 0)
              | "ByBand" >> beam.GroupByKey()
              | "Pairs" >> beam.FlatMap(st.near_pairs, st.dedup.NearRule(
                  spec.min_similarity, spec.max_hamming, spec.hash_min_similarity))
              | "DropCandidates" >> beam.Map(st.dedup.drop_candidate, order)
              | "Keeper" >> beam.CombinePerKey(st.keeper_of)
              | "NearDrops" >> beam.Map(st.near_drop))
      drops.append(near)
    drop_map = drops | "Drops" >> beam.Flatten()
    out = kept | "Dedup" >> beam.ParDo(st.ApplyDrops(), beam.pvalue.AsDict(
        drop_map)).with_outputs(st.REJECTED, main="ok")
    kept = out.ok
    rejected.append(out[st.REJECTED])

  private = kept | "Privacy" >> beam.ParDo(st.Anonymise(
      spec.faces, spec.face_model, spec.face_score, spec.face_min_side, spec.face_margin,
      spec.scrub_captions, spec.face_second_pass, spec.face_verify_score, spec.phone_regions))
  encoded = private | "Encode" >> beam.ParDo(st.Encode(
      spec.resolutions, spec.channels, spec.num_shards, os.path.abspath(spec.path)
      if spec.path else "")).with_outputs("kept", main="records")
  splits = list(plan.splits)
  every_shard = [((r, s, i), None) for r in spec.resolutions for s in splits
                 for i in range(spec.num_shards)]
  shards = ((encoded.records, p | "AllShards" >> beam.Create(every_shard))
            | "WithEmpty" >> beam.Flatten()
            | "ByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(st.WriteShard(out_dir, spec.num_shards)))

  def save(pcoll, name, writer=st.write_json):
    path = os.path.join(work_dir, name)
    return pcoll | f"Save_{name}" >> beam.Map(writer, path)

  save(shards | "ShardList" >> beam.combiners.ToList(), "shards.json")
  save(encoded.kept | "Summary" >> beam.CombineGlobally(st.SummaryFn()), "summary.json")
  save(encoded.kept | "GridPick" >> beam.combiners.Top.Of(
      spec.grid_size, key=lambda s: -st.grid_key(s["id"]))
       | "GridImages" >> beam.Map(lambda xs: [(s["id"], s["label"], s["image"]) for s in xs]),
       "grid.pkl", st.write_pickle)
  save(encoded.kept | "WithFaces" >> beam.Filter(lambda s: s["faces"] > 0)
       | "FacePick" >> beam.combiners.Top.Of(spec.grid_size, key=lambda s: -st.grid_key(s["id"]))
       | "FaceImages" >> beam.Map(lambda xs: [(s["id"], s["label"], s["image"]) for s in xs]),
       "faces.pkl", st.write_pickle)
  all_rejected = (rejected | "AllRejected" >> beam.Flatten()
                  | "Quarantine" >> beam.ParDo(st.Quarantine(out_dir)))
  save(all_rejected | "NoOptedOut" >> beam.Filter(lambda r: r["reason"] != "opted_out")
       | "RejectPick" >> beam.Map(lambda r: (r["reason"], r))
       | "PerReason" >> beam.combiners.Top.PerKey(8, key=lambda r: -st.grid_key(r["id"]))
       | "RejectGrid" >> beam.combiners.ToList(), "rejected_grid.pkl", st.write_pickle)
  _ = (all_rejected | "RejectJson" >> beam.Map(
      lambda r: json.dumps({k: v for k, v in r.items() if k != "thumb"}, sort_keys=True))
       | "RejectedList" >> beam.io.WriteToText(os.path.join(work_dir, "rejected"),
                                               file_name_suffix=".jsonl"))


def _metrics(result) -> dict[str, int]:
  """Counters by name; distributions as ``<name>_count``, ``_sum`` and ``_max``."""
  from apache_beam.metrics.metric import MetricsFilter
  out = {}
  query = result.metrics().query(MetricsFilter().with_namespace("prep"))
  for c in query["counters"]:
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or c.attempted
                                                                 or 0)
  for d in query["distributions"]:
    r = d.committed or d.attempted
    if r is not None and r.count:
      name = d.key.metric.name
      out[f"{name}_count"] = out.get(f"{name}_count", 0) + int(r.count)
      out[f"{name}_sum"] = out.get(f"{name}_sum", 0) + int(r.sum)
      out[f"{name}_max"] = max(out.get(f"{name}_max", 0), int(r.max))
  return out


def _ensure_workers_import_diffjax() -> None:
  # DirectRunner's worker processes start a fresh interpreter; make this checkout importable.
  root = str(pathlib.Path(__file__).resolve().parents[3])
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  if root not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, paths)])


def run(spec: PrepSpec, plan, out: pathlib.Path, previous) -> dict:
  """Runs the Beam graph of ``spec`` over ``plan`` into ``out``; returns the manifest."""
  import apache_beam as beam
  out.mkdir(parents=True, exist_ok=True)
  os.chmod(out, 0o700)
  (out / STATE).write_text(json.dumps({"dataset": spec.dataset, "fingerprint": spec.fingerprint,
                                       "content": spec.content}, indent=1))
  work = out / WORK
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(mode=0o700)
  _ensure_workers_import_diffjax()
  print(f"prep: {len(plan.units)} input units ({plan.num_files or '?'} files), "
        f"{len(plan.class_names)} classes, splits {list(plan.splits)} -> {out} "
        f"[{spec.runner}, {spec.num_workers} workers]", flush=True)
  start = time.time()
  try:
    with beam.Pipeline(options=pipeline_options(spec)) as p:
      build(p, spec, plan, str(out), str(work))
  except Exception as e:  # a worker failure surfaces as many types; keep the trace in a file
    log = out / "prep_error.log"
    log.write_text(traceback.format_exc())
    last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise PrepFailed(f"preparation failed: {last}. Finished shards are kept and reused by "
                     f"the next run; full trace in {log}") from e
  result = p.result
  wall = time.time() - start
  metrics = _metrics(result)
  manifest = report.assemble(spec, plan, out, work, metrics, wall, previous)
  shutil.rmtree(work, ignore_errors=True)
  print(report.summary_line(manifest), flush=True)
  return manifest
