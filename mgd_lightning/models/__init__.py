"""CNN architectures missing from torchvision, in plain torch (no Lightning import).

Every model class declares ``distillation_taps``: names (as in ``model.named_modules()``) of the
modules whose output is the pre-ReLU feature distilled by MGD (for the package's own architectures,
``nn.Identity`` modules; for the reference-code students, the tapped BN or stage, whose output nothing
modifies in place), and ``default_input_size``, the ``(C, H, W)`` input it is built for.

* :func:`mobilenet_v1` (ImageNet MobileNet-V1),
* :func:`wide_resnet`, :func:`wrn_28_4`, :func:`wrn_16_4`, :func:`wrn_28_2`, :func:`wrn_16_2`
  (CIFAR WideResNet),
* :func:`cifar_resnet`, :func:`resnet56` (CIFAR ResNet with a width multiplier),
* the reference code's ImageNet students, torchvision's networks with the authors' changes
  (torchvision's weights load unchanged): :func:`mobilenet_v2_mgd` (:class:`MobileNetV2MGD`, strides of
  two stages switched, depthwise-BN taps) and :func:`shufflenet_v2_x0_5_mgd`,
  :func:`shufflenet_v2_x1_0_mgd`, :func:`shufflenet_v2_x1_5_mgd`, :func:`shufflenet_v2_x2_0_mgd`
  (:class:`ShuffleNetV2MGD`, pre-ReLU unit outputs). torchvision's own ``mobilenet_v2`` and
  ``shufflenet_v2_x*`` stay available through :func:`build_model` (the standard networks).
* self-supervised learning (no labels): :class:`MoCoV2` (MoCo-v2 around any classification network, lightly's
  loss and projector), :class:`LinearProbe` (MoCo's linear evaluation: a frozen encoder and a linear head), and
  MoCo checkpoints as teachers (``build_model(name, checkpoint=path, checkpoint_prefix="moco")``,
  :mod:`mgd_lightning.models.moco`);
* detectors for paper Table 4: :func:`build_detector` (torchvision RetinaNet / Mask R-CNN with an FPN on ResNet-50,
  ResNet-18 or MobileNet-V2; :mod:`mgd_lightning.models.detection`).
"""

from __future__ import annotations

from mgd_lightning.models.cifarresnet import CifarBasicBlock, CifarResNet, cifar_resnet, resnet56
from mgd_lightning.models.detection import build_detector
from mgd_lightning.models.heads import head_name, replace_head, strip_head
from mgd_lightning.models.linear_probe import LinearProbe
from mgd_lightning.models.mobilenetv1 import DepthwiseSeparableBlock, MobileNetV1, mobilenet_v1
from mgd_lightning.models.mobilenetv2_mgd import MobileNetV2MGD, mobilenet_v2_mgd
from mgd_lightning.models.moco_v2 import MoCoV2
from mgd_lightning.models.registry import (
    PACKAGE_MODELS,
    TORCHVISION_VARIANTS,
    available_models,
    build_model,
    weights_enum,
    weights_path,
)
from mgd_lightning.models.shufflenetv2_mgd import (
    PreActInvertedResidual,
    ShuffleNetV2MGD,
    shufflenet_v2_x0_5_mgd,
    shufflenet_v2_x1_0_mgd,
    shufflenet_v2_x1_5_mgd,
    shufflenet_v2_x2_0_mgd,
)
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
    "TORCHVISION_VARIANTS",
    "available_models",
    "build_detector",
    "build_model",
    "head_name",
    "replace_head",
    "strip_head",
    "LinearProbe",
    "MoCoV2",
    "weights_enum",
    "weights_path",
    "CifarBasicBlock",
    "CifarResNet",
    "DepthwiseSeparableBlock",
    "MobileNetV1",
    "MobileNetV2MGD",
    "PreActInvertedResidual",
    "ShuffleNetV2MGD",
    "WideBasicBlock",
    "WideResNet",
    "cifar_resnet",
    "mobilenet_v1",
    "mobilenet_v2_mgd",
    "resnet56",
    "shufflenet_v2_x0_5_mgd",
    "shufflenet_v2_x1_0_mgd",
    "shufflenet_v2_x1_5_mgd",
    "shufflenet_v2_x2_0_mgd",
    "wide_resnet",
    "wrn_16_2",
    "wrn_16_4",
    "wrn_28_2",
    "wrn_28_4",
]
