"""torchvision detectors for paper Table 4: RetinaNet (and Mask R-CNN, the substitute for EmbedMask) on a ResNet or
MobileNet-V2 backbone with an FPN, in plain torch (no Lightning import).

:func:`build_detector` builds them by architecture and backbone:

==============  ==================================  =========================================================
backbone        weights                             FPN inputs (RetinaNet: P3-P5 + P6/P7; Mask R-CNN: P2-P5)
==============  ==================================  =========================================================
``resnet50``    ``weights="COCO_V1"``: torchvision's  ``layer2-4`` (RetinaNet), ``layer1-4`` (Mask R-CNN), as
                COCO detector (the teacher, AP       torchvision's ``retinanet_resnet50_fpn`` /
                36.4 RetinaNet); or                  ``maskrcnn_resnet50_fpn``
                ``weights_backbone="IMAGENET1K_V1"``
``resnet18``    ``weights_backbone="IMAGENET1K_V1"``  the same stages (128/256/512 channels)
``mobilenet_v2``  ``weights_backbone="IMAGENET1K_V1"``  the last unit at strides 8/16/32 (+ 4 for Mask R-CNN) of
                                                    torchvision's MobileNet-V2 (``features.6/13/18``)
``mobilenet_v2_mgd``  the same file (the reference code's  the same strides on the reference code's student
                classification student, strides of  (``features.10/13/18``)
                two stages switched)
==============  ==================================  =========================================================

Distillation taps are those of the backbone *body* (``model.backbone.body``), not the FPN outputs (see
:mod:`mgd_lightning.distill.taps`): ResNet c2-c5 pre-ReLU (4 taps), torchvision MobileNet-V2's depthwise-BN outputs
of the last unit at strides 4/8/16/32 (4 taps, 144/192/576/960 channels, paired with the ResNet-50 teacher's c2-c5),
or, for ``mobilenet_v2_mgd``, the reference student's three declared taps (strides 8/16/32, paired with c3-c5).

As torchvision's detection builders: a pre-trained backbone uses ``FrozenBatchNorm2d`` and trains its last
``trainable_backbone_layers`` stages (default 3; the reference detection code freezes the stem only, ``FREEZE_AT =
1``: pass 4); a randomly initialised one uses ``BatchNorm2d`` and trains all. Weight files come from the torch hub
cache (:func:`mgd_lightning.models.weights.ensure_weights`: downloaded there when missing and allowed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from mgd_lightning.models.mobilenetv2_mgd import MobileNetV2MGD, mobilenet_v2_mgd
from mgd_lightning.models.weights import ensure_weights

__all__ = ["ARCHITECTURES", "BACKBONES", "build_detector", "unit_strides", "stage_ends"]

#: detector architectures: name -> torchvision class
ARCHITECTURES: dict[str, type[nn.Module]] = {"retinanet": tvd.RetinaNet, "maskrcnn": tvd.MaskRCNN}
#: backbones and the torchvision model whose ImageNet weights they load
BACKBONES: dict[str, str] = {
    "resnet50": "resnet50", "resnet18": "resnet18", "mobilenet_v2": "mobilenet_v2", "mobilenet_v2_mgd": "mobilenet_v2",
}
#: torchvision's complete COCO detectors (``weights=...``)
_COCO_BUILDERS = {
    ("retinanet", "resnet50"): "retinanet_resnet50_fpn", ("maskrcnn", "resnet50"): "maskrcnn_resnet50_fpn",
}
#: FPN input strides: RetinaNet skips P2 (too many anchors) and adds P6/P7; Mask R-CNN uses P2-P5 (+ max-pooled P6)
_FPN_STRIDES = {"retinanet": (8, 16, 32), "maskrcnn": (4, 8, 16, 32)}
_RESNET_LAYERS = {4: 1, 8: 2, 16: 3, 32: 4}
FPN_CHANNELS = 256


def unit_strides(units: nn.Sequential) -> list[int]:
    """Cumulative stride after each unit of a sequential CNN (e.g. MobileNet-V2's ``features``: 2, 2, 4, 4, 8, ...).

    A unit's stride is the product of its convolutions' strides (a MobileNet unit has one strided conv).
    """
    strides, total = [], 1
    for unit in units:
        total *= math.prod(m.stride[0] for m in unit.modules() if isinstance(m, nn.Conv2d))
        strides.append(total)
    return strides


def stage_ends(units: nn.Sequential) -> dict[int, int]:
    """``{stride: index of the last unit at that stride}`` of a sequential CNN."""
    return {stride: idx for idx, stride in enumerate(unit_strides(units))}


def _weight(model: str, name: str | None, download: bool | None, arg: str):
    """The torchvision weight ``name`` of ``model``, its file in the hub cache (or downloaded there); ``None``."""
    if name in (None, "", "None", "none", "null"):
        return None
    enum = tvm.get_model_weights(model)
    try:
        weight = enum[name]
    except KeyError:
        valid = ", ".join(w.name for w in enum) + ", DEFAULT"
        raise ValueError(f"{arg}={name!r} is not a weight of torchvision's {model}; valid: {valid}") from None
    ensure_weights(weight, model, download)
    return weight


def _resnet_backbone(arch: str, name: str, weight, trainable: int, fpn: int = FPN_CHANNELS) -> BackboneWithFPN:
    norm = FrozenBatchNorm2d if weight is not None else nn.BatchNorm2d
    layers = [_RESNET_LAYERS[s] for s in _FPN_STRIDES[arch]]
    extra = LastLevelP6P7(fpn, fpn) if arch == "retinanet" else None
    backbone = resnet_fpn_backbone(backbone_name=name, weights=weight, norm_layer=norm, trainable_layers=trainable,
                                   returned_layers=layers, extra_blocks=extra)
    if fpn != FPN_CHANNELS:  # torchvision's builder makes 256-channel levels: the same FPN, narrower
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_channels, fpn, extra_blocks=extra)
        backbone.out_channels = fpn
    return backbone


def _mobilenet_backbone(arch: str, name: str, weight, trainable: int, fpn: int = FPN_CHANNELS) -> BackboneWithFPN:
    norm = FrozenBatchNorm2d if weight is not None else nn.BatchNorm2d
    builder = mobilenet_v2_mgd if name == "mobilenet_v2_mgd" else tvm.mobilenet_v2
    features = builder(weights=weight, norm_layer=norm).features
    strides = unit_strides(features)
    # trainable stages from the end: stride groups 2 (stem), 4, 8, 16, 32; the earlier ones are frozen
    stages = sorted(set(strides))
    frozen = set(stages[: max(len(stages) - trainable, 0)])
    for unit, stride in zip(features, strides):
        if stride in frozen:
            unit.requires_grad_(False)
    ends = stage_ends(features)
    levels = _FPN_STRIDES[arch]
    return_layers = {str(ends[s]): str(i) for i, s in enumerate(levels)}
    in_channels = [features[ends[s]].out_channels for s in levels]
    extra = LastLevelP6P7(fpn, fpn) if arch == "retinanet" else None
    backbone = BackboneWithFPN(features, return_layers, in_channels, fpn, extra_blocks=extra)
    if name == "mobilenet_v2_mgd":  # the reference student's taps, relative to the body (its features)
        backbone.body.distillation_taps = tuple(t.removeprefix("features.") for t in MobileNetV2MGD.distillation_taps)
    return backbone


def _anchor_generator(arch: str, sizes: Sequence[float]) -> dict[str, AnchorGenerator]:
    """``{"anchor_generator" | "rpn_anchor_generator": AnchorGenerator}`` with base ``sizes`` per FPN level."""
    sizes = tuple(float(s) for s in sizes)
    if len(sizes) != 5 or any(not s > 0 for s in sizes):
        raise ValueError(f"anchor_sizes must be 5 positive sizes, one per FPN level; got {sizes}")
    if arch == "retinanet":  # torchvision's retinanet_resnet50_fpn: 3 scales x 3 ratios per location
        per_level = tuple(tuple(s * 2 ** (k / 3) for k in range(3)) for s in sizes)
        return {"anchor_generator": AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * len(sizes))}
    return {"rpn_anchor_generator": AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))}


def build_detector(
    arch: str = "retinanet",
    backbone: str = "resnet50",
    num_classes: int = 91,
    weights: str | None = None,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    fpn_channels: int = FPN_CHANNELS,
    checkpoint: str | None = None,
    checkpoint_prefix: str = "model.",
    download: bool | None = None,
    detector_args: dict[str, Any] | None = None,
    anchor_sizes: Sequence[float] | None = None,
) -> nn.Module:
    """A torchvision RetinaNet or Mask R-CNN with an FPN on ``backbone`` (see the module docstring).

    Args:
        arch: ``"retinanet"`` or ``"maskrcnn"``.
        backbone: ``"resnet50"``, ``"resnet18"``, ``"mobilenet_v2"`` or ``"mobilenet_v2_mgd"``.
        num_classes: classes of the head, background included for Mask R-CNN; torchvision's COCO models use 91
            (category ids 1-90, as the COCO annotation files).
        weights: torchvision's complete COCO detector (``"COCO_V1"``), ResNet-50 only (the teacher).
        weights_backbone: ImageNet weights of the backbone (``"IMAGENET1K_V1"``) for a detector trained here.
        trainable_backbone_layers: backbone stages trained, from the last (0-5); default 3 for a pre-trained
            backbone, 5 (all) for a random one, as torchvision.
        min_size, max_size: the detector's resize (``GeneralizedRCNNTransform``): shorter side ``min_size``, longer
            at most ``max_size`` (COCO: 800 / 1333).
        fpn_channels: channels of the FPN levels and so of the heads' convolutions (torchvision and the paper: 256);
            fewer make a much cheaper detector (the CPU demo uses 64). Not with ``weights`` (a complete detector).
        checkpoint, checkpoint_prefix: a state_dict file or a Lightning checkpoint of an earlier run (keys under the
            prefix), loaded after building (as :func:`~mgd_lightning.models.build_model`).
        download: weight files missing from the hub cache: ``None`` / ``True`` download them unless
            ``MGD_LIGHTNING_OFFLINE=1``; ``False`` never.
        detector_args: other keyword arguments of the torchvision class (``score_thresh``, ...).
        anchor_sizes: the base anchor size in pixels of each FPN level, finest first (5 levels: RetinaNet P3-P7,
            Mask R-CNN's RPN P2-P6); ``None``: torchvision's (RetinaNet ``32, 64, 128, 256, 512``, each with the
            scales ``2**0, 2**(1/3), 2**(2/3)``; Mask R-CNN ``32 ... 512``, one scale), for objects of COCO's sizes
            at ``min_size=800``. Smaller images with smaller objects (the CPU demo) need smaller anchors. Aspect
            ratios stay 0.5, 1, 2. Not with ``weights`` (a complete detector's head is sized for its anchors).
    """
    from mgd_lightning.models.registry import _load_checkpoint

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}; got {arch!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}; got {backbone!r}")
    if trainable_backbone_layers is not None and not 0 <= trainable_backbone_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5; got {trainable_backbone_layers}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"min_size and max_size must satisfy 1 <= min_size <= max_size; got {min_size}, {max_size}")
    if fpn_channels < 1:
        raise ValueError(f"fpn_channels must be >= 1; got {fpn_channels}")
    kwargs = {"min_size": min_size, "max_size": max_size, **(detector_args or {})}
    if anchor_sizes is not None:
        kwargs.update(_anchor_generator(arch, anchor_sizes))
        if weights not in (None, "", "None", "none", "null"):
            raise ValueError(f"anchor_sizes: weights={weights!r} is a complete detector with torchvision's anchors; "
                             f"leave anchor_sizes unset")
    if weights not in (None, "", "None", "none", "null"):
        if (arch, backbone) not in _COCO_BUILDERS:
            raise ValueError(
                f"weights={weights!r}: torchvision publishes COCO weights for {arch} only on resnet50 (the teacher); "
                f"got backbone={backbone!r}. Train it from weights_backbone='IMAGENET1K_V1' instead"
            )
        if fpn_channels != FPN_CHANNELS:
            raise ValueError(f"weights={weights!r} is a complete detector with {FPN_CHANNELS}-channel FPN levels; "
                             f"got fpn_channels={fpn_channels}")
        if weights_backbone not in (None, "", "None", "none", "null"):
            raise ValueError(f"weights={weights!r} holds the backbone too: leave weights_backbone unset "
                             f"(got {weights_backbone!r})")
        name = _COCO_BUILDERS[(arch, backbone)]
        weight = _weight(name, weights, download, "weights")
        model = tvd.__dict__[name](weights=weight, weights_backbone=None, num_classes=num_classes,
                                   trainable_backbone_layers=trainable_backbone_layers, **kwargs)
    else:
        weight = _weight(BACKBONES[backbone], weights_backbone, download, "weights_backbone")
        trainable = trainable_backbone_layers if trainable_backbone_layers is not None else (
            3 if weight is not None else 5)
        make = _resnet_backbone if backbone.startswith("resnet") else _mobilenet_backbone
        body = make(arch, backbone, weight, trainable, fpn_channels)
        model = ARCHITECTURES[arch](body, num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint, checkpoint_prefix)
    return model
