"""ClassificationModule: plain supervised training of one network (teacher fine-tuning, FT / FS baselines).

It is also the base of :class:`~mgd_lightning.distill.module.DistillationModule`: the evaluation steps,
metrics, the best-epoch error and the optimiser and schedule (the paper's SGD recipe) live here once.

Schedules, as the reference code (``cls/main_mgd.py``, ``cls/main_base.py``, ``cls/solver/lr_scheduler.py``):
the learning rate is multiplied by ``lr_gamma`` at each of ``lr_milestones`` (0-based epoch indices: with
milestone 30, epochs 0-29 train at ``lr`` and epoch 30 at ``lr * lr_gamma``), stepped once per epoch after
validation (Lightning's ``interval: "epoch"``, as the reference calls ``lr_scheduler.step()`` after each
epoch). ``warmup_epochs = W > 0`` adds the reference ``--warmup 1`` ramp (:class:`WarmupMultiStepLR`): epoch
``e < W`` trains at ``lr * (0.1 + 0.9 e / W)`` (0.1 x lr at epoch 0, 1 x lr from epoch W on). As in the
reference, the milestones count from the start of training, warm-up included: the reference adds W to both
its epoch count and its milestones (ImageNet MobileNet-V1: 120 + 10 epochs, drops at 31 + 10, 61 + 10, 81 + 10).
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from mgd_lightning._lightning import PossibleUserWarning, pl
from mgd_lightning.tasks import Task, resolve_task
from mgd_lightning.tasks.base import total_loss
from mgd_lightning.tasks.classification import infer_num_classes, split_batch

__all__ = ["ClassificationModule", "LR_INTERVALS", "WarmupMultiStepLR", "split_batch", "infer_num_classes"]

#: units of ``lr_milestones`` and the warm-up: epochs (classification recipes) or optimizer steps (detection)
LR_INTERVALS = ("epoch", "step")

#: learning-rate factor at the first warm-up epoch (reference ``cls/main_mgd.py``: ``warmup_factor=0.1``).
WARMUP_START_FACTOR = 0.1


class _WarmupMultiStepFactor:
    """``lr_lambda`` of :class:`WarmupMultiStepLR` (a class, so the scheduler's state_dict can hold it)."""

    def __init__(self, milestones: Sequence[int], gamma: float, warmup_epochs: int, warmup_factor: float) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, epoch: int) -> float:
        warmup = 1.0
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * self.gamma ** bisect_right(self.milestones, epoch)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up, then step decay: the reference code's ``WarmupMultiStepLR`` (``cls/solver/lr_scheduler.py``,
    itself Detectron2's), stepped per epoch.

    At epoch ``e`` (the scheduler's ``last_epoch``) the learning rate is ``base_lr * w(e) * gamma ** n(e)``, with
    ``n(e)`` the number of milestones ``<= e`` and ``w(e) = warmup_factor * (1 - e / W) + e / W`` for
    ``e < W = warmup_epochs``, else 1.

    Args:
        optimizer: the optimiser.
        milestones: epochs at which the rate is multiplied by ``gamma`` (warm-up included in the count).
        gamma: the decay factor.
        warmup_epochs: length ``W`` of the linear ramp (0: none, a plain ``MultiStepLR``).
        warmup_factor: factor at epoch 0 (reference: 0.1).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_epochs: int = 0,
        warmup_factor: float = WARMUP_START_FACTOR,
        last_epoch: int = -1,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing; got {list(milestones)}")
        super().__init__(
            optimizer, _WarmupMultiStepFactor(milestones, gamma, warmup_epochs, warmup_factor), last_epoch=last_epoch
        )


class ClassificationModule(pl.LightningModule):
    """Train ``model`` with cross-entropy; top-1 / top-k accuracy on validation and test.

    Logged per validation epoch: ``val/loss``, ``val/acc1``, ``val/acc{k}`` (k = 5, or the number of classes
    when smaller) of that epoch, and ``val/best_err1``, the lowest top-1 error in percent so far,
    ``min over epochs of 100 * (1 - val/acc1)``, with ``val/best_err{k}``, the top-k error in percent of that
    same epoch (the reference ``cls/main_mgd.py`` keeps top-5 of the best top-1 epoch). The sanity-check
    pass does not count. So after ``fit`` the logs hold both numbers a paper table may mean: the final
    epoch's error ``100 * (1 - val/acc1)`` and the best epoch's ``val/best_err1``. The reference code reports
    the best epoch ("best top1 err.", CUB-200 and ImageNet); Overhaul's CIFAR-100 code, which the paper's
    CIFAR-100 table follows, reports the final epoch. Each config says which one it compares.
    The best errors are kept in checkpoints (``best_val_errors``), so a resumed run continues them.

    Args:
        model: the network (e.g. ``mgd_lightning.models.build_model("resnet50", num_classes=200,
            weights="IMAGENET1K_V1")`` for the fine-tuned teacher or the FT baseline).
        lr, momentum, nesterov, weight_decay: SGD (paper: lr 0.01 pre-trained, 0.1 from scratch;
            momentum 0.9; reference code: weight decay 1e-4, Nesterov in ``main_mgd.py``, plain momentum
            in ``main_base.py``).
        lr_milestones, lr_gamma: step decay at these (0-based) epochs, stepped per epoch (reference
            ``main_mgd.py`` on CUB-200: 31, 61, 81 of 120; ``main_base.py``: every 30 epochs).
        warmup_epochs: linear warm-up from 0.1 x ``lr`` over this many epochs (:class:`WarmupMultiStepLR`,
            the reference ``--warmup 1``, 10 epochs, on ImageNet); 0 (default): none. ``lr_milestones``
            count from epoch 0, warm-up included.
        num_classes: for the metrics; default: the width of the model's last linear layer (classification only).
        task: ``"classification"`` (default) or ``"detection"`` (a torchvision detector, ``(images, targets)``
            batches, its own losses, COCO AP as ``val/map``, ...), or a :class:`~mgd_lightning.tasks.Task`
            (:mod:`mgd_lightning.tasks`).
        lr_interval: ``"epoch"`` (default): ``lr_milestones`` and ``warmup_epochs`` count epochs, the rate changes
            once per epoch; ``"step"``: ``lr_milestones`` count optimizer steps and the warm-up lasts
            ``warmup_steps`` steps (Detectron2's iteration schedules: milestones 60k / 80k of 90k, 1,000 warm-up
            steps from ``warmup_factor = 0.001``).
        warmup_steps: linear warm-up length in steps (``lr_interval="step"`` only).
        warmup_factor: learning-rate factor at the start of the warm-up (0.1: the reference classification code;
            Detectron2: 0.001).

    Example YAML (``mgd-lightning fit --config ...``)::

        model:
          class_path: mgd_lightning.ClassificationModule
          init_args:
            model: {class_path: mgd_lightning.models.build_model, init_args: {name: resnet18, num_classes: 10}}
            lr: 0.1
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 1e-4,
        lr_milestones: Sequence[int] = (30, 60, 90),
        lr_gamma: float = 0.1,
        num_classes: int | None = None,
        warmup_epochs: int = 0,
        task: str | Task = "classification",
        lr_interval: str = "epoch",
        warmup_steps: int = 0,
        warmup_factor: float = WARMUP_START_FACTOR,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0; got {warmup_epochs!r}")
        if lr_interval not in LR_INTERVALS:
            raise ValueError(f"lr_interval must be one of {LR_INTERVALS}; got {lr_interval!r}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0; got {warmup_steps!r}")
        if lr_interval == "epoch" and warmup_steps:
            raise ValueError(f"warmup_steps={warmup_steps} needs lr_interval='step' (use warmup_epochs with 'epoch')")
        if lr_interval == "step" and warmup_epochs:
            raise ValueError(f"warmup_epochs={warmup_epochs} needs lr_interval='epoch' (use warmup_steps with 'step')")
        if not 0 < warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1]; got {warmup_factor}")
        self.warmup_epochs = int(warmup_epochs)
        # a Task instance is not a hyperparameter a checkpoint can hold (LightningCLI stores its class_path instead)
        self.save_hyperparameters(ignore=["model", "teacher", "student"] + ([] if isinstance(task, str) else ["task"]))
        self.model = model
        self.task = resolve_task(task)
        #: lowest top-1 error (%) over the validation epochs so far, and the top-k error (%) of that epoch
        #: (classification).
        self.best_err1: float | None = None
        self.best_errk: float | None = None
        self.task.setup_metrics(self, model, num_classes)

    def on_fit_start(self) -> None:
        # A frozen teacher is in eval mode by design; Lightning's generic warning about modules in eval
        # mode at the start of training would only point at it.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.task.split(batch)
        terms = self.task.loss_terms(self.task.forward(self.model, inputs, targets), targets)
        loss = total_loss(terms)
        size = self.task.batch_size(inputs)
        if len(terms) > 1:  # detection: each of the detector's losses too
            self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False,
                          batch_size=size)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        self.task.eval_step(self, batch, stage)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Classification: track and log ``val/best_err1`` and ``val/best_err{k}`` (see the class docstring);
        detection: compute and log the COCO AP of the epoch."""
        self.task.on_eval_epoch_end(self, "val")

    def on_test_epoch_end(self) -> None:
        self.task.on_eval_epoch_end(self, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_errors"] = {"err1": self.best_err1, "errk": self.best_errk}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("best_val_errors") or {}
        self.best_err1, self.best_errk = best.get("err1"), best.get("errk")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Any:
        """Classification: the predicted class of each image and its probability: ``{"class_id": (B,) int64,
        "probability": (B,), "probabilities": (B, num_classes)}`` (softmax of the logits); written to a CSV file by
        :class:`~mgd_lightning.distill.prediction_writer.PredictionWriter` (``mgd-lightning predict``). Detection:
        the detector's list of ``{"boxes", "scores", "labels"}`` per image."""
        return self.task.predict(self.model, batch)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimiser updates."""
        return [self.model]

    def configure_optimizers(self):
        """SGD (momentum, Nesterov, weight decay) over :meth:`trainable_modules`; step decay per epoch, after an
        optional linear warm-up (the reference ``build_lr_scheduler``: ``MultiStepLR`` without warm-up,
        ``WarmupMultiStepLR`` with it)."""
        hp = self.hparams
        params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        interval = hp.get("lr_interval", "epoch")
        warmup = self.warmup_epochs if interval == "epoch" else int(hp.get("warmup_steps", 0))
        if warmup:
            scheduler: torch.optim.lr_scheduler.LRScheduler = WarmupMultiStepLR(
                optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma, warmup_epochs=warmup,
                warmup_factor=hp.get("warmup_factor", WARMUP_START_FACTOR),
            )
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
