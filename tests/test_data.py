"""Sources, converters and Grain pipelines: contents, determinism, resumability, sharding."""

import gzip
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from diffjax import data
from diffjax.data import convert, records
from diffjax.data.pipeline import center_crop_resize, preprocess

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "assets"


def _write_idx(path, array, magic_dims):
  header = bytes([0, 0, 0x08, magic_dims]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_digits_source_splits_and_values():
  train, test = data.digits_source("train"), data.digits_source("test")
  assert (len(train), len(test)) == (1617, 180)
  ex = train[0]
  assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
  assert ex["image"].max() == 255 and 0 <= ex["label"] < 10
  with pytest.raises(ValueError, match="digits has splits"):
    data.digits_source("validation")
  # Read from scikit-learn's CSV file directly: the same arrays as its own loader.
  from sklearn.datasets import load_digits
  reference = load_digits()
  everything = data.digits_source("all")
  np.testing.assert_array_equal(everything.images[..., 0],
                                np.round(reference.images * (255 / 16)).astype(np.uint8))
  np.testing.assert_array_equal(everything.labels, reference.target)


def test_preprocess_normalises_crops_and_flips():
  img = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4, 1) * 10
  out = preprocess({"image": img, "label": 3}, np.random.default_rng(0), image_size=4,
                   channels=1, random_flip=False)
  np.testing.assert_allclose(out["image"][..., 0], img[1:5, :, 0] / 127.5 - 1.0, atol=1e-6)  # crop
  assert out["label"] == 3 and out["image"].dtype == np.float32
  flips = [preprocess({"image": img[1:5], "label": 0}, np.random.default_rng(s), image_size=4,
                      channels=1, random_flip=True)["image"] for s in range(40)]
  crop = img[1:5] / 127.5 - 1.0
  mirrored = [np.allclose(f, crop[:, ::-1], atol=1e-6) for f in flips]
  assert all(m or np.allclose(f, crop, atol=1e-6) for m, f in zip(mirrored, flips))
  assert 5 < sum(mirrored) < 35  # about half
  rgb = preprocess({"image": np.zeros((8, 8, 1), np.uint8), "label": 0},
                   np.random.default_rng(0), image_size=8, channels=3, random_flip=False)
  assert rgb["image"].shape == (8, 8, 3)


def test_center_crop_resize_box_filter_averages():
  img = np.zeros((8, 8, 1), np.uint8)
  img[:4, :4] = 200
  out = center_crop_resize(img, 2)
  np.testing.assert_array_equal(out[..., 0], [[200, 0], [0, 0]])


