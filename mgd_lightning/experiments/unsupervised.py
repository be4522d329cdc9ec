"""The unsupervised study (``mgd-lightning study --setting unsup-cpu``): MGD without labels, the official ``unsup/``.

The official unsupervised MGD code trains a MoCo-v2 student (ResNet-18 / 34) with its own contrastive loss plus
MGD-AMP against a frozen MoCo-v2 ResNet-50 teacher, and reports ImageNet linear-probe top-1 (ResNet-18 52.5 ->
53.6, ResNet-34 57.2 -> 58.5). Here, on real data that runs on 2 CPU cores (Fashion-MNIST, 3 grey channels):

* the **teacher** (CIFAR ResNet-14 x2) is pre-trained once (seed 0) with MoCo-v2, **without labels**;
* each **student** (CIFAR ResNet-8, taps 16 / 32 / 64 channels: every tap a 2-to-1 matching) is pre-trained
  without labels per seed by three methods: MoCo-v2 alone, MoCo-v2 + MGD-AMP (the official recipe), and MGD-AMP
  alone (distillation only, no contrastive loss: LightlyTrain's setting, without a projector); the distillation is
  on the query view, the matching updated on the official log-spaced epochs over non-augmented images;
* each pre-trained student (and, as the reference, the untrained student of the same seed) is evaluated three
  ways, one row each: a **linear probe** (frozen encoder, linear head on ``probe_images`` labelled training
  images) and whole-network **fine-tuning on 10 and 100 labels per class**; the error is the final model's on
  all 10,000 test images.

A **premise check** runs before the student budget is spent (``premise.json``): with seed 0, MoCo-v2 pre-training
must beat the untrained student's linear probe, and the teacher's probe must beat the MoCo-v2 student's, each by
``premise_gap`` points (else distillation has nothing to transfer, or pre-training does nothing here).
Everything pre-trained is cached under ``out/pretrained``; runs under ``out/runs``: the study is resumable.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .claims import TIE_MARGIN
from .records import load_json, write_json_atomic
from .runner import run_jobs
from .scratch import Row, final_errors, trainer_for, weights_digest
from .study import RESULT_FILE, PremiseError, Study
from .transfer import load_backbone

__all__ = ["CLAIMS", "METHODS", "ROWS", "SETTINGS", "STUDY", "UnsupRow", "UnsupSetting", "check_premise",
           "pretrain_student", "pretrain_teacher", "probe_error", "run_unsup"]

log = logging.getLogger(__name__)

TEACHER = {"name": "cifar_resnet", "arch_args": {"depth": 14, "width": 2}}  # taps 32 / 64 / 128 channels
STUDENT = {"name": "cifar_resnet", "arch_args": {"depth": 8, "width": 1}}  # taps 16 / 32 / 64 channels
NUM_CLASSES = 10

#: pre-training methods: name -> label. ``random``: no pre-training (the untrained student, the reference).
METHODS: dict[str, str] = {
    "random": "untrained",
    "moco": "MoCo-v2",
    "moco_mgd": "MoCo-v2 + MGD-AMP",
    "mgd": "MGD-AMP alone",
}
#: evaluations: name -> (label, labels per class for fine-tuning; ``None``: the linear probe)
EVALS: dict[str, tuple[str, int | None]] = {
    "probe": ("linear probe", None),
    "ft10": ("fine-tune, 10 labels/class", 10),
    "ft100": ("fine-tune, 100 labels/class", 100),
}


@dataclass(frozen=True)
class UnsupRow(Row):
    """A row: a pre-training ``method`` (:data:`METHODS`) evaluated by ``evaluation`` (:data:`EVALS`)."""

    method: str = "moco"
    evaluation: str = "probe"


ROWS: dict[str, UnsupRow] = {
    f"{m}_{e}": UnsupRow(f"{METHODS[m]}, {EVALS[e][0]}", None, method=m, evaluation=e)
    for e in EVALS for m in METHODS
}


@dataclass(frozen=True)
class UnsupSetting:
    """Sizes of the study. ``epochs`` / ``pretrain_images``: each student's pre-training; ``None`` images: all."""

    seeds: tuple[int, ...]
    epochs: int = 3
    pretrain_images: int | None = 12_000
    teacher_epochs: int = 3
    teacher_images: int | None = 20_000
    batch_size: int = 256
    lr: float = 0.06  # MoCo-v2: 0.03 per 256 images for 200 epochs; short runs take a higher rate
    weight_decay: float = 5e-4  # MoCo's CIFAR recipes (ImageNet: 1e-4)
    queue_size: int = 4096
    temperature: float = 0.2
    key_momentum: float = 0.99  # MoCo: 0.999 for ~1M steps; a few hundred steps here
    loss_factor: float = 1e3  # the reference code's divisor is 1e4 at 224 px; 1e3 for 32 px inputs (cls/ CIFAR)
    matching_images: int | None = 2000
    update_epochs: str = "official_unsup"
    probe_images: int | None = 10_000
    probe_epochs: int = 30
    probe_lr: float = 0.1
    ft_epochs: tuple[tuple[int, int], ...] = ((10, 40), (100, 15))
    ft_lr: float = 0.05
    ft_batch_size: int = 64
    val_images: int | None = None
    premise_gap: float = 1.0
    lr_milestones: tuple[int, ...] = ()  # unused (cosine schedules); the study command scales it with --epochs
    accelerator: str = "cpu"
    num_workers: int = 0
    jobs: int = 2
    threads: int = 1
    rows: tuple[str, ...] = field(default=tuple(ROWS))


