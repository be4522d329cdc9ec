"""Throughput of MGDMatchingCallback's matching pass on detection batches against the bare limit (both bodies).

    .venv/bin/python benchmarks/detection_pass.py --json benchmarks/results/detection_pass.json

The pair of paper Table 4a, torchvision RetinaNet R50-FPN teacher -> R18-FPN student (random weights: the
timing does not depend on them), distilled on the backbone bodies' c2-c5 (``task="detection"``). The data are
``--num-images`` synthetic shape images in the COCO layout (:func:`mgd_lightning.data.write_shapes_coco`, sizes
drawn in ``--image-size``), read by :class:`~mgd_lightning.data.COCODataModule` (lists of images of different sizes
and their targets); the detectors resize them to ``--min-size`` (shorter side) as COCO runs do to 800.

A real ``pl.Trainer`` (``max_steps=1``, no logger, no progress bar) fits the DistillationModule (MGD-AMP); before
its first step a timing callback (a subclass of MGDMatchingCallback) measures, alternately, ``repeats`` times after
one warm-up of each:

* pass: ``MGDMatchingCallback.compute_costs(trainer, pl_module)``, the pass itself (student in eval mode, no grad,
  the student's transform once, both bodies, float64 cost accumulation per tap);
* bare: the same batches through ``torch.no_grad()``: the student's transform (resize, normalise, pad: needed to
  batch images of different sizes) and the teacher's and student's backbone bodies, no cost computation (no FPN,
  no heads, which the pass does not run either): the limit of any pass.

Then one full ``update_matching`` (pass + assignment solve) reports the solve time. The ratio pass / bare is the
overhead of the pass (target <= 1.10). ``--profile`` adds a torch.profiler table of one pass.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import pytorch_lightning as pl
import torch
from _common import add_device_args, env, quiet, setup_device, time_pass, write_json
from torch.utils.data import DataLoader, Subset

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning.data import COCODataModule
from mgd_lightning.data.shapes import write_shapes_coco
from mgd_lightning.models import build_detector


class TimedMatching(MGDMatchingCallback):
    """Runs the measurements once, before the first training step, instead of the ordinary update."""

    def __init__(self, repeats: int, profile: bool, **kwargs) -> None:
        super().__init__(progress_bar=False, update_every_n_steps=10**9, **kwargs)
        self.repeats = repeats
        self.profile = profile
        self.result: dict = {}
        self.done = False

    def bare(self, trainer: pl.Trainer, pl_module) -> int:
        """No-grad student transform + teacher and student bodies over the very batches of the pass."""
        dataset, batch_size, num_workers, collate = self._dataset_and_loader_args(trainer)
        indices = self.subset_indices(len(dataset), self._draw(trainer), trainer.global_rank, trainer.world_size)
        loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate)
        student, teacher, task = pl_module.student, pl_module.teacher, pl_module.task
        was_training = student.training
        student.eval()
        n = 0
        try:
            with torch.no_grad():
                for batch in loader:
                    batch = trainer.precision_plugin.convert_input(batch)
                    batch = trainer.strategy.batch_to_device(batch)
                    images, _ = task.split(batch)
                    with trainer.precision_plugin.forward_context():
                        batched = student.transform(images)[0].tensors
                        task.tap_root(teacher)(batched)
                        task.tap_root(student)(batched)
                    n += len(images)
        finally:
            student.train(was_training)
        return n

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self.done:
            return
        self.done = True
        self.result = time_pass(self, trainer, pl_module)


def measure(args, device: torch.device, root: str) -> dict:
    torch.manual_seed(0)
    size = {"min_size": args.min_size, "max_size": args.max_size}
    teacher = build_detector("retinanet", "resnet50", **size)
    student = build_detector("retinanet", "resnet18", **size)
    module = DistillationModule(teacher, student, task="detection", reducer="amp",
                                input_size=(3, args.min_size, args.min_size))
    dm = COCODataModule(root, batch_size=2, num_workers=0)  # the fit's own step: a batch of 2 (cheap)
    callback = TimedMatching(args.repeats, args.profile, batch_size=args.batch_size, num_workers=0,
                             num_samples=args.num_images)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[callback],
    )
    with quiet():
        trainer.fit(module, datamodule=dm)
    return {"pair": "retinanet_r50-retinanet_r18", "min_size": args.min_size, "max_size": args.max_size,
            "image_size": list(args.image_size), "batch": args.batch_size, "precision": args.precision,
            "tap_shapes": [list(s) for s in module.tap_shapes], **callback.result}


def markdown(rows: list[dict]) -> str:
    lines = ["| pair | resize (min / max) | images | batch | precision | bare (s) | pass (s) | bare img/s "
             "| pass img/s | pass / bare | solve (s) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['min_size']} / {r['max_size']} | {r['images']} | {r['batch']} "
                     f"| {r['precision']} | {r['bare_median_s']:.3f} | {r['pass_median_s']:.3f} "
                     f"| {r['bare_images_per_s']:.1f} | {r['pass_images_per_s']:.1f} | {r['ratio']:.3f} "
                     f"| {r['solve_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, nargs=2, default=[240, 320], metavar=("LO", "HI"),
                        help="height and width of each image drawn in LO..HI")
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=533)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one pass")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device = setup_device(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = str(write_shapes_coco(tmp, args.num_images, 4, image_size=tuple(args.image_size), seed=0))
        row = measure(args, device, root)
    print(f"{row['pair']}: bare {row['bare_median_s']:.3f} s, pass {row['pass_median_s']:.3f} s, "
          f"ratio {row['ratio']:.3f}", flush=True)
    if "profile" in row:
        print(row["profile"])
    print(markdown([row]))
    command = " ".join([".venv/bin/python", "benchmarks/detection_pass.py",
                        *(argv if argv is not None else sys.argv[1:])])
    write_json(args.json, {"env": env(device, repeats=args.repeats), "command": command, "rows": [row]})


if __name__ == "__main__":
    main()
