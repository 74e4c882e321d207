"""CI must not skip a test for a reason CI itself rules out: the shared assets
(``../shared/assets``) and every package the requirement files install (PyTorch, diffusers,
pytorch-fid, Apache Beam, OpenCV, ...) are there in CI. With ``DIFFJAX_CI=1`` (set by
``.ci/run``) such a skip, of a test or of a whole module, is reported as a failure naming the
reason; elsewhere (a laptop without the assets) it stays a skip. Skips for other reasons (an
optional package no requirement file lists, a platform without /proc) are left alone.

Imported by conftest.py, whose module namespace is where pytest looks for hooks.
"""

from __future__ import annotations

import os
import re

import pytest

# Import names of what requirements*.txt install, as importorskip names them.
_INSTALLED_IN_CI = ("torch", "diffusers", "pytorch_fid", "apache_beam", "cv2", "skimage",
                    "phonenumbers", "usaddress", "tensorflow_datasets", "tensorboard",
                    "safetensors", "diffrax")
FORBIDDEN = re.compile(
    r"shared assets|test assets not found|assets not found"
    r"|could not import '(?:" + "|".join(_INSTALLED_IN_CI) + r")(?:\.[\w.]+)?'"
    r"|No module named '(?:" + "|".join(_INSTALLED_IN_CI) + r")(?:\.[\w.]+)?'"
    r"|requirements(?:-prep|-test|-test-nodeps)?\.txt"
    r"|PyTorch not installed|pytorch-fid not installed|diffusers not installed",
    re.IGNORECASE)


def in_ci() -> bool:
  return os.environ.get("DIFFJAX_CI", "") == "1"


def _skip_reason(longrepr) -> str:
  if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
    return str(longrepr[2])
  return str(longrepr)


def _forbid(report) -> None:
  reason = _skip_reason(report.longrepr)
  if FORBIDDEN.search(reason):
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI (DIFFJAX_CI=1) for a reason CI rules out: {reason}\n"
                       f"CI installs every requirement file and has ../shared/assets; fix the "
                       f"CI machine or the test, do not let it skip.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
    _forbid(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  report = outcome.get_result()
  if in_ci() and report.skipped:  # e.g. a module-level importorskip
    _forbid(report)
