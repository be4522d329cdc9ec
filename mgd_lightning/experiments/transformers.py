"""The vision-transformer study (``mgd-lightning study --setting vit-cpu``): MGD between a CNN and a ViT, both ways,
with no learned projector (issue 24).

MGD matches channels and compares them position by position; a ViT's tokens are channels over the patch grid
(:mod:`mgd_lightning.distill.token_grid`), so MGD needs no projector between a CNN and a transformer: the teacher's
map is resampled to the student's grid, and the matching, the reduction and the partial L2 are unchanged. This study
measures it on real data (Fashion-MNIST, the grey channel repeated to 3), students from random weights:

* **CNN -> ViT**: teacher CIFAR ResNet-14 x2 (taps 32 / 64 / 128 channels at 28 / 14 / 7 px, pooled to the ViT's
  7 x 7 grid), student a tiny timm ViT (4 blocks of 32 channels, 4 px patches: a 7 x 7 grid and a class token; its
  last three blocks are paired with the teacher's stages). Rows: the ViT alone, KD, FitNets (a *learned projector*:
  a 1 x 1 conv + BN + ReLU regressor from the student's middle tap to the teacher's), MGD-AMP and MGD-AMP + KD;
* **ViT -> CNN**: teacher a timm ViT (6 blocks of 64 channels, 4 px patches; its taps upsampled bilinearly to the
  student's 28 / 14 / 7 px stages), student CIFAR ResNet-8 (16 / 32 / 64 channels). Rows: the CNN alone, MGD-AMP with
  no margin (the default for token taps: a LayerNorm network has no BatchNorm to take the margin from) and MGD-AMP
  with the margin estimated from the teacher's features
  (:meth:`DistillationModule.estimate_margins <mgd_lightning.DistillationModule.estimate_margins>`, over the first
  ``matching_images`` training images, before training), and KD.

Each teacher is trained once (seed 0, labels, more images and epochs than the students). A **premise check** runs
before the rows: each teacher must beat its student trained alone (seed 0; that run is the row's seed 0) by
``premise_gap`` points, else the study stops (``premise.json``): distillation from a teacher no better than the
student would not test the claims. Within a pair and a seed every row starts from the same student weights and sees
the same training images in the same order (the generator is seeded again right before ``fit``); errors are those of
the final model on the Fashion-MNIST test images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgd_lightning.distillers import KD_RECIPES

from .claims import TIE_MARGIN
from .records import load_json, write_json_atomic
from .runner import run_jobs
from .scratch import Row, build_method, fashion_data, fit_errors, run_result, trainer_for
from .study import RESULT_FILE, PremiseError, Study

__all__ = ["CLAIMS", "MODELS", "PAIRS", "ROWS", "SETTINGS", "STUDY", "VitRow", "VitSetting", "check_premise",
           "run_vit", "train_teacher", "use_adamw"]

log = logging.getLogger(__name__)

#: the networks, for :func:`~mgd_lightning.models.build_model` (``num_classes`` added)
MODELS: dict[str, dict[str, Any]] = {
    # taps 32 / 64 / 128 channels at 28 / 14 / 7 px (the from-scratch study's teacher)
    "cnn_teacher": {"name": "cifar_resnet", "arch_args": {"depth": 14, "width": 2}},
    # 6 blocks of 64 channels on a 7 x 7 grid (4 px patches) and a class token: 4-, 2- and 1-to-1 matchings to the
    # CNN student's 16 / 32 / 64
    "vit_teacher": {"name": "timm/vit_tiny_patch16_224",
                    "arch_args": {"img_size": 28, "patch_size": 4, "depth": 6, "embed_dim": 64, "num_heads": 4}},
    # 4 blocks of 32 channels on a 7 x 7 grid: 2-to-1 and 4-to-1 matchings from the CNN teacher's 64 / 128
    "vit_student": {"name": "timm/vit_tiny_patch16_224",
                    "arch_args": {"img_size": 28, "patch_size": 4, "depth": 4, "embed_dim": 32, "num_heads": 2}},
    # taps 16 / 32 / 64 channels at 28 / 14 / 7 px (the from-scratch study's student)
    "cnn_student": {"name": "cifar_resnet", "arch_args": {"depth": 8, "width": 1}},
}

#: pair -> (teacher, student) of :data:`MODELS`
PAIRS: dict[str, tuple[str, str]] = {"cnn_vit": ("cnn_teacher", "vit_student"),
                                     "vit_cnn": ("vit_teacher", "cnn_student")}


@dataclass(frozen=True)
class VitRow(Row):
    """A row of the study: a :class:`~mgd_lightning.experiments.scratch.Row` (``module``: DistillationModule
    arguments, ``None`` the student alone; ``callback``: MGDMatchingCallback arguments) of one ``pair``
    (:data:`PAIRS`); ``estimate_margin``: the teacher's token-tap margins estimated before training."""

    pair: str = "cnn_vit"
    estimate_margin: bool = False


