"""FitNets (Romero et al., ICLR 2015): hint regression through a 1x1 convolutional regressor."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import FeatureDistiller

__all__ = ["FitNets"]


class FitNets(FeatureDistiller):
    """Per tap ``1/2 * ||r(S) - T||^2`` summed over elements, averaged over the batch (FitNets Eq. 3),
    with ``r`` a trainable 1x1 conv regressor C_S -> C_T (no bias).

    Example YAML::

        model:
          class_path: mgd_lightning.DistillationModule
          init_args: {distiller: fitnets, loss_factor: 1000.0, ...}
    """

    def __init__(self, tap_shapes, margins, tap_weights, loss_factor) -> None:
        super().__init__(tap_shapes, margins, tap_weights, loss_factor)
        self.regressors = nn.ModuleList(nn.Conv2d(c_s, c_t, 1, bias=False) for c_s, c_t, _, _ in self.tap_shapes)

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.regressors[k](student) - teacher).pow(2).sum() / student.shape[0]
