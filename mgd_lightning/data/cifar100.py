"""CIFAR-100 (100 classes, 50,000 train / 10,000 test 32x32 colour images) from torchvision's on-disk format.

The pickles under ``root/cifar-100-python/`` are read here directly (torchvision's own class also checks
the files' MD5 sums); ``download=True`` fetches them with torchvision in ``prepare_data``
(``torchvision.datasets.CIFAR100(..., download=True)``: https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz,
MD5-checked, in a temporary folder that is renamed into place once complete).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import ImageDataModule
from .datasets import DataFileError, TensorImageDataset
from .download import OFFLINE_ENV, DownloadError, downloads_disabled
from .transforms import cifar_transforms

__all__ = ["CIFAR100DataModule", "load_cifar100"]

log = logging.getLogger(__name__)

CIFAR_DIR = "cifar-100-python"
CIFAR_FILES = ("train", "test", "meta")


def _cifar_dir(root: str | Path) -> Path:
    """``root/cifar-100-python`` (or ``root`` itself when it is that folder); ``FileNotFoundError`` if incomplete."""
    root = Path(root).expanduser()
    candidate = root / CIFAR_DIR
    if not candidate.is_dir() and root.name == CIFAR_DIR and root.is_dir():
        candidate = root
    missing = [name for name in CIFAR_FILES if not (candidate / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-100 not found: expected the pickles {candidate}/{{train,test,meta}} (torchvision's "
            f"'{CIFAR_DIR}' folder, from cifar-100-python.tar.gz), missing: {', '.join(missing)}. "
            "Pass download=True to fetch it with torchvision."
        )
    return candidate


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as error:
        # a truncated pickle: EOFError "Ran out of input" or UnpicklingError "pickle data was truncated", no file name
        raise DataFileError(
            f"{path}: truncated or corrupt pickle ({type(error).__name__}: {error}); extract cifar-100-python.tar.gz "
            "again (or pass download=True)"
        ) from error
    if not isinstance(entry, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def load_cifar100(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``(N, 3, 32, 32)`` uint8, fine labels ``(N,)`` int64 and the 100 fine class names of one split."""
    directory = _cifar_dir(root)
    path = directory / ("train" if train else "test")
    entry = _unpickle(path)
    for key in ("data", "fine_labels"):
        if key not in entry:
            raise DataFileError(f"{path}: no '{key}' entry (has {sorted(entry)}); not a CIFAR-100 pickle")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFileError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataFileError(f"{path}: {len(data)} images but {labels.size} fine labels")
    meta = _unpickle(directory / "meta")
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta.get("fine_label_names", [])]
    if len(names) != 100:
        raise DataFileError(f"{directory / 'meta'}: expected 100 'fine_label_names', got {len(names)}")
    if labels.size and (labels.min() < 0 or labels.max() >= 100):
        raise DataFileError(f"{path}: fine labels must be in 0..99, got {labels.min()}..{labels.max()}")
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return images, torch.from_numpy(labels), names


class CIFAR100DataModule(ImageDataModule):
    """CIFAR-100 with OFD's augmentation (reflect-pad 4 + flip + random 32 crop) and normalisation
    (:func:`~mgd_lightning.data.transforms.cifar_transforms`).

    Reads torchvision's on-disk format: ``root/cifar-100-python/{train,test,meta}``. With ``download=False``
    (the default) a missing folder raises ``FileNotFoundError`` at construction, naming the expected path;
    with ``download=True`` torchvision fetches it in ``prepare_data``.

    Args:
        root: the folder holding ``cifar-100-python/``.
        batch_size, num_workers, pin_memory: of the loaders (:class:`~mgd_lightning.data.base.ImageDataModule`).
        download: fetch the archive with torchvision when it is not there.
        recipe: the crops and normalisation (:func:`~mgd_lightning.data.transforms.cifar_transforms`): ``"ofd"``
            (default: OFD's ``CIFAR-100/train_with_distillation.py``, ``Pad(4, padding_mode="reflect")`` + flip +
            ``RandomCrop(32)``, its mean / std) or ``"zero_pad"`` (opt-in: ``RandomCrop(32, padding=4)`` with zeros +
            flip, the CIFAR-100 mean / std; this package's earlier default).

    Example, in a LightningCLI config:

    ```yaml
    data:
      class_path: mgd_lightning.data.CIFAR100DataModule
      init_args: {root: /data/cifar, batch_size: 128, num_workers: 4}
    ```
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        download: bool = False,
        recipe: str = "ofd",
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        cifar_transforms(False, recipe=recipe)  # a bad recipe fails here, naming it
        self.recipe = recipe
        self.download = download
        self.num_classes = 100
        self.input_size = (3, 32, 32)
        self.classes: list[str] | None = None
        if not download:
            _cifar_dir(root)
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        """With ``download=True`` and the pickles not there: torchvision downloads and MD5-checks the archive and
        its files into a temporary folder under ``root``, whose ``cifar-100-python/`` is then renamed into place
        (an interrupted download leaves no half folder). Lightning runs this on (local) rank 0 only."""
        if not self.download:
            return
        try:
            _cifar_dir(self.root)  # type: ignore[arg-type]
            return  # already there: no request
        except FileNotFoundError as error:
            missing = error
        from torchvision.datasets import CIFAR100

        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        parent = root.parent if root.name == CIFAR_DIR else root
        target = parent / CIFAR_DIR
        if downloads_disabled():
            raise DownloadError(f"{OFFLINE_ENV}=1: not downloading CIFAR-100 ({CIFAR100.url}) into {target}")
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        elif target.exists():
            raise FileNotFoundError(
                f"{missing} download=True does not overwrite the incomplete folder {target}: remove it to download "
                "again"
            )
        parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{CIFAR_DIR}.download-", dir=parent)
        try:
            log.info("downloading CIFAR-100 from %s into %s", CIFAR100.url, target)
            try:
                CIFAR100(staging, train=False, download=True)  # checks the archive's and every file's MD5
            except (OSError, RuntimeError) as error:  # URLError, "File not found or corrupted.", ...
                raise DownloadError(
                    f"CIFAR-100 download failed: could not download {CIFAR100.url} ({type(error).__name__}: {error}). "
                    f"Without internet, download it elsewhere and extract it into {parent} (giving {target}/"
                    "{train,test,meta})"
                ) from error
            if not target.exists():  # else: another process finished first
                os.replace(Path(staging) / CIFAR_DIR, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        assert self.root is not None
        if self.download:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):  # outside a Trainer: nobody ran prepare_data
                self.prepare_data()
        train_x, train_y, self.classes = load_cifar100(self.root, train=True)
        test_x, test_y, _ = load_cifar100(self.root, train=False)
        train_set = TensorImageDataset(train_x, train_y, cifar_transforms(True, recipe=self.recipe))
        eval_tf = cifar_transforms(False, recipe=self.recipe)
        return train_set, TensorImageDataset(test_x, test_y, eval_tf), train_set.with_transform(eval_tf)
