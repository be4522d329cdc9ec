"""``mgd-lightning demo --task detection``: a RetinaNet teacher, a baseline student and an MGD-AMP student on a small
synthetic detection set in the COCO layout, in minutes on a CPU.

The data are scikit-image's labelled random shapes (:func:`mgd_lightning.data.write_shapes_coco`: circles, ellipses,
rectangles and triangles on a white background, stored as JPEG files with ``instances_*.json`` annotations) written
to ``--out``/data and read back by :class:`~mgd_lightning.data.COCODataModule`, as a COCO run reads COCO: images of
``--image-size`` pixels (default 64), at most ``--max-shapes`` shapes (2) of a quarter to half the image side each.
The detectors are torchvision RetinaNets (:func:`~mgd_lightning.models.build_detector`) at that size: no resize
(``min_size = max_size = --image-size``), 64-channel FPN levels and heads (``fpn_channels=64``; COCO uses 256), and
anchors matched to the shapes (``anchor_sizes``: a quarter of the image side at P3, doubling up to P7; torchvision's
32-512 px anchors are for COCO objects at 800 px). They train **from random initialisation** (no weight file is
downloaded): SGD (momentum 0.9, Nesterov, weight decay 1e-4), lr 0.03 with a 20-step linear warm-up and one decay
(x0.1) at 80 % of the steps, gradient norms clipped at 10 (measured at 64 px, ResNet-18, 300 steps: AP 0.0 at lr 0.01
without clipping, 14.0 at lr 0.03 and 0.3 at lr 0.06, clipped at 10), batches of 8.

Teacher: ResNet-18, trained **twice as long** as the students (600 vs 300 steps), which makes it the better detector
at a third of the cost of a ResNet-50: from scratch on a CPU, a ResNet-50 step costs ~2.5x a ResNet-18 step and, per
step, learned no faster here (ResNet-50, 400 steps: AP 17.3 / AP50 28.2; ResNet-18, 600 steps: AP 40.5 / AP50 53.8),
so a ResNet-50 teacher good enough to distil from does not fit the demo's few minutes (paper Table 4a pairs a
ResNet-50 teacher with a ResNet-18 student; ``TEACHER`` here is a one-line change). Students: ResNet-18 backbones.
Taps: c2-c5 before the last ReLU of both backbone bodies (each student channel matched to one teacher channel).
The MGD-AMP student starts from the baseline's initialisation and updates its matching every ``--matching-every``
training steps (the step schedule that COCO runs use). ``--loss-factor`` (default 4e4, the divisor of the MGD term)
puts the distillation loss on the scale of the detection losses: with the trained teacher, at step 0 the MGD term
was 7.7 at loss factor 1e4 against a detection loss (focal classification + box regression) of 1.8, so 4e4 makes
them about equal at the start (1e4 made distillation ~4x the detection loss); the MGD term then falls to ~0.3
within 100 steps while the detection loss stays ~1.5 for the first half of training.

Output in ``--out``: ``results.md`` (the AP table), ``results.json`` (rows and the matching history), the plots
``matching_cost.png`` (mean matching cost per tap at each update, cf. paper Fig. 5) and ``match_changes.png``
(fraction of student channels whose match changed, Fig. 6), and CSV logs per model.

The command line (``--train-images``, ``--image-size``, ...) is :mod:`mgd_lightning.commands.demo`'s.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from mgd_lightning._lightning import pl
from mgd_lightning.data import COCODataModule
from mgd_lightning.data.shapes import write_shapes_coco
from mgd_lightning.distill.callback import MGDMatchingCallback
from mgd_lightning.distill.classifier import ClassificationModule
from mgd_lightning.distill.module import DistillationModule
from mgd_lightning.models import build_detector
from mgd_lightning.plotting import plot_matching

from .timing import timed_fit

__all__ = ["FPN_CHANNELS", "STUDENT", "TEACHER", "anchor_sizes", "run_demo"]

log = logging.getLogger(__name__)

TEACHER = "resnet18"  # taps c2-c5: 64 / 128 / 256 / 512 channels; trained twice as long as the students (docstring)
STUDENT = "resnet18"  # the same taps: each student channel matched to one teacher channel
FPN_CHANNELS = 64


def anchor_sizes(args) -> list[int]:
    """Base anchor size of P3-P7: ``--anchor-size`` (default a quarter of the image side, the smallest shape),
    doubling per level as torchvision's ``32 ... 512`` (which suit COCO objects at 800 px, not 16-32 px shapes)."""
    base = args.anchor_size or max(args.image_size // 4, 2)
    return [base * 2**k for k in range(5)]


def _detector(backbone: str, args) -> torch.nn.Module:
    return build_detector("retinanet", backbone, min_size=args.image_size, max_size=args.image_size,
                          fpn_channels=FPN_CHANNELS, anchor_sizes=anchor_sizes(args))


def _module_args(args, steps: int) -> dict:
    """SGD with a linear warm-up and one decay (x0.1) at 80 % of the steps, by iterations as the COCO recipe."""
    return {"task": "detection", "lr": args.lr, "lr_interval": "step", "lr_milestones": [max(int(0.8 * steps), 1)],
            "warmup_steps": min(args.warmup_steps, max(steps - 1, 0)), "warmup_factor": 0.01}


def _trainer(args, name: str, steps: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=steps, max_epochs=-1, default_root_dir=str(Path(args.out) / name),
        logger=pl.loggers.CSVLogger(str(Path(args.out)), name=name, version=""),
        callbacks=[*callbacks, pl.callbacks.TQDMProgressBar(leave=True)], enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=None,
        val_check_interval=10**9, log_every_n_steps=10,  # no validation during fit: once at the end
        gradient_clip_val=args.clip_grad or None,  # from scratch, early steps can blow up without it
    )


def _fit(args, name: str, module: pl.LightningModule, dm, steps: int, callbacks=()) -> dict:
    result, wall = timed_fit(_trainer(args, name, steps, callbacks), module, dm)
    row = {"name": name, "steps": steps, "wall_s": wall}
    row.update({key: 100.0 * float(result[f"val/{key}"]) for key in ("map", "map_50", "map_75")})
    return row


def run_demo(args) -> list[dict]:
    """Write the data, train teacher, baseline student and MGD-AMP student; returns the table rows."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    root = write_shapes_coco(out / "data", args.train_images, args.val_images, image_size=args.image_size,
                             max_shapes=args.max_shapes, min_size=max(args.image_size // 4, 2),
                             max_size=args.image_size // 2, empty_fraction=0.05, seed=args.seed)
    data_s = time.perf_counter() - start
    pl.seed_everything(args.seed, verbose=False)
    dm = COCODataModule(str(root), batch_size=args.batch_size, num_workers=0, flip_prob=0.5, seed=args.seed)
    rows = []

    torch.manual_seed(args.seed)
    teacher = _detector(TEACHER, args)
    rows.append(_fit(args, "teacher", ClassificationModule(teacher, **_module_args(args, args.teacher_steps)), dm,
                     args.teacher_steps))

    torch.manual_seed(args.seed + 1)
    baseline = ClassificationModule(_detector(STUDENT, args), **_module_args(args, args.student_steps))
    rows.append(_fit(args, "student_baseline", baseline, dm, args.student_steps))

    torch.manual_seed(args.seed + 1)  # the same student initialisation as the baseline
    mgd = DistillationModule(
        teacher, _detector(STUDENT, args), reducer="amp", input_size=(3, args.image_size, args.image_size),
        loss_factor=args.loss_factor, **_module_args(args, args.student_steps),
    )
    matching = MGDMatchingCallback(update_every_n_steps=args.matching_every, num_samples=args.matching_images,
                                   seed=args.seed)
    rows.append(_fit(args, "student_mgd_amp", mgd, dm, args.student_steps, [matching]))
    rows[-1]["matching_passes"] = len(matching.history)
    rows[-1]["matching_s"] = sum(r["pass_s"] + r["solve_s"] for r in matching.history)

    data_name = (f"scikit-image shapes in the COCO layout ({args.train_images} train / {args.val_images} val images, "
                 f"{args.image_size} px, {out / 'data'}), written in {data_s:.1f} s")
    table = [
        f"Data: {data_name}. RetinaNet (FPN {FPN_CHANNELS} channels, anchors {'/'.join(map(str, anchor_sizes(args)))} "
        f"px at P3-P7, random initialisation): teacher {TEACHER} "
        f"({args.teacher_steps} steps), students {STUDENT} ({args.student_steps} steps of {args.batch_size} images).",
        "",
        "| model | AP | AP50 | AP75 | wall time (s) | matching passes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(f"| {r['name']} | {r['map']:.2f} | {r['map_50']:.2f} | {r['map_75']:.2f} | {r['wall_s']:.1f} "
                     f"| {r.get('matching_passes', '-')} |")
    text = "\n".join(table)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"data": data_name, "rows": rows, "history": matching.history},
                                                 indent=2))
    plots = plot_matching(matching.history, out, x="step")
    print("\n" + text)  # noqa: T201 - the demo's report is its output
    print(f"\nplots: {', '.join(str(p) for p in plots)}")  # noqa: T201
    return rows
