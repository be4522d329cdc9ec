"""The interface a task implements for :class:`~mgd_lightning.ClassificationModule` and
:class:`~mgd_lightning.DistillationModule` (and the matching pass of :class:`~mgd_lightning.MGDMatchingCallback`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

__all__ = ["Task", "total_loss"]


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the named loss terms (a single term is returned as it is)."""
    values = list(terms.values())
    if not values:
        raise ValueError("total_loss needs at least one loss term; got none")
    return values[0] if len(values) == 1 else torch.stack(values).sum()


class Task:
    """What a task changes around the shared training and distillation code.

    Subclasses set :attr:`name` and implement the methods below. The modules call them with themselves as
    ``module`` where a task logs or keeps metrics (``module.log``, ``module.metrics``); a task instance belongs to
    one module (it may keep per-module state).
    """

    #: the ``task=`` name
    name: ClassVar[str] = ""
    #: whether the networks output class logits (Hinton KD, ``kd_weight > 0``, needs them)
    has_logits: ClassVar[bool] = False
    #: the checkpoint-monitor metric and its mode (for configs and docs)
    monitor: ClassVar[tuple[str, str]] = ("", "max")
    #: weight decay of norm-layer parameters when the module's ``weight_decay_norm`` is ``None``: ``None`` decays
    #: them as every other parameter (``weight_decay``)
    weight_decay_norm: ClassVar[float | None] = None

    # ---------------------------------------------------------------- batches
    def split(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch (``targets`` may be ``None``)."""
        raise NotImplementedError

    def batch_size(self, inputs: Any) -> int:
        """The number of images in ``inputs``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- networks
    def tap_root(self, model: nn.Module) -> nn.Module:
        """The submodule whose ``named_modules()`` the tap names refer to, and which a probe tensor
        ``(1, C, H, W)`` runs through (classification: the model)."""
        return model

    def has_objective(self, model: nn.Module) -> bool:
        """Whether ``model`` has a task loss of its own under this task (classification, detection: always); a
        model without one can only be trained by distillation (``DistillationModule(distill_weight > 0)``)."""
        return True

    def check_models(self, teacher: nn.Module, student: nn.Module) -> None:
        """Raise ``ValueError`` when teacher and student cannot be distilled under this task."""

    def tap_norm(self, channels: int) -> nn.Module:
        """The trainable student-side norm of one distilled tap of ``channels`` channels (``student_bn=True`` of
        :class:`~mgd_lightning.DistillationModule`), applied to the student's ``(B, channels, H, W)`` feature before
        the loss. Default: ``BatchNorm2d(channels)``, as the reference classification code (``mgd/builder.py``)."""
        return nn.BatchNorm2d(channels)

    def forward(self, model: nn.Module, inputs: Any, targets: Any) -> Any:
        """The outputs of one network in training: what :meth:`loss_terms` takes."""
        raise NotImplementedError

    def forward_pair(self, teacher: nn.Module, student: nn.Module, inputs: Any, targets: Any,
                     student_taps: Any) -> tuple[Any, Any]:
        """``(student_outputs, teacher_outputs)`` of one forward of both networks, the teacher without gradients;
        their taps hold the features afterwards. ``targets`` is ``None`` in the matching pass."""
        raise NotImplementedError

    def loss_terms(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """The named task-loss terms of :meth:`forward`'s outputs (their sum is the task loss)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- evaluation
    def setup_metrics(self, module: nn.Module, model: nn.Module, num_classes: int | None) -> None:
        """Create the evaluation metrics as submodules of ``module`` (``module.metrics``)."""
        raise NotImplementedError

    def eval_step(self, module: nn.Module, batch: Any, stage: str) -> None:
        """Update (and log) the metrics of ``stage`` (``"val"`` or ``"test"``) with one batch."""
        raise NotImplementedError

    def on_eval_epoch_end(self, module: nn.Module, stage: str) -> None:
        """Log what needs the whole epoch (best errors, COCO AP)."""

    def predict(self, model: nn.Module, batch: Any) -> Any:
        """The predictions of one batch (``mgd-lightning predict``)."""
        raise NotImplementedError
