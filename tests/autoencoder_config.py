"""The test-only ``test_autoencoder`` method (tests/autoencoder_method.py) on the 8x8 digits:
the default config's ``:tiny`` settings with ``method.name`` switched. Importing the method's
module registers it, which is how a config brings its own method.

  python launch.py --config tests/autoencoder_config.py --workdir /tmp/ae
  python launch.py --config tests/autoencoder_config.py:frozen_encoder --workdir /tmp/ae2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autoencoder_method  # noqa: E402,F401  (registers the method)
from configs import default  # noqa: E402


def get_config(arg=None):
  if arg not in (None, "frozen_encoder"):
    raise ValueError(f"tests/autoencoder_config.py takes no argument or 'frozen_encoder', "
                     f"got {arg!r}")
  c = default.get_config("tiny")
  c.experiment = "test-autoencoder"
  c.method.name = "test_autoencoder"
  c.method.latent_channels = 4
  c.method.frozen_encoder = arg == "frozen_encoder"
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 0
  return c
