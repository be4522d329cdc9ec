"""``mgd-lightning demo``: teacher, baseline student and MGD-AMP student on Fashion-MNIST, in minutes on a CPU.

Fashion-MNIST is read from the Debian package ``dataset-fashion-mnist`` (or a torchvision root given
with ``--root``: an error if it holds none); when the package is not installed, scikit-learn's digits are used
instead, with a note (``--digits`` asks for them).
The demo prints a table (top-1 error, wall time, matching passes) and writes plots of the matching
cost per tap over training (paper Fig. 5) and of the fraction of student channels whose match changed
(Fig. 6) to ``--out``. ``--task detection`` runs the detection demo instead (:mod:`mgd_lightning.demos.detection`).
The command line is :mod:`mgd_lightning.commands.demo`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mgd_lightning._lightning import pl
from mgd_lightning.data import DigitsDataModule, FashionMNISTDataModule, find_fashion_mnist
from mgd_lightning.distill.callback import MGDMatchingCallback
from mgd_lightning.distill.classifier import ClassificationModule
from mgd_lightning.distill.module import DistillationModule
from mgd_lightning.models import build_model
from mgd_lightning.plotting import plot_matching

from .timing import timed_fit

__all__ = ["STUDENT", "TEACHER", "run_demo"]

log = logging.getLogger(__name__)

TEACHER = {"name": "cifar_resnet", "arch_args": {"depth": 14, "width": 2}}  # taps 32 / 64 / 128 channels
STUDENT = {"name": "cifar_resnet", "arch_args": {"depth": 8, "width": 1}}  # taps 16 / 32 / 64 channels


def _data(args) -> tuple[pl.LightningDataModule, str]:
    if getattr(args, "digits", False):
        if args.root:
            raise SystemExit(f"mgd-lightning demo: error: --digits and --root {args.root!r}: pass one of them")
        return DigitsDataModule(size=16, channels=3, batch_size=args.batch_size, seed=args.seed), "sklearn digits"
    paths = [args.root] if args.root else None
    found = find_fashion_mnist(paths)
    if found is None and args.root:  # a root given on purpose: no silent run on other data
        what = "no such folder" if not Path(args.root).is_dir() else "no Fashion-MNIST IDX files there"
        raise SystemExit(
            f"mgd-lightning demo: error: --root {args.root!r}: {what} (looked for train-images-idx3-ubyte[.gz] and "
            "the three other files in it and in its FashionMNIST/raw/); pass the folder that holds them, drop "
            "--root for the Debian package's (apt-get install dataset-fashion-mnist), or pass --digits to run on "
            "scikit-learn's digits"
        )
    if found is not None:
        dm = FashionMNISTDataModule(
            search_paths=paths, channels=3, batch_size=args.batch_size,
            limit_train=args.train_images, limit_val=args.val_images, seed=args.seed,
        )
        return dm, f"Fashion-MNIST ({args.train_images} train / {args.val_images} test images)"
    log.warning(
        "Fashion-MNIST not found (install it with `apt-get install dataset-fashion-mnist`, or pass --root): "
        "using scikit-learn's 8x8 digits instead (--digits asks for them); the numbers are not comparable with a "
        "Fashion-MNIST run"
    )
    return DigitsDataModule(size=16, channels=3, batch_size=args.batch_size, seed=args.seed), "sklearn digits"


def _trainer(args, name: str, epochs: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_epochs=epochs, default_root_dir=str(Path(args.out) / name),
        logger=pl.loggers.CSVLogger(str(Path(args.out)), name=name, version=""),
        callbacks=[*callbacks, pl.callbacks.TQDMProgressBar(leave=True)], enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=20,
    )


def _fit(args, name: str, module: pl.LightningModule, dm, epochs: int, callbacks=()) -> dict:
    result, wall = timed_fit(_trainer(args, name, epochs, callbacks), module, dm)
    return {"name": name, "top1_err": 100.0 * (1.0 - result["val/acc1"]), "wall_s": wall}


def run_demo(args) -> list[dict]:
    """Train teacher, baseline student and MGD-AMP student; returns the table rows."""
    out = Path(args.out)
    dm, data_name = _data(args)  # first: a bad --root leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(args.seed, verbose=False)
    n = dm.num_classes
    rows = []

    torch.manual_seed(args.seed)
    teacher = build_model(num_classes=n, **TEACHER)
    teacher_module = ClassificationModule(teacher, lr=args.lr, lr_milestones=[args.teacher_epochs - 1])
    rows.append(_fit(args, "teacher", teacher_module, dm, args.teacher_epochs))

    torch.manual_seed(args.seed + 1)
    baseline = ClassificationModule(build_model(num_classes=n, **STUDENT), lr=args.lr,
                                    lr_milestones=[args.student_epochs - 1])
    rows.append(_fit(args, "student_baseline", baseline, dm, args.student_epochs))

    torch.manual_seed(args.seed + 1)  # the same student initialisation as the baseline
    mgd = DistillationModule(
        teacher, build_model(num_classes=n, **STUDENT), reducer="amp", input_size=dm.input_size,
        lr=args.lr, lr_milestones=[args.student_epochs - 1], loss_factor=args.loss_factor,
    )
    matching = MGDMatchingCallback(update_every_n_epochs=1, num_samples=args.matching_images, seed=args.seed)
    rows.append(_fit(args, "student_mgd_amp", mgd, dm, args.student_epochs, [matching]))
    rows[-1]["matching_passes"] = len(matching.history)
    rows[-1]["matching_s"] = sum(r["pass_s"] + r["solve_s"] for r in matching.history)

    table = [
        f"Data: {data_name}. Teacher {TEACHER['name']} {TEACHER['arch_args']}, "
        f"student {STUDENT['name']} {STUDENT['arch_args']}.",
        "",
        "| model | top-1 error (%) | wall time (s) | matching passes |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        table.append(f"| {r['name']} | {r['top1_err']:.2f} | {r['wall_s']:.1f} | {r.get('matching_passes', '-')} |")
    text = "\n".join(table)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"data": data_name, "rows": rows, "history": matching.history},
                                                 indent=2))
    plots = plot_matching(matching.history, out)
    print("\n" + text)  # noqa: T201 - the demo's report is its output
    print(f"\nplots: {', '.join(str(p) for p in plots)}")  # noqa: T201
    return rows
