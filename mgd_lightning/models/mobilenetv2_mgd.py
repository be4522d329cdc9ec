"""The reference code's MobileNet-V2 student (MGD, ECCV 2020), on torchvision's modules.

The authors' ImageNet student (``cls/models/mobilenetv2.py`` of the official code) is not torchvision's
standard MobileNet-V2: it switches the strides of two stages,

====================================  ===================  =======================
stage (expansion t, channels c, n)    torchvision stride   reference-code stride
====================================  ===================  =======================
t 6, c 64, n 4 (``features.7-10``)    2                    **1**
t 6, c 96, n 3 (``features.11-13``)   1                    **2**
====================================  ===================  =======================

so the 64-channel stage runs at 28 px and the 96-channel stage at 14 px (224 px input). Strides have no
parameters: :class:`MobileNetV2MGD` has torchvision's modules, names and parameter shapes, and
torchvision's ImageNet weights (``MobileNet_V2_Weights``) load unchanged. The reference classifier is a
bare ``Linear`` (no dropout), so ``dropout`` defaults to 0 here (torchvision: 0.2); the ``Dropout``
module stays in place, the keys stay ``classifier.1.*``.

Distillation taps (:attr:`MobileNetV2MGD.distillation_taps`): the reference code taps the output of
the depthwise conv's BN (before ReLU6) of the *first* unit of the next stage, ``features[4]``, ``[7]``,
``[11]``, ``[17]`` (its ``extract_feature`` / ``get_bn_before_relu``), and skips the first of the four
(``ignore_inds=[0]``). The declared taps are the three that are distilled; at 224 px, with a
ResNet-50 teacher (``layer2/3/4``):

========================  =============  ==================  =====================  =====
tap                       channels       spatial (224 px)    ResNet-50 teacher      alpha
========================  =============  ==================  =====================  =====
``features.7.conv.1.1``   192 (6 x 32)   28 x 28             ``layer2``  512 @ 28   2
``features.11.conv.1.1``  384 (6 x 64)   14 x 14 (stride 2)  ``layer3``  1024 @ 14  2
``features.17.conv.1.1``  960 (6 x 160)  7 x 7               ``layer4``  2048 @ 7   2
========================  =============  ==================  =====================  =====

(:data:`SKIPPED_TAP`, ``features.4.conv.1.1``, 144 channels at 28 px, is the reference code's skipped
first tap; it is not declared, so with ResNet-50's four preset taps
:class:`~mgd_lightning.DistillationModule` drops the teacher's earliest, ``layer1``, and pairs the
three above.) Channels scale with ``width_mult``. The ReLU6 right after each tapped BN is made
non-inplace, so the tapped tensors are never modified by the rest of the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch.nn as nn
import torchvision.models as tvm

__all__ = ["MobileNetV2MGD", "mobilenet_v2_mgd", "REFERENCE_SETTING", "SKIPPED_TAP"]

# t (expansion), c (channels), n (units), s (stride of the first unit): the reference code's table,
# torchvision's with the strides of the 64- and 96-channel rows switched.
REFERENCE_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 1),  # torchvision: stride 2
    (6, 96, 3, 2),  # torchvision: stride 1
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# features index of the first unit of each row (features.0 is the stem): 1, 2, 4, 7, 11, 14, 17
_FIRST_UNITS = tuple(1 + sum(row[2] for row in REFERENCE_SETTING[:i]) for i in range(len(REFERENCE_SETTING)))
# The reference taps: first units of the 32-, 64-, 96- and 320-channel rows -> features 4, 7, 11, 17.
_REFERENCE_TAP_UNITS = tuple(_FIRST_UNITS[i] for i in (2, 3, 4, 6))

SKIPPED_TAP = f"features.{_REFERENCE_TAP_UNITS[0]}.conv.1.1"
"""The reference code's first tap, not distilled there (``ignore_inds=[0]``) and not declared here."""


class MobileNetV2MGD(tvm.MobileNetV2):
    """torchvision's MobileNet-V2 with the reference code's strides (see the module docstring).

    Args:
        num_classes: output classes.
        width_mult: width multiplier (as torchvision).
        round_nearest: channel rounding (as torchvision).
        dropout: dropout before the classifier; 0 as in the reference code (torchvision: 0.2).
        norm_layer: normalisation layer (as torchvision; ``None``: BatchNorm2d).
    """

    default_input_size: ClassVar[tuple[int, int, int]] = (3, 224, 224)
    distillation_taps: ClassVar[tuple[str, ...]] = tuple(f"features.{i}.conv.1.1" for i in _REFERENCE_TAP_UNITS[1:])

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.0,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            width_mult=width_mult,
            inverted_residual_setting=[list(row) for row in REFERENCE_SETTING],
            round_nearest=round_nearest,
            norm_layer=norm_layer,
            dropout=dropout,
        )
        for tap in self.distillation_taps:
            # the ReLU6 after the tapped BN: non-inplace, so it never overwrites the tapped tensor
            self.get_submodule(tap.rpartition(".")[0] + ".2").inplace = False


def mobilenet_v2_mgd(
    *, weights: tvm.MobileNet_V2_Weights | str | None = None, progress: bool = True, **kwargs: Any
) -> MobileNetV2MGD:
    """The reference code's MobileNet-V2 student; the arguments of torchvision's ``mobilenet_v2``.

    Args:
        weights: torchvision's ``MobileNet_V2_Weights`` (or its name), loaded unchanged; ``None``:
            random init. With weights, ``num_classes`` must be absent or 1000.
        progress: download progress bar (torchvision).
        **kwargs: :class:`MobileNetV2MGD` arguments (``num_classes``, ``width_mult``, ``dropout``, ...).
    """
    weights = tvm.MobileNet_V2_Weights.verify(weights)
    if weights is not None:
        _set_num_classes(kwargs, len(weights.meta["categories"]))
    model = MobileNetV2MGD(**kwargs)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
    return model


def _set_num_classes(kwargs: dict[str, Any], n: int) -> None:
    """As torchvision's builders: the weights fix ``num_classes``; a different explicit value is an error."""
    if kwargs.get("num_classes", n) != n:
        raise ValueError(f"num_classes={kwargs['num_classes']} does not match the weights' {n} classes")
    kwargs["num_classes"] = n