def _mgd(label: str, pair: str, estimate_margin: bool = False, **module: Any) -> VitRow:
    return VitRow(label, {"distiller": "mgd", "reducer": "amp", **module}, {"update_every_n_epochs": 2}, pair=pair,
                  estimate_margin=estimate_margin)


#: name -> row. MGD updates its matching every 2 epochs (reference default) and divides its feature loss by the
#: setting's ``loss_factor`` (1e3, the reference's factor for small inputs); KD at mdistiller's CIFAR recipe; FitNets
#: at its distiller's defaults (one hint at the middle tap, x100, through a learned regressor); MGD-AMP + KD is the KD
#: row's very recipe (T = 4, CE x0.1, KD x0.9) plus MGD's feature loss, so that against KD it differs by MGD alone.
ROWS: dict[str, VitRow] = {
    "vit_alone": VitRow("ViT student alone", None, pair="cnn_vit"),
    "vit_kd": VitRow("CNN -> ViT: KD", {"distiller": "kd", **KD_RECIPES["cifar"]}, pair="cnn_vit"),
    "vit_fitnets": VitRow("CNN -> ViT: FitNets (learned projector)", {"distiller": "fitnets"}, pair="cnn_vit"),
    "vit_mgd": _mgd("CNN -> ViT: MGD-AMP", "cnn_vit"),
    "vit_mgd_kd": _mgd("CNN -> ViT: MGD-AMP + KD (KD's recipe)", "cnn_vit", **KD_RECIPES["cifar"]),
    "cnn_alone": VitRow("CNN student alone", None, pair="vit_cnn"),
    "cnn_kd": VitRow("ViT -> CNN: KD", {"distiller": "kd", **KD_RECIPES["cifar"]}, pair="vit_cnn"),
    "cnn_mgd": _mgd("ViT -> CNN: MGD-AMP, no margin (default)", "vit_cnn"),
    "cnn_mgd_margin": _mgd("ViT -> CNN: MGD-AMP, estimated margin", "vit_cnn", estimate_margin=True),
}

#: rows whose feature loss takes ``VitSetting.loss_factor``
LOSS_FACTOR_DISTILLERS = ("mgd",)


