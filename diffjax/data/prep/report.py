"""The preparation's outputs for people and programs: ``manifest.json`` (machine-readable),
``DATACARD.md`` (human-readable), ``examples.png`` and ``rejected.png`` grids, and
``rejected.jsonl`` (every dropped example with its reason)."""

from __future__ import annotations

import datetime
import glob
import json
import os
import pathlib
import pickle
from collections import Counter, defaultdict

import numpy as np
from PIL import Image, ImageDraw

from diffjax import __version__
from diffjax.images import make_grid, save_png

SIZE_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)
STAGES = ("read", "validate", "measure", "outliers", "privacy", "encode", "write")


def _bucket(side: int) -> str:
  lo = 0
  for hi in SIZE_BUCKETS:
    if side < hi:
      return f"{lo}-{hi - 1}"
    lo = hi
  return f">={SIZE_BUCKETS[-1]}"


def size_histogram(sizes: dict[str, int]) -> dict[str, int]:
  """Counts by shorter side, in octave buckets (from ``{"HxW": count}``)."""
  out = Counter()
  for key, n in sizes.items():
    h, w = (int(v) for v in key.split("x"))
    out[_bucket(min(h, w))] += n
  order = [_bucket(b - 1) for b in SIZE_BUCKETS] + [_bucket(SIZE_BUCKETS[-1])]
  return {k: out[k] for k in order if out[k]}


def throughput(metrics: dict[str, int], wall_s: float, num_inputs: int) -> dict:
  stages = {}
  for stage in STAGES:
    n, ms = metrics.get(f"n_{stage}", 0), metrics.get(f"ms_{stage}", 0)
    if n:
      stages[stage] = {"calls": n, "cpu_s": round(ms / 1e3, 2),
                       "per_s_one_worker": round(n / max(ms / 1e3, 1e-3), 1)}
  return {"wall_s": round(wall_s, 1), "inputs": num_inputs,
          "images_per_s": round(num_inputs / max(wall_s, 1e-9), 1), "stages": stages}


def _tile(thumb, size: int = 48) -> np.ndarray:
  tile = np.full((size, size, 3), 96, np.uint8)
  if thumb is None:  # undecodable: a grey tile with a cross
    idx = np.arange(size)
    tile[idx, idx] = tile[idx, size - 1 - idx] = 200
    return tile
  t = np.asarray(thumb)
  t = np.repeat(t, 3, -1) if t.shape[-1] == 1 else t[..., :3]
  h, w = t.shape[:2]
  top, left = (size - h) // 2, (size - w) // 2
  tile[top:top + h, left:left + w] = t
  return tile


