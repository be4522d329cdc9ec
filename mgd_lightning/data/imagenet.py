"""ImageNet (ILSVRC-2012, 1000 classes) from ``train/<wnid>/*`` and ``val/<wnid>/*`` image folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .base import ImageDataModule, per_class_indices
from .datasets import IMG_EXTENSIONS, ImageFileDataset, folder_split_classes, list_class_dirs, scan_split
from .transforms import TRAIN_CROPS, TrainCrop, imagenet_transforms, mocov2_views

__all__ = ["IMAGENET_DOWNLOAD", "IMAGENET_LAYOUT", "ImageNetDataModule"]

log = logging.getLogger(__name__)

IMAGENET_LAYOUT = """expected the ImageNet image-folder layout:
        train/<wnid>/*.JPEG   (e.g. train/n01440764/n01440764_10026.JPEG)
        val/<wnid>/*.JPEG     (the validation images sorted into the same class folders)"""

#: ImageNet is never downloaded by the package (its terms of access need an account): where to get it.
IMAGENET_DOWNLOAD = (
    "ImageNet is not downloaded automatically (its terms of access require an account): download "
    "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org/download-images.php, extract "
    "the training archive's per-class tars into train/<wnid>/, and sort the validation images into val/<wnid>/ "
    "(e.g. with the usual valprep.sh script)"
)


class ImageNetDataModule(ImageDataModule):
    """ImageNet with the reference code's transforms (``RandomResizedCrop(224)`` + flip; evaluation: centre crop).

    ``root`` holds ``train/<wnid>/`` and ``val/<wnid>/`` (the validation set sorted into class folders, as
    the usual ``valprep.sh`` does). ``num_classes`` is the number of ``train/`` class folders (1000 for the
    real set); ``classes`` holds the wnids. A missing folder raises ``FileNotFoundError`` at construction,
    which says where to get the data (image-net.org; no automatic download, licence) and the layout to make.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        batch_size, num_workers, pin_memory: of the loaders (:class:`~mgd_lightning.data.base.ImageDataModule`).
        image_size: side of the square crop (224 in the paper).
        resize_size: short side after resizing, before the evaluation crop (256 in the paper) and, with
            ``train_crop="resize_random"``, before the training crop.
        train_crop: the training crop (:func:`~mgd_lightning.data.transforms.imagenet_transforms`).
            ``"random_resized"`` (default): ``RandomResizedCrop(image_size)`` + flip, what the reference code
            trains with (``cls/main_mgd.py`` and ``cls/main_base.py``). ``"resize_random"``:
            ``Resize(resize_size)`` + ``RandomCrop(image_size)`` + flip, the paper's text ("randomly crop 224
            from 256"). Evaluation and the matching pass use ``Resize(resize_size)`` + ``CenterCrop(image_size)``
            either way.
        two_views: training items are ``([view_1, view_2], label)``, MoCo-v2's two augmentations
            (:func:`~mgd_lightning.data.transforms.mocov2_views`, lightly's ``MoCoV2Transform``; ``train_crop`` is
            then unused) for ``task="self_supervised"`` (the official unsupervised MGD recipe); evaluation and the
            matching pass keep ``Resize(resize_size)`` + ``CenterCrop(image_size)``, as the official code's.
        train_per_class: keep N training images of each class (few-label fine-tuning: 13 is about 1 % of
            ImageNet, 128 about 10 %), the first N of each class in a permutation seeded by ``seed`` (the images for
            N are a subset of those for any larger N); ``None``: all.
        seed: seed of that permutation.

    Example, in a LightningCLI config:

    ```yaml
    data:
      class_path: mgd_lightning.data.ImageNetDataModule
      init_args: {root: /data/imagenet, batch_size: 256, num_workers: 16}
    ```
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        image_size: int = 224,
        resize_size: int = 256,
        train_crop: TrainCrop = "random_resized",
        two_views: bool = False,
        train_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if resize_size < image_size:
            raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}; got {train_crop!r}")
        self.image_size = image_size
        self.resize_size = resize_size
        self.train_crop = train_crop
        self.two_views = bool(two_views)
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1 or None, got {train_per_class}")
        self.train_per_class = train_per_class
        self.seed = seed
        self.data_dir = Path(root).expanduser()
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"ImageNet root {self.data_dir} does not exist; {IMAGENET_LAYOUT}\n{IMAGENET_DOWNLOAD}"
            )
        missing = [f"{name}/" for name in ("train", "val") if not (self.data_dir / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"ImageNet root {self.data_dir} lacks {', '.join(missing)}; {IMAGENET_LAYOUT}\n{IMAGENET_DOWNLOAD}"
            )
        val_dir = self.data_dir / "val"
        if not list_class_dirs(val_dir) and any(n.lower().endswith(IMG_EXTENSIONS) for n in os.listdir(val_dir)):
            raise ValueError(
                f"{val_dir} holds images directly: sort them into val/<wnid>/ class folders "
                f"(e.g. with the usual valprep.sh script); {IMAGENET_LAYOUT}"
            )
        self.classes = folder_split_classes(self.data_dir / "train", val_dir, IMAGENET_LAYOUT)
        self.num_classes = len(self.classes)
        self.input_size = (3, image_size, image_size)
        log.info("ImageNet at %s, %d classes", self.data_dir, self.num_classes)
        self.save_hyperparameters()

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train = scan_split(self.data_dir / "train", self.classes, IMAGENET_LAYOUT)
        if self.train_per_class is not None:
            keep = per_class_indices(torch.tensor([label for _, label in train]), self.train_per_class, self.seed)
            train = [train[i] for i in keep.tolist()]
        val = scan_split(self.data_dir / "val", self.classes, IMAGENET_LAYOUT)
        train_tf = (mocov2_views(self.image_size) if self.two_views
                    else imagenet_transforms(True, self.image_size, self.resize_size, self.train_crop))
        eval_tf = imagenet_transforms(False, self.image_size, self.resize_size)
        train_set = ImageFileDataset(train, train_tf)
        return train_set, ImageFileDataset(val, eval_tf), train_set.with_transform(eval_tf)