@dataclass(frozen=True)
class VitSetting:
    """Sizes of the study. ``None`` images: the whole split. ``teacher_train_images`` / ``teacher_epochs`` size the
    CNN teacher, ``vit_teacher_train_images`` / ``vit_teacher_epochs`` the ViT teacher (``vit_teacher_epochs``
    ``None``: ``teacher_epochs``): a ViT from scratch needs more images and steps than a CNN. The CNNs train with SGD
    at ``lr`` (x0.1 at the milestones), the ViTs (teacher and student) with AdamW at ``vit_lr``, warm-up and cosine
    (:func:`use_adamw`)."""

    train_images: int | None
    teacher_train_images: int | None
    vit_teacher_train_images: int | None
    val_images: int | None
    epochs: int
    lr_milestones: tuple[int, ...]
    teacher_epochs: int
    teacher_lr_milestones: tuple[int, ...]
    seeds: tuple[int, ...]
    batch_size: int = 128
    lr: float = 0.05
    loss_factor: float = 1e3
    matching_images: int | None = 2000
    premise_gap: float = 2.0
    vit_teacher_epochs: int | None = None
    vit_lr: float = 2e-3
    vit_weight_decay: float = 0.05
    accelerator: str = "cpu"
    num_workers: int = 0
    jobs: int = 2
    threads: int = 1
    rows: tuple[str, ...] = tuple(ROWS)


SETTINGS: dict[str, VitSetting] = {
    # 2 CPU cores, two runs at a time, one thread each (the teachers too, side by side); sized from measured
    # per-run times (docs/studies/transformers.md). The first run (HEAD f407bcd) stopped at its premise after 19 min,
    # as designed: the ViT teacher then had 15k images x 6 epochs, 22.56 % vs ResNet-8 alone 18.76 % (lead -3.80,
    # required 2). Probes of the ViT teacher alone (one thread, two at a time, idle CPU): 30k x 6 epochs 17.38 %
    # (649 s), 60k x 3 18.08 % (642 s), 60k x 6 14.02 % (1,295 s), 30k x 12 13.86 % (1,309 s): hence 30k x 12.
    "vit-cpu": VitSetting(train_images=4_000, teacher_train_images=15_000, vit_teacher_train_images=30_000,
                          val_images=5_000, epochs=6, lr_milestones=(4, 5), teacher_epochs=3,
                          teacher_lr_milestones=(2,), vit_teacher_epochs=12, seeds=tuple(range(5)), batch_size=32,
                          vit_lr=1e-3, matching_images=1_000),
    # A GPU: the whole training set, longer schedules, ten seeds, one run at a time.
    "vit-gpu": VitSetting(train_images=None, teacher_train_images=None, vit_teacher_train_images=None,
                          val_images=None, epochs=30, lr_milestones=(15, 23), teacher_epochs=30,
                          teacher_lr_milestones=(15, 23), seeds=tuple(range(10)), batch_size=256, lr=0.1,
                          matching_images=10_000, accelerator="auto", num_workers=6, jobs=1, threads=4),
    # Seconds: the machinery end to end (tests).
    "vit-smoke": VitSetting(train_images=96, teacher_train_images=96, vit_teacher_train_images=64, val_images=48,
                            epochs=1, lr_milestones=(1,), teacher_epochs=1, teacher_lr_milestones=(1,), seeds=(0, 1),
                            batch_size=32, matching_images=32, premise_gap=-100.0, jobs=1),
}


# ---------------------------------------------------------------------------------------------- training
def _model(name: str, num_classes: int):
    from mgd_lightning.models import build_model

    return build_model(num_classes=num_classes, **MODELS[name])


def _teachers(setting: VitSetting) -> list[str]:
    """The teachers the setting's distillation rows need, in :data:`PAIRS` order."""
    return [t for pair, (t, _) in PAIRS.items()
            if any(ROWS[n].pair == pair and ROWS[n].module is not None for n in setting.rows)]


def _teacher_files(setting: VitSetting, out: Path) -> list[Path]:
    return [out / "teachers" / f"{t}.pt" for t in _teachers(setting)]