SETTINGS: dict[str, UnsupSetting] = {
    # 2 CPU cores: two runs at a time, one thread each.
    "unsup-cpu": UnsupSetting(seeds=(0, 1, 2, 3, 4)),
    # A GPU: the whole training set, longer pre-training.
    "unsup-gpu": UnsupSetting(seeds=(0, 1, 2, 3, 4), epochs=30, pretrain_images=None, teacher_epochs=60,
                              teacher_images=None, lr=0.06, queue_size=16384, matching_images=10_000,
                              probe_images=None, probe_epochs=100, accelerator="auto", num_workers=6, jobs=1,
                              threads=4),
    # Seconds: the machinery end to end (tests).
    "unsup-smoke": UnsupSetting(seeds=(0,), epochs=1, pretrain_images=256, teacher_epochs=1, teacher_images=256,
                                batch_size=64, queue_size=256, matching_images=64, probe_images=256, probe_epochs=2,
                                ft_epochs=((10, 1), (100, 1)), val_images=128, premise_gap=-100.0, jobs=1),
}


# ---------------------------------------------------------------------------------------------- data and models
def fashion(setting: UnsupSetting, root: str | None, **kwargs: Any):
    """Fashion-MNIST, 3 channels, the same images for every seed (``seed=0``)."""
    from mgd_lightning.data import FashionMNISTDataModule

    kwargs.setdefault("batch_size", setting.batch_size)
    return FashionMNISTDataModule(root=root, search_paths=[] if root else None, channels=3,
                                  num_workers=setting.num_workers, seed=0, limit_val=setting.val_images, **kwargs)


def network(spec: dict[str, Any]) -> nn.Module:
    from mgd_lightning.models import build_model

    return build_model(num_classes=NUM_CLASSES, **spec)


def moco(net: nn.Module, setting: UnsupSetting) -> nn.Module:
    from mgd_lightning.models import MoCoV2

    return MoCoV2(net, queue_size=setting.queue_size, temperature=setting.temperature, momentum=setting.key_momentum)


