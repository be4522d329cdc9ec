"""Image transforms of the paper's experiments, with the sizes as parameters so tests can use tiny images.

* CUB-200 / ImageNet (:func:`imagenet_transforms`): train = ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip`` (``train_crop="random_resized"``, the default: what the reference code's
  ``cls/main_mgd.py`` and ``cls/main_base.py`` do), or ``Resize(256)`` + ``RandomCrop(224)`` + flip
  (``train_crop="resize_random"``: the paper's wording, "randomly crop 224 from 256"); eval (and the
  matching pass) = ``Resize(256)`` + ``CenterCrop(224)`` either way; ImageNet mean/std.
* CIFAR-100 (:func:`cifar_transforms`): train = ``RandomCrop(32, padding=4)`` + flip; eval = to tensor
  + normalise with the CIFAR-100 mean/std.
* grey images, Fashion-MNIST and scikit-learn's digits (:func:`grey_transforms`): optional pad-and-crop
  augmentation (no flip: it would change digits), normalise, and optionally repeat the grey channel to 3.

Every pipeline takes a PIL image or a ``(C, H, W)`` tensor (``uint8`` in 0..255 or float in 0..1) and
returns a normalised float ``(C, H, W)`` tensor. All pieces are module-level classes, so the pipelines
pickle for ``num_workers > 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TRAIN_CROPS",
    "RepeatChannels",
    "ToFloatTensor",
    "cifar_transforms",
    "grey_transforms",
    "imagenet_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# scikit-learn's digits scaled to 0..1 (pixel / 16), bilinearly resized to 16 x 16.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3189,)

#: training crops of :func:`imagenet_transforms`: ``"random_resized"`` (reference code, the default),
#: ``"resize_random"`` (the paper's text).
TRAIN_CROPS = ("random_resized", "resize_random")
TrainCrop = Literal["random_resized", "resize_random"]


class ToFloatTensor:
    """PIL image -> float ``(C, H, W)`` in 0..1 (like ``ToTensor``); ``uint8`` tensor -> float / 255;
    float tensor -> unchanged."""

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, Image.Image):
            return TF.to_tensor(image)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"expected a PIL image or a tensor, got {type(image).__name__}")
        if image.dtype == torch.uint8:
            return image.float().div_(255.0)
        return image.float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RepeatChannels:
    """Repeat a one-channel ``(1, H, W)`` tensor to ``channels`` channels (identity for ``channels=1``)."""

    def __init__(self, channels: int) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] == self.channels:
            return image
        if image.shape[0] != 1:
            raise ValueError(f"can only repeat a 1-channel image, got shape {tuple(image.shape)}")
        return image.expand(self.channels, *image.shape[1:]).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


def imagenet_transforms(
    train: bool, image_size: int = 224, resize_size: int = 256, train_crop: TrainCrop = "random_resized"
) -> T.Compose:
    """The CUB-200 / ImageNet pipeline: a random ``image_size`` crop + flip to train, a centre crop to evaluate.

    Args:
        train: the training pipeline (random crop + horizontal flip) when true; else the evaluation one,
            ``Resize(resize_size)`` + ``CenterCrop(image_size)`` (also used for the matching pass).
        image_size: side of the square crop (224).
        resize_size: the short side is resized to this before the evaluation crop (256), and before the
            training crop with ``train_crop="resize_random"``; must be >= ``image_size``.
        train_crop: ``"random_resized"`` (default): ``RandomResizedCrop(image_size)`` (torchvision's default
            scale 0.08-1 and aspect ratio 3/4-4/3) + flip, as the reference code (``cls/main_mgd.py``,
            ``cls/main_base.py``) trains. ``"resize_random"``: ``Resize(resize_size)`` +
            ``RandomCrop(image_size)`` + flip, the paper's text ("randomly crop 224 from 256"; a milder
            augmentation).
    """
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"train_crop must be one of {TRAIN_CROPS}; got {train_crop!r}")
    if not train:
        steps: list[Any] = [T.Resize(resize_size), T.CenterCrop(image_size)]
    elif train_crop == "random_resized":
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(resize_size), T.RandomCrop(image_size), T.RandomHorizontalFlip()]
    return T.Compose([*steps, ToFloatTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def cifar_transforms(train: bool, image_size: int = 32, padding: int = 4) -> T.Compose:
    """CIFAR pipeline: ``RandomCrop(32, padding=4)`` + horizontal flip when training; CIFAR-100 normalisation."""
    steps: list[Any] = [T.RandomCrop(image_size, padding=padding), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*steps, ToFloatTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])


def grey_transforms(
    train: bool,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    channels: int = 1,
    padding: int = 2,
) -> T.Compose:
    """Grey images (Fashion-MNIST, digits): optional pad-and-crop when training, normalise, repeat channels.

    Args:
        train: apply the augmentation (when ``augment`` too).
        size: side of the (square) input image, kept as it is.
        mean, std: one-channel normalisation.
        augment: zero-pad by ``padding`` pixels and take a random ``size`` crop when training.
        channels: 1 keeps the grey channel; 3 repeats it so ImageNet-style models can take the images.
        padding: pad of the random crop.
    """
    steps: list[Any] = [ToFloatTensor()]
    if train and augment and padding > 0:
        steps.append(T.RandomCrop(size, padding=padding))
    steps += [T.Normalize(tuple(mean), tuple(std)), RepeatChannels(channels)]
    return T.Compose(steps)
