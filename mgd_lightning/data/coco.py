"""COCO-2017 object detection (``instances_*.json`` boxes) for torchvision's COCO detectors (RetinaNet, Mask R-CNN).

Layout (the official one, https://cocodataset.org/#download)::

    root/train2017/*.jpg
    root/val2017/*.jpg
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json

Items and batches (the detection task relies on them):

* an item is ``(image, target)``: ``image`` a float ``(3, H, W)`` tensor in ``[0, 1]`` at the file's own size (the
  detector's ``GeneralizedRCNNTransform`` resizes and normalises), ``target`` a dict:

  - ``boxes``: float32 ``(N, 4)``, ``x1, y1, x2, y2`` in absolute pixels of ``image`` (COCO's ``x, y, w, h``
    converted, clamped to the image; boxes left with no width or height dropped);
  - ``labels``: int64 ``(N,)``, COCO category ids (1..90): torchvision's COCO models are 91-class (0 =
    background) and index their classes by the original, non-contiguous COCO ids (their weights'
    ``meta["categories"][i]`` is the name of COCO category ``i``, ``"N/A"`` for the 10 unused ids);
  - ``image_id``: ``int``, COCO's image id;
  - ``area``: float32 ``(N,)``, COCO's annotation area (the segment area: what COCO's evaluation uses for
    AP small/medium/large);
  - ``crowd_boxes`` float32 ``(K, 4)``, ``crowd_labels`` int64 ``(K,)``, ``crowd_area`` float32 ``(K,)``: the
    ``iscrowd=1`` annotations, kept *apart* from ``boxes``/``labels`` so that no detector trains on them (the
    torchvision models read only ``boxes``/``labels``) while COCO evaluation can still treat them as ignore
    regions (:func:`mgd_lightning.metrics.map_targets`). ``N`` and ``K`` may be 0 (images without objects are kept);
  - with ``masks=True`` (Mask R-CNN): ``masks``, uint8 ``(N, H, W)``, the ``N`` objects' segmentations.

* a batch (:func:`collate_detection`) is ``(images, targets)``: a list of ``B`` image tensors of different
  sizes and the list of their ``B`` target dicts.

Training items are flipped horizontally with probability ``flip_prob`` (image and every box); evaluation and
``matching_dataset()`` items never are. Annotations are read with the standard library's ``json`` (no pycocotools
needed to train; it or faster-coco-eval is needed only for the AP computation) and kept in a few flat NumPy arrays
rather than per-image Python objects, so that loader worker processes do not copy them page by page.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset, Subset

from .base import ImageDataModule, seeded_subset
from .datasets import DataFileError, open_rgb

__all__ = [
    "COCO_LAYOUT",
    "COCO_NUM_CLASSES",
    "COCODataModule",
    "COCODetectionDataset",
    "COCOFileNotFoundError",
    "aspect_ratio_groups",
    "collate_detection",
    "coco_paths",
    "decode_segmentation",
    "read_coco_annotations",
]

log = logging.getLogger(__name__)

#: torchvision's COCO detectors: background (0) + COCO's category ids 1..90 (80 used, 10 "N/A").
COCO_NUM_CLASSES = 91

COCO_LAYOUT = (
    "expected the COCO-2017 layout: root/train2017/*.jpg, root/val2017/*.jpg, "
    "root/annotations/instances_train2017.json, root/annotations/instances_val2017.json "
    "(https://cocodataset.org/#download: 2017 Train images, 2017 Val images, 2017 Train/Val annotations)"
)


class COCOFileNotFoundError(FileNotFoundError):
    """A file or folder of the COCO layout is missing: the one-line message names it and the expected layout."""


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(image folder, annotation file)`` of ``split`` (e.g. ``"train2017"``) under ``root``."""
    root = Path(root).expanduser()
    return root / split, root / "annotations" / f"instances_{split}.json"


