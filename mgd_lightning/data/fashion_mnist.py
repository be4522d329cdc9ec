"""Fashion-MNIST (10 classes, 60,000 train / 10,000 test 28x28 grey images), read from IDX files with numpy.

Looked for: under ``root`` when one is given (torchvision's layout ``root/FashionMNIST/raw/*-ubyte[.gz]``, or the
files in ``root`` itself), downloaded there when asked; without a root, in the Debian package's folder
(``apt-get install dataset-fashion-mnist``:
``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``) or other ``search_paths``.
An explicit root that does not hold the files is an error (never a silent fall-back to another copy).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import ImageDataModule, per_class_indices, seeded_subset
from .datasets import DataFileError, TensorImageDataset
from .transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD, grey_transforms, mocov2_grey_views

__all__ = [
    "DEFAULT_FASHION_MNIST_PATHS",
    "FASHION_MNIST_CLASSES",
    "FashionMNISTDataModule",
    "find_fashion_mnist",
    "per_class_indices",
    "read_idx",
]

log = logging.getLogger(__name__)

#: where the Debian package ``dataset-fashion-mnist`` puts the files.
DEFAULT_FASHION_MNIST_PATHS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped when the name ends in ``.gz``) as a numpy array in native byte order.

    Format: magic ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data,
    big-endian. :class:`~mgd_lightning.data.datasets.DataFileError` (a ``ValueError``) naming the file for a bad
    magic number, a size that does not match the data, or a truncated or corrupt gzip file.
    """
    path = Path(path)
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # gzip's messages do not name the file
            raise DataFileError(
                f"{path}: truncated or corrupt gzip file ({type(error).__name__}: {error}); download it again"
            ) from error
    else:
        raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFileError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise DataFileError(f"{path}: IDX header says {dims} x {dtype.itemsize} bytes, file has {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _candidates(search_paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in search_paths:
        p = Path(p).expanduser()
        out += [p, p / "FashionMNIST" / "raw"]
    return out


def find_fashion_mnist(search_paths: Sequence[str | Path] | None = None) -> Path | None:
    """The first folder holding the four Fashion-MNIST IDX files (plain or ``.gz``), or ``None``.

    Each of ``search_paths`` (default: :data:`DEFAULT_FASHION_MNIST_PATHS`, the Debian package's folder) is
    tried as it is, then as a torchvision root (``<path>/FashionMNIST/raw``).
    """
    paths = DEFAULT_FASHION_MNIST_PATHS if search_paths is None else search_paths
    for directory in _candidates(paths):
        if all(_idx_file(directory, stem) is not None for stem in FASHION_MNIST_FILES):
            return directory
    return None


def _load_split(directory: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = _idx_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    assert images_path is not None and labels_path is not None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFileError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataFileError(f"{labels_path}: {labels.size} labels for {len(images)} images in {images_path}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataFileError(f"{labels_path}: labels must be in 0..9, got max {labels.max()}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _check_classes(classes: Sequence[int] | None) -> list[int]:
    if classes is None:
        return list(range(len(FASHION_MNIST_CLASSES)))
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < len(FASHION_MNIST_CLASSES)]
    if bad or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct indices in 0..{len(FASHION_MNIST_CLASSES) - 1} "
                         f"({', '.join(f'{i} {n}' for i, n in enumerate(FASHION_MNIST_CLASSES))}), got {classes}")
    return classes


def _keep_classes(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]):
    """The images of ``classes`` with labels ``0..len(classes)-1`` in that order. images: (N, 1, H, W)."""
    mapping = torch.full((len(FASHION_MNIST_CLASSES),), -1, dtype=torch.long)
    mapping[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    new = mapping[labels]
    keep = new >= 0
    return images[keep], new[keep]


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST, ``(channels, 28, 28)`` images, with optional pad-and-crop augmentation.

    With a ``root``, the files must be under it (as ``root/FashionMNIST/raw`` or ``root`` itself), or
    ``download=True`` downloads them there in ``prepare_data``; ``search_paths`` are not used. Without a root,
    :func:`find_fashion_mnist` looks in ``search_paths`` (default: the Debian package's
    ``/usr/share/datasets/fashion-mnist``). Otherwise construction raises ``FileNotFoundError`` naming the
    places looked, the expected files and how to install them.

    Args:
        root: a torchvision data root holding the files (or to download them into); ``None``: ``search_paths``.
        batch_size, num_workers, pin_memory: of the loaders (:class:`~mgd_lightning.data.base.ImageDataModule`).
        channels: 1 (grey) or 3 (the grey channel repeated, for ImageNet-style models).
        augment: random 2-pixel pad-and-crop of the training images.
        download: let torchvision download the files under ``root`` when they are not found.
        search_paths: folders to look in when no ``root`` is given; ``None``: the Debian package's folder.
        limit_train, limit_val: keep only the first N images of a split after a permutation seeded by ``seed``
            (quick runs); ``matching_dataset()`` follows ``limit_train``.
        seed: seed of that permutation (and of ``train_per_class``'s choice).
        classes: keep only these classes (indices into :data:`FASHION_MNIST_CLASSES`), relabelled ``0..k-1`` in
            the order given, in every split; ``None``: all ten. Disjoint lists make a source and a target task.
        train_per_class: keep N training images of each class (a small target set, like CUB-200's 30 per
            class), the first N of each class in a permutation seeded by ``seed``: the images for N are a
            subset of those for any larger N. Applied before ``limit_train``; ``None``: all.
        image_size: upsample the 28 x 28 images (after the crop) to ``image_size`` x ``image_size``, for
            networks pre-trained on larger images; ``None``: 28.
        mean, std: the grey normalisation (the same for each repeated channel); ``None``: Fashion-MNIST's own
            statistics. The EfficientNet-Lite ImageNet weights want ``mean=127/255, std=128/255``
            (:data:`mgd_lightning.models.efficientnet_lite.LITE_MEAN`).
        two_views: training items are ``([view_1, view_2], label)``, two MoCo-v2 augmentations of the image
            (:func:`~mgd_lightning.data.transforms.mocov2_grey_views`; ``augment`` is then unused), for
            ``task="self_supervised"``; the evaluation and matching sets keep one non-augmented view.

    Example, in a LightningCLI config:

    ```yaml
    data:
      class_path: mgd_lightning.data.FashionMNISTDataModule
      init_args: {batch_size: 128, channels: 1, limit_train: 10000}
    ```
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        channels: int = 1,
        augment: bool = True,
        download: bool = False,
        search_paths: list[str] | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        seed: int = 0,
        classes: list[int] | None = None,
        train_per_class: int | None = None,
        image_size: int | None = None,
        mean: float | None = None,
        std: float | None = None,
        two_views: bool = False,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if download and root is None:
            raise ValueError("download=True needs a root to download Fashion-MNIST into")
        self.channels = channels
        self.augment = augment
        self.download = download
        self.search_paths = list(DEFAULT_FASHION_MNIST_PATHS if search_paths is None else search_paths)
        self.limit_train = limit_train
        self.limit_val = limit_val
        self.seed = seed
        self.class_indices = _check_classes(classes)
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1 or None, got {train_per_class}")
        self.train_per_class = train_per_class
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        if std is not None and std <= 0:
            raise ValueError(f"std must be > 0 or None, got {std}")
        self.image_size = image_size
        self.two_views = bool(two_views)
        self.mean = FASHION_MNIST_MEAN if mean is None else (float(mean),)
        self.std = FASHION_MNIST_STD if std is None else (float(std),)
        self.num_classes = len(self.class_indices)
        self.classes = [FASHION_MNIST_CLASSES[c] for c in self.class_indices]
        self.input_size = (channels, image_size or 28, image_size or 28)
        self.data_dir = self._find()
        if self.data_dir is None and not download:
            raise FileNotFoundError(self._not_found_message())
        self.save_hyperparameters()

    def _looked_in(self) -> list[str]:
        # An explicit root is where the user says the data is: another copy found elsewhere would be used
        # silently instead (a different version, a different subset), so it is the only place looked.
        return [str(self.root)] if self.root is not None else list(self.search_paths)

    def _find(self) -> Path | None:
        return find_fashion_mnist(self._looked_in())

    def _not_found_message(self) -> str:
        places = "\n".join(f"  {p}" for p in _candidates(self._looked_in()))
        files = ", ".join(f"{stem}[.gz]" for stem in FASHION_MNIST_FILES)
        if self.root is not None:
            return (
                f"Fashion-MNIST not found under root={str(self.root)!r}: expected {files} in\n{places}\n"
                "Put torchvision's files under <root>/FashionMNIST/raw/ (or the four files in root itself), pass "
                "download=True to download them there, or pass no root to use the Debian package "
                "(apt-get install dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist)."
            )
        return (
            f"Fashion-MNIST not found: looked for {files} in\n{places}\n"
            "Install the Debian package (apt-get install dataset-fashion-mnist, files in "
            "/usr/share/datasets/fashion-mnist), put torchvision's files under <root>/FashionMNIST/raw/ and pass "
            "that root, or pass download=True with a root."
        )

    def prepare_data(self) -> None:
        if self.download and self._find() is None:
            from torchvision.datasets import FashionMNIST

            log.info("downloading Fashion-MNIST into %s", self.root)
            for train in (True, False):
                FashionMNIST(str(self.root), train=train, download=True)

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        if self.data_dir is None:
            self.data_dir = self._find()
            if self.data_dir is None:
                raise FileNotFoundError(self._not_found_message())
        log.info("Fashion-MNIST from %s", self.data_dir)
        train_x, train_y = _keep_classes(*_load_split(self.data_dir, "train"), self.class_indices)
        val_x, val_y = _keep_classes(*_load_split(self.data_dir, "t10k"), self.class_indices)
        if self.train_per_class is not None:
            keep = per_class_indices(train_y, self.train_per_class, self.seed)
            train_x, train_y = train_x[keep], train_y[keep]
        tf = {
            train: grey_transforms(train, 28, self.mean, self.std, self.augment, self.channels,
                                   resize=self.image_size)
            for train in (True, False)
        }
        train_tf = (mocov2_grey_views(28, self.mean, self.std, self.channels, resize=self.image_size)
                    if self.two_views else tf[True])
        train_set = TensorImageDataset(train_x, train_y, train_tf)
        matching = train_set.with_transform(tf[False])
        return (
            seeded_subset(train_set, self.limit_train, self.seed),
            seeded_subset(TensorImageDataset(val_x, val_y, tf[False]), self.limit_val, self.seed),
            seeded_subset(matching, self.limit_train, self.seed),
        )
