"""LightningDataModules for the CLI and the notebooks, one small file each, sharing :class:`ImageDataModule`.

Every data module has the four loaders (test and predict = the evaluation split), ``matching_dataset()``
(training images with the evaluation transform, for :class:`~mgd_lightning.MGDMatchingCallback`) and
``num_classes`` / ``input_size`` set at construction. :data:`DATAMODULES` maps short names to the classes.

=================  ===============================  ==========================================================
name               class                            data
=================  ===============================  ==========================================================
``cub200``         :class:`CUB200DataModule`        CUB-200-2011 archive, or ``train/`` + ``valid/`` folders
``cifar100``       :class:`CIFAR100DataModule`      torchvision's ``cifar-100-python/`` pickles
``imagenet``       :class:`ImageNetDataModule`      ``train/<wnid>/`` + ``val/<wnid>/`` folders
``fashion_mnist``  :class:`FashionMNISTDataModule`  Debian ``dataset-fashion-mnist`` or torchvision IDX files
``digits``         :class:`DigitsDataModule`        scikit-learn's 8x8 digits (no files needed)
``coco``           :class:`COCODataModule`          COCO-2017 detection: ``train2017/``, ``val2017/``, ``annotations/``
=================  ===============================  ==========================================================

:class:`COCODataModule` is the detection one: its items are ``(image, target dict)`` and its batches lists
(:mod:`mgd_lightning.data.coco`); :func:`write_shapes_coco` writes a synthetic detection set in its layout.
"""

from __future__ import annotations

from .base import ImageDataModule, seeded_subset
from .cifar100 import CIFAR100DataModule, load_cifar100
from .coco import COCODataModule, COCOFileNotFoundError, collate_detection
from .cub200 import CUB200DataModule, detect_cub_layout
from .datasets import DataFileError
from .digits import DigitsDataModule, load_digits_images
from .fashion_mnist import FashionMNISTDataModule, find_fashion_mnist, read_idx
from .imagenet import ImageNetDataModule
from .shapes import write_shapes_coco

__all__ = [
    "DATAMODULES",
    "CIFAR100DataModule",
    "COCODataModule",
    "COCOFileNotFoundError",
    "CUB200DataModule",
    "DataFileError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "collate_detection",
    "detect_cub_layout",
    "find_fashion_mnist",
    "load_cifar100",
    "load_digits_images",
    "read_idx",
    "seeded_subset",
    "write_shapes_coco",
]

#: short name -> data module class (for scripts and notebooks; the CLI takes ``class_path`` too).
DATAMODULES: dict[str, type[ImageDataModule]] = {
    "cub200": CUB200DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "digits": DigitsDataModule,
    "coco": COCODataModule,
}
