"""The from-scratch study (``mgd-lightning study --setting cpu``): paper Tables 1-2, 5 and Fig. 4 on Fashion-MNIST.

A teacher is trained once, then every row of :data:`ROWS` (student baseline, KD, FitNets, AT, OFD at their
authors' recipes, MGD with each reduction, AMP without matching, MGD-AMP + KD, update every 1 / 2 / 4 epochs,
and one row per opt-in of ours: online matching, "selected" margins, a matching cost on the BN'd student taps)
for several seeds; students start from random weights.

Teacher CIFAR ResNet-14 x2 (taps 32 / 64 / 128 channels), student CIFAR ResNet-8 (16 / 32 / 64): every
tap is a 2-to-1 matching (alpha = 2). Every row of one seed starts from the same student weights and
trains on the same images (shuffle and crops differ); the error is that of the final model on the 10,000
Fashion-MNIST test images (no checkpoint selection on the test set).

Settings: ``cpu`` is sized for 2 CPU cores (about 90 min from a fresh clone, setup included); ``gpu`` is the
same study on the whole training set with more epochs and seeds for a machine with a GPU; ``smoke`` is a
seconds-long check of the machinery.
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
from .study import RESULT_FILE, Study

__all__ = ["CLAIMS", "ROWS", "SETTINGS", "STUDY", "Row", "Setting", "run_student", "train_teacher"]

log = logging.getLogger(__name__)

TEACHER = {"name": "cifar_resnet", "arch_args": {"depth": 14, "width": 2}}  # taps 32 / 64 / 128 channels
STUDENT = {"name": "cifar_resnet", "arch_args": {"depth": 8, "width": 1}}  # taps 16 / 32 / 64 channels


@dataclass(frozen=True)
class Row:
    """One line of a study: how the student is trained.

    ``module`` holds :class:`~mgd_lightning.DistillationModule` arguments (``None``: plain training, the
    student baseline); ``callback`` holds :class:`~mgd_lightning.MGDMatchingCallback` arguments (``None``: no
    matching updates).
    """

    label: str
    module: dict[str, Any] | None
    callback: dict[str, Any] | None = None


def mgd_row(reducer: str, label: str | None = None, **callback: Any) -> Row:
    """An MGD row with ``reducer``, the matching updated every 2 epochs (reference default) unless overridden."""
    return Row(label or f"MGD-{reducer.upper()}", {"distiller": "mgd", "reducer": reducer},
               {"update_every_n_epochs": 2, **callback})


#: name -> row, in the order of the tables. MGD rows update the matching every 2 epochs (reference default)
#: unless the name says otherwise; MGD and OFD divide their feature loss by 1e3 (their authors' factor for
#: 32 px inputs, ``Setting.loss_factor``); the baselines run at their authors' recipes (KD: mdistiller's CIFAR
#: recipe; FitNets, AT: the distillers' defaults). The last rows are opt-ins of ours, one change each from MGD-AMP.
ROWS: dict[str, Row] = {
    "baseline": Row("student baseline", None),
    "kd": Row("KD", {"distiller": "kd", **KD_RECIPES["cifar"]}),
    "fitnets": Row("FitNets", {"distiller": "fitnets"}),
    "at": Row("AT", {"distiller": "at"}),
    "ofd": Row("OFD", {"distiller": "ofd"}),
    "mgd_sm": mgd_row("sm"),
    "mgd_rd": mgd_row("rd"),
    "mgd_amp": mgd_row("amp"),
    "mgd_mp": mgd_row("mp"),
    "mgd_avgp": mgd_row("avg", "MGD-AvgP"),
    "amp_no_matching": Row("AMP without matching", {"distiller": "mgd", "reducer": "amp", "matching": False}),
    "mgd_amp_kd": Row("MGD-AMP + KD", {"distiller": "mgd", "reducer": "amp", "kd_weight": 1.0},
                      {"update_every_n_epochs": 2}),
    "mgd_amp_online": mgd_row("amp", "MGD-AMP online matching", mode="online"),
    "mgd_amp_every1": mgd_row("amp", "MGD-AMP, update every 1", update_every_n_epochs=1),
    "mgd_amp_every4": mgd_row("amp", "MGD-AMP, update every 4", update_every_n_epochs=4),
    "mgd_amp_selected": Row("MGD-AMP, selected margins (ours)",
                            {"distiller": "mgd", "reducer": "amp", "margin_reduction": "selected"},
                            {"update_every_n_epochs": 2}),
    "mgd_amp_bn_cost": Row("MGD-AMP, cost on BN'd student taps (ours)", {"distiller": "mgd", "reducer": "amp"},
                           {"update_every_n_epochs": 2, "student_bn_in_cost": True}),
}

#: rows whose feature loss takes ``Setting.loss_factor`` (their authors' divisor; the others have their own scale)
LOSS_FACTOR_DISTILLERS = ("mgd", "ofd")


@dataclass(frozen=True)
class Setting:
    """Sizes of the study. ``None`` images: the whole split."""

    train_images: int | None
    teacher_train_images: int | None
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
    accelerator: str = "cpu"
    num_workers: int = 0
    jobs: int = 2
    threads: int = 1
    teacher_threads: int = 2
    rows: tuple[str, ...] = tuple(ROWS)


SETTINGS: dict[str, Setting] = {
    # 2 CPU cores: two runs at a time, one thread each (20 % faster than one run on two threads).
    "cpu": Setting(train_images=6_000, teacher_train_images=30_000, val_images=None, epochs=7,
                   lr_milestones=(5, 6), teacher_epochs=3, teacher_lr_milestones=(2,), seeds=(0, 1, 2)),
    # A GPU: the whole training set, longer schedules, five seeds (paper Table 1: 5 runs), one run at a time.
    "gpu": Setting(train_images=None, teacher_train_images=None, val_images=None, epochs=30,
                   lr_milestones=(15, 23), teacher_epochs=20, teacher_lr_milestones=(10, 15),
                   seeds=(0, 1, 2, 3, 4), batch_size=256, lr=0.1, matching_images=10_000,
                   accelerator="auto", num_workers=6, jobs=1, threads=4, teacher_threads=4),
    # Seconds: the machinery end to end (tests).
    "smoke": Setting(train_images=256, teacher_train_images=256, val_images=128, epochs=2, lr_milestones=(1,),
                     teacher_epochs=1, teacher_lr_milestones=(1,), seeds=(0,), batch_size=64,
                     matching_images=64, jobs=1, threads=1, teacher_threads=1),
}


# ---------------------------------------------------------------------------------------------- training
def fashion_data(batch_size: int, num_workers: int, root: str | None, **limits: Any):
    """Fashion-MNIST with 3 channels; ``seed=0`` for every run: the same images in every row and seed."""
    from mgd_lightning.data import FashionMNISTDataModule

    return FashionMNISTDataModule(root=root, search_paths=[] if root else None, channels=3, batch_size=batch_size,
                                  num_workers=num_workers, seed=0, **limits)


def trainer_for(accelerator: str, epochs: int, callbacks=()):
    """A quiet Trainer without logger or checkpoints, validating once, after the last epoch."""
    from mgd_lightning._lightning import pl

    return pl.Trainer(
        accelerator=accelerator, devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs, callbacks=list(callbacks),
    )


def final_errors(trainer) -> tuple[float, float]:
    """Top-1 and top-5 error (%) of the last validation."""
    metrics = trainer.callback_metrics
    return 100.0 * (1.0 - float(metrics["val/acc1"])), 100.0 * (1.0 - float(metrics["val/acc5"]))


def fit_errors(module, dm, epochs: int, accelerator: str) -> tuple[float, float]:
    """Train ``module`` on ``dm`` for ``epochs`` (:func:`trainer_for`); top-1 and top-5 error (%) at the end."""
    trainer = trainer_for(accelerator, epochs)
    trainer.fit(module, datamodule=dm)
    return final_errors(trainer)


def trained_params(module) -> int:
    return sum(p.numel() for m in module.trainable_modules() for p in m.parameters() if p.requires_grad)


def train_teacher(setting: Setting, out: Path, root: str | None = None) -> dict[str, Any]:
    """Train the teacher once (seed 0) into ``out/teacher``; reuse it when it is there already."""
    from mgd_lightning._lightning import pl
    from mgd_lightning.distill.classifier import ClassificationModule
    from mgd_lightning.models import build_model

    weights, result_path = out / "teacher" / "teacher.pt", out / "teacher" / RESULT_FILE
    done = load_json(result_path)
    if done is not None and weights.is_file():
        log.info("teacher: trained earlier (%.2f %% top-1 error), reused", done["top1_err"])
        return done
    torch.set_num_threads(setting.teacher_threads)
    start = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    dm = fashion_data(setting.batch_size, setting.num_workers, root, limit_train=setting.teacher_train_images,
                      limit_val=setting.val_images)
    module = ClassificationModule(build_model(num_classes=dm.num_classes, **TEACHER), lr=setting.lr,
                                  lr_milestones=list(setting.teacher_lr_milestones))
    log.info("teacher: training %s on %s images for %d epochs", TEACHER, setting.teacher_train_images or "all",
             setting.teacher_epochs)
    top1, top5 = fit_errors(module, dm, setting.teacher_epochs, setting.accelerator)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), weights)
    result = {"top1_err": top1, "top5_err": top5, "wall_s": time.perf_counter() - start,
              "train_images": setting.teacher_train_images, "epochs": setting.teacher_epochs, "model": TEACHER}
    write_json_atomic(result_path, result)
    log.info("teacher: %.2f %% top-1 error, %.0f s", top1, result["wall_s"])
    return result


def build_method(row: Row, teacher, student, input_size, loss_factor: float, matching_images: int | None,
                 seed: int, **common: Any):
    """(LightningModule, callbacks) of ``row``: plain training without ``row.module``, else DistillationModule."""
    from mgd_lightning.distill.callback import MGDMatchingCallback
    from mgd_lightning.distill.classifier import ClassificationModule
    from mgd_lightning.distill.module import DistillationModule

    if row.module is None:
        return ClassificationModule(student, **common), []
    kwargs = dict(row.module)
    if kwargs.get("distiller", "mgd") in LOSS_FACTOR_DISTILLERS:
        kwargs.setdefault("loss_factor", loss_factor)
    module = DistillationModule(teacher, student, input_size=input_size, **common, **kwargs)
    callbacks = []
    if row.callback is not None:
        callbacks.append(MGDMatchingCallback(num_samples=matching_images, seed=seed, progress_bar=False,
                                             **row.callback))
    return module, callbacks


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of ``model``'s state dict, in key order: two runs that trained the same
    weights have the same digest (the claims mark such rows *not testable here*)."""
    import hashlib

    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_result(name: str, row: Row, seed: int, trainer, module, callbacks, start: float) -> dict[str, Any]:
    """The result record of a finished run (errors, time, trained parameters, matching history, weights digest)."""
    top1, top5 = final_errors(trainer)
    history = callbacks[0].history if callbacks else []
    return {
        "row": name, "label": row.label, "seed": seed, "top1_err": top1, "top5_err": top5,
        "weights_digest": weights_digest(module.model),
        "wall_s": time.perf_counter() - start, "trainable_params": trained_params(module),
        "matching_updates": len(history), "matching_s": sum(r["pass_s"] + r["solve_s"] for r in history),
        "history": history, "threads": torch.get_num_threads(),
    }