def rejected_grid(per_reason: list[tuple[str, list[dict]]], tile: int = 48,
                  per_row: int = 8) -> np.ndarray | None:
  """One row per reason: its name, then up to ``per_row`` examples."""
  if not per_reason:
    return None
  label_w, pad = 150, 2
  width = label_w + per_row * (tile + pad)
  canvas = Image.new("RGB", (width, len(per_reason) * (tile + pad) + pad), (32, 32, 32))
  draw = ImageDraw.Draw(canvas)
  for row, (reason, items) in enumerate(sorted(per_reason)):
    top = pad + row * (tile + pad)
    draw.text((4, top + tile // 2 - 6), reason, fill=(235, 235, 235))
    for col, r in enumerate(items[:per_row]):
      canvas.paste(Image.fromarray(_tile(r.get("thumb"), tile)),
                   (label_w + col * (tile + pad), top))
  return np.asarray(canvas)


def _examples_grid(picks, upscale_to: int = 64) -> np.ndarray | None:
  if not picks:
    return None
  images = [img for _, _, img in sorted(picks)]
  res = images[0].shape[0]
  c = max(i.shape[-1] for i in images)
  images = np.stack([np.repeat(i, 3, -1) if i.shape[-1] < c else i for i in images])
  return make_grid(images, upscale=max(1, upscale_to // res))


def load_work(work: pathlib.Path, name: str):
  path = work / name
  if name.endswith(".pkl"):
    with open(path, "rb") as f:
      return pickle.load(f)
  return json.loads(path.read_text())


def rejected_rows(work: pathlib.Path) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(str(work / "rejected*.jsonl"))):
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return sorted(rows, key=lambda r: r["id"])


def assemble(spec, plan, out: pathlib.Path, work: pathlib.Path, metrics: dict, wall_s: float,
             previous: dict | None) -> dict:
  """Writes the manifest, data card, grids and rejected list; returns the manifest."""
  summary = load_work(work, "summary.json")
  summary = summary[0] if isinstance(summary, list) else summary
  shards = sorted(load_work(work, "shards.json"), key=lambda s: s["file"])
  rejected = rejected_rows(work)
  dropped, dropped_split = Counter(), defaultdict(Counter)
  for r in rejected:
    dropped[r["reason"]] += 1
    dropped_split[r["split"]][r["reason"]] += 1
  cross = sum("(cross-split)" in r.get("detail", "") for r in rejected)
  kept = {s: summary.get("count", {}).get(s, 0) for s in plan.splits}
  names = plan.class_names if spec.labels else []
  balance = defaultdict(dict)
  for key, n in sorted(summary.get("classes", {}).items()):
    split, label = key.split("\t")
    label = int(label)
    balance[split][names[label] if 0 <= label < len(names) else "unlabelled"] = n
  num_inputs = sum(kept.values()) + len(rejected)
  meta = summary.get("meta", {})
  status = Counter(s["status"] for s in shards)

  with open(out / "rejected.jsonl", "w") as f:
    for r in rejected:
      f.write(json.dumps(r, sort_keys=True) + "\n")
  os.chmod(out / "rejected.jsonl", 0o600)
  grids = {}
  grid = _examples_grid(load_work(work, "grid.pkl"))
  if grid is not None:
    grids["examples"] = save_png(out / "examples.png", grid).name
  fgrid = _examples_grid(load_work(work, "faces.pkl"))
  if fgrid is not None:
    grids["faces"] = save_png(out / "faces.png", fgrid).name
  rgrid = rejected_grid(load_work(work, "rejected_grid.pkl"))
  if rgrid is not None:
    grids["rejected"] = save_png(out / "rejected.png", rgrid).name

  manifest = {
      "dataset": spec.dataset, "licence": spec.licence, "description": spec.description,
      "fingerprint": spec.fingerprint,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "diffjax_version": __version__, "config": spec.content,
      "record_format": "msgpack {image: PNG bytes, label: int (-1 unlabelled), id, split, "
                       "caption?} (diffjax.data.records)",
      "counts": {"inputs": num_inputs, "kept": kept, "kept_total": sum(kept.values()),
                 "dropped": dict(sorted(dropped.items())),
                 "dropped_by_split": {s: dict(sorted(c.items()))
                                      for s, c in sorted(dropped_split.items())},
                 "cross_split_duplicates": cross},
      "classes": names, "class_balance": dict(balance),
      "channel_stats": {"resolution": spec.resolutions[0], "scale": "[0, 1]",
                        **summary.get("channels", {})},
      "source_resolution": {"shorter_side": size_histogram(summary.get("sizes", {})),
                            "most_common": dict(Counter(summary.get("sizes", {}))
                                                .most_common(10))},
      "privacy": {
          "faces": spec.faces, "face_detector": os.path.basename(spec.face_model)
          if spec.faces != "none" else None,
          "images_with_faces": meta.get("images_with_faces", 0),
          "images_with_faces_by_class": {
              (names[int(k)] if 0 <= int(k) < len(names) else "unlabelled"): v
              for k, v in sorted(summary.get("face_classes", {}).items(),
                                 key=lambda kv: -kv[1])},
          "faces_anonymised": meta.get("faces", 0) if spec.faces != "none" else 0,
          "metadata_removed_from": {"exif": meta.get("had_exif", 0),
                                    "gps": meta.get("had_gps", 0),
                                    "xmp": meta.get("had_xmp", 0)},
          "captions": meta.get("caption", 0),
          "caption_pii_replaced": summary.get("pii", {}) if spec.scrub_captions else None},
      "shards": [{k: s[k] for k in ("file", "split", "resolution", "count", "sha256")}
                 for s in shards],
      "layout": {f"{r}px": f"{r}px/<split>-NNNNN-of-{spec.num_shards:05d}.array_record"
                 for r in spec.resolutions},
      "provenance": provenance_summary(spec, summary, rejected),
      "dedup": dedup_summary(spec, metrics),
      "grids": grids, "throughput": throughput(metrics, wall_s, num_inputs),
      "runner": {"name": spec.runner, "workers": spec.num_workers},
      "changes": _changes(previous, kept, status)}
  (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
  (out / "DATACARD.md").write_text(data_card(manifest))
  return manifest


def provenance_summary(spec, summary: dict, rejected: list[dict]) -> dict:
  """Per-image licences of the kept images by count, how many carry attribution and a source
  URL, and what the opt-out list removed."""
  from diffjax.data.prep.inputs import read_opt_out
  licences = dict(sorted(summary.get("licences", {}).items(), key=lambda kv: -kv[1]))
  meta = summary.get("meta", {})
  out = {"licences": licences, "licence_unknown": licences.get("unknown", 0),
         "with_attribution": meta.get("with_attribution", 0),
         "with_source_url": meta.get("with_url", 0), "opt_out": None}
  if spec.opt_out:
    removed = [r for r in rejected if r["reason"] == "opted_out"]
    out["opt_out"] = {"list": spec.opt_out, "entries": len(read_opt_out(spec.opt_out)),
                      "removed": len(removed),
                      "removed_by": dict(Counter(r["detail"] for r in removed))}
  return out


def dedup_summary(spec, metrics: dict) -> dict:
  """How near duplicates were found: the rule, the LSH layout and what it cost."""
  from diffjax.data.prep.dedup import candidate_recall
  if not spec.near_dedup:
    return {"exact": spec.exact_dedup, "near": None}
  buckets = metrics.get("bucket_size_count", 0)
  return {"exact": spec.exact_dedup, "near": {
      "rule": "cosine of 16x16 antialiased luma thumbnails >= min_similarity" + (
          ", or 64-bit perceptual hashes within max_hamming bits with cosine >= "
          "hash_min_similarity" if spec.max_hamming else "") + "; an image is dropped when a "
          "verified copy ranks before it (split priority, then id)",
      "min_similarity": spec.min_similarity, "max_hamming": spec.max_hamming,
      "hash_min_similarity": spec.hash_min_similarity, "num_bands": spec.num_bands,
      "band_bits": spec.band_bits,
      "candidate_recall_at_threshold": round(candidate_recall(
          spec.min_similarity, spec.num_bands, spec.band_bits), 4),
      "buckets": buckets, "largest_bucket": metrics.get("bucket_size_max", 0),
      "mean_bucket": round(metrics.get("bucket_size_sum", 0) / max(buckets, 1), 2),
      "pairs_compared": metrics.get("near_compared", 0)}}


def _changes(previous: dict | None, kept: dict, status: Counter) -> dict:
  out = {"shards_written": status["written"] + status["rewritten"],
         "shards_unchanged": status["unchanged"]}
  if previous:
    before = previous.get("counts", {}).get("kept", {})
    out["previous_run"] = previous.get("created")
    out["kept_before"] = before
    out["kept_delta"] = {s: kept.get(s, 0) - before.get(s, 0)
                         for s in sorted(set(kept) | set(before))}
  return out


def summary_line(m: dict) -> str:
  c, ch = m["counts"], m["changes"]
  return (f"prep: kept {c['kept_total']} of {c['inputs']} ({c['kept']}), dropped "
          f"{sum(c['dropped'].values())} {c['dropped']}; shards written "
          f"{ch['shards_written']}, unchanged {ch['shards_unchanged']}; "
          f"{m['throughput']['images_per_s']} images/s")


def _table(rows, header) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
  return "\n".join(lines)


def _provenance_lines(m: dict) -> list[str]:
  p = m.get("provenance")
  if not p:
    return []
  total = sum(p["licences"].values())
  lines = ["## Licences and provenance", ""]
  if total and p["licence_unknown"] == total:
    lines += [f"Per-image licences are **unknown** for all {total} kept images: the input gave "
              f"none (no licence column or sidecar field). The dataset-level statement above is "
              f"all that is known.", ""]
  else:
    lines += [_table(list(p["licences"].items()), ["licence", "kept images"]), "",
              f"Unknown licence: {p['licence_unknown']} of {total}.", ""]
  lines += [f"With attribution: {p['with_attribution']}; with a source URL: "
            f"{p['with_source_url']}. Every record keeps `source` (its URL, else the file it was "
            f"read from) and, when given, `source_id`, `licence` and `attribution`.", ""]
  o = p.get("opt_out")
  lines += ([f"Opt-out list `{o['list']}` ({o['entries']} entries): {o['removed']} images "
             f"removed ({o['removed_by'] or 'none matched'}); they are listed by id in "
             f"`rejected.jsonl` and no copy or thumbnail of them is kept.", ""] if o else
            ["No opt-out list was given (`source.opt_out`).", ""])
  return lines


def _dedup_lines(d: dict) -> list[str]:
  near = d.get("near")
  if not near:
    return []
  return [f"Near duplicates: {near['rule']}; threshold {near['min_similarity']}, candidates "
          f"from {near['num_bands']} LSH bands of {near['band_bits']} bits (a pair exactly at "
          f"the threshold becomes a candidate with probability "
          f"{near['candidate_recall_at_threshold']}); {near['buckets']} band buckets, largest "
          f"{near['largest_bucket']}, {near['pairs_compared']} pairs compared.", ""]


def data_card(m: dict) -> str:
  c, p, t = m["counts"], m["privacy"], m["throughput"]
  cfg = m["config"]
  src = cfg["source"]
  lines = [f"# Data card: {m['dataset']}", "",
           f"{m['description']}".strip() or "(no description given)", "",
           f"- Licence of the source: **{m['licence']}**",
           f"- Source: `{src['kind']}` at `{src['path'] or src['tfds_name']}`, splits "
           f"`{src['splits']}`",
           f"- Prepared {m['created']} by diffjax {m['diffjax_version']} "
           f"(fingerprint `{m['fingerprint']}`, runner {m['runner']['name']} with "
           f"{m['runner']['workers']} workers)",
           f"- Records: {m['record_format']}", "",
           "## Counts", "",
           _table([[s, n] for s, n in c["kept"].items()] + [["**total kept**", c["kept_total"]],
                                                           ["inputs", c["inputs"]]],
                  ["split", "kept"]), "",
           "Dropped, by reason (validation failures are copied to `quarantine/<reason>/`; "
           "every dropped id is in `rejected.jsonl`):", "",
           _table([[r, n, ", ".join(f"{s} {d.get(r, 0)}" for s, d in
                                    c["dropped_by_split"].items() if d.get(r))]
                   for r, n in c["dropped"].items()] or [["(none)", 0, ""]],
                  ["reason", "count", "by split"]), "",
           f"Duplicates across splits removed (the copy in the higher-priority split "
           f"`{cfg['dedup']['split_priority']}` is kept): {c['cross_split_duplicates']}", "",
           *_dedup_lines(m.get("dedup", {})),
           *_provenance_lines(m), "## Class balance", ""]
  splits = list(m["class_balance"])
  classes = sorted({k for d in m["class_balance"].values() for k in d},
                   key=lambda k: (m["classes"].index(k) if k in m["classes"] else 1 << 30, k))
  lines += [_table([[k, *[m["class_balance"][s].get(k, 0) for s in splits]] for k in classes]
                   or [["(none)"]], ["class", *splits]), ""]
  cs = m["channel_stats"]
  lines += [f"## Pixel statistics ({cs['resolution']}px output, scale {cs['scale']})", "",
            _table([[s, v["mean"], v["std"]] for s, v in cs.items() if isinstance(v, dict)],
                   ["split", "per-channel mean", "per-channel std"]), "",
            "## Source resolution (kept images, shorter side)", "",
            _table(list(m["source_resolution"]["shorter_side"].items()),
                   ["pixels", "images"]), "",
            "## Privacy", "",
            f"- Faces: detector `{p['face_detector']}`, mode **{p['faces']}**; "
            f"{p['faces_anonymised']} faces anonymised in {p['images_with_faces']} images "
            f"(by class: {p['images_with_faces_by_class']}).",
            f"- Metadata: every output image is re-encoded from pixels (PNG), so no EXIF, GPS "
            f"or XMP survives; inputs that carried EXIF: {p['metadata_removed_from']['exif']},"
            f" GPS: {p['metadata_removed_from']['gps']}, XMP: "
            f"{p['metadata_removed_from']['xmp']}.",
            f"- Captions: {p['captions']} kept images have captions; personal data replaced "
            f"by typed placeholders: {p['caption_pii_replaced']}.",
            "- Files are written owner-only (0600, folders 0700).", "",
            "## Filters applied", "",
            _table([[f"{sec}.{k}", v] for sec in ("validate", "filters", "dedup")
                    for k, v in cfg[sec].items()], ["setting", "value"]), ""]
  if m["grids"]:
    lines += ["## Examples", ""]
    if "examples" in m["grids"]:
      lines += ["Kept (deterministic random pick):", "", "![examples](examples.png)", ""]
    if "faces" in m["grids"]:
      lines += ["Images in which faces were found, as written (anonymised):", "",
                "![faces](faces.png)", ""]
    if "rejected" in m["grids"]:
      lines += ["Dropped, a row per reason (crossed tiles could not be decoded):", "",
                "![rejected](rejected.png)", ""]
  lines += ["## Shards", "",
            _table([[s["file"], s["count"], f"`{s['sha256']}`"] for s in m["shards"]],
                   ["file", "records", "sha256"]), "",
            "## Throughput", "",
            f"{t['inputs']} inputs in {t['wall_s']} s wall clock: {t['images_per_s']} "
            f"images/s end to end.", "",
            _table([[s, v["calls"], v["cpu_s"], v["per_s_one_worker"]]
                    for s, v in t["stages"].items()],
                   ["stage", "calls", "busy s (all workers)", "calls/s, one worker"]), "",
            "(`read` calls are input units and `write` calls are shards; the other stages "
            "take one image per call.)", "",
            "## Changes since the previous run", "",
            f"Shards written: {m['changes']['shards_written']}, unchanged (skipped): "
            f"{m['changes']['shards_unchanged']}."]
  if "kept_delta" in m["changes"]:
    lines.append(f"Previous run {m['changes']['previous_run']}: kept per split changed by "
                 f"{m['changes']['kept_delta']}.")
  return "\n".join(lines) + "\n"
