"""Wall time of the matching pass with 2 processes (DDP, gloo) against 1, on the same total subset.

    .venv/bin/python benchmarks/multiprocess.py --json benchmarks/results/multiprocess.json

Each configuration runs in a fresh interpreter: a real ``pl.Trainer(accelerator="cpu")`` fits the
DistillationModule (MGD-AMP) for one epoch of one training batch, and at the epoch start a timing
subclass of MGDMatchingCallback runs ``update_matching`` (the pass, the all-gather of the costs, the solve
on rank 0 and its broadcast) once as a warm-up, then ``--repeats`` times, each after a barrier, timing it on
every rank. Reported: the median over repeats on rank 0 and of the per-repeat maximum over ranks.

* ``1 proc x 2 threads``: one process, ``torch.set_num_threads(2)``: the whole subset;
* ``1 proc x 1 thread``: the same with one thread (what each DDP rank gets here);
* ``2 procs x 1 thread, disjoint``: ``strategy="ddp_fork", devices=2``: our callback, each rank runs
  its half of the subset (disjoint contiguous slices of the same seeded permutation);
* ``2 procs x 1 thread, full (reference)``: the reference code's way emulated: every rank runs the WHOLE
  subset (``subset_indices`` overridden), so each image is processed once per rank.

The development machine has 2 cores, so 2 processes x 1 thread against 1 process x 2 threads is the fair
comparison (same cores); 2 processes cannot be faster than the cores allow, and the reference scheme
doubles the total work. Default pair: the demo's CIFAR ResNet-14x2 -> ResNet-8x1 on 512 random 28 x 28
images, pass batch 64.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import PAIRS, build_models, build_module, median, quiet, write_json
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning import MGDMatchingCallback

# name -> (processes, threads per process, every rank runs the whole subset)
CONFIGS: dict[str, tuple[int, int, bool]] = {
    "1 proc x 2 threads": (1, 2, False),
    "1 proc x 1 thread": (1, 1, False),
    "2 procs x 1 thread, disjoint": (2, 1, False),
    "2 procs x 1 thread, full (reference)": (2, 1, True),
}


class TimedUpdate(MGDMatchingCallback):
    def __init__(self, out_dir: Path, repeats: int, threads: int, full: bool, **kwargs) -> None:
        super().__init__(progress_bar=False, **kwargs)
        self.out_dir, self.repeats, self.threads, self.full = out_dir, repeats, threads, full

    def subset_indices(self, dataset_size: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
        if self.full:  # the reference: every rank draws and runs the whole subset
            return super().subset_indices(dataset_size, epoch, 0, 1)
        return super().subset_indices(dataset_size, epoch, rank, world_size)

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        torch.set_num_threads(self.threads)  # in each rank, after the fork (Lightning may have changed it)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.update_matching(trainer, pl_module)  # warm-up
        times = []
        for _ in range(self.repeats):
            trainer.strategy.barrier()
            start = time.perf_counter()
            self.update_matching(trainer, pl_module)
            times.append(time.perf_counter() - start)
        result = {"rank": trainer.global_rank, "world_size": trainer.world_size, "threads": torch.get_num_threads(),
                  "images_this_rank": len(self.last_indices), "images_total": self.last_num_images,
                  "update_s": times, "pass_s": [r["pass_s"] for r in self.history[1:]],
                  "solve_s": [r["solve_s"] for r in self.history[1:]]}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def worker(config: str, args, out_dir: Path) -> None:
    procs, threads, full = CONFIGS[config]
    torch.set_num_threads(threads)
    teacher, student, side = build_models(args.pair, args.num_classes)
    module = build_module("mgd_amp", teacher, student, side)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.num_images, 3, side, side, generator=g)
    y = torch.randint(0, args.num_classes, (args.num_images,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)  # the fit's own step: tiny
    callback = TimedUpdate(out_dir, args.repeats, threads, full, batch_size=args.batch_size, num_workers=0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=procs, strategy="ddp_fork" if procs > 1 else "auto",
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[callback],
    )
    with quiet():
        trainer.fit(module, loader)


def run_isolated(config: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--out-dir", tmp,
               "--pair", args.pair, "--num-images", str(args.num_images), "--batch-size", str(args.batch_size),
               "--repeats", str(args.repeats), "--num-classes", str(args.num_classes)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    procs, threads, full = CONFIGS[config]
    row = {"config": config, "processes": procs, "threads": threads, "full_subset_per_rank": full}
    if proc.returncode != 0 or len(ranks) != procs:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**row, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    per_repeat_max = [max(r["update_s"][i] for r in ranks) for i in range(args.repeats)]
    return {**row, "ranks": ranks, "rank0_median_s": median(ranks[0]["update_s"]),
            "max_median_s": median(per_repeat_max), "images_total": ranks[0]["images_total"],
            "images_per_rank": [r["images_this_rank"] for r in ranks],
            "solve_median_s": median(ranks[0]["solve_s"])}


def markdown(rows: list[dict]) -> str:
    base = next((r for r in rows if r["config"] == "1 proc x 2 threads" and "error" not in r), None)
    lines = ["| configuration | images per rank | images in the costs | rank 0 (s) | max over ranks (s) "
             "| vs 1 proc x 2 threads |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | | | {r['error']} | | |")
            continue
        rel = f"{r['max_median_s'] / base['max_median_s']:.2f}x" if base else "-"
        lines.append(f"| {r['config']} | {' + '.join(map(str, r['images_per_rank']))} | {r['images_total']} "
                     f"| {r['rank0_median_s']:.3f} | {r['max_median_s']:.3f} | {rel} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="cifar_resnet14x2-cifar_resnet8x1", choices=sorted(PAIRS))
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args, args.out_dir)
        return
    rows = []
    for config in args.configs:
        row = run_isolated(config, args)
        rows.append(row)
        print(f"{config}: " + (row["error"] if "error" in row else
                               f"rank 0 {row['rank0_median_s']:.3f} s, max {row['max_median_s']:.3f} s"), flush=True)
    print(markdown(rows))
    command = " ".join([".venv/bin/python", "benchmarks/multiprocess.py",
                        *(argv if argv is not None else sys.argv[1:])])
    env = {"torch": torch.__version__, "pl": pl.__version__, "pair": args.pair, "image_size": PAIRS[args.pair][4],
           "num_images": args.num_images, "batch": args.batch_size, "repeats": args.repeats}
    write_json(args.json, {"env": env, "command": command, "rows": rows})


if __name__ == "__main__":
    main()