def run_student(name: str, seed: int, setting: Setting, out: Path, root: str | None = None) -> dict[str, Any]:
    """Train row ``name`` with ``seed``; write and return ``out/runs/<name>/seed<seed>/result.json``."""
    from mgd_lightning._lightning import pl
    from mgd_lightning.models import build_model

    row = ROWS[name]
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    dm = fashion_data(setting.batch_size, setting.num_workers, root, limit_train=setting.train_images,
                      limit_val=setting.val_images)
    torch.manual_seed(seed)  # the same student initialisation in every row of this seed
    student = build_model(num_classes=dm.num_classes, **STUDENT)
    teacher = None
    if row.module is not None:
        teacher = build_model(num_classes=dm.num_classes, **TEACHER)
        teacher.load_state_dict(torch.load(out / "teacher" / "teacher.pt", map_location="cpu", weights_only=True))
    module, callbacks = build_method(row, teacher, student, dm.input_size, setting.loss_factor,
                                     setting.matching_images, seed, lr=setting.lr,
                                     lr_milestones=list(setting.lr_milestones))
    trainer = trainer_for(setting.accelerator, setting.epochs, callbacks)
    trainer.fit(module, datamodule=dm)
    result = run_result(name, row, seed, trainer, module, callbacks, start)
    write_json_atomic(out / "runs" / name / f"seed{seed}" / RESULT_FILE, result)
    return result


