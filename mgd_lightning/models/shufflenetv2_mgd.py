"""The reference code's ShuffleNet-V2 student (MGD, ECCV 2020): pre-ReLU unit outputs, torchvision's weights.

torchvision's ShuffleNet-V2 units end with a ReLU on each branch, so every stage output (after the
channel shuffle) is post-ReLU: nothing negative is left to distil. The authors' student
(``cls/models/shufflenetv2.py`` of the official code) moves that ReLU from the end of each branch to the
start of the next consumer:

* a unit's ``branch1`` and ``branch2`` end with their last BN (no ReLU);
* a unit applies a ReLU to its input before its branches (stride 2: before both branches; stride 1:
  before ``branch2`` only, the ``x1`` half passes through as it is, as in torchvision). The first unit
  of ``stage2`` has none (``pre_act=False`` there: its input, the max-pooled stem, is already
  post-ReLU);
* ``conv5`` starts with a ReLU (:attr:`ShuffleNetV2MGD.conv5_relu`).

ReLU is idempotent and every consumer of a unit output now starts with one, so with the same
parameters the logits equal torchvision's exactly (``relu(unit output here) == torchvision's unit
output``). The removed / added ReLUs have no parameters: names and parameter shapes are torchvision's,
and torchvision's ImageNet weights (``ShuffleNet_V2_X*_Weights``) load unchanged (the reference code
re-indexes the keys instead, because it inserts its ReLUs into the ``Sequential`` branches).

Distillation taps (:attr:`ShuffleNetV2MGD.distillation_taps`): the reference code taps the max-pool
output and the outputs of ``stage2/3/4`` (``extract_feature``, channels 24/116/232/464 for x1.0) and
skips the first (``ignore_inds=[0]``). The declared taps are the three that are distilled, the
pre-ReLU stage outputs (about half of the values negative); with a ResNet-50 teacher at 224 px its
four preset taps lose the earliest (``layer1``) and the pairs are:

==========  ====================================  ========  =====================  ======================
tap         channels (x0.5 / x1.0 / x1.5 / x2.0)  spatial   ResNet-50 teacher      alpha (same order)
==========  ====================================  ========  =====================  ======================
``stage2``  48 / 116 / 176 / 244                  28 x 28   ``layer2``  512 @ 28   10 / 4 / 2 / 2
``stage3``  96 / 232 / 352 / 488                  14 x 14   ``layer3``  1024 @ 14  10 / 4 / 2 / 2
``stage4``  192 / 464 / 704 / 976                 7 x 7     ``layer4``  2048 @ 7   10 / 4 / 2 / 2
==========  ====================================  ========  =====================  ======================

(:data:`SKIPPED_TAP`, ``maxpool``, 24 channels at 56 px, is the reference code's skipped first tap.)

**Difference from the reference code (stage-4 quirk).** There, ``conv5`` starts with
``nn.ReLU(inplace=True)``, which overwrites the stage-4 output in place *after* it was taken as the
last tap: the reference code distils a post-ReLU stage-4 feature, contrary to the paper's stated
intent (pre-ReLU features, section 3.4) and to its other taps. Here ``conv5_relu`` is not inplace and
the ``stage4`` tap stays pre-ReLU. ``post_relu_stage4_tap=True`` reproduces the quirk: the last tap is
then the output of ``conv5_relu`` (the ReLU'd stage-4 output, the value the reference code ends up
distilling, gradients included).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models.shufflenetv2 import InvertedResidual, channel_shuffle

from .mobilenetv2_mgd import _set_num_classes

__all__ = [
    "PreActInvertedResidual",
    "ShuffleNetV2MGD",
    "SKIPPED_TAP",
    "shufflenet_v2_x0_5_mgd",
    "shufflenet_v2_x1_0_mgd",
    "shufflenet_v2_x1_5_mgd",
    "shufflenet_v2_x2_0_mgd",
]

SKIPPED_TAP = "maxpool"
"""The reference code's first tap, not distilled there (``ignore_inds=[0]``) and not declared here."""


