"""Where raw examples come from: input units planned on the driver, read inside the pipeline.

The driver lists what to read (`plan_inputs`) without decoding anything: one unit per image file
of a folder, one per archive split, one per idx split, one per block of a TFDS split. Workers
turn units into raw examples (`read_unit`): ``{"id", "split", "label", "caption", "source",
"data"}`` where ``data`` is the file's bytes, or ``"pixels"`` (uint8 array) for sources that
hold decoded images (idx, TFDS). Ids are ``<split>/<path inside the split>``, stable across runs,
so every later decision (de-duplication keeper, shard) is deterministic.

Captions and provenance come from sidecars next to each image (``<image stem>.txt``: the
caption; ``<image stem>.json``: any of ``caption``, ``source_id``, ``url``, ``licence``
(or ``license``), ``attribution`` (or ``author``/``creator``)) or from a manifest: CSV with a
header or JSON Lines, a ``file`` column (the path relative to ``source.path``, e.g.
``train/cat/0001.jpg``) and any of those columns. Examples carry them as ``caption`` and
``provenance`` (a dict of the fields the input gave).

An opt-out list (`read_opt_out`) names images that must not be used, one per line: an id
(``train/cat/0001.jpg``), a file path relative to the source, a ``source_id``, a URL, or the
SHA-256 (hex) of the file's bytes or of its decoded pixels (`checks.pixel_hash`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import tarfile
from typing import Any, Iterator

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".pgm", ".ppm", ".bmp", ".gif", ".tif",
                  ".tiff")
TFDS_BLOCK = 2048  # examples per TFDS read unit


class InputError(ValueError):
  """The input cannot be read at all (missing folder, unreadable manifest, ...)."""


@dataclasses.dataclass(frozen=True)
class InputPlan:
  units: list[tuple]  # what read_unit takes
  class_names: list[str]
  captions: dict[str, dict]  # relative file path -> {"caption", "provenance"}
  splits: dict[str, str]  # split name -> sub-folder / file prefix / TFDS split
  num_files: int  # files listed (folder sources); 0 when unknown before reading


def parse_splits(text: str) -> dict[str, str]:
  """``"train,test"`` or ``"train=train,test=t10k"`` -> {split: where}."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, where = part.partition("=")
    out[name.strip()] = where.strip() if where else name.strip()
  return out


PROVENANCE_FIELDS = ("source_id", "url", "licence", "attribution")
_ALIASES = {"license": "licence", "author": "attribution", "creator": "attribution",
            "id": "source_id", "source": "url"}


def file_meta(row: dict) -> dict:
  """``{"caption": str, "provenance": {field: str}}`` from a manifest row or sidecar object
  (empty values dropped; ``license``/``author``/``creator`` read as their canonical names)."""
  caption, prov = "", {}
  for key, value in row.items():
    key = _ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
    value = "" if value is None else str(value).strip()
    if key == "caption":
      caption = value
    elif key in PROVENANCE_FIELDS and value:
      prov[key] = value
  return {"caption": caption, "provenance": prov}


def read_captions_manifest(path: str) -> dict[str, dict]:
  """{relative file path: `file_meta`} from a CSV or JSON Lines manifest."""
  if not os.path.isfile(path):
    raise InputError(f"captions manifest {path!r} does not exist")
  rows = []
  try:
    with open(path, encoding="utf-8") as f:
      if path.endswith((".jsonl", ".json")):
        for n, line in enumerate(f, 1):
          if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict):
              raise ValueError(f"line {n} is not a JSON object")
            rows.append(row)
      else:
        rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, ValueError) as e:
    raise InputError(f"captions manifest {path!r} is unreadable: {e}") from e
  known = {"caption", *PROVENANCE_FIELDS, *_ALIASES}
  if not rows or any("file" not in r or not known & {str(k).lower() for k in r} for r in rows):
    raise InputError(f"captions manifest {path!r} must have a 'file' entry and at least one of "
                     f"caption, {', '.join(PROVENANCE_FIELDS)} in every row (CSV header such as "
                     f"file,caption,licence or JSON Lines objects)")
  return {str(r["file"]).lstrip("./"): file_meta(r) for r in rows}


def read_opt_out(path: str) -> frozenset[str]:
  """The entries of an opt-out list (one per line; blank lines and ``#`` comments skipped)."""
  if not os.path.isfile(path):
    raise InputError(f"opt-out list {path!r} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      entries = [line.strip() for line in f]
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"opt-out list {path!r} is unreadable: {e}") from e
  return frozenset(e.lower() if _is_hex_digest(e) else e
                   for e in entries if e and not e.startswith("#"))


