"""``mgd-lightning study``: a small-scale reproduction of the paper's comparisons (Tables 1-3, Fig. 4) on Fashion-MNIST.

One command trains a teacher once, then every row of :data:`ROWS` (student baseline, KD, FitNets, AT, OFD at
their authors' recipes, MGD with each reduction, AMP without matching, MGD-AMP + KD, update every 1 / 2 / 4
epochs, and one row per opt-in of ours: online matching, "selected" margins, a matching cost on the BN'd student
taps) for several seeds, and writes under ``--out``:

* ``runs/<row>/seed<k>/result.json``: one finished run (a restart skips it: the study is resumable;
  delete the file to redo the run), with its matching history;
* ``results.csv`` / ``runs.csv``: mean ± sample std of top-1 / top-5 error per row / every run;
* ``results.md``: the table and the paper's claims checked against it (paired by seed);
* ``errors.png``, ``matching_cost.png`` (paper Fig. 5), ``match_stability.png`` (Fig. 6);
* ``environment.json`` and ``command.txt``: software versions, machine, setting, the exact command(s);
* ``claims.json``: the paper's claims checked (:func:`claims`).

Teacher CIFAR ResNet-14 x2 (taps 32 / 64 / 128 channels), student CIFAR ResNet-8 (16 / 32 / 64): every
tap is a 2-to-1 matching (alpha = 2). Every row of one seed starts from the same student weights and
trains on the same images (shuffle and crops differ); the error is that of the final model on the 10,000
Fashion-MNIST test images (no checkpoint selection on the test set).

``--setting cpu`` (default) is sized for 2 CPU cores (about 90 min from a fresh clone, setup included);
``--setting gpu`` is the same study on the whole training set with more epochs and seeds for a machine with a
GPU; ``--setting smoke`` is a seconds-long check of the machinery. ``--rows``, ``--seeds``, ``--epochs``,
``--jobs`` and ``--threads`` override the setting; a folder holding runs of another setting is refused rather
than mixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from mgd_lightning.distillers import KD_RECIPES
from mgd_lightning.records import load_json, plus_minus, write_csv, write_json_atomic

__all__ = ["ROWS", "SETTINGS", "Row", "Setting", "claims", "main", "run_study"]

log = logging.getLogger(__name__)

TEACHER = {"name": "cifar_resnet", "arch_args": {"depth": 14, "width": 2}}  # taps 32 / 64 / 128 channels
STUDENT = {"name": "cifar_resnet", "arch_args": {"depth": 8, "width": 1}}  # taps 16 / 32 / 64 channels
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Row:
    """One line of the study: how the student is trained.

    ``module`` holds :class:`~mgd_lightning.DistillationModule` arguments (``None``: plain training, the
    student baseline); ``callback`` holds :class:`~mgd_lightning.MGDMatchingCallback` arguments (``None``: no
    matching updates).
    """

    label: str
    module: dict[str, Any] | None
    callback: dict[str, Any] | None = None


def _mgd(reducer: str, **callback: Any) -> Row:
    return Row(f"MGD-{reducer.upper()}", {"distiller": "mgd", "reducer": reducer},
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
    "mgd_sm": _mgd("sm"),
    "mgd_rd": _mgd("rd"),
    "mgd_amp": _mgd("amp"),
    "mgd_mp": _mgd("mp"),
    "mgd_avgp": dataclasses.replace(_mgd("avg"), label="MGD-AvgP"),
    "amp_no_matching": Row("AMP without matching", {"distiller": "mgd", "reducer": "amp", "matching": False}),
    "mgd_amp_kd": Row("MGD-AMP + KD", {"distiller": "mgd", "reducer": "amp", "kd_weight": 1.0},
                      {"update_every_n_epochs": 2}),
    "mgd_amp_online": dataclasses.replace(_mgd("amp", mode="online"), label="MGD-AMP online matching"),
    "mgd_amp_every1": dataclasses.replace(_mgd("amp", update_every_n_epochs=1), label="MGD-AMP, update every 1"),
    "mgd_amp_every4": dataclasses.replace(_mgd("amp", update_every_n_epochs=4), label="MGD-AMP, update every 4"),
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
def _quiet() -> None:
    warnings.filterwarnings("ignore", module=r"pytorch_lightning|lightning_fabric|lightning\.|torch\.utils\.data")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _datamodule(setting: Setting, train_images: int | None, root: str | None):
    from mgd_lightning.data import FashionMNISTDataModule

    # seed=0 for every run: the same images (the student's set is a subset of the teacher's: one permutation).
    return FashionMNISTDataModule(
        root=root, search_paths=[] if root else None, channels=3, batch_size=setting.batch_size,
        num_workers=setting.num_workers, limit_train=train_images, limit_val=setting.val_images, seed=0,
    )


def _trainer(setting: Setting, epochs: int, callbacks=()):
    from mgd_lightning._lightning import pl

    return pl.Trainer(
        accelerator=setting.accelerator, devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs, callbacks=list(callbacks),
    )


def _errors(trainer) -> tuple[float, float]:
    metrics = trainer.callback_metrics
    return 100.0 * (1.0 - float(metrics["val/acc1"])), 100.0 * (1.0 - float(metrics["val/acc5"]))


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
    dm = _datamodule(setting, setting.teacher_train_images, root)
    module = ClassificationModule(build_model(num_classes=dm.num_classes, **TEACHER), lr=setting.lr,
                                  lr_milestones=list(setting.teacher_lr_milestones))
    log.info("teacher: training %s on %s images for %d epochs", TEACHER, setting.teacher_train_images or "all",
             setting.teacher_epochs)
    trainer = _trainer(setting, setting.teacher_epochs)
    trainer.fit(module, datamodule=dm)
    top1, top5 = _errors(trainer)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), weights)
    result = {"top1_err": top1, "top5_err": top5, "wall_s": time.perf_counter() - start,
              "train_images": setting.teacher_train_images, "epochs": setting.teacher_epochs, "model": TEACHER}
    write_json_atomic(result_path, result)
    log.info("teacher: %.2f %% top-1 error, %.0f s", top1, result["wall_s"])
    return result


def run_student(name: str, seed: int, setting: Setting, out: Path, root: str | None = None) -> dict[str, Any]:
    """Train row ``name`` with ``seed``; write and return ``out/runs/<name>/seed<seed>/result.json``."""
    from mgd_lightning._lightning import pl
    from mgd_lightning.distill.callback import MGDMatchingCallback
    from mgd_lightning.distill.classifier import ClassificationModule
    from mgd_lightning.distill.module import DistillationModule
    from mgd_lightning.models import build_model

    row = ROWS[name]
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    dm = _datamodule(setting, setting.train_images, root)
    torch.manual_seed(seed)  # the same student initialisation in every row of this seed
    student = build_model(num_classes=dm.num_classes, **STUDENT)
    common = {"lr": setting.lr, "lr_milestones": list(setting.lr_milestones)}
    callbacks = []
    if row.module is None:
        module = ClassificationModule(student, **common)
    else:
        teacher = build_model(num_classes=dm.num_classes, **TEACHER)
        teacher.load_state_dict(torch.load(out / "teacher" / "teacher.pt", map_location="cpu", weights_only=True))
        kwargs = dict(row.module)
        if kwargs.get("distiller", "mgd") in LOSS_FACTOR_DISTILLERS:
            kwargs.setdefault("loss_factor", setting.loss_factor)
        module = DistillationModule(teacher, student, input_size=dm.input_size, **common, **kwargs)
        if row.callback is not None:
            callbacks.append(MGDMatchingCallback(num_samples=setting.matching_images, seed=seed, progress_bar=False,
                                                 **row.callback))
    trainer = _trainer(setting, setting.epochs, callbacks)
    trainer.fit(module, datamodule=dm)
    top1, top5 = _errors(trainer)
    history = callbacks[0].history if callbacks else []
    result = {
        "row": name, "label": row.label, "seed": seed, "top1_err": top1, "top5_err": top5,
        "wall_s": time.perf_counter() - start,
        "trainable_params": sum(p.numel() for m in module.trainable_modules() for p in m.parameters()
                                if p.requires_grad),
        "matching_updates": len(history), "matching_s": sum(r["pass_s"] + r["solve_s"] for r in history),
        "history": history, "threads": torch.get_num_threads(),
    }
    write_json_atomic(out / "runs" / name / f"seed{seed}" / RESULT_FILE, result)
    return result


def _init_worker(threads: int, parent: int) -> None:
    """A worker process: ``threads`` torch threads, quiet Lightning, and (Linux) it dies with the study."""
    torch.set_num_threads(threads)
    _quiet()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        # PR_SET_PDEATHSIG: a killed study leaves no orphan runs competing with its restart (or writing a result of
        # old code into a folder restarted since). SIGKILL, not SIGTERM: Lightning's signal connector catches
        # SIGTERM during fit and lets the run go on (seen: orphans still training 15 min after their study died).
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable: workers may outlive a killed study")
        if os.getppid() != parent:  # the study died while this worker was starting
            os._exit(1)


def _worker(job: tuple[str, int, Setting, str, str | None]) -> dict[str, Any]:
    name, seed, setting, out, root = job
    return run_student(name, seed, setting, Path(out), root)


# ---------------------------------------------------------------------------------------------- reporting
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def aggregate(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per study row (in ``names`` order) over its finished seeds."""
    rows = []
    for name in names:
        runs = sorted((r for r in results if r["row"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        top1, top1_std = _mean_std([r["top1_err"] for r in runs])
        top5, top5_std = _mean_std([r["top5_err"] for r in runs])
        rows.append({
            "row": name, "label": ROWS[name].label, "n_seeds": len(runs),
            "seeds": " ".join(str(r["seed"]) for r in runs),
            "top1_err_mean": top1, "top1_err_std": top1_std, "top5_err_mean": top5, "top5_err_std": top5_std,
            "trainable_params": runs[0]["trainable_params"],
            "matching_updates": runs[0]["matching_updates"],
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        })
    return rows


def _paired(results: Sequence[dict[str, Any]], a: str, b: str) -> list[float]:
    """Per seed run by both: error(a) - error(b), in points (negative: ``a`` is better)."""
    err = {(r["row"], r["seed"]): r["top1_err"] for r in results}
    seeds = sorted({s for (n, s) in err if n == a} & {s for (n, s) in err if n == b})
    return [err[(a, s)] - err[(b, s)] for s in seeds]


#: Half-width (points of top-1 error) within which two rows count as equal, for the claims that are ties.
TIE_MARGIN = 0.5

#: the claims checked: (claim, kind, [(first row, second row), ...]). ``better``: the first row has the lower
#: error; ``tie``: the two are equal within :data:`TIE_MARGIN`.
CLAIMS: list[tuple[str, str, list[tuple[str, str]]]] = [
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
     "tie", [("mgd_amp_bn_cost", "mgd_amp")]),
]


def _t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided ``level`` confidence interval of the mean of ``diffs`` (Student t, n - 1 dof); NaNs for n < 2."""
    if len(diffs) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    mean = statistics.fmean(diffs)
    half = float(t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half


def _verdict(kind: str, low: float, high: float) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` from the 95 % interval of (first - second)."""
    if math.isnan(low):
        return "inconclusive"
    if kind == "tie":
        if -TIE_MARGIN <= low and high <= TIE_MARGIN:
            return "supported"
        return "contradicted" if high < -TIE_MARGIN or low > TIE_MARGIN else "inconclusive"
    if high < 0:
        return "supported"
    return "contradicted" if low > 0 else "inconclusive"


def claims(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim of :data:`CLAIMS` checked on the paired per-seed differences of top-1 error.

    For each comparison, the differences (first row minus second row, per seed run by both) give a mean, a
    sample std and a 95 % Student-t interval of the mean. A ``better`` comparison is *supported* when the whole
    interval is below 0, *contradicted* when it is above 0, *inconclusive* otherwise (the sign of the mean and
    the seeds won still say which way it leans). A ``tie`` is supported when the interval lies within
    ±:data:`TIE_MARGIN`, contradicted when it lies entirely outside it. With one seed everything is
    inconclusive. A claim *held* when all its comparisons are supported, *did not hold* when any is
    contradicted, and is *not shown* otherwise. No correction for the number of comparisons is made.
    """
    out = []
    for claim, kind, pairs in CLAIMS:
        comps = []
        for a, b in pairs:
            diffs = _paired(results, a, b)
            if not diffs:
                continue
            low, high = _t_interval(diffs)
            comps.append({
                "first": a, "second": b, "kind": kind, "n": len(diffs), "diff_mean": statistics.fmean(diffs),
                "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else float("nan"),
                "ci95_low": low, "ci95_high": high, "first_better_seeds": sum(d < 0 for d in diffs),
                "verdict": _verdict(kind, low, high),
            })
        if comps:
            verdicts = {c["verdict"] for c in comps}
            status = ("held" if verdicts == {"supported"} else "did not hold" if "contradicted" in verdicts
                      else "not shown")
            out.append({"claim": claim, "kind": kind, "status": status, "comparisons": comps})
    return out


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
  weights, beta = 1e3 (the AT authors' code); OFD at the same taps with tap weights (1/4, 1/2, 1) and its CIFAR
  divisor 1e3, but with the teacher in eval mode (the OFD code trains with the teacher's BN in train mode).
  MGD divides by 1e3 as the reference code does for small inputs.
- "Trained params" counts the student and the modules a method trains with it (MGD's tap BatchNorms, FitNets'
  regressors, OFD's connectors); all rows deploy the same student.
"""


def markdown(rows: Sequence[dict[str, Any]], checked: Sequence[dict[str, Any]], teacher: dict[str, Any] | None,
             setting_name: str, setting: Setting) -> str:
    lines = [
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
        "",
        "| row | seeds | top-1 err (%) | top-5 err (%) | trained params | matching updates | wall time / run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['n_seeds']} | {plus_minus(r['top1_err_mean'], r['top1_err_std'])} "
                     f"| {plus_minus(r['top5_err_mean'], r['top5_err_std'])} | {r['trainable_params']:,} "
                     f"| {r['matching_updates']} | {r['wall_s_mean']:.0f} |")
    lines += ["", "## The paper's claims, checked", "",
              "Differences are paired by seed: top-1 error of the first row minus the second, in points, "
              "mean ± sample std, then the 95 % Student-t interval of the mean and the seeds in which the first "
              "row was better. Negative: the first row is better. *supported* / *contradicted*: the whole "
              f"interval is below / above 0 (for a tie: inside / outside ±{TIE_MARGIN}); *inconclusive*: "
              "otherwise. A claim *held* when all its comparisons are supported, *did not hold* when one is "
              "contradicted, and is *not shown* otherwise. No correction for the number of comparisons.", ""]
    for c in checked:
        lines.append(f"- **{c['claim']}: {c['status']}.**")
        for d in c["comparisons"]:
            ci = ("" if math.isnan(d["ci95_low"]) else f", 95 % CI [{d['ci95_low']:.2f}, {d['ci95_high']:.2f}]")
            lines.append(f"  - {ROWS[d['first']].label} vs {ROWS[d['second']].label}: "
                         f"{plus_minus(d['diff_mean'], d['diff_std'])}{ci}, first better in {d['first_better_seeds']}/"
                         f"{d['n']} seeds: {d['verdict']}")
    lines += ["", NOTES]
    return "\n".join(lines)


PLOT_ROWS = ("mgd_amp_every1", "mgd_amp", "mgd_amp_every4", "mgd_amp_online")


def _history_by_epoch(results: Sequence[dict[str, Any]], name: str, key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``key`` at each matching update of row ``name``."""
    per_epoch: dict[int, list[float]] = {}
    for r in results:
        if r["row"] == name:
            for h in r["history"]:
                if key in h and not math.isnan(h[key]):
                    per_epoch.setdefault(h["epoch"], []).append(h[key])
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def plot(results: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], teacher: dict[str, Any] | None,
         out: Path) -> list[Path]:
    """``errors.png``, ``matching_cost.png`` (Fig. 5) and ``match_stability.png`` (Fig. 6) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
        y = {r["row"]: i for i, r in enumerate(reversed(rows))}
        seeds = [(r["top1_err"], y[r["row"]]) for r in results if r["row"] in y]
        ax.scatter([e for e, _ in seeds], [i for _, i in seeds], s=12, color="0.6", zorder=2, label="one seed")
        ax.errorbar([r["top1_err_mean"] for r in rows], [y[r["row"]] for r in rows],
                    xerr=[0.0 if math.isnan(r["top1_err_std"]) else r["top1_err_std"] for r in rows],
                    fmt="o", color="tab:red", capsize=3, zorder=3, label="mean ± std")
        ax.set_yticks([y[r["row"]] for r in rows], [r["label"] for r in rows])
        if teacher:
            ax.axvline(teacher["top1_err"], color="k", ls="--", lw=1, label="teacher")
        ax.legend(loc="lower right", fontsize=7)
        ax.set_xlabel("top-1 error (%) on the test set")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "errors.png", dpi=120)
        plt.close(fig)
        paths.append(out / "errors.png")

    taps = sorted({int(k.removeprefix("cost_tap")) for r in results for h in r["history"] for k in h
                   if k.startswith("cost_tap")})
    present = [n for n in PLOT_ROWS if any(r["row"] == n and r["history"] for r in results)]
    for key, fname, ylabel, title, names in (
        ("cost_tap", "matching_cost.png", "mean cost per matched pair",
         "Matching cost at each update (cf. paper Fig. 5)", [n for n in present if n != "mgd_amp_online"]),
        ("changed_tap", "match_stability.png", "fraction of student channels re-matched",
         "Match stability: channels whose group changed (cf. paper Fig. 6)", present),
    ):
        if not taps or not names:
            continue
        fig, axes = plt.subplots(1, len(taps), figsize=(3.6 * len(taps), 3.4), squeeze=False)
        for ax, t in zip(axes[0], taps):
            for n in names:
                epochs, values = _history_by_epoch(results, n, f"{key}{t}")
                if key == "changed_tap" and epochs and epochs[0] == 0:
                    epochs, values = epochs[1:], values[1:]  # the first update changes the initial grouping
                ax.plot(epochs, values, marker="o", label=ROWS[n].label.replace("MGD-AMP", "AMP"))
            ax.set_title(f"tap {t}")
            ax.set_xlabel("epoch of the update")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(title + "; mean over seeds")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        paths.append(out / fname)
    return paths


def _environment(setting_name: str, setting: Setting) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("mgd-lightning", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "scipy", "numpy",
                "matplotlib"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions, "setting_name": setting_name, "setting": _jsonable(dataclasses.asdict(setting)),
        "rows_config": _rows_config(),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _rows_config() -> dict[str, Any]:
    return _jsonable({name: dataclasses.asdict(row) for name, row in ROWS.items()})


#: Setting fields that do not change what a run computes (how many at a time, threads, which rows / seeds to do).
SCHEDULING_FIELDS = ("jobs", "threads", "teacher_threads", "num_workers", "rows", "seeds")


def check_same_setting(out: Path, setting: Setting) -> None:
    """``ValueError`` when ``out`` holds runs made with another setting or other row definitions.

    Compares with the ``environment.json`` the earlier call wrote; fields missing there are not compared.
    """
    old = load_json(out / "environment.json")
    if old is None or not (out / "runs").is_dir():
        return
    new, prev = _jsonable(dataclasses.asdict(setting)), old.get("setting", {})
    diffs = [f"{k}: {prev[k]!r} -> {new[k]!r}" for k in new
             if k not in SCHEDULING_FIELDS and k in prev and prev[k] != new[k]]
    old_rows = old.get("rows_config") or {}
    diffs += [f"row {n}: {old_rows[n]} -> {cfg}" for n, cfg in _rows_config().items()
              if n in old_rows and old_rows[n] != cfg]
    if diffs:
        raise ValueError(
            f"{out} holds runs of another setting ({'; '.join(diffs)}): finished runs would be mixed with "
            "different ones. Pass another --out, or delete that folder to start over."
        )


def report(out: Path, setting_name: str, setting: Setting) -> tuple[list[dict[str, Any]], str]:
    """Read every finished run under ``out`` and write the CSVs, markdown and plots; return (rows, markdown)."""
    results = [r for n in setting.rows for p in sorted((out / "runs" / n).glob(f"seed*/{RESULT_FILE}"))
               if (r := load_json(p)) is not None and r["seed"] in setting.seeds]
    teacher = load_json(out / "teacher" / RESULT_FILE)
    rows = aggregate(results, setting.rows)
    checked = claims(results)
    write_csv(out / "results.csv", rows, ["row", "label", "n_seeds", "seeds", "top1_err_mean", "top1_err_std",
                                          "top5_err_mean", "top5_err_std", "trainable_params", "matching_updates",
                                          "wall_s_mean"])
    write_csv(out / "runs.csv", sorted(results, key=lambda r: (setting.rows.index(r["row"]), r["seed"])),
               ["row", "seed", "top1_err", "top5_err", "wall_s", "matching_updates", "matching_s", "threads"])
    (out / "claims.json").write_text(json.dumps(checked, indent=2) + "\n")
    text = markdown(rows, checked, teacher, setting_name, setting)
    (out / "results.md").write_text(text)
    plot(results, rows, teacher, out)
    return rows, text


# ---------------------------------------------------------------------------------------------- driver
def run_study(setting_name: str, setting: Setting, out: Path, root: str | None = None,
              command: str | None = None) -> str:
    """Teacher, then every missing (row, seed) run, then the report; returns the markdown.

    ``command`` (the command line) is appended to ``out/command.txt`` once the folder is known to fit.
    """
    out.mkdir(parents=True, exist_ok=True)
    check_same_setting(out, setting)
    if command is not None:
        with (out / "command.txt").open("a") as f:  # every call that ran (or resumed) the study
            f.write(command + "\n")
    (out / "environment.json").write_text(json.dumps(_environment(setting_name, setting), indent=2) + "\n")
    start = time.perf_counter()
    _quiet()
    # Seed-major order: a partial study already has every row.
    jobs = [(n, s) for s in setting.seeds for n in setting.rows
            if load_json(out / "runs" / n / f"seed{s}" / RESULT_FILE) is None]
    total = len(setting.rows) * len(setting.seeds)
    if any(ROWS[n].module is not None for n, _ in jobs):
        if not (out / "teacher" / "teacher.pt").is_file() and any((out / "runs").glob(f"*/seed*/{RESULT_FILE}")):
            raise ValueError(
                f"{out / 'runs'} holds finished runs but the teacher they were distilled from "
                f"({out / 'teacher' / 'teacher.pt'}) is missing: new runs would use a retrained teacher. "
                "Restore the file, or delete the folder to start over."
            )
        threads = torch.get_num_threads()
        train_teacher(setting, out, root)
        torch.set_num_threads(threads)
    log.info("%d of %d runs to do, %d at a time", len(jobs), total, setting.jobs)
    done = total - len(jobs)

    def finished(result: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        elapsed = time.perf_counter() - start
        log.info("[%d/%d] %s seed %d: %.2f %% top-1 error (%.0f s); %.0f min elapsed", done, total, result["row"],
                 result["seed"], result["top1_err"], result["wall_s"], elapsed / 60)

    failed = []
    if setting.jobs <= 1:
        torch.set_num_threads(setting.threads)
        for n, s in jobs:
            try:
                finished(run_student(n, s, setting, out, root))
            except Exception:
                log.exception("%s seed %d failed", n, s)
                failed.append(f"{n}/seed{s}")
    else:
        context = get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=setting.jobs, mp_context=context, initializer=_init_worker,
                                   initargs=(setting.threads, os.getpid()))
        try:
            futures = {pool.submit(_worker, (n, s, setting, os.fspath(out), root)): (n, s) for n, s in jobs}
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except Exception:
                    log.exception("%s seed %d failed", *futures[future])
                    failed.append("{}/seed{}".format(*futures[future]))
        except BaseException:  # Ctrl-C: stop now (the pool would otherwise finish every queued run first)
            pool.shutdown(wait=False, cancel_futures=True)
            for child in context.active_children():
                child.terminate()
            raise
        pool.shutdown()
    _, text = report(out, setting_name, setting)
    log.info("study: %.1f min in this call; report in %s", (time.perf_counter() - start) / 60, out / "results.md")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)} (rerun the command to retry them)")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgd-lightning study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu",
                        help="cpu: 2 CPU cores, about 90-115 min (default); gpu: whole training set, 30 epochs, "
                             "5 seeds; smoke: seconds")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/study-<setting>)")
    parser.add_argument("--root", default=None, help="a folder with the Fashion-MNIST IDX files (default: the "
                                                     "Debian package's /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None, metavar="ROW",
                        help=f"a subset of the rows: {' '.join(ROWS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the setting's)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (milestones scale with it)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from finished runs")
    return parser


def _setting(args: argparse.Namespace) -> Setting:
    setting = SETTINGS[args.setting]
    changes: dict[str, Any] = {}
    if args.rows:
        changes["rows"] = tuple(args.rows)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.epochs:
        scale = args.epochs / setting.epochs
        changes["epochs"] = args.epochs
        changes["lr_milestones"] = tuple(sorted({max(1, round(m * scale)) for m in setting.lr_milestones}))
    for key in ("jobs", "threads"):
        if getattr(args, key):
            changes[key] = getattr(args, key)
    return dataclasses.replace(setting, **changes)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    setting = _setting(args)
    out = args.out or Path("results") / f"study-{args.setting}"
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        _, text = report(out, args.setting, setting)
    else:
        command = "mgd-lightning study " + shlex.join(sys.argv[1:] if argv is None else argv)
        try:
            text = run_study(args.setting, setting, out, args.root, command)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"mgd-lightning study: {err}") from None
    print(text)  # noqa: T201 - the command's output


if __name__ == "__main__":
    main()
