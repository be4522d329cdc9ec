"""FitNets (Romero et al., ICLR 2015) as mdistiller runs it: one hint layer, a conv + BN + ReLU regressor, MSE."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureDistiller

__all__ = ["FitNets"]


class FitNets(FeatureDistiller):
    """Per distilled tap ``w_k * mean((r_k(relu(S)) - relu(T))^2)``: the hint loss of FitNets Eq. 3.

    Defaults follow mdistiller (``mdistiller/distillers/FitNet.py``, ``_common.py`` ``ConvReg``,
    ``engine/cfg.py`` ``FITNET``): one hint layer, the middle stage (mdistiller's ``HINT_LAYER = 2`` of
    ``[stem, stage1, stage2, stage3]`` is tap ``(N - 1) // 2`` of our N stage taps, for 3 and 4 taps alike),
    feature weight 100 on ``F.mse_loss`` (mean over elements), CE weight 1, trained jointly (no stage-wise
    pre-training). The regressor is mdistiller's ``ConvReg`` for equal spatial sizes: a 1x1 conv (with bias)
    C_S -> C_T, BatchNorm, ReLU. mdistiller's features are the post-ReLU stage outputs; our taps are the
    pre-ReLU ones, so ``post_relu=True`` (default) applies the ReLU the network applies next (for a ReLU6
    network, ReLU, not ReLU6). Hints at every tap: pass ``tap_weights`` (e.g. ``[100, 100, 100]``).

    Example YAML::

        model:
          class_path: mgd_lightning.DistillationModule
          init_args: {distiller: fitnets, ...}   # hint at the middle tap, weight 100
    """

    default_loss_factor = 1.0

    @classmethod
    def default_tap_weights(cls, num_taps: int) -> list[float]:
        return [100.0 if k == (num_taps - 1) // 2 else 0.0 for k in range(num_taps)]

    def __init__(self, tap_shapes, margins, tap_weights=None, loss_factor=None, post_relu: bool = True) -> None:
        super().__init__(tap_shapes, margins, tap_weights, loss_factor)
        self.post_relu = post_relu
        self.regressors = nn.ModuleDict({
            str(k): nn.Sequential(nn.Conv2d(c_s, c_t, 1), nn.BatchNorm2d(c_t), nn.ReLU())
            for k, ((c_s, c_t, _, _), w) in enumerate(zip(self.tap_shapes, self.tap_weights)) if w != 0
        })

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.post_relu:
            student, teacher = F.relu(student), F.relu(teacher)
        return F.mse_loss(self.regressors[str(k)](student), teacher)
