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
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from mgd_lightning._lightning import PossibleUserWarning, pl

__all__ = ["ClassificationModule", "WarmupMultiStepLR", "split_batch", "infer_num_classes"]

#: learning-rate factor at the first warm-up epoch (reference ``cls/main_mgd.py``: ``warmup_factor=0.1``).
WARMUP_START_FACTOR = 0.1


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets)`` from a batch given as a tensor, a (x, y, ...) sequence or a dict."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, dict):
        for xk, yk in (("image", "label"), ("x", "y"), ("input", "target")):
            if xk in batch:
                return batch[xk], batch.get(yk)
    raise ValueError(
        f"cannot find inputs in a batch of type {type(batch).__name__}: use a tensor, an (x, y) tuple, "
        "or a dict with 'image'/'label' keys"
    )


def infer_num_classes(model: nn.Module) -> int:
    """Output width of the model's last ``nn.Linear`` (the classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot infer num_classes of {type(model).__name__} (no nn.Linear head); pass num_classes")
    return linears[-1].out_features


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
        num_classes: for the metrics; default: the width of the model's last linear layer.

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
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0; got {warmup_epochs!r}")
        self.warmup_epochs = int(warmup_epochs)
        self.save_hyperparameters(ignore=["model", "teacher", "student"])
        self.model = model
        num_classes = int(num_classes or infer_num_classes(model))
        top_k = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")  # images right / images
            for stage in ("val", "test") for name, k in (("acc1", 1), (f"acc{top_k}", top_k))
        })
        self._top_k = top_k
        #: lowest top-1 error (%) over the validation epochs so far, and the top-k error (%) of that epoch.
        self.best_err1: float | None = None
        self.best_errk: float | None = None

    def on_fit_start(self) -> None:
        # A frozen teacher is in eval mode by design; Lightning's generic warning about modules in eval
        # mode at the start of training would only point at it.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = split_batch(batch)
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = split_batch(batch)
        logits = self.model(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        for name in ("acc1", f"acc{self._top_k}"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, y)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "acc1")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Track and log ``val/best_err1`` and ``val/best_err{k}`` (see the class docstring)."""
        if self.trainer.sanity_checking:
            return
        top1, topk = self.metrics["val_acc1"], self.metrics[f"val_acc{self._top_k}"]
        if not top1.update_called:  # no validation batch this epoch
            return
        err1 = 100.0 * (1.0 - float(top1.compute()))
        if self.best_err1 is None or err1 < self.best_err1:
            self.best_err1 = err1
            self.best_errk = 100.0 * (1.0 - float(topk.compute()))
        self.log("val/best_err1", self.best_err1, sync_dist=True)
        self.log(f"val/best_err{self._top_k}", self.best_errk, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_errors"] = {"err1": self.best_err1, "errk": self.best_errk}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("best_val_errors") or {}
        self.best_err1, self.best_errk = best.get("err1"), best.get("errk")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The predicted class of each image and its probability: ``{"class_id": (B,) int64, "probability":
        (B,), "probabilities": (B, num_classes)}`` (softmax of the logits); written to a CSV file by
        :class:`~mgd_lightning.distill.prediction_writer.PredictionWriter` (``mgd-lightning predict``)."""
        probabilities = self.model(split_batch(batch)[0]).softmax(dim=-1)
        probability, class_id = probabilities.max(dim=-1)
        return {"class_id": class_id, "probability": probability, "probabilities": probabilities}

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
        if self.warmup_epochs:
            scheduler: torch.optim.lr_scheduler.LRScheduler = WarmupMultiStepLR(
                optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma, warmup_epochs=self.warmup_epochs
            )
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
