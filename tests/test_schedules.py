"""Learning-rate schedules and the best-epoch error.

* every config's schedule (epochs, milestones, warm-up, decay) against the official code it follows, and its
  header saying which file that is and which number (best or final epoch) is compared with the paper;
* :class:`~mgd_lightning.distill.classifier.WarmupMultiStepLR` against the reference formula, and the learning
  rate of a :class:`ClassificationModule` epoch by epoch in a real (tiny) Trainer run;
* ``val/best_err1`` / ``val/best_err{k}``: the lowest top-1 error over the epochs, the top-k error of that epoch.

Official values (reference code ``KaiyuYue/mgd``, ``cls/``; Overhaul ``clovaai/overhaul-distillation``):

* ``cls/main_mgd.py``: ``--lr-drop-epochs`` default ``31 61 81``, ``MultiStepLR`` stepped after each epoch; the
  README's CUB-200 command passes ``--epochs 120``; ``--warmup 1`` (README's ImageNet MobileNet-V1 command) adds
  ``--warmup-epochs`` (10) to the epochs and to every milestone and ramps linearly from 0.1 x lr
  (``solver/lr_scheduler.py`` ``WarmupMultiStepLR``, ``warmup_factor=0.1``); it prints the best epoch's error.
* ``cls/main_base.py`` (teacher, FT, FS): ``lr * 0.1 ** (epoch // 30)``, SGD without Nesterov; best epoch.
* Overhaul ``CIFAR-100/train_with_distillation.py``: 200 epochs, lr / 10 at ``epochs // 2`` and / 100 at
  ``epochs * 3 // 4``, Nesterov; it prints each epoch's accuracy (the final one is the result).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning._lightning import pl
from mgd_lightning.commands.cli import MGDCLI, run_cli
from mgd_lightning.distill.classifier import ClassificationModule, WarmupMultiStepLR

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# configs/coco/ (detection: iteration schedules, Detectron2 1x): tests/test_detection_configs.py; configs/unsup/
# (the official unsupervised recipe): tests/test_unsup_configs.py
CONFIGS = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")
                 if p.parent.name not in ("digits", "coco", "unsup"))

MAIN_MGD = dict(source="cls/main_mgd.py", epochs=120, milestones=[31, 61, 81], warmup=0, nesterov=True, compare="best")
MAIN_BASE = dict(source="cls/main_base.py", epochs=120, milestones=[30, 60, 90], warmup=0, nesterov=False,
                 compare="best")
MAIN_MGD_WARMUP = dict(source="cls/main_mgd.py", epochs=130, milestones=[41, 71, 91], warmup=10, nesterov=True,
                       compare="best")
OVERHAUL_CIFAR = dict(source="train_with_distillation.py", epochs=200, milestones=[100, 150], warmup=0,
                      nesterov=True, compare="final")


def _load(config: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / config).read_text())


def _header(config: str) -> str:
    lines = (CONFIG_DIR / config).read_text().splitlines()
    end = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    return " ".join(line.lstrip("# ") for line in lines[:end])


def official_schedule(config: str) -> dict[str, Any]:
    """The schedule of the official code a config follows (see the module docstring)."""
    cfg = _load(config)
    folder, name = config.split("/")[0], Path(config).stem
    if folder == "cifar100":
        return OVERHAUL_CIFAR
    if folder == "imagenet":
        return MAIN_MGD_WARMUP if name == "mgd_amp_resnet50_mobilenet_v1" else MAIN_MGD
    assert folder == "cub200", config
    # the teacher and the FT / FS baselines: main_base.py; MGD and the competing distillers: main_mgd.py
    return MAIN_BASE if cfg["model"]["class_path"] == "mgd_lightning.ClassificationModule" else MAIN_MGD


# ---------------------------------------------------------------------------------------------- configs
def test_every_config_has_an_official_schedule():
    assert len(CONFIGS) >= 20
    sources = {official_schedule(c)["source"] for c in CONFIGS}
    assert sources == {"cls/main_mgd.py", "cls/main_base.py", "train_with_distillation.py"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.removesuffix(".yaml") for c in CONFIGS])
def test_config_schedule_is_the_official_one(config):
    cfg, expected = _load(config), official_schedule(config)
    init = cfg["model"]["init_args"]
    assert cfg["trainer"]["max_epochs"] == expected["epochs"]
    assert init["lr_milestones"] == expected["milestones"] and init["lr_gamma"] == 0.1
    assert init.get("warmup_epochs", 0) == expected["warmup"]
    assert init["nesterov"] is expected["nesterov"] and init["momentum"] == 0.9
    assert all(m < expected["epochs"] for m in expected["milestones"])
    header = _header(config)
    assert expected["source"] in header, f"{config}: the header should name {expected['source']}"
    if expected["compare"] == "best":
        assert "Compare val/best_err1" in header
    else:
        assert "Compare the final epoch's top-1 error" in header
    if config.startswith(("cub200/", "imagenet/")):
        assert "RandomResizedCrop(224)" in header and "train_crop" not in cfg["data"]["init_args"]


@pytest.mark.parametrize("config", ["imagenet/mgd_amp_resnet50_mobilenet_v1.yaml", "cub200/teacher_resnet50.yaml",
                                    "cub200/mgd_amp_mobilenet_v2.yaml", "cifar100/mgd_amp_wrn_16_2.yaml"])
def test_schedule_reaches_the_module_through_the_cli(config, monkeypatch):
    """The CLI parser takes the schedule keys (``warmup_epochs`` included) for the config's module class."""
    monkeypatch.setattr(MGDCLI, "instantiate_classes", lambda self: None)
    cli = run_cli(["--config", str(CONFIG_DIR / config), "--data.init_args.root", "/nonexistent"], run=False)
    expected = official_schedule(config)
    init = cli.config.model.init_args
    assert cli.config.trainer.max_epochs == expected["epochs"]
    assert list(init.lr_milestones) == expected["milestones"] and init.warmup_epochs == expected["warmup"]
    if not config.startswith("cifar100/"):  # the official crop is the data module's default
        assert cli.config.data.init_args.train_crop == "random_resized"