def _options(**kw):
  return data.PipelineOptions(**{"image_size": 8, "channels": 1, "random_flip": True,
                                 "batch_size": 16, "num_workers": 0, "seed": 3, **kw})


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_pipeline_is_deterministic_and_covers_each_epoch():
  src = data.digits_source("test")  # 180 examples
  a = _take(iter(data.make_dataset(src, _options())), 11)
  b = _take(iter(data.make_dataset(src, _options())), 11)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  labels = np.concatenate([x["label"] for x in a])[:176]
  # One epoch is a permutation: each test label count appears as often as in the source.
  counts = np.bincount(labels[:176], minlength=10)
  assert counts.sum() == 176 and counts.max() <= np.bincount(src.labels).max()
  other = _take(iter(data.make_dataset(src, _options(seed=4))), 1)[0]
  assert not np.array_equal(other["label"], a[0]["label"])


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_resumes_exactly(workers):
  src = data.digits_source("test")
  it = iter(data.make_dataset(src, _options(num_workers=workers)))
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  resumed = iter(data.make_dataset(src, _options(num_workers=workers)))
  resumed.set_state(state)
  for x, y in zip(expected, _take(resumed, 4)):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_worker_processes_give_the_same_batches_as_the_main_process():
  src = data.digits_source("test")
  a = _take(iter(data.make_dataset(src, _options(num_workers=0))), 5)
  b = _take(iter(data.make_dataset(src, _options(num_workers=2))), 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


KILLED_PARENT = """
import sys
from diffjax import data
opts = data.PipelineOptions(8, 1, False, 16, num_workers=2)
batches = iter(data.make_dataset(data.digits_source("test"), opts))
next(batches)
print("ready", flush=True)
sys.stdin.read()
"""


def _worker_children(pid: int) -> list[int]:
  """Multiprocessing worker processes whose parent is ``pid`` (from /proc)."""
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
      except OSError:
        continue
      if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
        out.append(int(entry))
  return out


def _alive(pid: int) -> bool:
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_worker_processes_exit_when_their_process_is_killed():
  """A training process killed with SIGKILL cannot stop its Grain workers; they notice and
  exit (without the check they lived on, idle, for as long as anyone watched)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], cwd=root, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 30  # the second worker may start after the first batch
    while len(workers := _worker_children(proc.pid)) < 2 and time.time() < deadline:
      time.sleep(0.2)
    assert len(workers) == 2, workers
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  deadline = time.time() + 60  # a worker still starting checks once it has started
  while time.time() < deadline and any(_alive(w) for w in workers):
    time.sleep(0.2)
  left = [w for w in workers if _alive(w)]
  for w in left:
    os.kill(w, signal.SIGKILL)
  assert not left, f"worker processes {left} outlived their killed parent"


def test_a_process_reads_exactly_the_rows_its_devices_hold():
  """Rows in several runs (a mesh that interleaves the processes along the batch) come from
  the same global batches as one process reads whole."""
  src = data.digits_source("test")
  full = _take(iter(data.make_dataset(src, _options())), 3)
  rows = [0, 1, 8, 9]
  part = _take(iter(data.make_dataset(src, _options(), process_count=4, rows=rows)), 3)
  for whole, mine in zip(full, part):
    np.testing.assert_array_equal(mine["image"], whole["image"][rows])
  with pytest.raises(ValueError, match="distinct, ascending rows"):
    data.make_dataset(src, _options(), process_count=4, rows=[8, 0])


def test_processes_read_disjoint_slices_of_the_same_global_batches():
  src = data.digits_source("test")
  full = _take(iter(data.make_dataset(src, _options())), 4)
  parts = [_take(iter(data.make_dataset(src, _options(), process_index=p, process_count=4)), 4)
           for p in range(4)]
  for k in range(4):
    joined = np.concatenate([parts[p][k]["image"] for p in range(4)])
    np.testing.assert_array_equal(joined, full[k]["image"])


def test_idx_conversion_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (25, 28, 28)).astype(np.uint8)
  labels = rng.integers(0, 10, 25).astype(np.uint8)
  _write_idx(tmp_path / "img.gz", images, 3)
  _write_idx(tmp_path / "lbl.gz", labels, 1)
  np.testing.assert_array_equal(convert.read_idx(tmp_path / "img.gz"), images)
  info = convert.convert_idx(str(tmp_path / "img.gz"), str(tmp_path / "lbl.gz"),
                             str(tmp_path / "out"), "train", num_shards=3)
  assert info["num_examples"] == 25 and sum(s["count"] for s in info["shards"]) == 25
  src = data.ArrayRecordSource(str(tmp_path / "out"))
  assert len(src) == 25
  for i in (0, 7, 24):  # PNG is lossless: pixels and labels come back exactly
    np.testing.assert_array_equal(src[i]["image"][..., 0], images[i])
    assert src[i]["label"] == labels[i]


def test_idx_reader_rejects_truncated_files(tmp_path):
  images = np.zeros((4, 5, 5), np.uint8)
  _write_idx(tmp_path / "img.gz", images, 3)
  raw = gzip.open(tmp_path / "img.gz").read()
  with gzip.open(tmp_path / "short.gz", "wb") as f:
    f.write(raw[:-7])
  with pytest.raises(ValueError, match="short.gz: idx header promises"):
    convert.read_idx(tmp_path / "short.gz")


def _make_class_folders(root: pathlib.Path):
  rng = np.random.default_rng(1)
  for cls, fmt in (("cat", "JPEG"), ("dog", "PNG"), ("emu", "PPM")):
    (root / cls).mkdir(parents=True)
    for i in range(3):
      arr = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
      Image.fromarray(arr).save(root / cls / f"{i}.{fmt.lower()}", format=fmt)
  (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_folder_conversion_from_a_folder_and_a_tar_archive(tmp_path):
  _make_class_folders(tmp_path / "raw" / "train")
  info = convert.convert_folder(str(tmp_path / "raw"), str(tmp_path / "a"), "train",
                                subdir="train")
  assert info["num_examples"] == 9 and info["class_names"] == ["cat", "dog", "emu"]
  assert info["unreadable"] == ["dog/broken.png"]
  with tarfile.open(tmp_path / "raw.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "raw", arcname=".")
  info_tar = convert.convert_folder(str(tmp_path / "raw.tar.gz"), str(tmp_path / "b"), "train",
                                    subdir="train")
  assert info_tar["num_examples"] == 9
  a, b = data.ArrayRecordSource(str(tmp_path / "a")), data.ArrayRecordSource(str(tmp_path / "b"))
  for i in range(9):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
  labels = sorted(a[i]["label"] for i in range(9))
  assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  # PPM is re-encoded losslessly as PNG; JPEG bytes pass through unchanged.
  ppm = [a[i]["image"] for i in range(9) if a[i]["label"] == 2]
  originals = [np.asarray(Image.open(tmp_path / "raw" / "train" / "emu" / f"{i}.ppm"))
               for i in range(3)]
  for got in ppm:
    assert any(np.array_equal(got, o) for o in originals)


def test_converted_assets_fashion_mnist_test_split(tmp_path):
  base = ASSETS / "data" / "fashion_mnist"
  if not base.exists():
    pytest.skip(f"shared assets not found at {base}")
  info = convert.convert_idx(str(base / "t10k-images-idx3-ubyte.gz"),
                             str(base / "t10k-labels-idx1-ubyte.gz"), str(tmp_path), "test")
  assert info["num_examples"] == 10000 and info["num_classes"] == 10
  src = data.ArrayRecordSource(str(tmp_path))
  raw = convert.read_idx(base / "t10k-images-idx3-ubyte.gz")
  np.testing.assert_array_equal(src[1234]["image"][..., 0], raw[1234])


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    src = data.make_source("tfds", name="cifar10", split="train")
    assert len(src) == 12
    ex = src[5]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    batch = next(iter(data.make_dataset(src, _options(image_size=16, channels=3, batch_size=4))))
    assert batch["image"].shape == (4, 16, 16, 3)


def test_missing_array_record_path_is_reported(tmp_path):
  with pytest.raises(ValueError, match="no ArrayRecord files at data.path="):
    data.make_source("array_record", path=str(tmp_path / "nothing"))


def test_records_round_trip_fields():
  img = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
  rec = records.decode_record(records.encode_record(records.encode_png(img), 4, id="x/1"))
  np.testing.assert_array_equal(rec["image"], img)
  assert rec["label"] == 4 and rec["id"] == "x/1"


def test_device_feeder_state_is_before_the_batches_it_holds():
  """A checkpoint taken while batches are prefetched resumes at the first unconsumed one."""
  from diffjax.data import PipelineOptions, digits_source, make_dataset
  from diffjax.training.feeder import DeviceFeeder
  options = PipelineOptions(image_size=8, channels=1, random_flip=True, batch_size=4, seed=3)
  plain = iter(make_dataset(digits_source("train"), options))
  expected = [next(plain)["label"] for _ in range(6)]
  feeder = DeviceFeeder(iter(make_dataset(digits_source("train"), options)),
                        lambda b: b["label"], depth=2)
  got = [feeder.next(), feeder.next()]
  feeder.fill()  # holds batches 2 and 3 now
  saved = feeder.get_state()
  got.append(feeder.next())
  resumed = DeviceFeeder(iter(make_dataset(digits_source("train"), options)),
                         lambda b: b["label"], depth=1)
  resumed.set_state(saved)
  got += [resumed.next(), resumed.next(), resumed.next()]
  for a, b in zip(got[:3], expected[:3]):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(got[3:], expected[2:5]):  # resumes at batch 2, the first not consumed
    np.testing.assert_array_equal(a, b)


def test_start_batch_resumes_the_stream_at_that_global_batch():
  """``make_dataset(start_batch=k)`` (the resume path when no iterator state fits) yields
  global batch k, k + 1, ... of the stream read from the start, across an epoch boundary
  (180 examples, batches of 16: batch 11 spans both epochs), for a whole process and for
  processes that read some rows of each global batch."""
  src = data.digits_source("test")
  full = _take(iter(data.make_dataset(src, _options())), 15)
  for start in (3, 11):
    resumed = _take(iter(data.make_dataset(src, _options(), start_batch=start)), 3)
    for k, got in enumerate(resumed):
      np.testing.assert_array_equal(got["image"], full[start + k]["image"])
      np.testing.assert_array_equal(got["label"], full[start + k]["label"])
    for rows, count in (([8, 9, 10, 11, 12, 13, 14, 15], 2), ([0, 1, 8, 9], 4)):
      part = _take(iter(data.make_dataset(src, _options(), process_count=count, rows=rows,
                                          start_batch=start)), 3)
      for k, got in enumerate(part):
        np.testing.assert_array_equal(got["image"], full[start + k]["image"][rows])


def test_array_record_shards_hold_exactly_the_source_images(tmp_path):
  """Written shards read back through the ArrayRecord source equal the images and labels they
  were written from, in order (a source returning zeros would fail here)."""
  src = data.digits_source("test")
  recs = [records.encode_record(records.encode_png(src[i]["image"]), src[i]["label"])
          for i in range(len(src))]
  convert.write_shards(recs, tmp_path / "ar", "train", num_shards=3)
  ar = data.make_source("array_record", path=str(tmp_path / "ar"))
  assert len(ar) == len(src) == 180
  for i in range(len(src)):
    np.testing.assert_array_equal(ar[i]["image"], src[i]["image"])
    assert int(ar[i]["label"]) == int(src[i]["label"])
  assert np.std([ar[i]["image"] for i in range(20)]) > 10


def test_channel_conversion_is_itu_r_601_luma_and_grey_replication():
  """RGB(A) -> one channel: round(0.299 R + 0.587 G + 0.114 B) (ITU-R BT.601, PIL's "L"
  weights); one channel -> three: the grey value in every channel."""
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (8, 8, 4)).astype(np.uint8)
  luma = np.round(rgba[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114])
  out = preprocess({"image": rgba}, rng, image_size=8, channels=1, random_flip=False)["image"]
  np.testing.assert_allclose((out[..., 0] + 1) * 127.5, luma, atol=1e-3)
  grey = rng.integers(0, 256, (8, 8, 1)).astype(np.uint8)
  out = preprocess({"image": grey}, rng, image_size=8, channels=3, random_flip=False)["image"]
  np.testing.assert_allclose((out + 1) * 127.5, np.repeat(grey, 3, axis=-1), atol=1e-3)