# ---------------------------------------------------------------------------------------------- report
#: the claims checked: (claim, kind, [(first row, second row), ...]) (:mod:`.claims`).
CLAIMS = [
    ("AMP is the best of the three reductions (paper Tables 1, 3)", "better",
     [("mgd_amp", "mgd_sm"), ("mgd_amp", "mgd_rd")]),
    ("AMP beats max pooling and average pooling (paper Table 5)", "better",
     [("mgd_amp", "mgd_mp"), ("mgd_amp", "mgd_avgp")]),
    ("matching beats no matching (paper: with vs. without matching ablation)", "better",
     [("mgd_amp", "amp_no_matching")]),
    ("MGD beats the competing distillers (paper Tables 1-3)", "better",
     [("mgd_amp", "kd"), ("mgd_amp", "fitnets"), ("mgd_amp", "at"), ("mgd_amp", "ofd")]),
    ("MGD beats the student trained alone (paper Tables 1-3)", "better", [("mgd_amp", "baseline")]),
    ("KD on top of MGD helps (paper Tables 2, 3)", "better", [("mgd_amp_kd", "mgd_amp")]),
    ("updating every 2 epochs beats every 1 and every 4 (paper Fig. 4, CUB-200)", "better",
     [("mgd_amp", "mgd_amp_every1"), ("mgd_amp", "mgd_amp_every4")]),
    (f"online matching (ours, not in the paper) is as good as the pass (within {TIE_MARGIN} points)", "tie",
     [("mgd_amp_online", "mgd_amp")]),
    (f"the 'selected' margins (ours) are as good as the official margins (within {TIE_MARGIN} points)", "tie",
     [("mgd_amp_selected", "mgd_amp")]),
    (f"a cost on the BN'd student taps (ours) is as good as the official raw taps (within {TIE_MARGIN} points)",
     "tie", [("mgd_amp_bn_cost", "mgd_amp")], "mgd_amp_bn_cost"),
]

