"""ClassificationModule: plain supervised training of one network (teacher fine-tuning, FT / FS baselines).

It is also the base of :class:`~mgd_lightning.distill.module.DistillationModule`: the evaluation steps,
metrics and the optimiser (the paper's SGD recipe) live here once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ClassificationModule", "split_batch", "infer_num_classes"]


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


class ClassificationModule(pl.LightningModule):
    """Train ``model`` with cross-entropy; top-1 / top-k accuracy on validation and test.

    Args:
        model: the network (e.g. ``mgd_lightning.models.build_model("resnet50", num_classes=200,
            weights="IMAGENET1K_V1")`` for the fine-tuned teacher or the FT baseline).
        lr, momentum, nesterov, weight_decay: SGD (paper: lr 0.01 pre-trained, 0.1 from scratch;
            momentum 0.9, Nesterov; reference code weight decay 1e-4).
        lr_milestones, lr_gamma: step decay (CUB-200 / ImageNet: x0.1 every 30 of 120 epochs).
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
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        self.save_hyperparameters(ignore=["model", "teacher", "student"])
        self.model = model
        num_classes = int(num_classes or infer_num_classes(model))
        top_k = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")  # images right / images
            for stage in ("val", "test") for name, k in (("acc1", 1), (f"acc{top_k}", top_k))
        })
        self._top_k = top_k

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

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.model(split_batch(batch)[0]).softmax(dim=-1)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimiser updates."""
        return [self.model]

    def configure_optimizers(self):
        """SGD (momentum, Nesterov, weight decay) over :meth:`trainable_modules`; step decay per epoch."""
        hp = self.hparams
        params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