def _is_hex_digest(text: str) -> bool:
  return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _sidecar_meta(root: pathlib.Path) -> dict[str, dict]:
  out: dict[str, dict] = {}
  for side in [*root.rglob("*.txt"), *root.rglob("*.json")]:
    for suffix in IMAGE_SUFFIXES:
      image = side.with_suffix(suffix)
      if not image.exists():
        continue
      rel = str(image.relative_to(root))
      meta = out.setdefault(rel, {"caption": "", "provenance": {}})
      text = side.read_text(encoding="utf-8", errors="replace").strip()
      if side.suffix == ".txt":
        meta["caption"] = text
      else:
        try:
          obj = json.loads(text)
        except ValueError as e:
          raise InputError(f"sidecar {side} is not valid JSON: {e}") from e
        if not isinstance(obj, dict):
          raise InputError(f"sidecar {side} must hold a JSON object with caption/"
                           f"{'/'.join(PROVENANCE_FIELDS)} keys")
        got = file_meta(obj)
        meta["caption"] = got["caption"] or meta["caption"]
        meta["provenance"].update(got["provenance"])
  return out


def _class_of(rel_parts: tuple[str, ...]) -> str | None:
  """The class folder of a path inside a split (None: image directly in the split root)."""
  return rel_parts[0] if len(rel_parts) >= 2 else None


def _plan_folder(path: str, splits: dict[str, str], captions: str, limit: int) -> InputPlan:
  root = pathlib.Path(path)
  if not root.is_dir():
    raise InputError(f"source.path {path!r} is not a folder")
  caption_map = _sidecar_meta(root) if captions == "sidecar" else (
      read_captions_manifest(captions) if captions else {})
  units, classes = [], set()
  for split, where in splits.items():
    split_root = root / where if where != "." else root
    if not split_root.is_dir():
      raise InputError(f"split {split!r}: folder {str(split_root)!r} does not exist (set "
                       f"source.splits, e.g. 'train=.' for a folder without split folders)")
    files = [f for f in sorted(split_root.rglob("*"))
             if f.is_file() and f.suffix.lower() not in (".txt", ".json")]
    for file in files[:limit or None]:
      rel = file.relative_to(split_root)
      cls = _class_of(rel.parts)
      if cls is not None:
        classes.add(cls)
      units.append(("file", split, str(file), str(rel), cls,
                    caption_map.get(str(file.relative_to(root)), _NO_META)))
  if not units:
    raise InputError(f"no files under {path!r} for splits {sorted(splits)}")
  return InputPlan(units, sorted(classes), caption_map, splits, len(units))


def _tar_members(archive: str) -> Iterator[tarfile.TarInfo]:
  with tarfile.open(archive, "r:*") as tar:
    yield from (m for m in tar if m.isfile())


def _split_rel(name: str, where: str) -> str | None:
  name = name.lstrip("./")
  prefix = "" if where in ("", ".") else where.strip("/") + "/"
  return name[len(prefix):] if name.startswith(prefix) else None


def _plan_archive(path: str, splits: dict[str, str], captions: str, limit: int) -> InputPlan:
  if not os.path.isfile(path):
    raise InputError(f"source.path {path!r} is not a file (kind=archive wants a .tar[.gz])")
  if captions == "sidecar":
    raise InputError("source.captions='sidecar' needs kind=folder; give a manifest instead")
  caption_map = read_captions_manifest(captions) if captions else {}
  classes, found = set(), dict.fromkeys(splits, 0)
  try:
    for m in _tar_members(path):
      for split, where in splits.items():
        rel = _split_rel(m.name, where)
        if rel is not None:
          found[split] += 1
          cls = _class_of(tuple(rel.split("/")))
          if cls is not None:
            classes.add(cls)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise InputError(f"source.path {path!r} is not a readable tar archive: {e}") from e
  empty = [s for s, n in found.items() if not n]
  if empty:
    raise InputError(f"archive {path!r} has no files for splits {empty} (source.splits maps "
                     f"each split to a folder inside the archive)")
  units = [("archive", split, path, where, limit) for split, where in splits.items()]
  total = sum(min(n, limit) if limit else n for n in found.values())
  return InputPlan(units, sorted(classes), caption_map, splits, total)


def _idx_files(root: str, prefix: str) -> tuple[str, str]:
  found = []
  for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
    candidates = [os.path.join(root, f"{prefix}-{kind}{ext}") for ext in ("", ".gz")]
    hit = [c for c in candidates if os.path.isfile(c)]
    if not hit:
      raise InputError(f"no idx file {candidates[0]}[.gz] (source.splits maps each split to "
                       f"the idx file prefix, e.g. 'train=train,test=t10k')")
    found.append(hit[0])
  return found[0], found[1]


