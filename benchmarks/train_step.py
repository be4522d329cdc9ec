"""Time of one training step: MGD-AMP vs KD vs the student alone, same teacher, same batches.

    .venv/bin/python benchmarks/train_step.py --json benchmarks/results/train_step.json

One step = ``optimizer.zero_grad()``, the module's own ``training_step`` (teacher forward without grad,
student forward, loss), ``backward()``, ``optimizer.step()`` (the module's ``configure_optimizers``: SGD,
momentum, Nesterov), outside a Trainer. Methods:

* ``mgd_amp``: DistillationModule(distiller="mgd", reducer="amp"), contiguous initial matching;
* ``kd``: DistillationModule(distiller="kd", kd_weight=1): the teacher forward and the logits loss only;
* ``student``: ClassificationModule of the student (cross-entropy only; no teacher).

All three start from the same random weights (copies) and see the same random batches. After ``--warmup``
steps of each, the methods are timed round-robin (``--repeats`` rounds), so drifts hit all alike; medians.
Configurations: ResNet-50 -> MobileNet-V2 at 224 px, batch 16, 5 repeats; the demo's pair (CIFAR
ResNet-14x2 -> ResNet-8x1) at 28 x 28, batch 128, 10 repeats. ``--precision bf16-mixed`` runs the forward
and loss under ``torch.autocast(dtype=torch.bfloat16)``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import (
    METHODS,
    PAIRS,
    add_device_args,
    autocast,
    build_models,
    build_module,
    env,
    median,
    quiet,
    setup_device,
    timed,
    write_json,
)

# (pair, batch, repeats)
CONFIGS = [("resnet50-mobilenet_v2", 16, 5), ("cifar_resnet14x2-cifar_resnet8x1", 128, 10)]


def measure(pair: str, batch: int, repeats: int, args, device: torch.device) -> dict:
    teacher, student, side = build_models(pair, args.num_classes)
    modules = {m: build_module(m, teacher, student, side).to(device).train() for m in args.methods}
    del teacher, student
    optimizers = {m: mod.configure_optimizers()["optimizer"] for m, mod in modules.items()}
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, 3, side, side, generator=g).to(device),
                torch.randint(0, args.num_classes, (batch,), generator=g).to(device)) for _ in range(2)]

    def step(method: str, i: int) -> None:
        module, optimizer = modules[method], optimizers[method]
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            loss = module.training_step(batches[i % len(batches)], i)
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {m: [] for m in modules}
    with quiet():
        for i in range(args.warmup):
            for m in modules:
                step(m, i)
        for i in range(repeats):
            for m in modules:
                times[m].append(timed(lambda m=m, i=i: step(m, i), device))
    row = {"pair": pair, "image_size": side, "batch": batch, "repeats": repeats, "precision": args.precision,
           "times_s": times, "median_s": {m: median(t) for m, t in times.items()}}
    med = row["median_s"]
    if "mgd_amp" in med and "kd" in med:
        row["mgd_over_kd"] = med["mgd_amp"] / med["kd"]
    if "mgd_amp" in med and "student" in med:
        row["mgd_over_student"] = med["mgd_amp"] / med["student"]
    return row


def markdown(rows: list[dict], methods: list[str]) -> str:
    head = " | ".join(f"{m} (s)" for m in methods)
    lines = [f"| pair | px | batch | repeats | precision | {head} | MGD / KD | MGD / student |",
             "|---|---:|---:|---:|---|" + "---:|" * len(methods) + "---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{r['median_s'][m]:.3f}" for m in methods)
        kd = f"{r['mgd_over_kd']:.3f}" if "mgd_over_kd" in r else "-"
        st = f"{r['mgd_over_student']:.3f}" if "mgd_over_student" in r else "-"
        lines.append(f"| {r['pair']} | {r['image_size']} | {r['batch']} | {r['repeats']} | {r['precision']} "
                     f"| {cells} | {kd} | {st} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", metavar="PAIR:BATCH:REPEATS", default=None,
                        help="e.g. resnet50-mobilenet_v2:16:5 (default: the two configurations above)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=10)
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup_device(args)
    configs = CONFIGS
    if args.configs:
        configs = []
        for spec in args.configs:
            pair, batch, repeats = spec.split(":")
            if pair not in PAIRS:
                parser.error(f"unknown pair {pair!r}; choose from {sorted(PAIRS)}")
            configs.append((pair, int(batch), int(repeats)))
    rows = []
    for pair, batch, repeats in configs:
        row = measure(pair, batch, repeats, args, device)
        rows.append(row)
        print(f"{pair} bs {batch}: " + ", ".join(f"{m} {t:.3f} s" for m, t in row["median_s"].items()), flush=True)
    print(markdown(rows, args.methods))
    command = " ".join([".venv/bin/python", "benchmarks/train_step.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(args.json, {"env": env(device, warmup=args.warmup), "command": command, "rows": rows})


if __name__ == "__main__":
    main()
