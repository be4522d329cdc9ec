"""Feature taps: the pre-activation tensors at the paper's distillation positions (section 3.4).

A :class:`Tap` names a submodule and says whether the feature is that module's *output* (forward
hook) or the *input of its last call* (forward pre-hook). :class:`FeatureTaps` registers the hooks
once; every normal forward of the model then leaves the tapped tensors in ``taps.features``: one
forward pass per step, no re-running of partial networks. Both live in :mod:`mgd_lightning.distill.feature_taps`
(which :mod:`mgd_lightning.distill.auto_taps` builds on too) and are re-exported here; this module picks the taps.

Presets, picked from the architecture (:func:`preset_taps`): a model's own ``distillation_taps``
first, then the torchvision classes:

==========================  ==============================================  ===============================
architecture                tapped tensor                                   why
==========================  ==============================================  ===============================
torchvision ResNet          input of ``layerK[-1].relu`` at its last call    the residual sum before the
(18/34/50/101/152)          (K = 1..4)                                      final ReLU (paper Fig. 3a);
                                                                            the sum has no module, the
                                                                            shared ReLU's last call takes it
``mobilenet_v2_mgd``        output of the depthwise BN ``conv.1.1`` of      the reference code's student
(the reference code's       the FIRST unit of the next stage,               and taps (``extract_feature``):
MobileNet-V2 student,       ``features.7/11/17``: 192 @ 28, 384 @ 14,       "the expanded intermediate
``MobileNetV2MGD``)         960 @ 7 px (declared ``distillation_taps``)     feature before ReLU6" (Fig. 3b);
                                                                            its skipped first tap
                                                                            (``features.4``, 144 @ 28) is
                                                                            not declared
``shufflenet_v2_x*_mgd``    output of ``stage2/3/4`` (28, 14, 7 px;         the reference code's student:
(the reference code's       116/232/464 ch for x1.0), pre-ReLU              the unit output after channel
ShuffleNet-V2 student,      (declared ``distillation_taps``)                shuffle (Fig. 3c), pre-ReLU;
``ShuffleNetV2MGD``)                                                        its skipped first tap (the
                                                                            56 px ``maxpool``) is not
                                                                            declared
torchvision MobileNet-V2    output of the depthwise BN ``conv.1.1`` of      Fig. 3b on torchvision's
(torchvision's standard     the last inverted unit at each resolution       standard network (not the
network)                    56, 28, 14, 7 (``features.3/6/13/17``:          reference code's student: other
                            144/192/576/960 channels)                       strides, other units); the
                                                                            112 px stage is skipped
torchvision ShuffleNet-V2   output of the last unit of ``stage2/3/4``       Fig. 3c on torchvision's
(torchvision's standard     (28, 14, 7 px)                                  standard network, whose unit
network)                                                                    outputs are post-ReLU (no
                                                                            negative values); the 56 px
                                                                            stem is skipped
package models              output of the ``nn.Identity`` modules listed    declared by the architecture
(MobileNet-V1, CIFAR WRN,   in ``model.distillation_taps``                  (see :mod:`mgd_lightning.models`)
CIFAR ResNet)
==========================  ==============================================  ===============================

Detection (:mod:`mgd_lightning.tasks.detection`): the taps are those of the backbone *body* of a torchvision
detector (``model.backbone.body``, the bottom-up network the FPN reads; names relative to it), never the FPN
outputs, as the reference detection code (``d2/``: c2-c5, FPN levels ignored). A ResNet body gets the ResNet
preset (input of ``layerK[-1].relu``: the pre-ReLU c2-c5), a MobileNet-V2 body the torchvision MobileNet-V2
preset on its units (``3/6/13/17.conv.1.1``); a body may declare ``distillation_taps`` itself (names, or
``"name:input"``), as :func:`mgd_lightning.models.build_detector` does for the reference code's MobileNet-V2.
BatchNorm before a tap may be torchvision's ``FrozenBatchNorm2d`` (detection backbones): its affine
parameters give the margins as a BatchNorm's do.

Any other CNN gets automatic taps, the last pre-activation tensor of each resolution stage, found by
tracing a probe forward (:func:`mgd_lightning.distill.auto_taps.auto_taps`, used by :func:`resolve_taps`).

With ResNet-50's four taps and the three declared taps of a reference-code student,
:class:`~mgd_lightning.DistillationModule` drops the teacher's earliest tap (``layer1``): the pairs are
``layer2/3/4`` against the student's three, as the reference code's ``ignore_inds=[0]``.

Difference from the reference code: its ShuffleNet-V2 ``conv5`` starts with an inplace ReLU that
overwrites the stage-4 output after it was tapped, so it distils a post-ReLU stage-4 feature. Here the
``stage4`` tap stays pre-ReLU (the paper's stated intent); ``arch_args: {post_relu_stage4_tap: true}``
reproduces the quirk (see :mod:`mgd_lightning.models.shufflenetv2_mgd`).

A tapped tensor must not be modified in place by the rest of the forward: each torchvision preset
names the activation modules that would do so, and :class:`FeatureTaps` sets their ``inplace`` to
``False`` (for taps given by name, every activation of the model; a model that declares
``distillation_taps`` keeps the activations after them non-inplace itself). Nothing is cloned, except for a
tap with ``clone=True`` (automatic taps before a functional in-place activation, e.g. DenseNet's ``norm5``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from .auto_taps import auto_taps, token_layouts
from .feature_taps import KINDS, FeatureTaps, Tap

__all__ = ["KINDS", "Tap", "FeatureTaps", "preset_taps", "resolve_taps", "batchnorm_before_taps"]

def _resnet_taps(model: tvm.ResNet) -> list[Tap]:
    taps = []
    for k in range(1, 5):
        layer = getattr(model, f"layer{k}")
        name = f"layer{k}.{len(layer) - 1}.relu"
        taps.append(Tap(name, "input", (name,)))
    return taps


def _mobilenet_v2_taps(model: tvm.MobileNetV2) -> list[Tap]:
    return _mobilenet_v2_unit_taps(model.features, "features.")


def _mobilenet_v2_unit_taps(units: nn.Module, prefix: str) -> list[Tap]:
    """The depthwise-BN taps of torchvision MobileNet-V2 ``units`` (its ``features``, or the body of a detection
    backbone built on them), named ``<prefix><index>.conv.1.1``."""
    # Inverted units grouped by resolution: a stride-2 unit starts a new group. The first group
    # (the stem's 112 px resolution) is skipped, as in the paper.
    groups: list[list[str]] = []
    for idx, unit in units.named_children():
        if not isinstance(unit, tvm.mobilenetv2.InvertedResidual):
            continue
        if unit.stride == 2 or not groups:
            groups.append([])
        groups[-1].append(idx)
    taps = []
    for group in groups[1:]:
        last = group[-1]
        # conv = [expand ConvBNReLU6, depthwise ConvBNReLU6, project conv, project BN]
        taps.append(Tap(f"{prefix}{last}.conv.1.1", "output", (f"{prefix}{last}.conv.1.2",)))
    return taps


def _detection_body_taps(body: IntermediateLayerGetter) -> list[Tap] | None:
    """Taps of a torchvision detection backbone's body (``model.backbone.body``, the bottom-up network before the
    FPN): the ResNet preset on its ``layer1-4`` (the reference detection code's pre-ReLU c2-c5), or the MobileNet-V2
    preset on its inverted units; ``None`` for another body."""
    if all(f"layer{k}" in body for k in range(1, 5)):
        return _resnet_taps(body)  # type: ignore[arg-type]
    if any(isinstance(unit, tvm.mobilenetv2.InvertedResidual) for unit in body.children()):
        return _mobilenet_v2_unit_taps(body, "")
    return None


def _shufflenet_v2_taps(model: tvm.ShuffleNetV2) -> list[Tap]:
    return [Tap(f"stage{k}.{len(getattr(model, f'stage{k}')) - 1}", "output") for k in (2, 3, 4)]


def preset_taps(model: nn.Module) -> list[Tap] | None:
    """The paper's distillation positions for a known architecture, or ``None`` if unknown."""
    declared = getattr(model, "distillation_taps", None)
    if declared is not None:  # names, or "name:input" for the input of the module's last call
        return [Tap(name, kind or "output") for name, _, kind in (entry.partition(":") for entry in declared)]
    if isinstance(model, tvm.ResNet):
        return _resnet_taps(model)
    if isinstance(model, tvm.MobileNetV2):
        return _mobilenet_v2_taps(model)
    if isinstance(model, tvm.ShuffleNetV2):
        return _shufflenet_v2_taps(model)
    if isinstance(model, IntermediateLayerGetter):
        return _detection_body_taps(model)
    return None


def resolve_taps(
    model: nn.Module, taps: Sequence[str | Tap] | None, role: str = "model", input_size: Sequence[int] | None = None
) -> list[Tap]:
    """Turn user taps (names, ``"name:input"`` strings or :class:`Tap`) or ``None`` into checked taps.

    ``None`` picks the preset (:func:`preset_taps`), else the automatic taps traced at ``input_size``
    (default (3, 224, 224)): a transformer's blocks, else the last pre-activation tensor of each stage
    (:func:`~mgd_lightning.distill.auto_taps.auto_taps`). Taps given by name on a transformer take the layout of their
    tensors (``(B, N, C)`` tokens over the patch grid: :func:`~mgd_lightning.distill.auto_taps.token_layouts`). Raises
    ``ValueError`` for a model with neither token blocks nor spatial stages (a pure MLP) and no taps, or a name that
    is not a submodule (listing the valid names).
    """
    if taps is None:
        preset = preset_taps(model)
        if preset is None:
            try:
                return auto_taps(model, input_size or (3, 224, 224))
            except ValueError as err:
                raise ValueError(
                    f"no preset distillation taps for {role} {type(model).__name__}, and {err}"
                    + (f" (here: {role}_taps)" if role in ("teacher", "student") else "")
                ) from err
        return preset
    if isinstance(taps, (str, Tap)):
        taps = [taps]
    names = dict(model.named_modules())
    activations = tuple(n for n, m in names.items() if n and hasattr(m, "inplace"))
    resolved = []
    for tap in taps:
        if isinstance(tap, str):
            name, _, kind = tap.partition(":")
            tap = Tap(name, kind or "output", activations)
        unknown = [a for a in tap.non_inplace if a not in names]
        if unknown:
            raise ValueError(f"{role}_taps: Tap({tap.module!r}).non_inplace names unknown modules {unknown}")
        if tap.module not in names or not tap.module:
            close = difflib.get_close_matches(tap.module, list(names), n=5)
            valid = ", ".join(n for n in names if n)
            raise ValueError(
                f"{role}_taps: {tap.module!r} is not a submodule of {type(model).__name__}"
                + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
                + f". Valid names: {valid}"
            )
        resolved.append(tap)
    if not resolved:
        raise ValueError(f"{role}_taps must name at least one module; got an empty list")
    return token_layouts(model, resolved, input_size or (3, 224, 224))


def batchnorm_before_taps(model: nn.Module, taps: Sequence[Tap], example: torch.Tensor) -> list[nn.Module | None]:
    """For each tap, the BatchNorm module executed last before the tapped tensor exists.

    Found by tracing one forward of ``example``: the BN whose statistics describe the tapped
    feature (for a ResNet block, the residual branch's last BN, as in the reference code). A tap
    taken *inside* a BN module (timm's ``BatchNormAct2d`` runs its activation in its own forward:
    the tap ``bn.act:input`` is that BN's output) belongs to that BN. ``None`` when no BN ran before
    the tap or its channel count differs from the tapped tensor's, and for a transformer's token tap
    (``Tap.layout`` not ``"nchw"``): LayerNorms and attention lie between any BatchNorm and the tokens.
    """
    modules = dict(model.named_modules())
    events: list[tuple[str, object]] = []
    handles = []
    for name, module in modules.items():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            handles.append(module.register_forward_pre_hook(
                lambda m, a, n=name: events.append(("bn_start", n))))
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: events.append(("bn", n))))
    for i, tap in enumerate(taps):
        module = modules[tap.module]
        if tap.layout != "nchw":
            continue
        if tap.kind == "output":
            handles.append(module.register_forward_hook(
                lambda m, a, o, i=i: events.append(("tap", (i, o.shape[1])))))
        else:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, i=i: events.append(("tap", (i, a[0].shape[1])))))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module | None] = [None] * len(taps)
    last_bn, running = None, []  # the last BN that finished; the BNs whose forward is under way
    for kind, value in events:
        if kind == "bn_start":
            running.append(value)
        elif kind == "bn":
            last_bn = value
            if running and running[-1] == value:
                running.pop()
        else:
            name = running[-1] if running else last_bn  # a tap inside a BN's forward: that BN
            if name is not None:
                i, channels = value
                bn = modules[name]
                found[i] = bn if bn.weight.shape[0] == channels else None
    return found
