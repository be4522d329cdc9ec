"""Learning without labels: the student's own objective is MoCo-v2's InfoNCE loss, or none (distillation only).

The official unsupervised MGD code (``unsup/main_moco_mgd.py``) trains a MoCo-v2 student with MGD against a frozen
MoCo-v2 teacher; LightlyTrain-style pre-training distils a teacher into a plain network on unlabelled images. Both
are this one task; which objective runs is the student's:

* a :class:`~mgd_lightning.models.MoCoV2` student: MoCo-v2 (two augmented views per image: the query view is also
  the one distilled and the one the teacher sees, as the official code's ``forward_encoder_q(im_q)``);
* any other network: no task loss, the distillation alone (``DistillationModule`` with ``distill_weight > 0``; one
  view is enough, a second one is not used).

Labels are never read: a batch is ``[view_1, view_2]`` (the data modules' ``two_views=True``), one image tensor, or
either with labels beside them (``(views, labels)``, dropped). The taps live in the MoCo model's encoder (tap names
are the bare network's). The matching pass gives one non-augmented view (the data module's ``matching_dataset()``,
as the official code's Resize + CenterCrop loader). Validation logs nothing (evaluate by linear probe or
fine-tuning: :class:`~mgd_lightning.models.LinearProbe`); ``predict`` returns the encoder's pooled features.
Plain torch: no Lightning import.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from .base import Task

__all__ = ["SelfSupervisedTask", "split_views"]


def split_views(batch: Any) -> list[torch.Tensor]:
    """The image views of a batch, labels dropped: ``[x]`` for a tensor ``x`` or ``(x, labels)``; the list for
    ``[view_1, view_2, ...]`` or ``([view_1, view_2, ...], labels)``; a dict's ``"image"``."""
    if isinstance(batch, dict) and "image" in batch:
        batch = batch["image"]
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, (list, tuple)) and first and all(isinstance(v, torch.Tensor) for v in first):
            return list(first)  # ([views], labels)
        if all(isinstance(v, torch.Tensor) and v.dim() == 4 for v in batch):
            return list(batch)  # [view_1, view_2] (no labels: each a 4-D image batch)
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            return [first]  # (images, labels)
    raise ValueError(
        f"cannot find image views in a batch of type {type(batch).__name__}: task='self_supervised' takes "
        "[view_1, view_2] (a data module's two_views=True), an image tensor (B, C, H, W), or either with labels "
        "beside them"
    )


def _is_moco(model: nn.Module) -> bool:
    from mgd_lightning.models.moco_v2 import MoCoV2  # the models layer: no import cycle, lightly stays optional

    return isinstance(model, MoCoV2)


class SelfSupervisedTask(Task):
    """Self-supervised learning (``task="self_supervised"``): MoCo-v2 for a :class:`~mgd_lightning.models.MoCoV2`
    model, distillation only for any other (see the module docstring). The loss term is ``"infonce"``."""

    name = "self_supervised"
    has_logits = False
    monitor: ClassVar[tuple[str, str]] = ("train/loss", "min")

    def split(self, batch: Any) -> tuple[list[torch.Tensor], None]:
        return split_views(batch), None

    def batch_size(self, inputs: list[torch.Tensor]) -> int:
        return inputs[0].shape[0]

    def tap_root(self, model: nn.Module) -> nn.Module:
        """A MoCo model's encoder (taps named as in the bare network); any other network itself."""
        return model.encoder if _is_moco(model) else model

    def has_objective(self, model: nn.Module) -> bool:
        """Whether ``model`` trains with a loss of its own here (a MoCoV2); else only distillation trains it."""
        return _is_moco(model)

    def _contrastive(self, model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) < 2:
            raise ValueError(
                f"task='self_supervised' with a MoCoV2 model trains on two views of each image, but the batch has "
                f"{len(inputs)} (shape {tuple(inputs[0].shape)}): give the data module two_views=True (items "
                "([view_1, view_2], label)), or a dataset whose transform returns two views"
            )
        return model.contrastive_loss(inputs[0], inputs[1])

    def forward(self, model: nn.Module, inputs: list[torch.Tensor], targets: Any) -> torch.Tensor:
        if not _is_moco(model):
            raise ValueError(
                f"task='self_supervised' trains a {type(model).__name__} with no objective of its own: wrap it in "
                "mgd_lightning.models.MoCoV2 for MoCo-v2, or distil it (DistillationModule with distill_weight > 0)"
            )
        return self._contrastive(model, inputs)

    def forward_pair(self, teacher, student, inputs, targets, student_taps):
        """The teacher's encoder on the first view (no gradients); the student's MoCo loss (training, two views), or
        its encoder on the first view (the matching pass, or a student without an objective). Returns
        ``(infonce or None, None)``."""
        with torch.no_grad():
            self.tap_root(teacher)(inputs[0])
        if _is_moco(student) and (student.training or len(inputs) > 1):
            return self._contrastive(student, inputs), None
        self.tap_root(student)(inputs[0])
        return None, None

    def loss_terms(self, outputs: torch.Tensor | None, targets: Any) -> dict[str, torch.Tensor]:
        return {} if outputs is None else {"infonce": outputs}

    def setup_metrics(self, module, model, num_classes):
        module.metrics = nn.ModuleDict()

    def eval_step(self, module, batch, stage):
        """Nothing: a representation is evaluated by a linear probe or fine-tuning, not by its training loss."""

    def predict(self, model, batch):
        return {"features": self.tap_root(model)(split_views(batch)[0])}
