"""scikit-learn's handwritten digits (1,797 real 8x8 grey images, 10 classes), always available offline."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import ImageDataModule
from .datasets import TensorImageDataset
from .transforms import DIGITS_MEAN, DIGITS_STD, grey_transforms

__all__ = ["DigitsDataModule", "load_digits_images"]

log = logging.getLogger(__name__)


def load_digits_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float ``(N, 1, size, size)`` images in 0..1 (bilinear resize) and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return images.contiguous(), torch.from_numpy(data.target.astype(np.int64))


class DigitsDataModule(ImageDataModule):
    """scikit-learn's ``load_digits``, resized to ``size`` x ``size``, stratified train/val split with a fixed seed.

    Needs no files and no network (the data ships with scikit-learn): for notebooks, smoke runs and tests.

    Args:
        root: unused (accepted so configs can switch data modules by ``class_path`` alone).
        batch_size, num_workers, pin_memory: of the loaders (:class:`~mgd_lightning.data.base.ImageDataModule`).
        size: side of the resized images (bilinear from 8).
        channels: 1 (grey) or 3 (the grey channel repeated, for ImageNet-style models).
        augment: random pad-and-crop (``size // 8`` pixels) of the training images.
        val_fraction: share of the images held out for validation / test.
        seed: seed of the split.

    Example, in a LightningCLI config:

    ```yaml
    data:
      class_path: mgd_lightning.data.DigitsDataModule
      init_args: {batch_size: 64, size: 16, channels: 3}
    ```
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        size: int = 16,
        channels: int = 1,
        augment: bool = True,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.size = size
        self.channels = channels
        self.augment = augment
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_classes = 10
        self.classes = [str(d) for d in range(10)]
        self.input_size = (channels, size, size)
        self.save_hyperparameters()

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        from sklearn.model_selection import train_test_split

        images, labels = load_digits_images(self.size)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=self.val_fraction, random_state=self.seed, stratify=labels.numpy()
        )
        train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))

        def tf(train: bool):
            return grey_transforms(
                train, self.size, DIGITS_MEAN, DIGITS_STD, self.augment, self.channels, padding=max(1, self.size // 8)
            )

        train_set = TensorImageDataset(images[train_idx], labels[train_idx], tf(True))
        val_set = TensorImageDataset(images[val_idx], labels[val_idx], tf(False))
        return train_set, val_set, train_set.with_transform(tf(False))