def use_adamw(module, lr: float, weight_decay: float):
    """Train ``module`` (a :class:`~mgd_lightning.distill.classifier.ClassificationModule` or
    :class:`~mgd_lightning.DistillationModule`) with AdamW over its ``trainable_modules()`` (the student, MGD's tap
    norms, FitNets' regressor; no weight decay on norm layers), a linear warm-up over the first epoch's steps, then a
    cosine decay per step: the usual recipe of a ViT trained from scratch (with SGD the ViTs barely trained here: the
    ViT student alone 69 % top-1 error after 6 epochs on 4,000 images, the ViT teacher 54 % after 3 on 12,000).
    Returns ``module``."""
    import math
    import types

    from mgd_lightning.distill.classifier import decay_param_groups

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(decay_param_groups(self.trainable_modules(), weight_decay, 0.0), lr=lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, total // max(1, self.trainer.max_epochs))

        def factor(step: int) -> float:
            return min(1.0, (step + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    module.configure_optimizers = types.MethodType(configure_optimizers, module)
    return module


def _optimizer(name: str, setting: VitSetting, milestones) -> str:
    if name.startswith("vit_"):
        return f"AdamW lr {setting.vit_lr:g}, weight decay {setting.vit_weight_decay:g}, warm-up + cosine"
    return f"SGD lr {setting.lr:g}, x0.1 at {list(milestones)}"


def train_teacher(teacher: str, setting: VitSetting, out: Path, root: str | None = None) -> dict[str, Any]:
    """Train ``teacher`` (a :data:`MODELS` name) once (seed 0) into ``out/teachers/<teacher>.pt``; reuse it when it is
    there already."""
    from mgd_lightning._lightning import pl
    from mgd_lightning.distill.classifier import ClassificationModule

    weights, result_path = out / "teachers" / f"{teacher}.pt", out / "teachers" / f"{teacher}.json"
    done = load_json(result_path)
    if done is not None and weights.is_file():
        return done
    start = time.perf_counter()
    vit = teacher.startswith("vit_")
    images = setting.vit_teacher_train_images if vit else setting.teacher_train_images
    epochs = (setting.vit_teacher_epochs or setting.teacher_epochs) if vit else setting.teacher_epochs
    pl.seed_everything(0, verbose=False)
    dm = fashion_data(setting.batch_size, setting.num_workers, root, limit_train=images, limit_val=setting.val_images)
    module = ClassificationModule(_model(teacher, dm.num_classes), lr=setting.lr,
                                  lr_milestones=list(setting.teacher_lr_milestones))
    if vit:
        use_adamw(module, setting.vit_lr, setting.vit_weight_decay)
    optimizer = _optimizer(teacher, setting, setting.teacher_lr_milestones)
    top1, top5 = fit_errors(module, dm, epochs, setting.accelerator)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), weights)
    result = {"name": teacher, "top1_err": top1, "top5_err": top5, "wall_s": time.perf_counter() - start,
              "train_images": images, "epochs": epochs,
              "model": MODELS[teacher], "optimizer": optimizer, "threads": torch.get_num_threads()}
    write_json_atomic(result_path, result)
    return result


def _margin_batches(dm, images: int | None, batch_size: int):
    """The first ``images`` of the non-augmented training set, in batches (as many images as a matching pass, not
    the same ones: the matching draws its random subset per update)."""
    from torch.utils.data import DataLoader, Subset

    dm.setup("fit")
    data = dm.matching_dataset()
    n = len(data) if images is None else min(images, len(data))
    return DataLoader(Subset(data, range(n)), batch_size=batch_size, shuffle=False)


def _train(name: str, seed: int, setting: VitSetting, out: Path, root: str | None) -> dict[str, Any]:
    """Train row ``name`` with ``seed``; its result record."""
    from mgd_lightning._lightning import pl

    row = ROWS[name]
    teacher_name, student_name = PAIRS[row.pair]
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    dm = fashion_data(setting.batch_size, setting.num_workers, root, limit_train=setting.train_images,
                      limit_val=setting.val_images)
    torch.manual_seed(seed)  # the same student initialisation in every row of this pair and seed
    student = _model(student_name, dm.num_classes)
    teacher = None
    if row.module is not None:
        teacher = _model(teacher_name, dm.num_classes)
        teacher.load_state_dict(torch.load(out / "teachers" / f"{teacher_name}.pt", map_location="cpu",
                                           weights_only=True))
    module, callbacks = build_method(row, teacher, student, dm.input_size, setting.loss_factor,
                                     setting.matching_images, seed, lr=setting.lr,
                                     lr_milestones=list(setting.lr_milestones))
    if student_name.startswith("vit_"):
        use_adamw(module, setting.vit_lr, setting.vit_weight_decay)
    margins = None
    if row.estimate_margin:
        estimated = module.estimate_margins(_margin_batches(dm, setting.matching_images, setting.batch_size))
        margins = [round(float(m.mean()), 4) for m in estimated]
    trainer = trainer_for(setting.accelerator, setting.epochs, callbacks)
    # Building the teacher (distillation rows only) and the margin estimate draw from the global generator: seeded
    # again here, every row of a pair and seed sees the training images in the same order with the same augmentation
    pl.seed_everything(seed, verbose=False)
    trainer.fit(module, datamodule=dm)
    result = run_result(name, row, seed, trainer, module, callbacks, start)
    result.update(pair=row.pair, teacher=teacher_name if teacher is not None else None, student=student_name,
                  optimizer=_optimizer(student_name, setting, setting.lr_milestones), estimated_margin_means=margins)
    return result


def _premise_path(out: Path, name: str) -> Path:
    return out / "premise" / f"{name}_seed0.json"


def run_vit(name: str, seed: int, setting: VitSetting, out: Path, root: str | None = None) -> dict[str, Any]:
    """Train row ``name`` with ``seed``; write and return ``out/runs/<name>/seed<seed>/result.json``. A student
    alone with seed 0 is the premise's run (``out/premise/<name>_seed0.json``), taken as it is when there."""
    premise_run = _premise_path(out, name) if ROWS[name].module is None and seed == 0 else None
    result = load_json(premise_run) if premise_run is not None else None
    if result is None:
        result = _train(name, seed, setting, out, root)
    write_json_atomic(out / "runs" / name / f"seed{seed}" / RESULT_FILE, result)
    return result


# ---------------------------------------------------------------------------------------------- premise
def check_premise(teachers: dict[str, dict[str, Any]], alone: dict[str, dict[str, Any]],
                  gap: float) -> dict[str, Any]:
    """The premise from seed 0: for each pair, the teacher's top-1 error and the student alone's, and the teacher's
    lead; met when every lead is at least ``gap`` points.

    Args:
        teachers: teacher name -> its record (``top1_err``); alone: pair -> the student-alone run of seed 0.
    """
    pairs = {}
    for pair, record in alone.items():
        teacher = PAIRS[pair][0]
        if teacher not in teachers:
            raise ValueError(f"the premise of pair {pair!r} needs its teacher {teacher!r}; got {sorted(teachers)}")
        t_err, s_err = teachers[teacher]["top1_err"], record["top1_err"]
        pairs[pair] = {"teacher": teacher, "teacher_top1_err": t_err, "student_alone_top1_err": s_err,
                       "lead": s_err - t_err}
    if not pairs:
        raise ValueError("the premise needs at least one pair with a teacher and a student-alone run")
    return {"pairs": pairs, "required_gap": gap, "met": all(p["lead"] >= gap for p in pairs.values())}


def _alone_row(pair: str) -> str:
    return next(n for n, r in ROWS.items() if r.pair == pair and r.module is None)


def _job(kind: str, name: str, setting: VitSetting, out: Path, root: str | None) -> dict[str, Any]:
    """A teacher's training, or a student alone with seed 0 (cached under ``out/premise``)."""
    if kind == "teacher":
        return train_teacher(name, setting, out, root)
    path = _premise_path(out, name)
    if (done := load_json(path)) is not None:
        return done
    result = _train(name, 0, setting, out, root)
    write_json_atomic(path, result)
    return result


def prepare(setting: VitSetting, out: Path, root: str | None = None) -> None:
    """The teachers (seed 0) and the students alone of seed 0 (``out/teachers``, ``out/premise``), ``setting.jobs`` at
    a time (each cached), then the premise (``premise.json``): a teacher that does not beat its student alone by
    ``premise_gap`` raises :class:`~mgd_lightning.experiments.study.PremiseError` before the other runs."""
    teachers = _teachers(setting)
    pairs = [pair for pair, (t, _) in PAIRS.items() if t in teachers]
    jobs = [("teacher", t) for t in teachers] + [("alone", _alone_row(p)) for p in pairs]
    failed = run_jobs([(*job, setting, out, root) for job in jobs], _job,
                      processes=min(setting.jobs, max(1, len(jobs))), threads=setting.threads,
                      describe=lambda job: f"{job[0]} {job[1]}")
    if failed:
        raise RuntimeError(f"teacher / premise runs failed: {', '.join(failed)} (see the log above; rerun to retry)")
    if not pairs:
        return
    records = {t: load_json(out / "teachers" / f"{t}.json") for t in teachers}
    alone = {p: load_json(_premise_path(out, _alone_row(p))) for p in pairs}
    premise = check_premise(records, alone, setting.premise_gap)
    write_json_atomic(out / "premise.json", premise)
    for pair, p in premise["pairs"].items():
        log.info("premise %s: teacher %.2f %% vs student alone %.2f %%: lead %.2f points (required %g)", pair,
                 p["teacher_top1_err"], p["student_alone_top1_err"], p["lead"], setting.premise_gap)
    if not premise["met"]:
        leads = ", ".join(f"{pair} {p['lead']:.2f}" for pair, p in premise["pairs"].items())
        raise PremiseError(
            f"premise not met: a teacher leads its student alone by less than {setting.premise_gap} points (seed 0; "
            f"{leads}; {out / 'premise.json'}): distilling it would not test the claims; train the teachers longer "
            "(the setting's teacher_epochs / teacher_train_images, or vit_teacher_*) and run it again"
        )


# ---------------------------------------------------------------------------------------------- report
#: the claims checked: (claim, kind, [(first row, second row), ...]) (:mod:`.claims`).
CLAIMS = [
    ("CNN -> ViT: MGD-AMP beats the ViT student alone", "better", [("vit_mgd", "vit_alone")]),
    ("CNN -> ViT: MGD-AMP (no projector) beats FitNets with its learned projector", "better",
     [("vit_mgd", "vit_fitnets")]),
    ("CNN -> ViT: MGD-AMP added to KD beats KD (the same KD recipe)", "better", [("vit_mgd_kd", "vit_kd")]),
    ("ViT -> CNN: MGD-AMP beats the CNN student alone", "better", [("cnn_mgd", "cnn_alone")]),
    (f"ViT -> CNN: the estimated margin is as good as no margin (within {TIE_MARGIN} points)", "tie",
     [("cnn_mgd_margin", "cnn_mgd")]),
]

NOTES = """Notes on the design:
- No learned projector in MGD: the teacher's tapped maps are resampled to the student's grid (CNN -> ViT: adaptive
  average pooling of 28 / 14 px maps to the ViT's 7 x 7; ViT -> CNN: bilinear upsampling of the 7 x 7 token maps to
  28 / 14 px), and the channel matching pairs each student channel with a group of teacher channels (2-to-1 and
  more). FitNets' regressor (1 x 1 conv + BN + ReLU, trained with the student) is the learned projector compared.
- The ViT student's tap norm is the task's BatchNorm2d over its token maps (as for a CNN). The CNN teacher keeps its
  BatchNorm margins, which describe single pixels: after the 28 / 14 -> 7 px average pooling the maps spread less,
  so the margin ReLU clips less than between two CNNs (as shipped; not measured as a row here). The ViT teacher has
  no BatchNorm: MGD-AMP uses no margin there by default; the "estimated margin" row measures the teacher's
  `E[x | x < 0]` per channel on the first `matching_images` training images (after resampling, as the loss sees it)
  before training (`DistillationModule.estimate_margins`).
- Teachers trained once (seed 0) on more images and epochs than the students; within a pair and a seed every row
  starts from the same student weights and sees the same training images in the same order. The students alone of
  seed 0 are the premise runs. The CNNs train with SGD (Nesterov, momentum 0.9, step decay), the ViTs with AdamW
  (weight decay 0.05, a one-epoch warm-up, then a cosine decay per step): with SGD they barely trained at this
  budget. Every row of a pair has its student's one recipe.
- MGD-AMP + KD adds MGD's feature loss to the KD row's recipe (T = 4, CE x0.1, KD x0.9): against KD it differs by
  MGD alone.
- FitNets applies a ReLU to both sides before its regressor (its authors' post-ReLU features): for a ViT student that
  clips the residual stream's negative half before the projector; kept as the distiller's default.
"""


def _head(setting_name: str, setting: VitSetting, prepared: dict[str, Any]) -> list[str]:
    teachers, premise = prepared.get("teachers") or {}, prepared.get("premise")

    def described(name: str) -> str:
        spec, t = MODELS[name], teachers.get(name)
        return f"{spec['name']} {spec['arch_args']}" + (
            f" ({t['top1_err']:.2f} % top-1 error; {t['train_images'] or 'all'} training images, {t['epochs']} "
            "epochs)" if t else "")

    lines = [
        f"# MGD between CNNs and vision transformers on Fashion-MNIST (setting `{setting_name}`)",
        "",
        f"CNN -> ViT: teacher {described('cnn_teacher')}, student {described('vit_student')}. ViT -> CNN: teacher "
        f"{described('vit_teacher')}, student {described('cnn_student')}. Students from random weights, "
        f"{setting.train_images or 'all'} training images, {setting.epochs} epochs, batch {setting.batch_size}; the "
        f"CNNs SGD lr {setting.lr} (x0.1 at {list(setting.lr_milestones)}), the ViTs AdamW lr {setting.vit_lr:g} "
        f"(weight decay {setting.vit_weight_decay:g}, one-epoch warm-up, cosine); matching (and margin estimate) over "
        f"{setting.matching_images or 'all'} training images. Top-1 / top-5 error (%) of the final model on "
        f"{setting.val_images or 'all 10,000'} test images, mean ± sample std over seeds.",
    ]
    if premise:
        leads = "; ".join(f"{pair}: teacher {p['teacher_top1_err']:.2f} % vs student alone "
                          f"{p['student_alone_top1_err']:.2f} % (lead {p['lead']:.2f})"
                          for pair, p in premise["pairs"].items())
        lines += ["", f"**Premise** (seed 0, checked before the other runs): {leads}; required lead "
                      f"{premise['required_gap']:g} points: {'met' if premise['met'] else 'NOT met'}."]
    return lines


def _info(setting: VitSetting, out: Path) -> dict[str, Any]:
    teachers = {t: r for t in _teachers(setting) if (r := load_json(out / "teachers" / f"{t}.json")) is not None}
    return {"teachers": teachers, "premise": load_json(out / "premise.json")}


def _references(prepared: dict[str, Any]) -> dict[str, float]:
    return {f"{name.replace('_', ' ')}": t["top1_err"] for name, t in (prepared.get("teachers") or {}).items()}


STUDY = Study(
    name="transformers", rows=ROWS, settings=SETTINGS, claims=CLAIMS, prepare=prepare, prepared_info=_info,
    prepared_files=_teacher_files,
    run=run_vit, head=_head, notes=NOTES, plot_rows=("vit_mgd", "cnn_mgd", "cnn_mgd_margin"),
    references=_references, folder="{setting}", claims_heading="The claims, checked (beyond the paper)",
)
