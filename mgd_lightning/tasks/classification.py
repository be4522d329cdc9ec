"""Image classification: ``(x, y)`` batches, cross-entropy, top-1 / top-k accuracy and the best-epoch errors."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .base import Task

__all__ = ["ClassificationTask", "split_batch", "infer_num_classes"]


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


class ClassificationTask(Task):
    """Classification (the default task).

    Batches: ``(x (B, C, H, W), y (B,))`` (or a tensor, or a dict: :func:`split_batch`). Loss: cross-entropy of the
    logits. Metrics per stage: ``acc1`` and ``acc{k}`` (k = 5, or the number of classes when smaller), micro
    averaged; after each validation epoch ``val/best_err1`` / ``val/best_err{k}`` (see
    :class:`~mgd_lightning.ClassificationModule`). The module keeps ``metrics``, ``_top_k``, ``best_err1`` and
    ``best_errk``.
    """

    name = "classification"
    has_logits = True
    monitor: ClassVar[tuple[str, str]] = ("val/acc1", "max")

    def split(self, batch: Any) -> tuple[Any, Any]:
        return split_batch(batch)

    def batch_size(self, inputs: torch.Tensor) -> int:
        return inputs.shape[0]

    def forward(self, model: nn.Module, inputs: torch.Tensor, targets: Any) -> torch.Tensor:
        return model(inputs)

    def forward_pair(self, teacher, student, inputs, targets, student_taps):
        with torch.no_grad():
            t_logits = teacher(inputs)
        return student(inputs), t_logits

    def loss_terms(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(outputs, targets)}

    def setup_metrics(self, module, model, num_classes):
        num_classes = int(num_classes or infer_num_classes(model))
        top_k = min(5, num_classes)
        module.metrics = nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")  # images right / images
            for stage in ("val", "test") for name, k in (("acc1", 1), (f"acc{top_k}", top_k))
        })
        module._top_k = top_k

    def eval_step(self, module, batch, stage):
        x, y = split_batch(batch)
        logits = module.model(x)
        module.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        for name in ("acc1", f"acc{module._top_k}"):
            metric = module.metrics[f"{stage}_{name}"]
            metric(logits, y)
            module.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "acc1")

    def on_eval_epoch_end(self, module, stage):
        if stage != "val" or module.trainer.sanity_checking:
            return
        top1, topk = module.metrics["val_acc1"], module.metrics[f"val_acc{module._top_k}"]
        if not top1.update_called:  # no validation batch this epoch
            return
        err1 = 100.0 * (1.0 - float(top1.compute()))
        if module.best_err1 is None or err1 < module.best_err1:
            module.best_err1 = err1
            module.best_errk = 100.0 * (1.0 - float(topk.compute()))
        module.log("val/best_err1", module.best_err1, sync_dist=True)
        module.log(f"val/best_err{module._top_k}", module.best_errk, sync_dist=True)

    def predict(self, model, batch):
        probabilities = model(split_batch(batch)[0]).softmax(dim=-1)
        probability, class_id = probabilities.max(dim=-1)
        return {"class_id": class_id, "probability": probability, "probabilities": probabilities}
