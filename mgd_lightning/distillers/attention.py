"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based, p = 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FeatureDistiller

__all__ = ["AttentionTransfer", "attention_map"]


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``Q = vec(mean_c F_c^2)`` L2-normalised per image (AT Eq. 1-2, p = 2). feature: (B, C, H, W) -> (B, H*W)."""
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


class AttentionTransfer(FeatureDistiller):
    """Per tap ``beta * mean_{b, i} (Q_S - Q_T)^2`` on post-ReLU features, equal weights, beta = 1e3.

    Defaults follow the authors' code (``szagoruyko/attention-transfer``, ``utils.py`` ``at_loss`` and
    ``cifar.py``: ``loss + beta * sum(at_losses)``, ``--beta 1e+3``, all groups weighted equally; mdistiller's
    ``AT`` uses the same weight 1000). The AT paper's formula has ``beta / 2``: ``DistillationModule(...,
    distiller="at", distill_weight=0.5)`` gives it (opt-in). The AT paper uses the block outputs after the
    activation; our taps are pre-ReLU, so ``post_relu=True`` (default) applies the ReLU the network applies
    next (the negative part would otherwise add energy to the attention maps). Channel counts may differ: the
    maps are channel means.

    Example YAML::

        model:
          class_path: mgd_lightning.DistillationModule
          init_args: {distiller: at, ...}   # beta = 1e3, equal tap weights, no loss_factor
    """

    beta = 1000.0
    default_loss_factor = 1.0

    def __init__(self, tap_shapes, margins, tap_weights=None, loss_factor=None, post_relu: bool = True) -> None:
        super().__init__(tap_shapes, margins, tap_weights, loss_factor)
        self.post_relu = post_relu

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.post_relu:
            student, teacher = F.relu(student), F.relu(teacher)
        return self.beta * (attention_map(student) - attention_map(teacher)).pow(2).mean()