def _plan_idx(path: str, splits: dict[str, str], limit: int) -> InputPlan:
  if not os.path.isdir(path):
    raise InputError(f"source.path {path!r} is not a folder (kind=idx wants the folder "
                     f"holding <prefix>-images-idx3-ubyte[.gz] files)")
  units = [("idx", split, *_idx_files(path, prefix), limit)
           for split, prefix in splits.items()]
  try:
    labels = sorted({int(v) for u in units for v in np.unique(_read_idx(u[3]))})
  except ValueError as e:
    raise InputError(str(e)) from e
  return InputPlan(units, [str(v) for v in labels], {}, splits, 0)


def _plan_tfds(name: str, data_dir: str, splits: dict[str, str], limit: int) -> InputPlan:
  import tensorflow_datasets as tfds
  units, class_names = [], []
  for split, where in splits.items():
    try:
      source = tfds.data_source(name, split=where, data_dir=data_dir or None)
    except Exception as e:  # TFDS raises many types; name the dataset and split
      raise InputError(f"cannot open TFDS dataset {name!r} split {where!r}: {e}") from e
    class_names = _tfds_label_names(source) or class_names
    n = min(len(source), limit) if limit else len(source)
    units += [("tfds", split, name, where, data_dir, start, min(start + TFDS_BLOCK, n))
              for start in range(0, n, TFDS_BLOCK)]
  return InputPlan(units, class_names, {}, splits, 0)


def _tfds_label_names(source) -> list[str]:
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  if features is None or "label" not in features:
    return []
  return list(getattr(features["label"], "names", None) or [])


def plan_inputs(kind: str, path: str, splits: str, captions: str = "", tfds_name: str = "",
                tfds_data_dir: str = "", limit: int = 0) -> InputPlan:
  """Lists the read units of a source (at most ``limit`` examples per split when > 0).
  Raises `InputError` naming what is missing."""
  split_map = parse_splits(splits)
  if not split_map:
    raise InputError("source.splits is empty")
  if kind == "folder":
    return _plan_folder(path, split_map, captions, limit)
  if kind == "archive":
    return _plan_archive(path, split_map, captions, limit)
  if kind == "idx":
    return _plan_idx(path, split_map, limit)
  if kind == "tfds":
    return _plan_tfds(tfds_name, tfds_data_dir, split_map, limit)
  raise InputError(f"unknown source kind {kind!r}")


_NO_META = {"caption": "", "provenance": {}}


def _example(split, rel, cls, meta, source, **payload) -> dict[str, Any]:
  return {"id": f"{split}/{rel}", "split": split, "class_name": cls,
          "caption": meta["caption"], "provenance": dict(meta["provenance"]),
          "source": source, "file": rel, **payload}


def _read_idx(path: str) -> np.ndarray:
  from diffjax.data.convert import read_idx
  return read_idx(path)


def read_unit(unit: tuple, captions: dict[str, dict]) -> Iterator[dict[str, Any]]:
  """The raw examples of one planned unit (bytes are not decoded here)."""
  kind, split = unit[0], unit[1]
  if kind == "file":
    _, _, file, rel, cls, meta = unit
    try:
      data = pathlib.Path(file).read_bytes()
    except OSError as e:
      yield _example(split, rel, cls, meta, file, data=b"", read_error=str(e))
      return
    yield _example(split, rel, cls, meta, file, data=data)
  elif kind == "archive":
    _, _, archive, where, limit = unit
    count = 0
    with tarfile.open(archive, "r:*") as tar:
      for m in tar:
        rel = _split_rel(m.name, where) if m.isfile() else None
        if rel is None:
          continue
        count += 1
        if limit and count > limit:
          break
        cls = _class_of(tuple(rel.split("/")))
        full = m.name.lstrip("./")
        yield _example(split, rel, cls, captions.get(full, _NO_META), f"{archive}:{full}",
                       data=tar.extractfile(m).read())
  elif kind == "idx":
    _, _, images, labels, limit = unit
    x, y = _read_idx(images), _read_idx(labels)
    for i, (img, lbl) in enumerate(zip(x[:limit or None], y[:limit or None])):
      yield _example(split, f"{i:06d}", str(int(lbl)), _NO_META, f"{images}[{i}]", pixels=img)
  elif kind == "tfds":
    import tensorflow_datasets as tfds
    _, _, name, where, data_dir, start, stop = unit
    source = tfds.data_source(name, split=where, data_dir=data_dir or None)
    names = _tfds_label_names(source)
    for i in range(start, stop):
      ex = source[i]
      label = ex.get("label")
      cls = None if label is None else (names[int(label)] if names else str(int(label)))
      meta = {"caption": str(ex.get("caption", "")), "provenance": {}}
      yield _example(split, f"{i:08d}", cls, meta, f"tfds:{name}/{where}",
                     pixels=np.asarray(ex["image"]))
  else:
    raise ValueError(f"unknown input unit {kind!r}")
