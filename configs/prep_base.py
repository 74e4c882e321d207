"""Defaults for data preparation (`launch.py --mode prep`): raw images -> validated,
de-duplicated, anonymised ArrayRecord shards plus a data card, in an Apache Beam pipeline.

Prep files call `get_prep_config()` and set at least ``source``; every field can be overridden
with ``--config.section.field=value``. The output folder is ``--workdir``.
"""

import os

import ml_collections

# The YuNet face detector shipped with this repository's test assets; point
# privacy.face_model at your copy of face_detection_yunet_2023mar.onnx (opencv_zoo) elsewhere.
_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "assets")
DEFAULT_FACE_MODEL = os.path.normpath(os.path.join(
    _ASSETS, "faces", "face_detection_yunet_2023mar.onnx"))


def get_prep_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "prep"  # marks a preparation config (training configs have no such field)
  c.experiment = "prep"
  c.dataset = "unnamed"  # name written into the manifest and data card
  c.licence = "unknown"  # the source's licence, copied into the data card
  c.description = ""

  c.source = ml_collections.ConfigDict()
  c.source.kind = "folder"  # folder | archive | idx | tfds
  c.source.path = ""  # folder, .tar[.gz] archive, or folder of idx files
  # Split name -> sub-folder (folder/archive), idx file prefix (idx) or TFDS split:
  # "train,test" or "train=train,test=t10k"; "train=." for a folder without split folders.
  c.source.splits = "train"
  # Captions and provenance: "" | "sidecar" (<image>.txt caption, <image>.json with caption,
  # source_id, url, licence, attribution) | path to a CSV/JSONL manifest with a file column and
  # any of those columns. Records keep source, source_id, licence and attribution.
  c.source.captions = ""
  # Opt-out list: one entry a line (id, file path, source_id, URL, or SHA-256 of the file bytes
  # or decoded pixels); matching images are removed and counted in the report.
  c.source.opt_out = ""
  c.source.labels = True  # class folders (folder/archive) or the label field become labels
  c.source.limit = 0  # at most this many inputs per split (0 = all), for smoke runs
  c.source.tfds_name = ""
  c.source.tfds_data_dir = ""

  c.validate = ml_collections.ConfigDict()
  c.validate.max_side = 16384  # larger images are quarantined as too_large (from the header)
  c.validate.max_pixels = 100_000_000

  c.filters = ml_collections.ConfigDict()
  c.filters.min_side = 16  # shorter side in pixels
  c.filters.min_aspect = 0.5  # width / height range
  c.filters.max_aspect = 2.0
  c.filters.min_sharpness = 0.0  # variance of the Laplacian of the luma; 0 = off
  c.filters.min_contrast = 2.0  # standard deviation of the luma (blank images); 0 = off
  c.filters.outlier_z = 8.0  # robust z-score (median/MAD) on brightness, contrast, saturation
  c.filters.outlier_stats = "brightness,contrast,saturation"

  c.dedup = ml_collections.ConfigDict()
  c.dedup.exact = True
  c.dedup.near = True
  # Near copies: cosine of 16x16 antialiased thumbnails at or above this (calibrated in
  # experiments/prep_planted/neardup_study.md). Candidates come from num_bands LSH bands of
  # band_bits random-hyperplane bits; for N images use band_bits about log2(N) - 2 and enough
  # bands that the manifest's candidate recall at the threshold is >= 0.99.
  c.dedup.min_similarity = 0.985
  c.dedup.num_bands = 12
  c.dedup.band_bits = 16
  # Second rule, for natural photographs (re-crops, shifts, colour changes): perceptual hashes
  # within max_hamming of 64 bits and thumbnail cosine >= hash_min_similarity. 0 = off: on
  # low-variety data (Fashion-MNIST) distinct images of one silhouette share hashes.
  c.dedup.max_hamming = 0
  c.dedup.hash_min_similarity = 0.5
  c.dedup.split_priority = "test,validation,val,train"  # which copy is kept

  c.privacy = ml_collections.ConfigDict()
  c.privacy.faces = "blur"  # blur | pixelate | none
  c.privacy.face_model = DEFAULT_FACE_MODEL
  # Operating point from experiments/cifar10_prep/face_threshold.md: ORL faces (full size and
  # shrunk to 32 px) recall 1.0; CIFAR-10 dogs (animal faces) 1.4% false hits.
  c.privacy.face_score = 0.8
  c.privacy.face_min_side = 64  # smaller images are upscaled for detection
  c.privacy.face_margin = 0.2  # grow each face box by this fraction before anonymising
  # A second pass at twice the scale (tiled) for images large enough to hold small faces; a box
  # only it finds is kept when YuNet scores a crop around it >= face_verify_score
  # (experiments/prep_planted/faces_clutter.md: recall on faces in clutter, animal false hits).
  c.privacy.face_second_pass = True
  c.privacy.face_verify_score = 0.85
  c.privacy.scrub_captions = True
  # Regions whose national phone formats (no country code) are looked for in captions;
  # numbers with a country code are found for every region.
  c.privacy.phone_regions = "US,GB,DE,FR,ES,IT,NL,IN,JP,CN,BR,MX,AU,ZA,RU,KR,NG,TR,ID,PH"

  c.output = ml_collections.ConfigDict()
  c.output.resolutions = "32"  # comma list: centre-crop + resize to each, "<res>px/" folders
  c.output.channels = 0  # 0 = as the source (grey stays grey), 1 or 3 to convert
  c.output.num_shards = 4  # per split and resolution
  c.output.grid_size = 64  # images in the data card's example grid

  c.runner = ml_collections.ConfigDict()
  c.runner.name = "DirectRunner"  # DataflowRunner, FlinkRunner, SparkRunner, ...
  c.runner.num_workers = 2  # DirectRunner workers
  c.runner.mode = "multi_processing"  # DirectRunner: in_memory | multi_threading | ...
  c.runner.options = ""  # extra Beam pipeline options, e.g. "--project=p --region=r"
  return c
