"""Throughput of FID feature extraction (images/s) with the standard Inception-v3.

Runs the jitted, sharded Flax network on 32x32 uint8 images (resized to 299 inside), after
compilation, and writes ``features_<backend>.json`` / ``.md`` beside this file. Needs the
converted weights (see diffjax/evaluation/inception_weights.py) or ``--source`` to convert.

The peer, in the same run when PyTorch is installed: the reference TorchScript network
(``--torchscript``, the file pytorch-fid's network was exported to) on the same images already
resized to 299x299 (its resize is not timed, ours is), with all of this machine's threads.

  python experiments/benchmarks/evaluation/feature_throughput.py \\
      --source ../shared/assets/inception/inception-2015-12-05-fid.torchscript.pt
"""

import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("source", None, "weight file to convert if the cache is empty")
flags.DEFINE_string("cache_dir", None, "converted-weights folder")
flags.DEFINE_integer("batch", 64, "images per device call")
flags.DEFINE_integer("batches", 4, "timed calls")
flags.DEFINE_string("torchscript", str(pathlib.Path(__file__).resolve().parents[4] / "shared" /
                    "assets" / "inception" / "inception-2015-12-05-fid.torchscript.pt"),
                    "reference network for the PyTorch comparison ('' to skip)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
    from diffjax.parallel.distributed import split_host_into_devices
    split_host_into_devices(FLAGS.batch)
  import jax
  import numpy as np

  from diffjax import parallel
  from diffjax.evaluation import features
  mesh = parallel.make_mesh({"data": jax.device_count(), "fsdp": 1, "tensor": 1})
  net = features.inception_net(mesh, cache_dir=FLAGS.cache_dir, source=FLAGS.source,
                               batch_size=FLAGS.batch)
  x = np.random.default_rng(0).integers(0, 256, (FLAGS.batch, 32, 32, 3)).astype(np.uint8)
  t0 = time.perf_counter()
  net(x)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(FLAGS.batches):
    net(x)
  dt = (time.perf_counter() - t0) / FLAGS.batches
  row = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
         "devices": jax.device_count(), "batch": FLAGS.batch,
         "images_per_s": round(FLAGS.batch / dt, 1), "compile_s": round(compile_s, 1),
         "jax": jax.__version__, "cpu_count": os.cpu_count()}
  torch_rate = _torch_images_per_s(x) if FLAGS.torchscript else None
  if torch_rate:
    row.update(torch_images_per_s=round(torch_rate, 1),
               ratio_vs_torch=round(row["images_per_s"] / torch_rate, 2))
  out = pathlib.Path(__file__).parent
  (out / f"features_{row['backend']}.json").write_text(json.dumps(row, indent=1))
  (out / f"features_{row['backend']}.md").write_text(
      "| backend | device | devices | batch | images/s | compile s | PyTorch TorchScript "
      "images/s | ratio |\n|---|---|---|---|---|---|---|---|\n"
      f"| {row['backend']} | {row['device']} | {row['devices']} | {row['batch']} | "
      f"{row['images_per_s']} | {row['compile_s']} | {row.get('torch_images_per_s', '-')} | "
      f"{row.get('ratio_vs_torch', '-')} |\n")
  print(json.dumps(row))


def _torch_images_per_s(x_uint8):
  """The reference TorchScript network's rate on the same batch (None if unavailable)."""
  try:
    import torch
  except ImportError:
    print("PyTorch not installed: no comparison")
    return None
  if not os.path.exists(FLAGS.torchscript):
    print(f"{FLAGS.torchscript} not found: no comparison")
    return None
  import numpy as np

  from diffjax.evaluation import inception
  net = torch.jit.load(FLAGS.torchscript).eval()
  x = torch.from_numpy(np.asarray(inception.preprocess(x_uint8, "tf"))).permute(0, 3, 1, 2)
  x = x.contiguous()
  with torch.no_grad():
    net(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(FLAGS.batches):
      net(x)
  return FLAGS.batch * FLAGS.batches / (time.perf_counter() - t0)


if __name__ == "__main__":
  from diffjax.host import reexec_with_huge_pages
  reexec_with_huge_pages()  # huge pages for XLA:CPU's buffers (see diffjax/host.py)
  app.run(main)
