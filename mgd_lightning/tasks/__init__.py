"""Tasks: what differs between classification, detection and self-supervised learning around one mechanism.

Taps, matching, reductions, the student-side BatchNorm, margins and :class:`~mgd_lightning.MGDMatchingCallback`
are shared; a :class:`Task`, chosen with ``task=`` of :class:`~mgd_lightning.ClassificationModule` and
:class:`~mgd_lightning.DistillationModule`, says how to read a batch, run the networks, compute the task loss and
evaluate:

====================  ===============================  ====================================================
name                  class                            batch, loss, metrics
====================  ===============================  ====================================================
``classification``    :class:`ClassificationTask`      ``(x (B, C, H, W), y (B,))``; cross-entropy; top-1/k
                                                       accuracy (``val/acc1``, ``val/acc5``), best errors
``detection``         :class:`DetectionTask`           ``(images, targets)``: lists (torchvision detection
                                                       format); the detector's own losses; COCO AP
                                                       (``val/map``, ``val/map_50``, ...)
``self_supervised``   :class:`SelfSupervisedTask`      ``[view_1, view_2]`` (labels never read); MoCo-v2's
                                                       InfoNCE for a :class:`~mgd_lightning.models.MoCoV2`
                                                       model, else distillation only; no metric (linear
                                                       probe / fine-tuning afterwards)
====================  ===============================  ====================================================

Plain torch + torchmetrics: no Lightning import (the modules call ``module.log`` on the LightningModule given).
"""

from __future__ import annotations

from .base import Task
from .classification import ClassificationTask
from .detection import DetectionTask
from .self_supervised import SelfSupervisedTask

__all__ = ["TASKS", "ClassificationTask", "DetectionTask", "SelfSupervisedTask", "Task", "resolve_task"]

#: task name -> class
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "detection": DetectionTask,
                                "self_supervised": SelfSupervisedTask}


def resolve_task(task: str | Task) -> Task:
    """A :class:`Task` from its name (a new instance) or the instance itself."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} or a Task instance; got {task!r}")
    return TASKS[task]()
