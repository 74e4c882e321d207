"""Time FID's Tr (S1 S2)^(1/2) two ways on 2048-d covariances (the Inception pool size):
diffjax's symmetric eigendecompositions (`metrics.frechet_distance`) vs the reference
implementations' ``scipy.linalg.sqrtm`` of the product, on the same statistics in the same
run; writes experiments/benchmarks/evaluation/fid_trace_sqrt.{json,md}.

  python experiments/benchmarks/evaluation/fid_trace_sqrt.py
"""

import json
import pathlib
import sys
import time

import numpy as np
import scipy.linalg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from diffjax.evaluation import metrics  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent / "fid_trace_sqrt"


def by_sqrtm(mu1, s1, mu2, s2):
  d = mu1 - mu2
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def main():
  rng = np.random.default_rng(0)
  rows = []
  for n in (32, 5000):  # fewer samples than dimensions (singular), and full rank
    mix = rng.normal(size=(2048, 2048)) * 0.05
    a, b = rng.normal(size=(n, 2048)) @ mix, rng.normal(size=(n, 2048)) @ (1.2 * mix) + 0.1
    stats = (*metrics.statistics(a), *metrics.statistics(b))
    t = time.perf_counter()
    ours = metrics.frechet_distance(*stats)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = by_sqrtm(*stats)
    t_ref = time.perf_counter() - t
    rows.append({"samples": n, "dim": 2048, "fd_eigh": ours, "fd_sqrtm": ref,
                 "relative_difference": abs(ours - ref) / abs(ref), "seconds_eigh": t_ours,
                 "seconds_sqrtm": t_ref, "speedup": t_ref / t_ours})
    print(rows[-1], flush=True)
  OUT.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
  lines = ["| samples per set | FD (eigh) | FD (sqrtm) | rel. difference | eigh s | sqrtm s "
           "| ratio |",
           "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['samples']} | {r['fd_eigh']:.6f} | {r['fd_sqrtm']:.6f} | "
            f"{r['relative_difference']:.1e} | {r['seconds_eigh']:.2f} | "
            f"{r['seconds_sqrtm']:.2f} | {r['speedup']:.1f}x |" for r in rows]
  OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