# ---------------------------------------------------------------------------------------------- annotations
def _field(entry: Any, key: str, path: Path, what: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DataFileError(f"{path}: an entry of {what!r} lacks {key!r} (got {str(entry)[:120]}); {COCO_LAYOUT}")
    return entry[key]


def read_coco_annotations(
    path: str | Path, max_category_id: int = COCO_NUM_CLASSES - 1, segmentation: bool = False
) -> dict[str, Any]:
    """Parse a COCO ``instances_*.json`` file into flat arrays, images sorted by id.

    Returns a dict of NumPy arrays over the ``I`` images and the ``M`` kept annotations:
    ``image_ids`` int64 ``(I,)``, ``file_names`` str ``(I,)``, ``heights``/``widths`` int64 ``(I,)``,
    ``offsets`` int64 ``(I + 1,)`` (image ``i``'s annotations are rows ``offsets[i]:offsets[i + 1]``),
    ``boxes`` float32 ``(M, 4)`` xyxy clamped to the image, ``labels`` int64 ``(M,)`` (category ids),
    ``area`` float32 ``(M,)``, ``iscrowd`` bool ``(M,)``; plus ``categories``, ``{id: name}``, and
    ``dropped``, the number of annotations whose box had no width or height after clamping. With
    ``segmentation=True`` also ``segmentations``, uint8 ``(bytes,)``, the annotations' ``segmentation`` fields as
    JSON text one after the other, and ``segmentation_offsets`` int64 ``(M + 1,)`` (annotation ``m``'s is
    ``segmentations[segmentation_offsets[m]:segmentation_offsets[m + 1]]``; ``null`` where it has none).

    Raises:
        DataFileError: the file is not JSON, lacks a field, or has an annotation whose image or category is not
            listed, or a category id outside ``1..max_category_id`` (the message names the file).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(f"{path} is not a JSON file ({error}): truncated or corrupt, download it again") from error
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataFileError(f"{path} lacks the list {key!r} of a COCO instances file; {COCO_LAYOUT}")

    categories: dict[int, str] = {}
    for cat in data["categories"]:
        cid = int(_field(cat, "id", path, "categories"))
        if not 1 <= cid <= max_category_id:
            raise DataFileError(
                f"{path}: category id {cid} is outside 1..{max_category_id}; labels are COCO category ids, as "
                f"torchvision's {max_category_id + 1}-class COCO detectors expect"
            )
        categories[cid] = str(cat.get("name", cid))

    images = sorted(data["images"], key=lambda im: int(_field(im, "id", path, "images")))
    index = {int(im["id"]): i for i, im in enumerate(images)}
    if len(index) != len(images):
        raise DataFileError(f"{path}: image ids are not unique")
    heights = np.array([int(_field(im, "height", path, "images")) for im in images], dtype=np.int64)
    widths = np.array([int(_field(im, "width", path, "images")) for im in images], dtype=np.int64)
    file_names = np.array([str(_field(im, "file_name", path, "images")) for im in images], dtype=str)

    rows: list[tuple[int, float, float, float, float, int, float, bool, bytes]] = []
    dropped = 0
    for ann in data["annotations"]:
        image_id = int(_field(ann, "image_id", path, "annotations"))
        cid = int(_field(ann, "category_id", path, "annotations"))
        bbox = _field(ann, "bbox", path, "annotations")
        if image_id not in index:
            raise DataFileError(f"{path}: annotation {ann.get('id')} refers to image {image_id}, not in 'images'")
        if cid not in categories:
            raise DataFileError(f"{path}: annotation {ann.get('id')} has category {cid}, not in 'categories'")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataFileError(f"{path}: annotation {ann.get('id')} has bbox {bbox!r}, expected [x, y, w, h]")
        i = index[image_id]
        x, y, w, h = (float(v) for v in bbox)
        width, height = float(widths[i]), float(heights[i])
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if not (x2 > x1 and y2 > y1):  # also drops NaN
            dropped += 1
            continue
        area = float(ann.get("area") or w * h)
        seg = json.dumps(ann.get("segmentation"), separators=(",", ":")).encode() if segmentation else b""
        rows.append((i, x1, y1, x2, y2, cid, area, bool(ann.get("iscrowd", 0)), seg))
    del data

    rows.sort(key=lambda r: r[0])  # stable: the file's order within an image
    table = np.array([r[:5] for r in rows], dtype=np.float64).reshape(-1, 5)
    owner = table[:, 0].astype(np.int64)
    extra: dict[str, Any] = {}
    if segmentation:
        extra["segmentations"] = np.frombuffer(b"".join(r[8] for r in rows), dtype=np.uint8).copy()
        extra["segmentation_offsets"] = np.concatenate([[0], np.cumsum([len(r[8]) for r in rows])]).astype(np.int64)
    return {
        "image_ids": np.array(sorted(index), dtype=np.int64),
        "file_names": file_names,
        "heights": heights,
        "widths": widths,
        "offsets": np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(images)))]).astype(np.int64),
        "boxes": table[:, 1:5].astype(np.float32),
        "labels": np.array([r[5] for r in rows], dtype=np.int64),
        "area": np.array([r[6] for r in rows], dtype=np.float32),
        "iscrowd": np.array([r[7] for r in rows], dtype=bool),
        "categories": categories,
        "dropped": dropped,
        **extra,
    }


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as error:
        raise ImportError(
            "COCO masks (masks=True) are decoded with pycocotools: pip install 'mgd-lightning[detection]'"
        ) from error
    return mask_api


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a uint8 ``(height, width)`` 0/1 mask
    (polygons of one object merged, as torchvision's reference ``convert_coco_poly_to_mask``); needs pycocotools."""
    mask_api = _mask_api()
    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_api.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():  # pycocotools 2.0.11 under NumPy 2: "__array__ implementation ..."
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        decoded = mask_api.decode(rle)
    return np.ascontiguousarray(decoded, dtype=np.uint8).reshape(height, width)


# ---------------------------------------------------------------------------------------------- dataset
class COCODetectionDataset(Dataset):
    """The images of one COCO split and their targets (the module docstring gives the item format).

    Args:
        image_dir: the split's image folder (``root/train2017``).
        annotations: :func:`read_coco_annotations` of the split's file (shared, not copied, by :meth:`view`).
        annotation_file: that file, for error messages.
        flip_prob: probability of a horizontal flip of an item (image and boxes); ``0`` for evaluation.
        keep_empty: keep images without a non-crowd box (``False``: skip them, as Detectron2's
            ``FILTER_EMPTY_ANNOTATIONS`` and torchvision's reference training script do).
        masks: add ``masks``, uint8 ``(N, H, W)``, the non-crowd objects' segmentations (for Mask R-CNN; the
            annotations must have been read with ``segmentation=True``; pycocotools decodes them).
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotations: dict[str, Any],
        annotation_file: str | Path = "",
        flip_prob: float = 0.0,
        keep_empty: bool = True,
        masks: bool = False,
    ) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if masks and "segmentations" not in annotations:
            raise ValueError("masks=True needs annotations read with read_coco_annotations(..., segmentation=True)")
        self.masks = masks
        self.image_dir = Path(image_dir)
        self.annotations = annotations
        self.annotation_file = Path(annotation_file)
        self.flip_prob = flip_prob
        self.keep_empty = keep_empty
        if keep_empty:
            self.indices = np.arange(len(annotations["image_ids"]), dtype=np.int64)
        else:
            offsets, crowd = annotations["offsets"], annotations["iscrowd"]
            owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))  # image index of each annotation row
            non_crowd = np.bincount(owner[~crowd], minlength=len(offsets) - 1)
            self.indices = np.flatnonzero(non_crowd > 0).astype(np.int64)

    @property
    def categories(self) -> dict[int, str]:
        """``{COCO category id: name}`` of the annotation file."""
        return self.annotations["categories"]

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids of the items, in item order."""
        return self.annotations["image_ids"][self.indices].tolist()

    def view(self, flip_prob: float) -> COCODetectionDataset:
        """The same images and annotations (shared) with another flip probability."""
        return COCODetectionDataset(
            self.image_dir, self.annotations, self.annotation_file, flip_prob, self.keep_empty, self.masks
        )

    def __len__(self) -> int:
        return len(self.indices)

    def target(self, index: int) -> dict[str, Any]:
        """The target of item ``index`` without its image (no flip)."""
        a = self.annotations
        i = int(self.indices[index])
        lo, hi = int(a["offsets"][i]), int(a["offsets"][i + 1])
        crowd = a["iscrowd"][lo:hi]
        boxes, labels, area = a["boxes"][lo:hi], a["labels"][lo:hi], a["area"][lo:hi]
        target = {
            "boxes": torch.from_numpy(boxes[~crowd].copy()).reshape(-1, 4),
            "labels": torch.from_numpy(labels[~crowd].copy()),
            "image_id": int(a["image_ids"][i]),
            "area": torch.from_numpy(area[~crowd].copy()),
            "crowd_boxes": torch.from_numpy(boxes[crowd].copy()).reshape(-1, 4),
            "crowd_labels": torch.from_numpy(labels[crowd].copy()),
            "crowd_area": torch.from_numpy(area[crowd].copy()),
        }
        if self.masks:
            target["masks"] = self._masks(i, [m for m in range(lo, hi) if not a["iscrowd"][m]])
        return target

    def _masks(self, i: int, rows: list[int]) -> torch.Tensor:
        a = self.annotations
        height, width = int(a["heights"][i]), int(a["widths"][i])
        blob, offsets = a["segmentations"], a["segmentation_offsets"]
        masks = np.zeros((len(rows), height, width), dtype=np.uint8)
        for k, m in enumerate(rows):
            segmentation = json.loads(blob[offsets[m]:offsets[m + 1]].tobytes())
            if not segmentation:
                raise DataFileError(
                    f"{self.annotation_file}: an annotation of image {int(a['image_ids'][i])} has no segmentation; "
                    "masks=True (Mask R-CNN) needs one for every object"
                )
            masks[k] = decode_segmentation(segmentation, height, width)
        return torch.from_numpy(masks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        a = self.annotations
        i = int(self.indices[index])
        path = self.image_dir / str(a["file_names"][i])
        try:
            pil = open_rgb(str(path))
        except FileNotFoundError as error:
            raise COCOFileNotFoundError(
                f"image {path} (listed in {self.annotation_file}) is missing; {COCO_LAYOUT}"
            ) from error
        width, height = int(a["widths"][i]), int(a["heights"][i])
        if pil.size != (width, height):
            raise DataFileError(
                f"image {path} is {pil.size[0]}x{pil.size[1]} but {self.annotation_file} says {width}x{height}: "
                "the image does not belong to these annotations"
            )
        image = TF.pil_to_tensor(pil).float().div_(255.0)
        target = self.target(index)
        if self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            image = image.flip(-1)
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
            for key in ("boxes", "crowd_boxes"):
                b = target[key]
                target[key] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
        return image, target


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...]`` -> ``(images, targets)``: a list of ``B`` ``(3, H_i, W_i)`` tensors and the list of
    their target dicts (no stacking: the sizes differ). A module-level function, so loaders with worker processes
    can pickle it."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def aspect_ratio_groups(dataset: Dataset) -> np.ndarray:
    """The aspect-ratio group of each item of a :class:`COCODetectionDataset` (or a ``Subset`` of one), int64
    ``(len(dataset),)``: 0 where the image is wider than high, 1 otherwise (Detectron2's two groups, ``w > h``)."""
    if isinstance(dataset, Subset):
        return aspect_ratio_groups(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if not isinstance(dataset, COCODetectionDataset):
        raise TypeError(f"aspect_ratio_groups needs a COCODetectionDataset or a Subset of one; got "
                        f"{type(dataset).__name__}")
    a = dataset.annotations
    return np.where(a["widths"][dataset.indices] > a["heights"][dataset.indices], 0, 1).astype(np.int64)


# ---------------------------------------------------------------------------------------------- data module
class COCODataModule(ImageDataModule):
    """COCO-2017 detection for torchvision's COCO detectors: original image sizes, COCO category ids as labels.

    ``root`` holds ``train2017/``, ``val2017/`` and ``annotations/instances_{train2017,val2017}.json``; a missing one
    is a :class:`COCOFileNotFoundError` (a ``FileNotFoundError``) at construction, naming it and the layout. The
    annotation files are read in ``setup``. Items and batches are described in :mod:`mgd_lightning.data.coco`:
    ``(images, targets)`` batches of lists, boxes ``xyxy`` in pixels, labels = COCO category ids
    (``num_classes = 91``, as torchvision's COCO models), crowd annotations kept apart in ``crowd_*`` keys (never
    in ``boxes``), images without objects kept. Images are not resized here: the detector's transform does it
    (torchvision: shorter side 800, longer at most 1333, by default). Training flips horizontally (``flip_prob``),
    drawn from torch's global RNG (per worker seeded by ``seed_everything(..., workers=True)``); evaluation,
    test, predict and ``matching_dataset()`` (the training images, not flipped, for
    :class:`~mgd_lightning.MGDMatchingCallback`) do not.

    ``input_size`` is a nominal ``(3, 224, 224)`` for interfaces that probe a model with one fixed-size tensor
    (the images themselves keep their sizes). ``categories`` (``{id: name}``, from the training file) is set by
    ``setup``.

    Args:
        root: the folder holding the COCO layout.
        batch_size: images per batch (16 in Detectron2's 1x recipe, over all GPUs; per process here).
        num_workers, pin_memory: of the loaders (:class:`~mgd_lightning.data.base.ImageDataModule`).
        flip_prob: probability of a horizontal flip of a training image (``0.5``; ``0``: no augmentation).
        limit_train: use only this many training images (a seeded random subset; ``None``: all), for quick runs;
            ``matching_dataset()`` uses the same images.
        limit_val: the same for the evaluation split (AP is then that of the subset).
        seed: seed of the ``limit_*`` subsets.
        skip_empty_train: leave out training images with no non-crowd box (Detectron2 and torchvision's reference
            script do); the evaluation split always keeps every image.
        train_split, val_split: the split names (folder ``root/<split>/``, file
            ``root/annotations/instances_<split>.json``), e.g. ``train2014`` / ``val2014``.
        masks: add ``masks`` (uint8 ``(N, H, W)``, the objects' segmentations decoded with pycocotools) to every
            target, for Mask R-CNN; off by default (boxes only, as RetinaNet needs; faster, less memory).
        group_aspect_ratio: training batches of landscape images only or portrait (and square) images only
            (:func:`aspect_ratio_groups`, :class:`~mgd_lightning.data.base.GroupedBatchSampler`), as Detectron2's
            ``DATALOADER.ASPECT_RATIO_GROUPING`` (on in the reference ``d2/`` runs): the detector pads a batch to its
            largest image, so a mixed batch of 800 x 1333 and 1333 x 800 images becomes 1344 x 1344 canvases, half
            padding, which the taps, the distillation loss, the tap norms and the matching cost then see. ``True``
            (default); ``False``: plain shuffled batches (opt-in). Evaluation loaders are not grouped.

    Example, in a LightningCLI config:

    ```yaml
    data:
      class_path: mgd_lightning.data.COCODataModule
      init_args: {root: /data/coco, batch_size: 16, num_workers: 8}
    ```
    """

    collate_fn = staticmethod(collate_detection)

    def __init__(
        self,
        root: str,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        flip_prob: float = 0.5,
        limit_train: int | None = None,
        limit_val: int | None = None,
        seed: int = 0,
        skip_empty_train: bool = False,
        train_split: str = "train2017",
        val_split: str = "val2017",
        masks: bool = False,
        group_aspect_ratio: bool = True,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        for name, limit in (("limit_train", limit_train), ("limit_val", limit_val)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {limit}")
        self.data_dir = Path(root).expanduser()
        self.flip_prob = flip_prob
        self.limit_train = limit_train
        self.limit_val = limit_val
        self.seed = seed
        self.skip_empty_train = skip_empty_train
        self.train_split = train_split
        self.val_split = val_split
        self.masks = masks
        self.group_aspect_ratio = bool(group_aspect_ratio)
        if masks:
            _mask_api()  # pycocotools is there: fail at construction, not in a loader worker
        self.num_classes = COCO_NUM_CLASSES
        self.input_size = (3, 224, 224)
        self.categories: dict[int, str] = {}
        self._check_layout()
        self.save_hyperparameters()

    def _check_layout(self) -> None:
        if not self.data_dir.is_dir():
            raise COCOFileNotFoundError(f"COCO root {self.data_dir} does not exist; {COCO_LAYOUT}")
        missing = []
        for split in (self.train_split, self.val_split):
            image_dir, ann_file = coco_paths(self.data_dir, split)
            if not image_dir.is_dir():
                missing.append(f"{image_dir}/")
            if not ann_file.is_file():
                missing.append(str(ann_file))
        if missing:
            raise COCOFileNotFoundError(f"COCO files missing: {', '.join(missing)}; {COCO_LAYOUT}")

    def _split(self, split: str, flip_prob: float, keep_empty: bool) -> COCODetectionDataset:
        image_dir, ann_file = coco_paths(self.data_dir, split)
        annotations = read_coco_annotations(ann_file, segmentation=self.masks)
        if annotations["dropped"]:
            log.info("%s: %d boxes without width or height dropped", ann_file, annotations["dropped"])
        return COCODetectionDataset(
            image_dir, annotations, ann_file, flip_prob=flip_prob, keep_empty=keep_empty, masks=self.masks
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, grouped by aspect ratio unless ``group_aspect_ratio=False``."""
        if not self.group_aspect_ratio:
            return super().train_dataloader()
        train = self._datasets()[0]
        return self._loader(train, shuffle=True, group_ids=aspect_ratio_groups(train).tolist())

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train = self._split(self.train_split, self.flip_prob, keep_empty=not self.skip_empty_train)
        val = self._split(self.val_split, 0.0, keep_empty=True)
        self.categories = dict(train.categories)
        return (
            seeded_subset(train, self.limit_train, self.seed),
            seeded_subset(val, self.limit_val, self.seed),
            seeded_subset(train.view(0.0), self.limit_train, self.seed),
        )

