"""ImageNet MobileNet-V1 (Howard et al., 2017), plain torch.

Layout for the standard width 1.0 and a ``(B, 3, 224, 224)`` input::

    stem    conv3x3 s2 32ch + BN + ReLU                 (B,   32, 112, 112)
    layer1  dw-separable 64                             (B,   64, 112, 112)
    layer2  dw-separable 128 s2, 128                    (B,  128,  56,  56)
    layer3  dw-separable 256 s2, 256                    (B,  256,  28,  28)
    layer4  dw-separable 512 s2, 5 x 512                (B,  512,  14,  14)
    layer5  dw-separable 1024 s2, 1024                  (B, 1024,   7,   7)
    global average pool + fc                            (B, num_classes)

Every depthwise-separable block computes
``relu(preact(bn2(pw(relu(bn1(dw(x)))))))``, where ``preact`` is an ``nn.Identity``.

Distillation taps (:attr:`MobileNetV1.distillation_taps`), following MGD (ECCV 2020, section 3.4,
Fig. 3: the last unit block of each stage, features before the ReLU): the ``preact`` Identity of
the last block of layers 2-5, i.e. the output of the pointwise conv's BN before the final ReLU:

===================  ==========  =============
tap                  channels    spatial (224)
===================  ==========  =============
``layer2.1.preact``  128         56 x 56
``layer3.1.preact``  256         28 x 28
``layer4.5.preact``  512         14 x 14
``layer5.1.preact``  1024        7 x 7
===================  ==========  =============

(channels scale with ``width_mult``). All activations are non-inplace, so a tapped tensor is never
modified by the rest of the forward pass.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights

__all__ = ["DepthwiseSeparableBlock", "MobileNetV1", "mobilenet_v1"]

# (channels, stride) of the depthwise-separable blocks, one list per stage.
_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


def _scaled(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest multiple of 8 (at least 8)."""
    return max(8, int(channels * width_mult + 4) // 8 * 8)


class DepthwiseSeparableBlock(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ``preact`` + ReLU.

    ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.dw(x)))
        out = self.preact(self.bn2(self.pw(out)))
        return F.relu(out)


class MobileNetV1(nn.Module):
    """MobileNet-V1: ``(B, 3, 224, 224) -> (B, num_classes)`` logits. See the module docstring."""

    distillation_taps: ClassVar[tuple[str, ...]] = (
        "layer2.1.preact",
        "layer3.1.preact",
        "layer4.5.preact",
        "layer5.1.preact",
    )
    default_input_size: ClassVar[tuple[int, int, int]] = (3, 224, 224)

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0; got width_mult={width_mult}")
        in_channels = _scaled(32, width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(3, in_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(in_channels), nn.ReLU()
        )
        for i, stage in enumerate(_STAGES, start=1):
            blocks = []
            for channels, stride in stage:
                out_channels = _scaled(channels, width_mult)
                blocks.append(DepthwiseSeparableBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        for i in range(1, len(_STAGES) + 1):
            out = getattr(self, f"layer{i}")(out)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV1:
    """ImageNet MobileNet-V1 (about 4.23M parameters at width 1.0 with 1000 classes).

    Args:
        num_classes: size of the classifier output.
        width_mult: channel multiplier (channels rounded to multiples of 8).

    Returns:
        A :class:`MobileNetV1` taking ``(B, 3, 224, 224)`` images; taps in ``distillation_taps``
        give 128, 256, 512, 1024 channels (times ``width_mult``) at 56, 28, 14, 7 pixels.
    """
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult)
