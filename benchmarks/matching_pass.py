"""Throughput of MGDMatchingCallback's matching pass against the bare limit (teacher + student forwards).

    .venv/bin/python benchmarks/matching_pass.py --json benchmarks/results/matching_pass.json

For each teacher -> student pair a real ``pl.Trainer`` (``max_epochs=1, limit_train_batches=1``, no logger,
no progress bar) fits the DistillationModule (MGD-AMP) on a TensorDataset of random images. At the start
of the epoch, a timing callback (a subclass of MGDMatchingCallback) measures, alternately, ``repeats`` times
after one warm-up of each:

* pass: ``MGDMatchingCallback.compute_costs(trainer, pl_module)``, the pass itself (student in eval mode,
  no grad, the Trainer's precision context, teacher + student forward, float64 cost accumulation per tap);
* bare: the same batches through ``torch.no_grad()`` teacher + student forwards (student in eval mode,
  the same precision context), no cost computation: the limit of any pass.

Then one full ``update_matching`` (pass + assignment solve on rank 0) is run to report the solve time.
The ratio pass / bare is the overhead of the cost computation (target <= 1.10). ``--profile`` adds a
torch.profiler table of one pass (top operators by self CPU / CUDA time).
"""

from __future__ import annotations

import argparse
import sys

import pytorch_lightning as pl
import torch
from _common import (
    PAIRS,
    add_device_args,
    build_models,
    build_module,
    env,
    quiet,
    setup_device,
    time_pass,
    write_json,
)
from torch.utils.data import DataLoader, Subset, TensorDataset

from mgd_lightning import MGDMatchingCallback
from mgd_lightning.distill.classifier import split_batch


class TimedMatching(MGDMatchingCallback):
    """Runs the measurements once, at the first epoch start, instead of the ordinary update."""

    def __init__(self, repeats: int, profile: bool, **kwargs) -> None:
        super().__init__(progress_bar=False, **kwargs)
        self.repeats = repeats
        self.profile = profile
        self.result: dict = {}

    def bare(self, trainer: pl.Trainer, pl_module) -> int:
        """No-grad teacher + student forwards over the very batches of the pass."""
        dataset, batch_size, num_workers, collate = self._dataset_and_loader_args(trainer)
        indices = self.subset_indices(len(dataset), trainer.current_epoch, trainer.global_rank, trainer.world_size)
        loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate)
        was_training = pl_module.student.training
        pl_module.student.eval()
        n = 0
        try:
            with torch.no_grad():
                for batch in loader:
                    batch = trainer.precision_plugin.convert_input(batch)
                    batch = trainer.strategy.batch_to_device(batch)
                    x, _ = split_batch(batch)
                    with trainer.precision_plugin.forward_context():
                        pl_module.teacher(x)
                        pl_module.student(x)
                    n += x.shape[0]
        finally:
            pl_module.student.train(was_training)
        return n

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.result = time_pass(self, trainer, pl_module)


def measure(pair: str, args, device: torch.device) -> dict:
    teacher, student, side = build_models(pair, args.num_classes)
    module = build_module("mgd_amp", teacher, student, side)
    del teacher, student
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.num_images, 3, side, side, generator=g)
    y = torch.randint(0, args.num_classes, (args.num_images,), generator=g)
    # The fit's own training step runs on a batch of 2 (cheap); the pass uses --batch-size.
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)
    callback = TimedMatching(args.repeats, args.profile, batch_size=args.batch_size, num_workers=0)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[callback],
    )
    with quiet():
        trainer.fit(module, loader)
    return {"pair": pair, "image_size": side, "batch": args.batch_size, "precision": args.precision,
            "tap_shapes": [list(s) for s in module.tap_shapes], **callback.result}


def markdown(rows: list[dict]) -> str:
    lines = ["| pair | px | images | batch | precision | bare (s) | pass (s) | bare img/s | pass img/s "
             "| pass / bare | solve (s) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['image_size']} | {r['images']} | {r['batch']} | {r['precision']} "
                     f"| {r['bare_median_s']:.3f} | {r['pass_median_s']:.3f} | {r['bare_images_per_s']:.1f} "
                     f"| {r['pass_images_per_s']:.1f} | {r['ratio']:.3f} | {r['solve_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["resnet50-mobilenet_v2", "resnet50-shufflenet_v2_x1_0"],
                        choices=sorted(PAIRS))
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one pass")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup_device(args)
    rows = []
    for pair in args.pairs:
        row = measure(pair, args, device)
        rows.append(row)
        print(f"{pair}: bare {row['bare_median_s']:.3f} s, pass {row['pass_median_s']:.3f} s, "
              f"ratio {row['ratio']:.3f}", flush=True)
        if "profile" in row:
            print(row["profile"])
    table = markdown(rows)
    print(table)
    command = " ".join([".venv/bin/python", "benchmarks/matching_pass.py",
                        *(argv if argv is not None else sys.argv[1:])])
    write_json(args.json, {"env": env(device, repeats=args.repeats), "command": command, "rows": rows})


if __name__ == "__main__":
    main()