# ---------------------------------------------------------------------------------------------- warm-up
def _reference_lr(base_lr: float, epoch: int, milestones: list[int], warmup: int, factor: float = 0.1) -> float:
    """``cls/solver/lr_scheduler.py``: ``base_lr * warmup_factor(epoch) * gamma ** bisect_right(milestones, epoch)``."""
    w = 1.0
    if epoch < warmup:
        alpha = epoch / warmup
        w = factor * (1 - alpha) + alpha
    return base_lr * w * 0.1 ** bisect_right(milestones, epoch)


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    out = []
    for _ in range(epochs):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_warmup_multistep_matches_the_reference_imagenet_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    lrs = _lrs(WarmupMultiStepLR(opt, [41, 71, 91], gamma=0.1, warmup_epochs=10), 130)
    assert lrs == pytest.approx([_reference_lr(0.1, e, [41, 71, 91], 10) for e in range(130)], rel=1e-12)
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.055) and lrs[9] == pytest.approx(0.091)
    assert lrs[10] == lrs[40] == pytest.approx(0.1)
    assert lrs[41] == lrs[70] == pytest.approx(0.01) and lrs[71] == pytest.approx(1e-3)
    assert lrs[91] == lrs[129] == pytest.approx(1e-4)


def test_no_warmup_is_multisteplr():
    """Without warm-up the schedule is the reference's plain ``MultiStepLR`` (main_mgd.py, CUB-200)."""
    module = ClassificationModule(nn.Linear(2, 3), lr=0.01, lr_milestones=[31, 61, 81])
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert type(scheduler) is torch.optim.lr_scheduler.MultiStepLR
    lrs = _lrs(scheduler, 120)
    assert lrs == pytest.approx([_reference_lr(0.01, e, [31, 61, 81], 0) for e in range(120)], rel=1e-12)
    assert lrs[30] == pytest.approx(0.01) and lrs[31] == pytest.approx(1e-3)  # 0-based epoch 31 is the first drop
    assert [0.01 * 0.1 ** (e // 30) for e in range(120)] == pytest.approx(
        _lrs(ClassificationModule(nn.Linear(2, 3), lr_milestones=[30, 60, 90]).configure_optimizers()[
            "lr_scheduler"]["scheduler"], 120), rel=1e-12)  # main_base.py's adjust_learning_rate


def test_warmup_scheduler_state_round_trips():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = WarmupMultiStepLR(opt, [4], warmup_epochs=3)
    _lrs(scheduler, 2)
    state = scheduler.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = WarmupMultiStepLR(opt2, [4], warmup_epochs=3)
    resumed.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    assert _lrs(resumed, 4) == pytest.approx(_lrs(scheduler, 4))


def test_invalid_schedule_arguments():
    with pytest.raises(ValueError, match="warmup_epochs"):
        ClassificationModule(nn.Linear(2, 3), warmup_epochs=-1)
    with pytest.raises(ValueError, match="milestones must be increasing"):
        WarmupMultiStepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), [5, 3], warmup_epochs=2)


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _loader(n: int = 8, classes: int = 6, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % classes), batch_size=4)


def _trainer(epochs: int, callbacks: list[pl.Callback], tmp_path, sanity: int = 0) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=sanity,
                      callbacks=callbacks, default_root_dir=tmp_path)


