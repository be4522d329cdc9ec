"""``mgd-lightning demo`` and ``mgd-lightning demo --task detection``: the demos' command lines.

The demos themselves (data, training, table and plots) are :mod:`mgd_lightning.demos`': the classification demo
(:mod:`mgd_lightning.demos.classification`, the default) and the detection demo
(:mod:`mgd_lightning.demos.detection`, ``--task detection``). Each parser's description is its demo's docstring.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from mgd_lightning.demos import classification, detection

__all__ = ["TASKS", "classification_parser", "detection_main", "detection_parser", "main"]

TASKS = ("classification", "detection")


def classification_parser() -> argparse.ArgumentParser:
    """The arguments of ``mgd-lightning demo`` (the classification demo)."""
    parser = argparse.ArgumentParser(prog="mgd-lightning demo", description=classification.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="classification (this demo) or detection (RetinaNet on synthetic shapes in the COCO "
                             "layout: mgd-lightning demo --task detection --help)")
    parser.add_argument("--out", default="demo_out", help="output folder (table, JSON, plots, CSV logs)")
    parser.add_argument("--root", default=None, help="a folder with the Fashion-MNIST IDX files (an error if it "
                                                     "has none)")
    parser.add_argument("--digits", action="store_true",
                        help="run on scikit-learn's 8x8 digits (upscaled to 16 px) instead of Fashion-MNIST")
    parser.add_argument("--train-images", type=int, default=15000)
    parser.add_argument("--val-images", type=int, default=5000)
    parser.add_argument("--matching-images", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--loss-factor", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def detection_parser() -> argparse.ArgumentParser:
    """The arguments of ``mgd-lightning demo --task detection``."""
    p = argparse.ArgumentParser(prog="mgd-lightning demo --task detection", description=detection.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out_detection", help="output folder (data, table, JSON, plots, CSV logs)")
    p.add_argument("--train-images", type=int, default=480)
    p.add_argument("--val-images", type=int, default=120)
    p.add_argument("--image-size", type=int, default=64, help="side of the square images (and the detectors' size)")
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-shapes", type=int, default=2, help="at most this many shapes per image (side/4 to side/2 "
                                                              "pixels each)")
    p.add_argument("--anchor-size", type=int, default=None,
                   help="base anchor size of P3 in pixels, doubled per level up to P7 (default: --image-size / 4)")
    p.add_argument("--matching-every", type=int, default=30, help="training steps between matching updates")
    p.add_argument("--matching-images", type=int, default=96, help="training images per matching pass")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--clip-grad", type=float, default=10.0, help="gradient norm clipping (0: none)")
    p.add_argument("--loss-factor", type=float, default=4e4,
                   help="divisor of the MGD term (4e4: about the detection loss at step 0, see the docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own, one per core; on a machine shared with another "
                        "busy process, 1 avoids the threads waiting on each other)")
    return p


def detection_main(argv: Sequence[str] | None = None) -> None:
    """``mgd-lightning demo --task detection`` on ``argv`` (without ``--task``): checks the arguments, runs the demo."""
    args = detection_parser().parse_args(list(argv) if argv is not None else None)
    for name in ("train_images", "val_images", "teacher_steps", "student_steps", "batch_size", "matching_every",
                 "matching_images", "max_shapes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"mgd-lightning demo --task detection: --{name.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, name)}")
    if args.image_size < 32:
        raise SystemExit(f"mgd-lightning demo --task detection: --image-size must be >= 32 (stride-32 taps), "
                         f"got {args.image_size}")
    if args.anchor_size is not None and args.anchor_size < 1:
        raise SystemExit(f"mgd-lightning demo --task detection: --anchor-size must be >= 1, got {args.anchor_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"mgd-lightning demo --task detection: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    detection.run_demo(args)


def main(argv: Sequence[str] | None = None) -> None:
    """``mgd-lightning demo`` on ``argv``: the classification demo, or with ``--task detection`` the detection demo."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=TASKS, default="classification")
    known, rest = task.parse_known_args(argv)
    if known.task == "detection":
        detection_main(rest)
        return
    parser = classification_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    classification.run_demo(args)


if __name__ == "__main__":
    main()
