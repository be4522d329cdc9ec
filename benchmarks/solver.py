"""Balanced-assignment solve time (Eq. 8-11) on random cost matrices.

    .venv/bin/python benchmarks/solver.py [--repeats 5] [--json benchmarks/results/solver.json]

Prints one row per (C_S, C_T): the median wall time of ``balanced_assignment`` over the repeats, of the
sparse assignment, and of the reference code's way (``--reference``): the stacked problem D' built arc by
arc in a Python double loop (as the reference code fed its OR-Tools binding, which is gone) and solved by the
same SciPy solver; and of LAPJV (the ``lap`` package, not a dependency) on the same stacked matrix when it is
installed. (SciPy's sparse LAPJVsp, ``min_weight_full_bipartite_matching``, did not finish within a minute on
the stacked 64 x 64 problem here, so it is not offered.)
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
from scipy.optimize import linear_sum_assignment

from mgd_lightning.matching import assignment_cost, balanced_assignment, sparse_assignment

SHAPES = [(128, 256), (256, 256), (256, 512), (512, 512), (512, 1024), (1024, 1024),
          (1024, 2048), (2048, 2048), (2048, 4096), (4096, 4096)]


def _time(fn, cost, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(cost)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_way(cost: np.ndarray) -> float:
    """The reference code's construction: every arc of D' appended in a Python double loop (as it fed its
    OR-Tools binding, which is gone), then the same dense solver as ours. Returns the objective."""
    c_s, c_t = cost.shape
    alpha = c_t // c_s
    stacked = np.empty((alpha * c_s, c_t))
    for i in range(alpha * c_s):
        for j in range(c_t):
            stacked[i, j] = float(cost[i % c_s, j])
    r, c = linear_sum_assignment(stacked)
    return float(stacked[r, c].sum())


def lapjv_way(cost: np.ndarray) -> float | None:
    try:
        import lap
    except ImportError:
        return None
    c_s, c_t = cost.shape
    stacked = np.tile(cost, (c_t // c_s, 1))
    _, x, _ = lap.lapjv(stacked, extend_cost=True)
    return float(stacked[np.arange(len(x)), x].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-ct", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reference", action="store_true", help="also time the reference code's way (slow)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'C_S':>6} {'C_T':>6} {'balanced (s)':>13} {'sparse (s)':>11} {'reference (s)':>14} {'LAPJV (s)':>10}")
    for c_s, c_t in SHAPES:
        if c_t > args.max_ct:
            continue
        # cosine costs summed over images are dense reals in [0, 4 * n_images]
        cost = rng.random((c_s, c_t)) * 4000.0
        bal = _time(balanced_assignment, cost, args.repeats)
        sp = _time(sparse_assignment, cost, args.repeats)
        row = {"c_s": c_s, "c_t": c_t, "balanced_s": bal, "sparse_s": sp}
        ours = assignment_cost(cost, balanced_assignment(cost))
        if args.reference:
            start = time.perf_counter()
            ref = reference_way(cost)
            row["reference_s"] = time.perf_counter() - start  # one run: it is slow
            assert abs(ref - ours) <= 1e-6 * max(1.0, abs(ours)), (ref, ours)
            start = time.perf_counter()
            jv = lapjv_way(cost)
            if jv is not None:
                row["lapjv_s"] = time.perf_counter() - start
                assert abs(jv - ours) <= 1e-6 * max(1.0, abs(ours)), (jv, ours)
        rows.append(row)
        ref_s = f"{row['reference_s']:>14.4f}" if "reference_s" in row else f"{'-':>14}"
        jv_s = f"{row['lapjv_s']:>10.4f}" if "lapjv_s" in row else f"{'-':>10}"
        print(f"{c_s:>6} {c_t:>6} {bal:>13.4f} {sp:>11.4f} {ref_s} {jv_s}")
    env = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "repeats": args.repeats}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
