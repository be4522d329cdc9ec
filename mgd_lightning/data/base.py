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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, Subset

from mgd_lightning._lightning import pl

__all__ = [
    "GroupedBatchSampler", "ImageDataModule", "leftover_batches", "per_class_indices", "seeded_subset"]

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


def per_class_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` items of each label (all of a label with fewer), sorted.

    labels: (N,) int. The items of a label are its first ``n`` in a permutation of ``range(N)`` seeded by
    ``seed``, so the choice for ``n`` is a subset of the choice for any larger ``n`` (a curve over ``n`` varies
    the size only).
    """
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = [perm[labels[perm] == c][:n] for c in labels.unique().tolist()]
    return torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.long)


def leftover_batches(buckets: Sequence[list[int]], batch_size: int, drop_last: bool) -> list[list[int]]:
    """The last batches of an epoch of :class:`GroupedBatchSampler` from its part-filled ``buckets`` (each shorter
    than ``batch_size``, ``r`` indices in all): ``ceil(r / batch_size)`` batches (``floor`` with ``drop_last``), each
    bucket a batch of its own when that is their number, else the buckets joined (largest first) and cut into
    ``batch_size`` chunks (one batch mixes groups)."""
    rest = [list(b) for b in buckets if b]
    total = sum(len(b) for b in rest)
    count = total // batch_size if drop_last else -(-total // batch_size)
    if count == len(rest):
        return rest
    joined = [i for b in sorted(rest, key=len, reverse=True) for i in b]
    return [joined[k * batch_size:(k + 1) * batch_size] for k in range(count)]


class GroupedBatchSampler(BatchSampler):
    """Batches whose indices share a group (Detectron2's ``ASPECT_RATIO_GROUPING``: landscape and portrait images
    apart, so that a batch is padded to a canvas of its own shape, not to ~1344 x 1344).

    Indices come from ``sampler`` (shuffled or not; Lightning swaps in a ``DistributedSampler`` under DDP) and go
    into the bucket of their group; a bucket is yielded as a batch when it holds ``batch_size`` indices (Detectron2's
    ``AspectRatioGroupedDataset``). At the end of the sampler, the part-filled buckets give
    :func:`leftover_batches`: so an epoch has exactly ``len(self)`` batches, ``ceil(len(sampler) / batch_size)``
    (``floor`` with ``drop_last``; the same on every rank), every index once (without ``drop_last``), and at most one
    batch that mixes groups (two groups).

    Args:
        sampler: the index sampler (e.g. ``RandomSampler(dataset)``).
        batch_size: indices per batch (>= 1).
        drop_last: leave out the last indices that do not fill a batch.
        group_ids: the group of each dataset index (``group_ids[i]`` for index ``i``).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False,
                 group_ids: Sequence[int] | None = None) -> None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        if group_ids is None:
            raise ValueError("GroupedBatchSampler needs group_ids, the group of each dataset index; got None")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.group_ids = [int(g) for g in group_ids]

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self.sampler:
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        yield from leftover_batches(list(buckets.values()), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


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

    def _loader(self, dataset: Dataset, shuffle: bool, group_ids: Sequence[int] | None = None) -> DataLoader:
        """A loader of ``batch_size`` items; with ``group_ids`` (one per item) through a
        :class:`GroupedBatchSampler` (batches of one group each)."""
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0, collate_fn=type(self).collate_fn)
        if group_ids is None:
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, **common)
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, batch_sampler=GroupedBatchSampler(sampler, self.batch_size, False, group_ids),
                          **common)

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
