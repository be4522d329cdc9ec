"""CNN architectures missing from torchvision, in plain torch (no Lightning import).

Every model class declares ``distillation_taps``: names (as in ``model.named_modules()``) of
``nn.Identity`` modules whose output is the pre-ReLU feature distilled by MGD, and
``default_input_size``, the ``(C, H, W)`` input it is built for.

* :func:`mobilenet_v1` (ImageNet MobileNet-V1),
* :func:`wide_resnet`, :func:`wrn_28_4`, :func:`wrn_16_4`, :func:`wrn_28_2`, :func:`wrn_16_2`
  (CIFAR WideResNet),
* :func:`cifar_resnet`, :func:`resnet56` (CIFAR ResNet with a width multiplier).
"""

from __future__ import annotations

from mgd_lightning.models.cifarresnet import CifarBasicBlock, CifarResNet, cifar_resnet, resnet56
from mgd_lightning.models.mobilenetv1 import DepthwiseSeparableBlock, MobileNetV1, mobilenet_v1
from mgd_lightning.models.registry import PACKAGE_MODELS, available_models, build_model, weights_path
from mgd_lightning.models.wideresnet import (
    WideBasicBlock,
    WideResNet,
    wide_resnet,
    wrn_16_2,
    wrn_16_4,
    wrn_28_2,
    wrn_28_4,
)

__all__ = [
    "PACKAGE_MODELS",
    "available_models",
    "build_model",
    "weights_path",
    "CifarBasicBlock",
    "CifarResNet",
    "DepthwiseSeparableBlock",
    "MobileNetV1",
    "WideBasicBlock",
    "WideResNet",
    "cifar_resnet",
    "mobilenet_v1",
    "resnet56",
    "wide_resnet",
    "wrn_16_2",
    "wrn_16_4",
    "wrn_28_2",
    "wrn_28_4",
]
