"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based, p = 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FeatureDistiller

__all__ = ["AttentionTransfer", "attention_map"]


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``Q = vec(mean_c |F_c|^2)`` L2-normalised per image. feature: (B, C, H, W) -> (B, H*W)."""
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


class AttentionTransfer(FeatureDistiller):
    """Per tap ``beta/2 * mean_{b, i} (Q_S - Q_T)^2`` (the authors' code's form of AT Eq. 2, beta = 1e3).

    Channel counts may differ: the maps are channel means. It runs on the same (pre-ReLU) taps as the other
    distillers so that all methods share taps; the AT paper uses post-activation block outputs, where the
    negative part is zero. Pass ``teacher_taps`` / ``student_taps`` naming post-ReLU modules to get that.
    Use ``loss_factor=1`` with AT (beta/2 sets the scale): the module's ``loss_factor`` still divides it.

    Example YAML::

        model:
          class_path: mgd_lightning.DistillationModule
          init_args: {distiller: at, loss_factor: 1.0, ...}
    """

    beta = 1000.0

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.beta / 2 * (attention_map(student) - attention_map(teacher)).pow(2).mean()