def encoder_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s tensors without its classifier head (a MoCo encoder has none; a distilled plain student's is
    untrained)."""
    from mgd_lightning.models import head_name

    try:
        head = head_name(net) + "."
    except ValueError:
        head = None
    return {k: v.detach().clone() for k, v in net.state_dict().items() if head is None or not k.startswith(head)}


def _fit(module, dm, epochs: int, accelerator: str, callbacks=()) -> Any:
    trainer = trainer_for(accelerator, epochs, callbacks)
    trainer.fit(module, datamodule=dm)
    return trainer


def _ssl_module(model: nn.Module, setting: UnsupSetting, teacher: nn.Module | None = None, **extra: Any):
    from mgd_lightning.distill.classifier import ClassificationModule
    from mgd_lightning.distill.module import DistillationModule

    common = dict(task="self_supervised", lr=setting.lr, nesterov=False, weight_decay=setting.weight_decay,
                  lr_schedule="cosine")
    if teacher is None:
        return ClassificationModule(model, **common)
    return DistillationModule(teacher, model, reducer="amp", input_size=(3, 28, 28),
                              loss_factor=setting.loss_factor, **common, **extra)


# ---------------------------------------------------------------------------------------------- pre-training
def _cached(path: Path) -> dict[str, Any] | None:
    done = load_json(path.with_suffix(".json"))
    return done if done is not None and path.is_file() else None


def pretrain_teacher(setting: UnsupSetting, out: Path, root: str | None = None) -> dict[str, Any]:
    """MoCo-v2 pre-training of the teacher (seed 0, no labels) into ``out/pretrained/teacher.pt`` (the MoCoV2
    state) + ``.json`` (with its linear-probe error); reused when there."""
    from mgd_lightning._lightning import pl

    path = out / "pretrained" / "teacher.pt"
    if (done := _cached(path)) is not None:
        return done
    start = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    torch.manual_seed(0)
    model = moco(network(TEACHER), setting)
    dm = fashion(setting, root, two_views=True, limit_train=setting.teacher_images)
    log.info("teacher: MoCo-v2 pre-training of %s on %s images, %d epochs", TEACHER, setting.teacher_images or "all",
             setting.teacher_epochs)
    trainer = _fit(_ssl_module(model, setting), dm, setting.teacher_epochs, setting.accelerator)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    record = {"name": "teacher", "model": TEACHER, "images": setting.teacher_images, "epochs": setting.teacher_epochs,
              "final_loss": float(trainer.callback_metrics["train/loss"]), "pretrain_s": time.perf_counter() - start,
              "threads": torch.get_num_threads()}
    net = network(TEACHER)
    load_backbone(net, encoder_state(model.encoder))
    record["probe_top1_err"] = probe_error(net, setting, root, seed=0)
    record["wall_s"] = time.perf_counter() - start
    write_json_atomic(path.with_suffix(".json"), record)
    log.info("teacher: linear probe %.2f %% top-1 error, %.0f s", record["probe_top1_err"], record["wall_s"])
    return record


def load_teacher(setting: UnsupSetting, out: Path) -> nn.Module:
    """The pre-trained MoCo-v2 teacher (a :class:`~mgd_lightning.models.MoCoV2`)."""
    teacher = moco(network(TEACHER), setting)
    teacher.load_state_dict(torch.load(out / "pretrained" / "teacher.pt", map_location="cpu", weights_only=True))
    return teacher


def pretrain_student(method: str, seed: int, setting: UnsupSetting, out: Path,
                     root: str | None = None) -> dict[str, Any]:
    """Pre-train the student of ``seed`` by ``method`` (no labels) into ``out/pretrained/<method>_seed<k>.pt`` (the
    encoder's tensors, no head) + ``.json``; reused when there. Every method starts from the same student weights
    for one seed (``torch.manual_seed(seed)``), as the untrained reference."""
    from mgd_lightning._lightning import pl
    from mgd_lightning.distill.callback import MGDMatchingCallback

    path = out / "pretrained" / f"{method}_seed{seed}.pt"
    if (done := _cached(path)) is not None:
        return done
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    torch.manual_seed(seed)
    student = network(STUDENT)
    dm = fashion(setting, root, two_views=True, limit_train=setting.pretrain_images)
    callbacks = []
    if method == "moco":
        model: nn.Module = moco(student, setting)
        module = _ssl_module(model, setting)
    else:
        model = moco(student, setting) if method == "moco_mgd" else student
        callbacks = [MGDMatchingCallback(update_epochs=setting.update_epochs, num_samples=setting.matching_images,
                                         seed=seed, progress_bar=False)]
        module = _ssl_module(model, setting, teacher=load_teacher(setting, out))
    trainer = _fit(module, dm, setting.epochs, setting.accelerator, callbacks)
    encoder = model.encoder if method != "mgd" else model
    state = encoder_state(encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    history = callbacks[0].history if callbacks else []
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    record = {"method": method, "seed": seed, "images": setting.pretrain_images, "epochs": setting.epochs,
              "final_metrics": metrics, "history": history, "matching_updates": len(history),
              "matching_s": sum(r["pass_s"] + r["solve_s"] for r in history),
              "trainable_params": sum(p.numel() for m in module.trainable_modules() for p in m.parameters()
                                      if p.requires_grad),
              "weights_digest": weights_digest(encoder), "wall_s": time.perf_counter() - start,
              "threads": torch.get_num_threads()}
    write_json_atomic(path.with_suffix(".json"), record)
    log.info("pretrained %s seed %d: %s, %.0f s", method, seed, metrics, record["wall_s"])
    return record


# ---------------------------------------------------------------------------------------------- evaluation
def _features(encoder: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            feats.append(encoder(x))
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def probe_error(net: nn.Module, setting: UnsupSetting, root: str | None, seed: int) -> float:
    """Linear-probe top-1 error (%) of ``net``'s encoder: :class:`~mgd_lightning.models.LinearProbe` (frozen,
    eval-mode encoder; MAE's probe head, a BatchNorm without affine then the linear layer) trained with SGD on the
    encoder's features of ``probe_images`` labelled training images (computed once: a frozen eval-mode encoder
    gives the same features every epoch, so this is the same training, without recomputing them), then the
    error on the test images."""
    from torch.utils.data import DataLoader, TensorDataset

    from mgd_lightning._lightning import pl
    from mgd_lightning.distill.classifier import ClassificationModule
    from mgd_lightning.models import LinearProbe

    dm = fashion(setting, root, augment=False, limit_train=setting.probe_images)
    dm.setup()
    probe = LinearProbe(net, NUM_CLASSES, normalize=True)
    train = _features(probe.encoder, DataLoader(dm.matching_dataset(), batch_size=512))
    test = _features(probe.encoder, DataLoader(dm.val_dataset, batch_size=512))
    pl.seed_everything(seed, verbose=False)
    module = ClassificationModule(probe.head, lr=setting.probe_lr, nesterov=False, weight_decay=0.0,
                                  lr_schedule="cosine", num_classes=NUM_CLASSES)
    trainer = trainer_for(setting.accelerator, setting.probe_epochs)
    trainer.fit(module, DataLoader(TensorDataset(*train), batch_size=256, shuffle=True),
                DataLoader(TensorDataset(*test), batch_size=1024))
    return final_errors(trainer)[0]


def finetune_error(net: nn.Module, per_class: int, setting: UnsupSetting, root: str | None,
                   seed: int) -> float:
    """Top-1 error (%) on the test images after fine-tuning the whole ``net`` (its new head included) on
    ``per_class`` labelled training images per class (pad-and-crop augmentation; cosine schedule)."""
    from mgd_lightning._lightning import pl
    from mgd_lightning.distill.classifier import ClassificationModule

    epochs = dict(setting.ft_epochs)[per_class]
    pl.seed_everything(seed, verbose=False)
    dm = fashion(setting, root, batch_size=setting.ft_batch_size, train_per_class=per_class)
    module = ClassificationModule(net, lr=setting.ft_lr, lr_schedule="cosine", num_classes=NUM_CLASSES)
    trainer = trainer_for(setting.accelerator, epochs)
    trainer.fit(module, datamodule=dm)
    return final_errors(trainer)[0]


def student_for(method: str, seed: int, out: Path) -> nn.Module:
    """The student of ``seed``: untrained (``random``) or with the encoder ``method`` pre-trained; a new head."""
    torch.manual_seed(seed)
    net = network(STUDENT)
    if method != "random":
        load_backbone(net, torch.load(out / "pretrained" / f"{method}_seed{seed}.pt", map_location="cpu",
                                      weights_only=True))
    return net


def run_unsup(name: str, seed: int, setting: UnsupSetting, out: Path, root: str | None = None) -> dict[str, Any]:
    """Evaluate row ``name`` with ``seed``; write and return ``out/runs/<name>/seed<seed>/result.json``."""
    row = ROWS[name]
    start = time.perf_counter()
    net = student_for(row.method, seed, out)
    per_class = EVALS[row.evaluation][1]
    if per_class is None:
        err = probe_error(net, setting, root, seed)
    else:
        err = finetune_error(net, per_class, setting, root, seed)
    pretrained = (load_json(out / "pretrained" / f"{row.method}_seed{seed}.json") if row.method != "random"
                  else None) or {}
    result = {
        "row": name, "label": row.label, "seed": seed, "method": row.method, "evaluation": row.evaluation,
        "top1_err": err, "top5_err": float("nan"), "wall_s": time.perf_counter() - start,
        "pretrain_s": pretrained.get("wall_s", 0.0), "weights_digest": pretrained.get("weights_digest", "untrained"),
        "trainable_params": pretrained.get("trainable_params", 0),
        "matching_updates": pretrained.get("matching_updates", 0), "matching_s": pretrained.get("matching_s", 0.0),
        "history": pretrained.get("history", []) if row.evaluation == "probe" else [],
        "pretrain_metrics": pretrained.get("final_metrics", {}), "threads": torch.get_num_threads(),
    }
    write_json_atomic(out / "runs" / name / f"seed{seed}" / RESULT_FILE, result)
    return result


# ---------------------------------------------------------------------------------------------- preparation
def check_premise(teacher: dict[str, Any], random_err: float, moco_err: float, gap: float) -> dict[str, Any]:
    """The premise from seed 0's linear probes: MoCo-v2 beats the untrained student, and the teacher beats the
    MoCo-v2 student, each by ``gap`` points."""
    premise = {"untrained_probe_err": random_err, "moco_probe_err": moco_err,
               "teacher_probe_err": teacher["probe_top1_err"], "gap": gap,
               "pretraining_gain": random_err - moco_err, "teacher_lead": moco_err - teacher["probe_top1_err"]}
    premise["met"] = premise["pretraining_gain"] >= gap and premise["teacher_lead"] >= gap
    return premise


def _methods(setting: UnsupSetting) -> list[str]:
    return [m for m in METHODS if m != "random" and any(ROWS[r].method == m for r in setting.rows)]


def _premise_job(kind: str, setting: UnsupSetting, out: Path, root: str | None) -> dict[str, Any]:
    if kind == "teacher":
        return pretrain_teacher(setting, out, root)
    path = out / "pretrained" / f"premise_{kind}.json"
    if (done := load_json(path)) is not None:
        return done
    if kind == "moco":
        pretrain_student("moco", 0, setting, out, root)
    record = {"kind": kind, "probe_top1_err": probe_error(student_for(kind, 0, out), setting, root, seed=0)}
    write_json_atomic(path, record)
    return record


def prepare(setting: UnsupSetting, out: Path, root: str | None = None) -> None:
    """The teacher and the premise (seed 0: untrained and MoCo-v2 students' linear probes; ``premise.json``), then
    every student pre-training of the setting's methods and seeds; ``setting.jobs`` at a time, each cached."""
    (out / "pretrained").mkdir(parents=True, exist_ok=True)
    kinds = ["teacher", "moco", "random"]
    failed = run_jobs([(k, setting, out, root) for k in kinds], _premise_job,
                      processes=min(setting.jobs, len(kinds)), threads=setting.threads, fail_fast=setting.jobs <= 1,
                      describe=lambda job: f"premise {job[0]}")
    if failed:
        raise RuntimeError(f"pre-training failed: {', '.join(failed)} (see the log above; rerun to retry)")
    teacher = load_json(out / "pretrained" / "teacher.json")
    random_err = load_json(out / "pretrained" / "premise_random.json")["probe_top1_err"]
    moco_err = load_json(out / "pretrained" / "premise_moco.json")["probe_top1_err"]
    premise = check_premise(teacher, random_err, moco_err, setting.premise_gap)
    (out / "premise.json").write_text(json.dumps(premise, indent=2) + "\n")
    log.info("premise: untrained %.2f, MoCo-v2 %.2f, teacher %.2f %% probe error: %s", random_err, moco_err,
             teacher["probe_top1_err"], "met" if premise["met"] else "NOT met")
    if not premise["met"]:
        raise PremiseError(
            f"the premise does not hold (premise.json): MoCo-v2 pre-training gains {premise['pretraining_gain']:.2f} "
            f"points of linear-probe error over the untrained student and the teacher leads the MoCo-v2 student by "
            f"{premise['teacher_lead']:.2f}; both must be >= {setting.premise_gap}: the study would not test what it "
            "claims to. Pre-train longer (--epochs, the setting's teacher_epochs) and run it again"
        )
    jobs = [(m, s, setting, out, root) for s in setting.seeds for m in _methods(setting)
            if _cached(out / "pretrained" / f"{m}_seed{s}.pt") is None]
    failed = run_jobs(jobs, pretrain_student, processes=min(setting.jobs, max(1, len(jobs))),
                      threads=setting.threads, fail_fast=setting.jobs <= 1,
                      describe=lambda job: f"pre-training {job[0]} seed {job[1]}")
    if failed:
        raise RuntimeError(f"pre-training failed: {', '.join(failed)} (see the log above; rerun to retry)")


def _files(setting: UnsupSetting, out: Path) -> list[Path]:
    return [out / "pretrained" / "teacher.pt"] + [out / "pretrained" / f"{m}_seed{s}.pt" for m in _methods(setting)
                                                  for s in setting.seeds]


# ---------------------------------------------------------------------------------------------- report
def _pairs(first: str, second: str) -> list[tuple[str, str]]:
    return [(f"{first}_{e}", f"{second}_{e}") for e in EVALS]


CLAIMS = [
    ("MGD on top of MoCo-v2 beats MoCo-v2 alone (official unsup/: ImageNet linear probe +1.1 / +1.3 points)",
     "better", _pairs("moco_mgd", "moco")),
    ("MGD alone (distillation only, no projector) beats MoCo-v2 alone", "better", _pairs("mgd", "moco")),
    ("MoCo-v2's own loss adds to MGD (MoCo-v2 + MGD beats MGD alone)", "better", _pairs("moco_mgd", "mgd")),
    ("premise: MoCo-v2 pre-training beats the untrained student", "better", _pairs("moco", "random")),
]

NOTES = f"""Notes on the design (what a reader comparing with the official code should know):
- No label is read before evaluation: teacher and students are pre-trained on two augmented views of each image
  (MoCo-v2's augmentation for 28 px grey images: random resized crop 0.2-1, brightness / contrast jitter, blur,
  flip); the matching pass sees one non-augmented view, as the official code's Resize + CenterCrop loader.
- The official recipe, scaled: MoCo-v2 (queue, temperature 0.2, a 2-layer MLP projector, momentum key encoder;
  lightly's loss and projector), MGD-AMP on all stage taps with the student tap BatchNorm, the distillation on the
  query view divided by the batch and the loss factor, the matching before training and after the log-spaced
  epochs 1, 2, 3, 6, ... (`update_epochs="official_unsup"`), cosine learning rate. Differences, for the CPU: a few
  hundred steps instead of 200 ImageNet epochs (key momentum 0.99, queue 4,096, learning rate 0.06), the loss
  factor 1e3 (the reference's value for 32 px inputs; 1e4 is for 224 px), no shuffled BN (one device).
- MGD alone is MGD-AMP with no loss of the student's own (a plain network, no projector): the representation comes
  from the teacher's matched channels alone.
- One teacher (seed 0). Within a seed every method starts from the same student weights; the untrained rows are
  those weights. The linear probe is MAE's (a BatchNorm without affine before the linear layer, which makes one
  learning rate fit every encoder; MoCo's own probe uses lr 30 without it), trained on the frozen encoder's
  features of the labelled training images; fine-tuning trains the whole network (new head) with pad-and-crop.
- In the table, "trained params" are those the pre-training trained (the encoder with MoCo's projector, or with
  MGD's tap BatchNorms; 0 for the untrained rows) and "wall time / run" is the evaluation's; each pre-training's
  time is `pretrain_s` in the run records (`pretrained/<method>_seed<k>.json`).
- Ties within {TIE_MARGIN} points are not claimed here; "better" is tested on paired differences, Holm-adjusted over
  all the comparisons of this study (the premise rows included).
"""


def _head(setting_name: str, setting: UnsupSetting, prepared: dict[str, Any]) -> list[str]:
    teacher, premise = prepared.get("teacher"), prepared.get("premise")
    lines = [
        f"# MGD without labels on Fashion-MNIST (setting `{setting_name}`)",
        "",
        f"Teacher {TEACHER['name']} {TEACHER['arch_args']} pre-trained with MoCo-v2 (no labels"
        + (f"; {teacher['images'] or 'all'} images, {teacher['epochs']} epochs; linear probe "
           f"{teacher['probe_top1_err']:.2f} % top-1 error)" if teacher else ")")
        + f". Students {STUDENT['name']} {STUDENT['arch_args']}, pre-trained without labels on "
        f"{setting.pretrain_images or 'all'} images for {setting.epochs} epochs (batch {setting.batch_size}, SGD lr "
        f"{setting.lr} cosine), then evaluated: linear probe on {setting.probe_images or 'all'} labelled images "
        f"({setting.probe_epochs} epochs), fine-tuning on 10 / 100 labels per class. Top-1 error (%) of the final "
        f"model on {setting.val_images or 'all 10,000'} test images, mean ± sample std over seeds.",
    ]
    if premise:
        lines += ["", f"Premise (seed 0, `premise.json`): linear probe of the untrained student "
                      f"{premise['untrained_probe_err']:.2f} %, MoCo-v2 student {premise['moco_probe_err']:.2f} %, "
                      f"teacher {premise['teacher_probe_err']:.2f} %: "
                      f"{'met' if premise['met'] else 'not met'} (each lead >= {premise['gap']} points)."]
    return lines


def _info(setting: UnsupSetting, out: Path) -> dict[str, Any]:
    return {"teacher": load_json(out / "pretrained" / "teacher.json"), "premise": load_json(out / "premise.json")}


def _references(prepared: dict[str, Any]) -> dict[str, float]:
    teacher = prepared.get("teacher")
    return {"teacher, linear probe": teacher["probe_top1_err"]} if teacher else {}


def _extra_report(results: list[dict[str, Any]], rows: list[dict[str, Any]], setting: UnsupSetting,
                  out: Path) -> list[str]:
    """A plot of each method's error per evaluation (mean ± std, seeds as dots): ``by_evaluation.png``."""
    from .reports import mean_std, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(EVALS), figsize=(4.2 * len(EVALS), 3.2), squeeze=False)
    for ax, (e, (elabel, _)) in zip(axes[0], EVALS.items()):
        for i, m in enumerate(METHODS):
            errs = [r["top1_err"] for r in results if r["row"] == f"{m}_{e}"]
            if not errs:
                continue
            mean, std = mean_std(errs)
            ax.scatter([i] * len(errs), errs, s=10, color="0.6", zorder=2)
            ax.errorbar([i], [mean], yerr=[std or 0.0], fmt="o", color="tab:red", capsize=3, zorder=3)
        ax.set_xticks(range(len(METHODS)), [METHODS[m].replace(" + ", "\n+ ") for m in METHODS], fontsize=7)
        ax.set_title(elabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("top-1 error (%) on the test set")
    fig.tight_layout()
    fig.savefig(out / "by_evaluation.png", dpi=120)
    plt.close(fig)
    return ["", "Plot: `by_evaluation.png`, each method's top-1 error per evaluation (every seed, mean ± std)."]


STUDY = Study(
    name="unsupervised", rows=ROWS, settings=SETTINGS, claims=CLAIMS, prepare=prepare, prepared_info=_info,
    prepared_files=_files, run=run_unsup, head=_head, notes=NOTES, plot_rows=("moco_mgd_probe", "mgd_probe"),
    references=_references, extra_report=_extra_report, folder="{setting}", top5=False,
)
