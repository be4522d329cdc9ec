"""Overhaul of feature distillation, OFD (Heo et al., ICCV 2019): connector + margin ReLU + partial L2."""

from __future__ import annotations

import torch
import torch.nn as nn

from mgd_lightning.losses import partial_l2

from .base import FeatureDistiller

__all__ = ["Overhaul"]


class Overhaul(FeatureDistiller):
    """Per tap ``w_k * d_p(C(S), max(T, m)) / B / loss_factor``, as the authors' code
    (``clovaai/overhaul-distillation``, ``ImageNet/distiller.py`` and ``train_with_distillation.py``).

    A trainable connector ``C`` = 1x1 conv (C_S -> C_T, no bias, He-normal fan-out init) + BatchNorm on the
    pre-ReLU student feature, the teacher's margin ReLU (Eq. 4, margins from the BN before each tap), the
    partial L2 (Eq. 5), tap ``k`` of ``N`` weighted ``1 / 2^(N-k-1)``, the sum divided by the batch size and by
    1e4 (``ImageNet/train_with_distillation.py``; ``CIFAR-100/...`` divides by 1e3: pass ``loss_factor: 1000``).

    One difference, on purpose: the authors' training loop calls ``t_net.train()``, so their teacher's
    BatchNorms use batch statistics (and update their running averages) during distillation. Here every
    distiller shares one frozen teacher in eval mode (running statistics), as MGD's reference code does.

    Example YAML::

        model:
          class_path: mgd_lightning.DistillationModule
          init_args: {distiller: ofd, ...}   # loss_factor 1e4 (224 px); 1000 for CIFAR
    """

    default_loss_factor = 1e4

    @classmethod
    def default_tap_weights(cls, num_taps: int) -> list[float]:
        return [1.0 / 2 ** (num_taps - k - 1) for k in range(num_taps)]

    def __init__(self, tap_shapes, margins, tap_weights=None, loss_factor=None) -> None:
        super().__init__(tap_shapes, margins, tap_weights, loss_factor)
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t)) for c_s, c_t, _, _ in self.tap_shapes
        )
        for connector in self.connectors:
            nn.init.kaiming_normal_(connector[0].weight, mode="fan_out", nonlinearity="relu")

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return partial_l2(self.connectors[k](student), teacher, self.margin(k)) / student.shape[0]