class PreActInvertedResidual(InvertedResidual):
    """torchvision's ShuffleNet-V2 unit with its branch-final ReLUs moved to the unit's input.

    ``input_relu`` (an ``nn.ReLU``, or ``nn.Identity`` for ``pre_act=False``) activates the input of the
    branches; the branches end with their last BN, so the output (after the channel shuffle) is pre-ReLU.
    The ``Sequential`` branches keep torchvision's indices (only the trailing ReLU is cut off).
    """

    def __init__(self, inp: int, oup: int, stride: int, pre_act: bool = True) -> None:
        super().__init__(inp, oup, stride)
        if self.stride > 1:
            self.branch1 = self.branch1[:-1]  # slicing keeps the keys "0".."3"
        self.branch2 = self.branch2[:-1]  # keys "0".."6"
        self.input_relu: nn.Module = nn.ReLU() if pre_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(self.input_relu(x2))), dim=1)
        else:
            x = self.input_relu(x)
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2MGD(tvm.ShuffleNetV2):
    """torchvision's ShuffleNet-V2 with the reference code's pre-ReLU unit outputs (module docstring).

    Args:
        stages_repeats, stages_out_channels, num_classes: as torchvision's ``ShuffleNetV2``.
        post_relu_stage4_tap: ``True`` reproduces the reference code's quirk (the last tap is the
            ReLU'd stage-4 output); default ``False``: the pre-ReLU ``stage4`` output.
    """

    default_input_size: ClassVar[tuple[int, int, int]] = (3, 224, 224)
    distillation_taps: tuple[str, ...] = ("stage2", "stage3", "stage4")

    def __init__(
        self,
        stages_repeats: list[int],
        stages_out_channels: list[int],
        num_classes: int = 1000,
        post_relu_stage4_tap: bool = False,
    ) -> None:
        super().__init__(stages_repeats, stages_out_channels, num_classes, inverted_residual=PreActInvertedResidual)
        self.stage2[0].input_relu = nn.Identity()  # the reference's pre_act=False: its input is post-ReLU
        self.conv5_relu = nn.ReLU()  # the ReLU moved from the end of stage 4 to the start of conv5
        self.post_relu_stage4_tap = post_relu_stage4_tap
        if post_relu_stage4_tap:
            self.distillation_taps = ("stage2", "stage3", "conv5_relu")

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(self.conv5_relu(x))
        x = x.mean([2, 3])  # global pool
        return self.fc(x)


def _shufflenet_v2_mgd(
    weights_enum: type[tvm.WeightsEnum],
    weights: tvm.WeightsEnum | str | None,
    progress: bool,
    stages_repeats: list[int],
    stages_out_channels: list[int],
    **kwargs: Any,
) -> ShuffleNetV2MGD:
    weights = weights_enum.verify(weights)
    if weights is not None:
        _set_num_classes(kwargs, len(weights.meta["categories"]))
    model = ShuffleNetV2MGD(stages_repeats, stages_out_channels, **kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


def shufflenet_v2_x0_5_mgd(
    *, weights: tvm.ShuffleNet_V2_X0_5_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ShuffleNetV2MGD:
    """ShuffleNet-V2 x0.5, reference-code variant; torchvision's ``ShuffleNet_V2_X0_5_Weights`` load unchanged."""
    return _shufflenet_v2_mgd(
        tvm.ShuffleNet_V2_X0_5_Weights, weights, progress, [4, 8, 4], [24, 48, 96, 192, 1024], **kwargs
    )


def shufflenet_v2_x1_0_mgd(
    *, weights: tvm.ShuffleNet_V2_X1_0_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ShuffleNetV2MGD:
    """ShuffleNet-V2 x1.0 (the paper's student); torchvision's ``ShuffleNet_V2_X1_0_Weights`` load unchanged."""
    return _shufflenet_v2_mgd(
        tvm.ShuffleNet_V2_X1_0_Weights, weights, progress, [4, 8, 4], [24, 116, 232, 464, 1024], **kwargs
    )


def shufflenet_v2_x1_5_mgd(
    *, weights: tvm.ShuffleNet_V2_X1_5_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ShuffleNetV2MGD:
    """ShuffleNet-V2 x1.5, reference-code variant; torchvision's ``ShuffleNet_V2_X1_5_Weights`` load unchanged."""
    return _shufflenet_v2_mgd(
        tvm.ShuffleNet_V2_X1_5_Weights, weights, progress, [4, 8, 4], [24, 176, 352, 704, 1024], **kwargs
    )


def shufflenet_v2_x2_0_mgd(
    *, weights: tvm.ShuffleNet_V2_X2_0_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> ShuffleNetV2MGD:
    """ShuffleNet-V2 x2.0, reference-code variant; torchvision's ``ShuffleNet_V2_X2_0_Weights`` load unchanged."""
    return _shufflenet_v2_mgd(
        tvm.ShuffleNet_V2_X2_0_Weights, weights, progress, [4, 8, 4], [24, 244, 488, 976, 2048], **kwargs
    )
