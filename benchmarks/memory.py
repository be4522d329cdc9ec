"""Peak memory of one training step, MGD-AMP vs KD (and the student alone), one fresh process per method.

    .venv/bin/python benchmarks/memory.py --json benchmarks/results/memory.json

One step (``training_step``, ``backward``, SGD step with momentum) of ResNet-50 -> MobileNet-V2 at 224 px,
random weights, in a fresh interpreter per method so that each peak is that method's alone:

* CPU: peak resident set size (``ru_maxrss``) before the step (imports, both networks, the batch, the tap
  probe of construction) and after it;
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated()`` over the step and
  ``torch.cuda.memory_allocated()`` before it.

``--precision bf16-mixed`` runs the forward and loss under ``torch.autocast(dtype=torch.bfloat16)``.
For the CPU at batch 16 and 64 (MGD-AMP, OFD, KD) see also ``benchmarks/results/capacity.json``
(``benchmarks/capacity.py``), which this script does not re-measure by default on the CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from _common import METHODS, PAIRS, PRECISIONS, autocast, build_models, build_module, quiet, timed, write_json

GB = 1024**3


def _rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def worker(method: str, args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher, student, side = build_models(args.pair, args.num_classes)
    module = build_module(method, teacher, student, side).to(device).train()
    del teacher, student
    optimizer = module.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, side, side, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    out = {"method": method, "pair": args.pair, "batch": args.batch_size, "device": args.device,
           "precision": args.precision}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["cuda_before_bytes"] = torch.cuda.memory_allocated()
    out["rss_before_bytes"] = _rss_bytes()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            loss = module.training_step((x, y), 0)
        loss.backward()
        optimizer.step()

    with quiet():
        out["step_s"] = timed(step, device)
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    out["rss_peak_bytes"] = _rss_bytes()
    return out


def run_isolated(method: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--pair", args.pair,
           "--batch-size", str(args.batch_size), "--device", args.device, "--precision", args.precision,
           "--threads", str(args.threads), "--num-classes", str(args.num_classes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"method": method, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    ref = {r["method"]: r for r in rows if "error" not in r}
    lines = ["| method | pair | batch | device | precision | RSS before (GB) | peak RSS (GB) | RSS step increment (GB) "
             "| CUDA before (GB) | CUDA peak (GB) | vs KD |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['error']} |||||||||||")
            continue
        cuda = "cuda_peak_bytes" in r
        key = "cuda_peak_bytes" if cuda else "rss_peak_bytes"
        vs = f"{r[key] / ref['kd'][key]:.2f}x" if "kd" in ref else "-"
        lines.append(
            f"| {r['method']} | {r['pair']} | {r['batch']} | {r['device']} | {r['precision']} "
            f"| {r['rss_before_bytes'] / GB:.2f} | {r['rss_peak_bytes'] / GB:.2f} "
            f"| {(r['rss_peak_bytes'] - r['rss_before_bytes']) / GB:.2f} "
            f"| {r['cuda_before_bytes'] / GB:.2f} | {r['cuda_peak_bytes'] / GB:.2f} | {vs} |" if cuda else
            f"| {r['method']} | {r['pair']} | {r['batch']} | {r['device']} | {r['precision']} "
            f"| {r['rss_before_bytes'] / GB:.2f} | {r['rss_peak_bytes'] / GB:.2f} "
            f"| {(r['rss_peak_bytes'] - r['rss_before_bytes']) / GB:.2f} | - | - | {vs} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["mgd_amp", "kd"], choices=list(METHODS))
    parser.add_argument("--pair", default="resnet50-mobilenet_v2", choices=sorted(PAIRS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available (torch.cuda.is_available() is False)")
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    rows = []
    for method in args.methods:
        rows.append(run_isolated(method, args))
        print(rows[-1].get("error", f"{method}: done"), flush=True)
    print(markdown(rows))
    command = " ".join([".venv/bin/python", "benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(args.json, {"env": {"torch": torch.__version__, "threads": args.threads,
                                   "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
                           "command": command, "rows": rows})


if __name__ == "__main__":
    main()
