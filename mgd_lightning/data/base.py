"""The loader logic every data module of the package shares.

Contract (the distillation callback relies on it):

* ``train_dataloader()`` (augmented, shuffled), ``val_dataloader()``, ``test_dataloader()`` and
  ``predict_dataloader()`` (all three: the evaluation split, evaluation transform, in order);
* ``matching_dataset()``: the *training* images with the *evaluation* transform, a map-style dataset of
  ``(image_tensor, label)``, used by :class:`~mgd_lightning.MGDMatchingCallback` for its pass;
* ``num_classes`` and ``input_size`` ``(C, H, W)``, set by the constructor, so usable before ``setup``.

A subclass sets ``num_classes`` and ``input_size`` in its constructor and implements
:meth:`ImageDataModule._build_datasets`. ``setup`` builds the datasets once; the loaders and
``matching_dataset()`` call it themselves when needed, so a data module also works outside a Trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mgd_lightning._lightning import pl

__all__ = ["ImageDataModule", "seeded_subset"]

log = logging.getLogger(__name__)


def seeded_subset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """The first ``limit`` items of ``dataset`` after a permutation seeded by ``seed`` (all of it for ``None``)."""
    if limit is None:
        return dataset
    n = len(dataset)  # type: ignore[arg-type]
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if limit >= n:
        return dataset
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, perm[:limit].tolist())


class ImageDataModule(pl.LightningDataModule):
    """Base of the package's data modules: loaders, lazy setup and ``matching_dataset()``.

    Args:
        root: where the data set lives (its meaning is the subclass's).
        batch_size: batch size of every loader.
        num_workers: loader worker processes (``0``: load in the main process).
        pin_memory: pin host memory in the loaders; ``None``: only when CUDA is available.
    """

    #: number of classes, set by the constructor.
    num_classes: int
    #: ``(C, H, W)`` of one image as the models receive it, set by the constructor.
    input_size: tuple[int, int, int]

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._matching_dataset: Dataset | None = None

    # ------------------------------------------------------------------ for subclasses
    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """``(train, val, matching)``: augmented training set, evaluation set, training images with eval transform."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val, matching = self._build_datasets()
        self.train_dataset, self.val_dataset, self._matching_dataset = train, val, matching
        log.info(
            "%s: %d training and %d evaluation images, %d classes, input %s",
            type(self).__name__, len(train), len(val), self.num_classes, self.input_size,  # type: ignore[arg-type]
        )

    #: how the loaders batch items (``None``: PyTorch's default collate); a module-level function, so that
    #: loader workers and Lightning's re-built DDP loaders keep it
    collate_fn: Callable[[list[Any]], Any] | None = None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=type(self).collate_fn,
        )

    def _datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        if self.train_dataset is None:
            self.setup()
        assert self.train_dataset is not None and self.val_dataset is not None and self._matching_dataset is not None
        return self.train_dataset, self.val_dataset, self._matching_dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[0], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[1], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[1], shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[1], shuffle=False)

    def matching_dataset(self) -> Dataset:
        """The training images with the evaluation (non-augmented) transform: ``(image_tensor, label)`` items."""
        return self._datasets()[2]
