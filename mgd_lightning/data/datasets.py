"""Small map-style datasets shared by the data modules: image files on disk, and images held in a tensor.

Each yields ``(transform(image), label)`` with an ``int`` label. A training set and its matching set
(same images, evaluation transform) share one sample list or tensor: :meth:`ImageFileDataset.with_transform` /
:meth:`TensorImageDataset.with_transform` makes the view.

A data file that exists but cannot be read (truncated, corrupt, not in the expected format) raises
:class:`DataFileError`, whose message names the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMG_EXTENSIONS",
    "DataFileError",
    "ImageFileDataset",
    "TensorImageDataset",
    "folder_split_classes",
    "list_class_dirs",
    "scan_image_folder",
    "scan_split",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Transform = Callable[[Any], Any]


class DataFileError(ValueError):
    """A data set file that exists but cannot be read (truncated, corrupt, or not in the expected format): the
    message names the file and what is wrong with it, on one line (a ``ValueError``, as before it existed)."""


def open_rgb(path: str) -> Image.Image:
    """The image file at ``path`` as RGB; :class:`DataFileError` naming it when it is truncated or corrupt (PIL's own
    errors, e.g. ``OSError: image file is truncated (209 bytes not processed)``, do not name the file). A missing
    file stays a ``FileNotFoundError``."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises SyntaxError for some broken headers
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataFileError(
            f"image {path!r} cannot be read ({type(error).__name__}: {reason}): the file is truncated or corrupt, "
            "replace it (extract or copy the data set again)"
        ) from error


class ImageFileDataset(Dataset):
    """``(path, label)`` samples, loaded with PIL as RGB and passed through ``transform``."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Transform | None = None) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = open_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def with_transform(self, transform: Transform | None) -> ImageFileDataset:
        """The same samples (shared, not copied) with another transform."""
        return ImageFileDataset(self.samples, transform)


class TensorImageDataset(Dataset):
    """Images in one ``(N, C, H, W)`` tensor (``uint8`` 0..255 or float 0..1), labels in a ``(N,)`` tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform | None = None) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def with_transform(self, transform: Transform | None) -> TensorImageDataset:
        """The same images (shared, not copied) with another transform."""
        return TensorImageDataset(self.images, self.labels, transform)


def list_class_dirs(directory: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``directory`` (hidden ones skipped): the classes of an ImageFolder tree."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(directory: str | Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image file under ``directory/<class>/`` (recursively, sorted), ImageFolder style.

    Only the classes in ``class_to_idx`` are read; a class folder that is absent is skipped.
    """
    samples: list[tuple[str, int]] = []
    for name in sorted(class_to_idx):
        class_dir = os.path.join(directory, name)
        if not os.path.isdir(class_dir):
            continue
        for dirpath, _, filenames in sorted(os.walk(class_dir, followlinks=True)):
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                    samples.append((os.path.join(dirpath, fname), class_to_idx[name]))
    return samples


def folder_split_classes(train_dir: Path, val_dir: Path, layout_help: str) -> list[str]:
    """Classes of a ``train_dir/<class>/*`` + ``val_dir/<class>/*`` pair: the sorted class folders of ``train_dir``.

    Raises ``ValueError`` (with ``layout_help`` appended) when ``train_dir`` has no class folders, or when
    ``val_dir`` has class folders that ``train_dir`` lacks (their labels would be undefined).
    """
    classes = list_class_dirs(train_dir)
    if not classes:
        raise ValueError(f"{train_dir} has no class sub-folders (expected {train_dir}/<class>/<image>); {layout_help}")
    extra = sorted(set(list_class_dirs(val_dir)) - set(classes))
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise ValueError(f"{val_dir} has {len(extra)} class folder(s) that {train_dir} lacks: {shown}; {layout_help}")
    return classes


def scan_split(directory: Path, classes: Sequence[str], layout_help: str) -> list[tuple[str, int]]:
    """:func:`scan_image_folder` over ``classes`` (labels = their order), raising ``FileNotFoundError`` if empty."""
    samples = scan_image_folder(directory, {name: i for i, name in enumerate(classes)})
    if not samples:
        raise FileNotFoundError(
            f"no image files ({', '.join(IMG_EXTENSIONS)}) under {directory}/<class>/; {layout_help}"
        )
    return samples