def test_classification_module_warmup_over_epochs(tmp_path):
    """In a Trainer run the rate ramps linearly from 0.1 x lr over ``warmup_epochs`` epochs, one step per epoch,
    then decays x0.1 at the milestones (counted from epoch 0)."""
    torch.manual_seed(0)
    module = ClassificationModule(nn.Linear(4, 6), lr=0.1, lr_milestones=[6, 8], warmup_epochs=4)
    record = _RecordLR()
    _trainer(9, [record], tmp_path).fit(module, _loader(), _loader(seed=1))
    expected = [0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1, 0.01, 0.01, 0.001]
    assert record.lrs == pytest.approx(expected)
    assert record.lrs == pytest.approx([_reference_lr(0.1, e, [6, 8], 4) for e in range(9)])


# ---------------------------------------------------------------------------------------------- best error
class _ScriptedNet(nn.Module):
    """Logits scripted per validation epoch: ``script[epoch] = (top-1 right, top-5 right)`` of the 10 samples.

    Input ``x[:, 0]`` is the label, ``x[:, 1]`` the sample index. A top-1 hit puts the label first; a top-5
    hit puts it second; a miss puts it last of the 6 classes. A zero-initialised bias keeps a trainable weight.
    """

    classes = 6

    def __init__(self, script: dict[int, tuple[int, int]]) -> None:
        super().__init__()
        self.script = script
        self.epoch = 0
        self.head = nn.Linear(1, self.classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top1, top5 = self.script[self.epoch]
        labels, index = x[:, 0].long(), x[:, 1].long()
        logits = torch.zeros(len(x), self.classes)
        for row, (y, i) in enumerate(zip(labels.tolist(), index.tolist())):
            order = [c for c in range(self.classes) if c != y]
            if i < top1:
                order = [y, *order]
            elif i < top5:
                order = [order[0], y, *order[1:]]
            else:
                order = [*order, y]
            logits[row, order] = torch.arange(self.classes, 0, -1, dtype=torch.float) * 10
        return logits + self.head(torch.zeros(len(x), 1)) * 1e-3


class _SetEpoch(pl.Callback):
    def __init__(self) -> None:
        self.best: list[tuple[float, float]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        pl_module.model.epoch = -1 if trainer.sanity_checking else trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after this epoch's validation
        m = trainer.callback_metrics
        self.best.append((float(m["val/best_err1"]), float(m["val/best_err5"])))


def test_best_epoch_error_is_logged(tmp_path):
    script = {-1: (10, 10), 0: (4, 5), 1: (7, 8), 2: (6, 10), 3: (7, 9)}  # -1: the sanity check (not counted)
    x = torch.stack([torch.arange(10) % 6, torch.arange(10)], dim=1).float()
    val = DataLoader(TensorDataset(x, (torch.arange(10) % 6)), batch_size=5)
    train = DataLoader(TensorDataset(x, (torch.arange(10) % 6)), batch_size=10)
    module = ClassificationModule(_ScriptedNet(script), lr=1e-3, lr_milestones=[10], num_classes=6)
    recorder = _SetEpoch()
    trainer = _trainer(4, [recorder], tmp_path, sanity=1)
    trainer.fit(module, train, val)
    # best top-1 error: 60, 30 (epoch 1), then epoch 2 (40) and the tie of epoch 3 (30) keep epoch 1's; the top-5
    # error is epoch 1's (20), not the lowest one (epoch 2: 0), as the reference's best_acc5
    assert recorder.best == [pytest.approx((60.0, 50.0)), pytest.approx((30.0, 20.0)),
                             pytest.approx((30.0, 20.0)), pytest.approx((30.0, 20.0))]
    assert float(trainer.callback_metrics["val/acc1"]) == pytest.approx(0.7)  # the final epoch's
    assert module.best_err1 == pytest.approx(30.0) and module.best_errk == pytest.approx(20.0)

    # kept in checkpoints: a resumed run continues from the same best
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    fresh = ClassificationModule(_ScriptedNet(script), lr=1e-3, lr_milestones=[10], num_classes=6)
    assert fresh.best_err1 is None
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh.best_err1, fresh.best_errk) == (module.best_err1, module.best_errk)
    fresh.on_load_checkpoint({})  # a checkpoint written before best errors were tracked
    assert fresh.best_err1 is None


def test_best_error_is_finite_after_one_epoch(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(nn.Linear(4, 6), lr=0.1, lr_milestones=[5])
    trainer = _trainer(1, [], tmp_path)
    trainer.fit(module, _loader(), _loader(seed=1))
    err1 = float(trainer.callback_metrics["val/best_err1"])
    assert math.isfinite(err1) and err1 == pytest.approx(100 * (1 - float(trainer.callback_metrics["val/acc1"])))