NOTES = """Notes on the design (what a reader comparing with the paper should know):
- One teacher (seed 0) for all runs. Within a seed every row starts from the same student weights and trains on
  the same images; the shuffling and crops differ between rows (the random stream is consumed differently).
- Top-1 / top-5 are torchmetrics accuracies over the whole balanced test set (1,000 images per class), where the
  per-class average and the overall rate are the same number.
- MGD rows follow the official code: raw student taps in the matching cost, the group's mean margin for AMP
  (max for MP), cosine cost 2 per image for an all-zero channel; the "(ours)" rows change one of these.
- The baselines run at their authors' recipes: KD as mdistiller's CIFAR recipe (T = 4, CE 0.1, KD 0.9; MGD-AMP
  + KD keeps the MGD reference code's T = 1.5, weights 1 / 1); FitNets one hint at the middle tap through a
  conv + BN + ReLU regressor, MSE x 100, post-ReLU features (mdistiller); AT on post-ReLU features, equal tap
  weights, beta = 1e3 (the AT authors' code; the paper's beta / 2 is `distill_weight: 0.5`); OFD at the same
  taps with tap weights (1/4, 1/2, 1) and its CIFAR divisor 1e3, but with the teacher in eval mode (the OFD
  code trains with the teacher's BN in train mode). MGD divides by 1e3 as the reference code does for small
  inputs.
- "Trained params" counts the student and the modules a method trains with it (MGD's tap BatchNorms, FitNets'
  regressors, OFD's connectors); all rows deploy the same student.
"""


def _head(setting_name: str, setting: Setting, prepared: dict[str, Any]) -> list[str]:
    teacher = prepared.get("teacher")
    return [
        f"# MGD reproduction study on Fashion-MNIST (setting `{setting_name}`)",
        "",
        f"Teacher {TEACHER['name']} {TEACHER['arch_args']}"
        + (f": {teacher['top1_err']:.2f} % top-1 error ({teacher['train_images'] or 'all'} training images, "
           f"{teacher['epochs']} epochs)" if teacher else "")
        + f". Student {STUDENT['name']} {STUDENT['arch_args']}, {setting.train_images or 'all'} training images, "
        f"{setting.epochs} epochs, SGD lr {setting.lr} (x0.1 at {list(setting.lr_milestones)}), batch "
        f"{setting.batch_size}; matching subset {setting.matching_images or 'all'} images. "
        f"Top-1 / top-5 error (%) of the final model on {setting.val_images or 'all 10,000'} test images, "
        "mean ± sample std over seeds.",
    ]


def _needs_teacher(setting: Setting) -> bool:
    return any(ROWS[n].module is not None for n in setting.rows)


def _prepare(setting: Setting, out: Path, root: str | None) -> None:
    if _needs_teacher(setting):
        train_teacher(setting, out, root)


def _teacher_info(setting: Setting, out: Path) -> dict[str, Any]:
    return {"teacher": load_json(out / "teacher" / RESULT_FILE)}


def _references(prepared: dict[str, Any]) -> dict[str, float]:
    return {"teacher": prepared["teacher"]["top1_err"]} if prepared.get("teacher") else {}


STUDY = Study(
    name="scratch", rows=ROWS, settings=SETTINGS, claims=CLAIMS, prepare=_prepare, prepared_info=_teacher_info,
    prepared_files=lambda setting, out: [out / "teacher" / "teacher.pt"] if _needs_teacher(setting) else [],
    run=run_student, head=_head, notes=NOTES,
    plot_rows=("mgd_amp_every1", "mgd_amp", "mgd_amp_every4", "mgd_amp_online"),
    cost_plot_rows=("mgd_amp_every1", "mgd_amp", "mgd_amp_every4"), references=_references,
)
