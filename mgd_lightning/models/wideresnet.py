"""CIFAR WideResNet WRN-d-k (Zagoruyko & Komodakis, BMVC 2016), plain torch.

Pre-activation basic blocks, depth ``d = 6n + 4``, widen factor ``k``. For a ``(B, 3, 32, 32)``
input::

    conv3x3 16ch                                         (B,  16,    32, 32)
    group1  n blocks, 16k channels, stride 1             (B,  16k,   32, 32)
    group2  n blocks, 32k channels, stride 2             (B,  32k,   16, 16)
    group3  n blocks, 64k channels, stride 2             (B,  64k,    8,  8)
    final_bn + final_preact + ReLU, average pool, fc     (B, num_classes)

A block computes ``o = relu(preact(bn1(x)))``, then ``conv2(dropout(relu(bn2(conv1(o))))) + s``
where the shortcut ``s`` is ``x`` when shapes match, else the 1x1 projection ``shortcut(o)`` of the
pre-activated input (as in the standard WRN code).

Distillation taps (:attr:`WideResNet.distillation_taps`), following Heo et al. (Overhaul, ICCV 2019)
for pre-activation networks, as MGD (ECCV 2020, section 3.4) does: a stage's feature before ReLU is
the next BN's output applied to it.

====================  ==========  =======
tap                   channels    spatial
====================  ==========  =======
``group2.0.preact``   16k         32 x 32   (group2's first ``bn1`` on group1's output)
``group3.0.preact``   32k         16 x 16   (group3's first ``bn1`` on group2's output)
``final_preact``      64k         8 x 8     (``final_bn`` on group3's output)
====================  ==========  =======

Tap names do not depend on the depth. All activations are non-inplace, so a tapped tensor is never
modified by the rest of the forward pass.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet", "wrn_16_2", "wrn_16_4", "wrn_28_2", "wrn_28_4"]


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.preact = nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.preact(self.bn1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR: ``(B, 3, 32, 32) -> (B, num_classes)`` logits. See the module docstring."""

    distillation_taps: ClassVar[tuple[str, ...]] = ("group2.0.preact", "group3.0.preact", "final_preact")
    default_input_size: ClassVar[tuple[int, int, int]] = (3, 32, 32)

    def __init__(
        self, depth: int = 28, widen_factor: int = 4, num_classes: int = 100, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (e.g. 16, 28, 40); got depth={depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer; got widen_factor={widen_factor!r}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        in_channels = 16
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2), strict=True), start=1):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(in_channels, width, stride if j == 0 else 1, dropout))
                in_channels = width
            self.add_module(f"group{i}", nn.Sequential(*blocks))
        self.final_bn = nn.BatchNorm2d(in_channels)
        self.final_preact = nn.Identity()
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.group3(self.group2(self.group1(self.conv1(x))))
        out = F.relu(self.final_preact(self.final_bn(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def wide_resnet(
    depth: int = 28, widen_factor: int = 4, num_classes: int = 100, dropout: float = 0.0
) -> WideResNet:
    """CIFAR WideResNet WRN-``depth``-``widen_factor``.

    Args:
        depth: ``6n + 4`` with ``n >= 1`` (16, 22, 28, 40, ...); anything else raises ValueError.
        widen_factor: ``k``; the groups have ``16k``, ``32k``, ``64k`` channels.
        num_classes: size of the classifier output.
        dropout: dropout probability between the two convs of each block.

    Returns:
        A :class:`WideResNet` taking ``(B, 3, 32, 32)`` images; taps in ``distillation_taps`` give
        ``16k``, ``32k``, ``64k`` channels at 32, 16, 8 pixels.
    """
    return WideResNet(depth=depth, widen_factor=widen_factor, num_classes=num_classes, dropout=dropout)


def wrn_28_4(num_classes: int = 100, **kwargs: Any) -> WideResNet:
    """WRN-28-4 (about 5.87M parameters with 100 classes); taps of 64, 128, 256 channels."""
    return wide_resnet(28, 4, num_classes, **kwargs)


def wrn_16_4(num_classes: int = 100, **kwargs: Any) -> WideResNet:
    """WRN-16-4 (about 2.77M parameters with 100 classes); taps of 64, 128, 256 channels."""
    return wide_resnet(16, 4, num_classes, **kwargs)


def wrn_28_2(num_classes: int = 100, **kwargs: Any) -> WideResNet:
    """WRN-28-2 (about 1.48M parameters with 100 classes); taps of 32, 64, 128 channels."""
    return wide_resnet(28, 2, num_classes, **kwargs)


def wrn_16_2(num_classes: int = 100, **kwargs: Any) -> WideResNet:
    """WRN-16-2 (about 0.70M parameters with 100 classes); taps of 32, 64, 128 channels."""
    return wide_resnet(16, 2, num_classes, **kwargs)
