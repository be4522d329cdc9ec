"""Balanced-assignment solve time (Eq. 8-11) on random cost matrices.

    .venv/bin/python benchmarks/solver.py [--repeats 5] [--json benchmarks/results/solver.json]

Prints one row per (C_S, C_T): the median wall time of ``balanced_assignment`` over the repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
import torch

from mgd_lightning.matching import balanced_assignment, sparse_assignment

SHAPES = [(128, 256), (256, 256), (256, 512), (512, 512), (512, 1024), (1024, 1024),
          (1024, 2048), (2048, 2048), (2048, 4096), (4096, 4096)]


def _time(fn, cost, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(cost)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-ct", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'C_S':>6} {'C_T':>6} {'balanced (s)':>13} {'sparse (s)':>11}")
    for c_s, c_t in SHAPES:
        if c_t > args.max_ct:
            continue
        # cosine costs summed over images are dense reals in [0, 4 * n_images]
        cost = rng.random((c_s, c_t)) * 4000.0
        bal = _time(balanced_assignment, cost, args.repeats)
        sp = _time(sparse_assignment, cost, args.repeats)
        rows.append({"c_s": c_s, "c_t": c_t, "balanced_s": bal, "sparse_s": sp})
        print(f"{c_s:>6} {c_t:>6} {bal:>13.4f} {sp:>11.4f}")
    env = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "repeats": args.repeats}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
