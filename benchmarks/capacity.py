"""Capacity analysis (paper Table 6): ResNet-50 -> MobileNet-V2 at 224 px, MGD-AMP vs Overhaul (OFD) vs KD.

    .venv/bin/python benchmarks/capacity.py --json benchmarks/results/capacity.json \\
        --markdown benchmarks/results/capacity.md

For each method: the trainable parameters it adds beyond the student (MGD: one BatchNorm per student tap;
OFD: a 1x1 conv + BatchNorm connector per tap; KD: none, the no-extra-module reference), and the peak memory
of ONE training step (forward of teacher and student, loss, backward, SGD step with momentum, i.e. the
module's own ``training_step`` and ``configure_optimizers``) at each batch size:

* CPU: peak resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, of a fresh subprocess per
  (method, batch), read right before the step (imports, both networks, the input batch and the tap probe
  of construction) and right after it; the difference is what the step itself adds.
* CUDA (only where a GPU is present): ``torch.cuda.max_memory_allocated()`` over the step, and
  ``torch.cuda.memory_allocated()`` before it, also in a fresh subprocess.

Random weights (no files needed): memory and parameter counts do not depend on the values. The networks
have ``--num-classes`` outputs (200, CUB-200, by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from mgd_lightning.distillers import KD_RECIPES

# method -> DistillationModule keyword arguments (as in configs/cub200/{mgd_amp,ofd,kd}_mobilenet_v2.yaml)
METHODS: dict[str, dict] = {
    "mgd_amp": dict(distiller="mgd", reducer="amp", loss_factor=1e4),
    "ofd": dict(distiller="ofd", loss_factor=1e4),
    "kd": dict(distiller="kd", **KD_RECIPES["imagenet"]),
    "fitnets": dict(distiller="fitnets"),
    "at": dict(distiller="at"),
}
LABELS = {"mgd_amp": "MGD-AMP", "ofd": "Overhaul (OFD)", "kd": "KD", "fitnets": "FitNets", "at": "AT"}
DEFAULT_METHODS = ["mgd_amp", "ofd", "kd"]
TEACHER, STUDENT, SIZE = "resnet50", "mobilenet_v2", 224
GB = 1024**3


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def build(method: str, num_classes: int):
    """The DistillationModule of ``method`` (random weights, CPU)."""
    from mgd_lightning import DistillationModule
    from mgd_lightning.models import build_model

    teacher = build_model(TEACHER, num_classes=num_classes)
    student = build_model(STUDENT, num_classes=num_classes)
    return DistillationModule(teacher, student, input_size=(3, SIZE, SIZE), **METHODS[method])


def parameters(module) -> dict:
    """Trainable parameters: the student, what the method adds beyond it, and the (frozen) teacher."""
    extra = [m for m in module.trainable_modules() if m is not module.student]
    return {
        "student": _count([module.student]),
        "extra": _count(extra),
        "teacher": sum(p.numel() for p in module.teacher.parameters()),
        "tap_shapes": [list(s) for s in module.tap_shapes],  # (C_S, C_T, H, W) per tap
    }


def _rss_bytes() -> int:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def worker(method: str, batch: int, device: str, num_classes: int) -> dict:
    """One training step of ``method`` at ``batch`` on ``device``; run in a fresh process."""
    torch.manual_seed(0)
    module = build(method, num_classes).to(device)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    x = torch.randn(batch, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    out = {"method": method, "batch": batch, "device": device, **parameters(module)}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["cuda_before_bytes"] = torch.cuda.memory_allocated()
    out["rss_before_bytes"] = _rss_bytes()
    start = time.perf_counter()
    with warnings.catch_warnings():  # self.log() without a Trainer only warns
        warnings.simplefilter("ignore")
        optimizer.zero_grad()
        loss = module.training_step((x, y), 0)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    out["step_s"] = time.perf_counter() - start
    out["rss_peak_bytes"] = _rss_bytes()
    out["loss"] = float(loss)
    return out


def run_isolated(method: str, batch: int, device: str, num_classes: int) -> dict:
    """``worker`` in a fresh interpreter, so that each peak is that run's alone."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, str(batch), device,
           "--num-classes", str(num_classes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"method": method, "batch": batch, "device": device,
                "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(row: dict, key: str) -> str:
    return f"{row[key] / GB:.2f}" if key in row else "-"


def markdown(rows: list[dict], env: dict, command: str) -> str:
    lines = [
        "# Capacity analysis: ResNet-50 -> MobileNet-V2, 224 px (paper Table 6)",
        "",
        "```",
        command,
        "```",
        "",
        f"One training step (forward + backward + SGD step with momentum) per fresh process; random weights, "
        f"{env['num_classes']} classes. CPU: {env['cpu']}, {env['threads']} torch threads, torch {env['torch']}. "
        "RSS = peak resident set size (`ru_maxrss`) before / after the step; the increment is the step's own "
        "share (activations, gradients, momentum buffers). CUDA: `torch.cuda.max_memory_allocated()` over the step"
        + ("." if env["cuda"] else " (no GPU here: not measured)."),
        "",
        "| method | batch | extra trainable params | student params | teacher params | all params | RSS before (GB) "
        "| peak RSS (GB) | step increment (GB) | step time (s) | CUDA peak (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = LABELS.get(r["method"], r["method"])
        if "error" in r:
            lines.append(f"| {label} | {r['batch']} | | | | | | {r['error']} | | | |")
            continue
        inc = (r["rss_peak_bytes"] - r["rss_before_bytes"]) / GB
        cuda = r.get("cuda", {})
        cuda_cell = f"{cuda['cuda_peak_bytes'] / GB:.2f}" if "cuda_peak_bytes" in cuda else (
            cuda.get("error", "-") if cuda else "-")
        lines.append(
            f"| {label} | {r['batch']} | {r['extra']:,} ({r['extra'] / 1e6:.2f} M) | {r['student'] / 1e6:.2f} M "
            f"| {r['teacher'] / 1e6:.2f} M | {(r['teacher'] + r['student'] + r['extra']) / 1e6:.2f} M "
            f"| {_gb(r, 'rss_before_bytes')} | {_gb(r, 'rss_peak_bytes')} "
            f"| {inc:.2f} | {r['step_s']:.1f} | {cuda_cell} |"
        )
    taps = {r["method"]: r["tap_shapes"] for r in rows if "tap_shapes" in r}
    if taps:
        shapes = next(iter(taps.values()))
        lines += ["", "Tap pairs (C_S, C_T, H, W): " + ", ".join(str(tuple(s)) for s in shapes) + ". "
                  "MGD adds 2 C_S parameters per tap (BatchNorm weight and bias); OFD adds C_S C_T + 2 C_T "
                  "(1x1 conv without bias + BatchNorm); KD adds none.",
                  "",
                  "Paper Table 6 (4 x 1080Ti, CUB-200): MGD-AMP at batch 128: 11.8 GB, 29.1 M parameters; "
                  "Overhaul at batch 128: OOM, 31.5 M parameters (teacher + student + extra modules; its student row, "
                  "3.5 M, is MobileNet-V2 with a 1000-class head)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(METHODS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA measurement even with a GPU")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "BATCH", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        method, batch, device = args.worker
        print(json.dumps(worker(method, int(batch), device, args.num_classes)))
        return

    cuda = torch.cuda.is_available() and not args.no_cuda
    rows = []
    for method in args.methods:
        for batch in args.batch_sizes:
            row = run_isolated(method, batch, "cpu", args.num_classes)
            if cuda:
                row["cuda"] = run_isolated(method, batch, "cuda", args.num_classes)
            rows.append(row)
            if "error" in row:
                print(f"{method:>8} bs {batch:>4}: {row['error']}", flush=True)
            else:
                print(f"{method:>8} bs {batch:>4}: extra {row['extra']:>10,} params, RSS "
                      f"{row['rss_before_bytes'] / GB:.2f} -> {row['rss_peak_bytes'] / GB:.2f} GB, "
                      f"{row['step_s']:.1f} s", flush=True)
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if cuda else None, "num_classes": args.num_classes,
           "teacher": TEACHER, "student": STUDENT, "image_size": SIZE}
    command = " ".join([".venv/bin/python", "benchmarks/capacity.py", *(argv if argv is not None else sys.argv[1:])])
    table = markdown(rows, env, command)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "command": command, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
