"""torchvision detectors for paper Table 4: RetinaNet (and Mask R-CNN, the substitute for EmbedMask) on a ResNet or
MobileNet-V2 backbone with an FPN, in plain torch (no Lightning import).

:func:`build_detector` builds them by architecture and backbone:

======================  =======================================  ============================================
backbone                weights                                  FPN inputs (RetinaNet: P3-P5 + P6/P7;
                                                                 Mask R-CNN: P2-P5)
======================  =======================================  ============================================
``resnet50``            ``weights="COCO_V1"``: torchvision's     ``layer2-4`` (RetinaNet), ``layer1-4`` (Mask
                        COCO detector (the teacher, AP 36.4      R-CNN), as torchvision's
                        RetinaNet); or                           ``retinanet_resnet50_fpn`` /
                        ``weights_backbone="IMAGENET1K_V1"``     ``maskrcnn_resnet50_fpn``
``resnet18``            ``weights_backbone="IMAGENET1K_V1"``     the same stages (128/256/512 channels)
``mobilenet_v2``        ``weights_backbone="IMAGENET1K_V1"``     the last unit at strides 8/16/32 (+ 4 for Mask
                                                                 R-CNN) of torchvision's MobileNet-V2
                                                                 (``features.6/13/18``)
``mobilenet_v2_mgd``    the same file (the reference code's      the same strides on the reference code's
                        classification student, strides of two   student (``features.10/13/18``)
                        stages switched)
======================  =======================================  ============================================

Distillation taps are those of the backbone *body* (``model.backbone.body``), not the FPN outputs (see
:mod:`mgd_lightning.distill.taps`): ResNet c2-c5 pre-ReLU (4 taps), torchvision MobileNet-V2's depthwise-BN outputs
of the last unit at strides 4/8/16/32 (4 taps, 144/192/576/960 channels, paired with the ResNet-50 teacher's c2-c5),
or, for ``mobilenet_v2_mgd``, the reference student's three declared taps (strides 8/16/32, paired with c3-c5).

As torchvision's detection builders: a pre-trained backbone uses ``FrozenBatchNorm2d`` and trains its last
``trainable_backbone_layers`` stages (default 3; the reference detection code freezes the stem only, ``FREEZE_AT =
1``: pass 4); a randomly initialised one uses ``BatchNorm2d`` and trains all. Weight files come from the torch hub
cache (:func:`mgd_lightning.models.weights.ensure_weights`: downloaded there when missing and allowed).

Student norms (``stage_last_norm``, :func:`stage_last_groupnorm`). The reference detection student (``d2/``
``modeling/backbone/resnet.py`` with ``MODEL.RESNETS.ENABLE_STAGE_LAST_NORM = True``, ``d2/mgd/config.py``) gives the
last block of each trainable ResNet stage ``GroupNorm(32, C)`` in place of its (frozen) BatchNorms, trained, and
initialised from the ImageNet BatchNorm's affine parameters (Detectron2 loads the checkpoint's ``norm.weight`` /
``norm.bias`` into them); every other norm stays frozen. The d2 README says this matters (the student learns the
statistics and affine parameters the teacher's margins come from). By default (``"auto"``) a ResNet backbone loaded
from ``weights_backbone`` (a student trained here) gets them: ResNet-18 then trains 4 stages x 2 norms = 16 norm
parameter tensors. The teacher (``weights=...``, the reference's ``ENABLE_STAGE_LAST_NORM = False``), randomly
initialised backbones (trainable ``BatchNorm2d`` everywhere) and MobileNet-V2 (no reference) keep their norms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from mgd_lightning.models.mobilenetv2_mgd import MobileNetV2MGD, mobilenet_v2_mgd
from mgd_lightning.models.weights import ensure_weights

__all__ = [
    "ARCHITECTURES", "BACKBONES", "STAGE_LAST_NORMS", "build_detector", "group_norm", "stage_ends",
    "stage_last_groupnorm", "unit_strides",
]

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
#: ``stage_last_norm`` values of :func:`build_detector`
STAGE_LAST_NORMS = ("auto", "groupnorm", "none")
#: Detectron2's ``"GN"`` norm: ``GroupNorm(32, C)``
GROUPS = 32


def group_norm(channels: int, groups: int = GROUPS) -> nn.GroupNorm:
    """``GroupNorm(groups, channels)`` (Detectron2's ``"GN"``: 32 groups), with the largest group count ``<= groups``
    that divides ``channels`` when ``groups`` does not (e.g. 24 for torchvision MobileNet-V2's 144-channel tap).
    Default init (weight 1, bias 0); normalises ``(B, channels, H, W)`` per image."""
    if channels < 1 or groups < 1:
        raise ValueError(f"group_norm needs channels >= 1 and groups >= 1; got channels={channels}, groups={groups}")
    count = max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(count, channels)


def _groupnorm_from(norm: nn.Module) -> nn.GroupNorm:
    """A trainable :func:`group_norm` over ``norm``'s channels with ``norm``'s affine weight and bias."""
    weight, bias = norm.weight, norm.bias
    gn = group_norm(weight.numel())
    with torch.no_grad():
        gn.weight.copy_(weight.detach())
        gn.bias.copy_(bias.detach())
    return gn.to(weight.device)


def stage_last_groupnorm(body: nn.Module) -> list[str]:
    """Give the last block of each trainable ResNet stage of ``body`` (``layer1`` ... ``layer4``, a torchvision
    ResNet or its ``IntermediateLayerGetter``) :func:`group_norm` layers in place of its BatchNorms (frozen or not),
    initialised from their affine parameters and trainable: the reference detection student (``d2/``,
    ``ENABLE_STAGE_LAST_NORM``). A stage is trainable when its last block's convolutions require gradients (frozen
    stages keep their norms, as Detectron2 leaves the frozen stage's norms alone). Returns the names of the replaced
    norms, relative to ``body`` (ResNet-18 with 4 trainable stages: ``layer{1..4}.1.bn1`` and ``.bn2``)."""
    replaced = []
    for stage in (f"layer{k}" for k in range(1, 5)):
        layer = getattr(body, stage, None)
        if not isinstance(layer, nn.Sequential) or not len(layer):
            continue
        block = layer[-1]
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        if not any(p.requires_grad for c in convs for p in c.parameters()):
            continue
        for name, module in list(block.named_modules()):
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
                parent, _, attr = name.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, attr, _groupnorm_from(module))
                replaced.append(f"{stage}.{len(layer) - 1}.{name}")
    return replaced


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


def _uses_stage_groupnorm(stage_last_norm: str, backbone: str, weights: str | None,
                          weights_backbone: str | None) -> bool:
    """Whether ``stage_last_norm`` (``"auto"`` resolved) gives the stages' last blocks GroupNorm."""
    if stage_last_norm != "auto":
        return stage_last_norm == "groupnorm"
    unset = (None, "", "None", "none", "null")
    return backbone.startswith("resnet") and weights in unset and weights_backbone not in unset


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
    stage_last_norm: str = "auto",
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
        stage_last_norm: the norms of the last block of each trainable ResNet stage (see the module docstring):
            ``"groupnorm"``: trainable ``GroupNorm(32, C)`` initialised from the BatchNorm's affine parameters, the
            reference detection student (``d2/``, ``ENABLE_STAGE_LAST_NORM``); ``"none"``: as torchvision builds
            them (``FrozenBatchNorm2d`` for a pre-trained backbone: no norm trains; the reference teacher, and
            stock Detectron2's frozen BN); ``"auto"`` (default): ``"groupnorm"`` for a ResNet backbone loaded from
            ``weights_backbone`` (a student), else ``"none"``. ResNet backbones only.
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
    if stage_last_norm not in STAGE_LAST_NORMS:
        raise ValueError(f"stage_last_norm must be one of {STAGE_LAST_NORMS}; got {stage_last_norm!r}")
    if stage_last_norm == "groupnorm" and not backbone.startswith("resnet"):
        raise ValueError(f"stage_last_norm='groupnorm' is for ResNet backbones (the reference's d2 student); got "
                         f"backbone={backbone!r}: use 'none' or 'auto'")
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
    if _uses_stage_groupnorm(stage_last_norm, backbone, weights, weights_backbone):
        stage_last_groupnorm(model.backbone.body)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint, checkpoint_prefix)
    return model
