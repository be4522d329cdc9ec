"""Image transforms of the paper's experiments, with the sizes as parameters so tests can use tiny images.

* CUB-200 / ImageNet (:func:`imagenet_transforms`): train = ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip`` (``train_crop="random_resized"``, the default: what the reference code's
  ``cls/main_mgd.py`` and ``cls/main_base.py`` do), or ``Resize(256)`` + ``RandomCrop(224)`` + flip
  (``train_crop="resize_random"``: the paper's wording, "randomly crop 224 from 256"); eval (and the
  matching pass) = ``Resize(256)`` + ``CenterCrop(224)`` either way; ImageNet mean/std.
* CIFAR-100 (:func:`cifar_transforms`): OFD's training code (``recipe="ofd"``, the default; the paper's CIFAR-100
  table follows it): train = ``Pad(4, padding_mode="reflect")`` + flip + ``RandomCrop(32)``; eval = to tensor;
  both normalised with OFD's mean/std. ``recipe="zero_pad"`` (opt-in, this package's earlier pipeline):
  ``RandomCrop(32, padding=4)`` (zeros) + flip, the CIFAR-100 mean/std.
* MoCo-v2's two augmented views (:func:`mocov2_views`, lightly's ``MoCoV2Transform``: MoCo's ``--aug-plus``), and
  their grey-image version for Fashion-MNIST (:func:`mocov2_grey_views`);
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
    "CIFAR_RECIPES",
    "OFD_CIFAR_MEAN",
    "OFD_CIFAR_STD",
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
    "mocov2_grey_views",
    "mocov2_views",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# OFD's CIFAR-100 normalisation (clovaai/overhaul-distillation, CIFAR-100/train_with_distillation.py):
# np.array([125.3, 123.0, 113.9]) / 255 and np.array([63.0, 62.1, 66.7]) / 255 (CIFAR-10's statistics).
OFD_CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
OFD_CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
#: ``recipe`` values of :func:`cifar_transforms`: ``"ofd"`` (OFD's training code, the default), ``"zero_pad"``
CIFAR_RECIPES = ("ofd", "zero_pad")
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


def cifar_transforms(train: bool, image_size: int = 32, padding: int = 4, recipe: str = "ofd") -> T.Compose:
    """The CIFAR-100 pipeline: a padded random ``image_size`` crop + horizontal flip to train, none to evaluate.

    Args:
        train: the training pipeline (pad, flip, random crop) when true; else the evaluation one (normalise only).
        image_size: side of the (square) image and of the crop (32).
        padding: pixels added on each side before the random crop (4).
        recipe: ``"ofd"`` (default): OFD's training code (``CIFAR-100/train_with_distillation.py``, whose recipe the
            paper's CIFAR-100 table and this package's CIFAR configs follow): ``Pad(padding,
            padding_mode="reflect")``, ``RandomHorizontalFlip()``, ``RandomCrop(image_size)``, in that order, and
            OFD's mean / std (:data:`OFD_CIFAR_MEAN`, :data:`OFD_CIFAR_STD`) for training and evaluation.
            ``"zero_pad"`` (opt-in, this package's earlier pipeline, the common torchvision recipe):
            ``RandomCrop(image_size, padding=padding)`` (zero padding) + flip, :data:`CIFAR100_MEAN` /
            :data:`CIFAR100_STD`.
    """
    if recipe not in CIFAR_RECIPES:
        raise ValueError(f"recipe must be one of {CIFAR_RECIPES}; got {recipe!r}")
    if recipe == "ofd":
        mean, std = OFD_CIFAR_MEAN, OFD_CIFAR_STD
        steps: list[Any] = [T.Pad(padding, padding_mode="reflect"), T.RandomHorizontalFlip(),
                            T.RandomCrop(image_size)] if train else []
    else:
        mean, std = CIFAR100_MEAN, CIFAR100_STD
        steps = [T.RandomCrop(image_size, padding=padding), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*steps, ToFloatTensor(), T.Normalize(mean, std)])


def grey_transforms(
    train: bool,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    channels: int = 1,
    padding: int = 2,
    resize: int | None = None,
) -> T.Compose:
    """Grey images (Fashion-MNIST, digits): optional pad-and-crop when training, resize, normalise, repeat channels.

    Args:
        train: apply the augmentation (when ``augment`` too).
        size: side of the (square) input image as stored.
        mean, std: one-channel normalisation.
        augment: zero-pad by ``padding`` pixels and take a random ``size`` crop when training.
        channels: 1 keeps the grey channel; 3 repeats it so ImageNet-style models can take the images.
        padding: pad of the random crop.
        resize: upsample (bilinear, antialiased) to ``resize`` x ``resize`` after the crop, e.g. for networks
            pre-trained on larger images; ``None``: keep ``size``.
    """
    steps: list[Any] = [ToFloatTensor()]
    if train and augment and padding > 0:
        steps.append(T.RandomCrop(size, padding=padding))
    if resize is not None and resize != size:
        steps.append(T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    steps += [T.Normalize(tuple(mean), tuple(std)), RepeatChannels(channels)]
    return T.Compose(steps)


def _multi_view(transforms: Sequence[Any]):
    try:
        from lightly.transforms.multi_view_transform import MultiViewTransform
    except ImportError:
        raise ImportError("two views need lightly, which is not installed: pip install "
                          "'mgd-lightning[self-supervised]' (or pip install lightly)") from None
    return MultiViewTransform(list(transforms))


def mocov2_views(image_size: int = 224) -> Any:
    """MoCo-v2's training augmentation (``--aug-plus``), two views per image: lightly's ``MoCoV2Transform``
    (``RandomResizedCrop(image_size, scale=(0.2, 1))``, colour jitter 0.4 / 0.4 / 0.4 / 0.1 with p 0.8, grey
    p 0.2, Gaussian blur sigma 0.1-2 with p 0.5, flip, ImageNet mean / std). Returns ``[view_1, view_2]``."""
    try:
        from lightly.transforms import MoCoV2Transform
    except ImportError:
        raise ImportError("two views need lightly, which is not installed: pip install "
                          "'mgd-lightning[self-supervised]' (or pip install lightly)") from None
    return MoCoV2Transform(input_size=image_size)


def mocov2_grey_views(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 1,
    resize: int | None = None,
    min_scale: float = 0.2,
) -> Any:
    """MoCo-v2's augmentation for small grey images (Fashion-MNIST), two views per image.

    Each view: ``RandomResizedCrop(size, scale=(min_scale, 1))``, brightness / contrast jitter 0.4 with p 0.8
    (no saturation, hue or grey-scaling: there is one channel), Gaussian blur (kernel 3, sigma 0.1-1: MoCo's
    2 would erase a 28 px image) with p 0.5, horizontal flip, then ``resize``, normalisation and
    ``channels`` repeats as :func:`grey_transforms`. Returns a callable giving ``[view_1, view_2]``.
    """
    view = T.Compose([
        ToFloatTensor(),
        T.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5),
        T.RandomHorizontalFlip(),
        *([T.Resize((resize, resize), antialias=True)] if resize is not None and resize != size else []),
        T.Normalize(tuple(mean), tuple(std)),
        RepeatChannels(channels),
    ])
    return _multi_view([view, view])
