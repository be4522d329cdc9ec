"""Object detection (paper Table 4) with torchvision detectors: batch format, losses, COCO AP.

Batch contract (what :class:`mgd_lightning.data.COCODataModule` yields, collated by
:func:`mgd_lightning.data.coco.collate_detection`):
``(images, targets)``, ``images`` a sequence of float tensors ``(3, H_i, W_i)`` in [0, 1] of different sizes,
``targets`` a sequence of dicts ``{"boxes": (N_i, 4) float xyxy in pixels, "labels": (N_i,) int64 COCO category
ids (1-90, as torchvision's COCO models), "image_id": int}``; ``N_i`` may be 0. Mask R-CNN also needs
``"masks": (N_i, H_i, W_i) uint8`` in training.

Distillation (as the reference detection code, ``d2/``): the taps are in the backbone body
(:meth:`DetectionTask.tap_root`), both detectors see the same resized, normalised, padded batch. In training the
student's full forward (train mode, with targets) gives its losses and, through hooks, its taps and the batched
tensor its own transform made (``GeneralizedRCNNTransform``: resize, normalise, pad); the teacher's body then
runs on that very tensor without gradients (not its FPN or heads). In the matching pass (eval mode, no targets)
the student's transform runs once and both bodies run on its output. So the two normalisations must be the same
(:meth:`DetectionTask.check_models`; all torchvision detectors use ImageNet's mean and std).

Metrics: torchmetrics' ``MeanAveragePrecision`` (COCO evaluation through pycocotools or faster-coco-eval; crowd
boxes as ignore regions, COCO areas for the size buckets: :mod:`mgd_lightning.metrics`), logged after each
validation / test epoch as ``val/map``, ``val/map_50``, ``val/map_75``, ``val/map_small``, ``val/map_medium``,
``val/map_large`` (``test/...``), in [0, 1] (COCO AP / 100).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn

from mgd_lightning.metrics import MAP_BACKENDS, detection_map_metric, map_log_dict, update_detection_map
from mgd_lightning.models.detection import group_norm

from .base import Task

__all__ = ["DetectionTask"]


def _body(model: nn.Module, role: str) -> nn.Module:
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None or getattr(model, "transform", None) is None:
        raise ValueError(
            f"{role}: task='detection' needs a torchvision detector with .transform and .backbone.body (RetinaNet, "
            f"Faster / Mask R-CNN, e.g. mgd_lightning.models.build_detector); got {type(model).__name__}"
        )
    return body


class DetectionTask(Task):
    """Detection with torchvision detectors (see the module docstring).

    Args:
        backend: COCO evaluation of ``MeanAveragePrecision``: ``"pycocotools"``, ``"faster_coco_eval"`` or ``None``
            (default: the first installed, :func:`mgd_lightning.metrics.coco_map_backend`).
        tap_norm: the student-side norm on each distilled tap (:meth:`tap_norm`): ``"groupnorm"`` (default, the
            reference detection code: ``mgd/builder.py`` with ``det=True`` builds ``nn.GroupNorm(32, C)``, batches
            being 2 images per GPU; :func:`~mgd_lightning.models.detection.group_norm`, fewer groups where 32 does
            not divide ``C``) or ``"batchnorm"`` (opt-in: ``BatchNorm2d`` as for classification, statistics of the
            process's batch).
    """

    name = "detection"
    has_logits = False
    monitor: ClassVar[tuple[str, str]] = ("val/map", "max")
    #: Detectron2's ``SOLVER.WEIGHT_DECAY_NORM`` (the reference ``d2/`` code keeps it): no decay on norm parameters
    weight_decay_norm: ClassVar[float | None] = 0.0
    #: ``tap_norm`` values
    TAP_NORMS: ClassVar[tuple[str, ...]] = ("groupnorm", "batchnorm")

    def __init__(self, backend: str | None = None, tap_norm: str = "groupnorm") -> None:
        if backend is not None and backend not in MAP_BACKENDS:
            raise ValueError(f"backend must be one of {sorted(MAP_BACKENDS)} or None; got {backend!r}")
        if tap_norm not in self.TAP_NORMS:
            raise ValueError(f"tap_norm must be one of {self.TAP_NORMS}; got {tap_norm!r}")
        self.backend = backend
        self.tap_norm_kind = tap_norm

    # ---------------------------------------------------------------- batches
    def split(self, batch: Any) -> tuple[list[torch.Tensor], list[dict[str, Any]] | None]:
        images = batch[0] if isinstance(batch, (list, tuple)) and len(batch) in (1, 2) else None
        if not (isinstance(images, (list, tuple)) or isinstance(images, torch.Tensor) and images.dim() == 4):
            raise ValueError(
                "task='detection' needs batches (images, targets): a sequence of (3, H, W) image tensors and one of "
                f"target dicts (collate with mgd_lightning.data.coco.collate_detection); got a {type(batch).__name__}"
                + (f" whose first item is a {type(images).__name__}" if images is not None else "")
            )
        images = list(batch[0])
        targets = list(batch[1]) if len(batch) == 2 and batch[1] is not None else None
        return images, targets

    def batch_size(self, inputs: Sequence[torch.Tensor]) -> int:
        return len(inputs)

    # ---------------------------------------------------------------- networks
    def tap_root(self, model: nn.Module) -> nn.Module:
        return _body(model, type(model).__name__)

    def check_models(self, teacher: nn.Module, student: nn.Module) -> None:
        _body(teacher, "teacher")
        _body(student, "student")
        t, s = teacher.transform, student.transform
        if list(t.image_mean) != list(s.image_mean) or list(t.image_std) != list(s.image_std):
            raise ValueError(
                "teacher and student must normalise images alike (the teacher's body runs on the student's "
                f"normalised batch): teacher image_mean={list(t.image_mean)}, image_std={list(t.image_std)}; student "
                f"image_mean={list(s.image_mean)}, image_std={list(s.image_std)}"
            )

    def tap_norm(self, channels: int) -> nn.Module:
        """``GroupNorm(32, channels)`` (``tap_norm="groupnorm"``, the reference) or ``BatchNorm2d(channels)``."""
        return group_norm(channels) if self.tap_norm_kind == "groupnorm" else nn.BatchNorm2d(channels)

    def forward(self, model: nn.Module, inputs: list[torch.Tensor], targets: list[dict] | None) -> Any:
        if model.training and targets is None:
            raise ValueError("task='detection': a detector in training mode needs the targets of the batch; got None")
        return model(inputs, targets) if model.training else model(inputs)

    def forward_pair(self, teacher, student, inputs, targets, student_taps):
        """Training (student in train mode, targets given): the student's loss dict, its taps, then the teacher's
        body on the student's batched tensor. Matching pass (``targets`` None): the student's transform once, both
        bodies on it. Teacher outputs: ``None`` (no logits)."""
        if student.training and targets is not None:
            losses = student(inputs, targets)
            batched = student_taps.root_input
        else:
            losses = None
            batched = student.transform(inputs)[0].tensors
            self.tap_root(student)(batched)
        with torch.no_grad():
            self.tap_root(teacher)(batched.detach())
        return losses, None

    def loss_terms(self, outputs: dict[str, torch.Tensor], targets: Any) -> dict[str, torch.Tensor]:
        if not isinstance(outputs, dict) or not outputs:
            raise ValueError(f"task='detection': the student in training mode must return its loss dict; got "
                             f"{type(outputs).__name__}")
        return dict(outputs)

    # ---------------------------------------------------------------- evaluation
    def setup_metrics(self, module, model, num_classes):
        module.metrics = nn.ModuleDict({f"{s}_map": detection_map_metric(self.backend) for s in ("val", "test")})

    def eval_step(self, module, batch, stage):
        images, targets = self.split(batch)
        if targets is None:
            raise ValueError(f"task='detection': {stage} batches need targets (images, targets)")
        update_detection_map(module.metrics[f"{stage}_map"], module.model(images), targets)

    def on_eval_epoch_end(self, module, stage):
        metric = module.metrics[f"{stage}_map"]
        try:
            if not metric.update_called or module.trainer.sanity_checking:
                return
            # gathered over the ranks by torchmetrics: the same values on every rank
            for key, value in map_log_dict(metric.compute(), prefix=f"{stage}/").items():
                module.log(key, value, sync_dist=True, prog_bar=key.endswith("/map"))
        finally:
            metric.reset()

    def predict(self, model, batch):
        images = batch[0] if isinstance(batch, (list, tuple)) and not isinstance(batch[0], torch.Tensor) else batch
        return model(list(images))
