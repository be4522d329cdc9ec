"""AMP / MP reduction time: the running comparison over the alpha members (ours) against argmax over the
group axis of the (B, C_S, alpha, H, W) gather (the direct formulation).

    .venv/bin/python benchmarks/reduction.py [--repeats 20] [--json benchmarks/results/reduction.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mgd_lightning.reduction import reduce_teacher

# (B, C_T, C_S, H, W): CIFAR-sized and 224 px taps (resnet50 -> mobilenet_v2, taps 1 and 3)
SHAPES = [(128, 64, 32, 14, 14), (128, 128, 64, 8, 8), (32, 512, 192, 28, 28), (32, 2048, 960, 7, 7)]


def argmax_amp(teacher: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    b, _, h, w = teacher.shape
    c_s, alpha = groups.shape
    gathered = teacher.index_select(1, groups.flatten()).view(b, c_s, alpha, h, w)
    index = gathered.abs().argmax(dim=2, keepdim=True)
    return gathered.gather(2, index).squeeze(2)


def _median(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'B':>4} {'C_T':>5} {'C_S':>5} {'HxW':>6} {'argmax (ms)':>12} {'ours (ms)':>10} {'speed-up':>9}")
    for b, c_t, c_s, h, w in SHAPES:
        g = torch.Generator().manual_seed(0)
        teacher = torch.randn(b, c_t, h, w, generator=g)
        alpha = c_t // c_s
        groups = torch.randperm(c_t, generator=g)[: c_s * alpha].view(c_s, alpha)
        assert torch.equal(argmax_amp(teacher, groups), reduce_teacher(teacher, groups, "amp"))
        base = _median(lambda t=teacher, gr=groups: argmax_amp(t, gr), args.repeats)
        ours = _median(lambda t=teacher, gr=groups: reduce_teacher(t, gr, "amp"), args.repeats)
        rows.append({"B": b, "C_T": c_t, "C_S": c_s, "H": h, "W": w, "argmax_ms": 1e3 * base, "ours_ms": 1e3 * ours})
        print(f"{b:>4} {c_t:>5} {c_s:>5} {h:>3}x{w:<2} {1e3 * base:>12.2f} {1e3 * ours:>10.2f} {base / ours:>8.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
