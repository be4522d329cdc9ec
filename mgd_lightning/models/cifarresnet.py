"""CIFAR ResNet (He et al., CVPR 2016, section 4.2) with a width multiplier, plain torch.

Post-activation basic blocks, depth ``d = 6n + 2``, width ``w``. For a ``(B, 3, 32, 32)`` input::

    conv3x3 16w + BN + ReLU                              (B, 16w, 32, 32)
    layer1  n blocks, 16w channels, stride 1             (B, 16w, 32, 32)
    layer2  n blocks, 32w channels, stride 2             (B, 32w, 16, 16)
    layer3  n blocks, 64w channels, stride 2             (B, 64w,  8,  8)
    average pool + fc                                    (B, num_classes)

A block computes ``relu(preact(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)))`` where
``preact`` is an ``nn.Identity`` and ``shortcut`` is the identity, or a 1x1 conv + BN projection
when the shape changes. ``resnet56(width=1)`` (16/32/64 channels, 9 blocks per stage, 0.86M parameters
with 100 classes) is the ResNet-56 of Overhaul's CIFAR-100 code (``models/ResNet.py``, the same function:
there each block's final ReLU opens the next block), which is the paper's "ResNet s:56-2" (Table 1: its
baseline and Overhaul errors are Overhaul's ResNet-56 numbers); ``configs/cifar100/mgd_amp_resnet56.yaml``
uses it.

Each stage is an ``nn.Sequential`` whose blocks are named ``"0"``, ``"1"``, ... except the last
one, named ``"last"`` (``layer1[-1]`` still works), so tap names do not depend on the depth.

Distillation taps (:attr:`CifarResNet.distillation_taps`), following MGD (ECCV 2020, section 3.4,
Fig. 3: the last unit block of each stage, features before ReLU): the residual sum of the last
block of each stage, before its final ReLU.

======================  ==========  =======
tap                     channels    spatial
======================  ==========  =======
``layer1.last.preact``  16w         32 x 32
``layer2.last.preact``  32w         16 x 16
``layer3.last.preact``  64w         8 x 8
======================  ==========  =======

All activations are non-inplace, so a tapped tensor is never modified by the rest of the forward.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights

__all__ = ["CifarBasicBlock", "CifarResNet", "cifar_resnet", "resnet56"]


class CifarBasicBlock(nn.Module):
    """Post-activation basic block: ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.preact(out + shortcut))


class CifarResNet(nn.Module):
    """ResNet-depth for CIFAR: ``(B, 3, 32, 32) -> (B, num_classes)`` logits. See the module docstring."""

    distillation_taps: ClassVar[tuple[str, ...]] = (
        "layer1.last.preact",
        "layer2.last.preact",
        "layer3.last.preact",
    )
    default_input_size: ClassVar[tuple[int, int, int]] = (3, 32, 32)

    def __init__(self, depth: int = 56, width: int = 1, num_classes: int = 100) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (e.g. 20, 32, 56, 110); got depth={depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer; got width={width!r}")
        n = (depth - 2) // 6
        in_channels = 16 * width
        self.conv1 = nn.Conv2d(3, in_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        for i, (channels, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = OrderedDict()
            for j in range(n):
                name = "last" if j == n - 1 else str(j)
                blocks[name] = CifarBasicBlock(in_channels, channels * width, stride if j == 0 else 1)
                in_channels = channels * width
            self.add_module(f"layer{i}", nn.Sequential(blocks))
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def cifar_resnet(depth: int = 56, width: int = 1, num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-``depth`` with stage widths ``16 * width``, ``32 * width``, ``64 * width``.

    Args:
        depth: ``6n + 2`` with ``n >= 1`` (8, 14, 20, 32, 44, 56, 110, ...); anything else raises
            ValueError.
        width: channel multiplier of the three stages.
        num_classes: size of the classifier output.

    Returns:
        A :class:`CifarResNet` taking ``(B, 3, 32, 32)`` images; taps in ``distillation_taps`` give
        ``16w``, ``32w``, ``64w`` channels at 32, 16, 8 pixels.
    """
    return CifarResNet(depth=depth, width=width, num_classes=num_classes)


def resnet56(num_classes: int = 100, width: int = 2) -> CifarResNet:
    """CIFAR ResNet-56 at ``width`` (default 2: 32/64/128 channels).

    About 3.42M parameters with 100 classes at width 2, 0.86M at width 1. The paper's "ResNet s:56-2" student
    (Table 1) is Overhaul's 16/32/64-channel ResNet-56: ``width=1``.
    """
    return cifar_resnet(depth=56, width=width, num_classes=num_classes)
