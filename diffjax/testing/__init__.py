"""Test fixtures and harnesses shared by the test suite and the experiments; not used by the
library itself (like ``numpy.testing``).

* `launching`: runs launch.py in a subprocess the way a user would.
* `fault_injection`: interrupts and damages real launch.py runs and compares the end states.
* `planted`: builds a dirty image folder with known answers for the preparation pipeline.
* `torch_stylegan2`: the `stylegan2-torch` reference package without CUDA (plain-PyTorch ops).
"""
