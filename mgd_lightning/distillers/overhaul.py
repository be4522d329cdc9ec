"""Overhaul of feature distillation, OFD (Heo et al., ICCV 2019): connector + margin ReLU + partial L2."""

from __future__ import annotations

import torch
import torch.nn as nn

from mgd_lightning.losses import partial_l2

from .base import FeatureDistiller

__all__ = ["Overhaul"]


class Overhaul(FeatureDistiller):
    """Per tap ``d_p(C(S), max(T, m)) / B``: a trainable connector ``C`` = 1x1 conv (C_S -> C_T) + BN on
    the student, the teacher's margin ReLU (Eq. 4, margins from its BN), partial L2 (Eq. 5), at the
    same pre-ReLU taps as MGD. The reference losses divide by 1e3 (CIFAR) or 1e4 (ImageNet).

    Example YAML::

        model:
          class_path: mgd_lightning.DistillationModule
          init_args: {distiller: ofd, loss_factor: 10000.0, ...}
    """

    def __init__(self, tap_shapes, margins, tap_weights, loss_factor) -> None:
        super().__init__(tap_shapes, margins, tap_weights, loss_factor)
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t)) for c_s, c_t, _, _ in self.tap_shapes
        )
        for connector in self.connectors:
            nn.init.kaiming_normal_(connector[0].weight, mode="fan_out", nonlinearity="relu")

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return partial_l2(self.connectors[k](student), teacher, self.margin(k)) / student.shape[0]
