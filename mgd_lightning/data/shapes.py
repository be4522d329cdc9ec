"""A synthetic detection set in the real COCO-2017 layout: scikit-image's labelled random shapes as JPEG files.

:func:`write_shapes_coco` draws images with :func:`skimage.draw.random_shapes` (filled circles, rectangles,
triangles and ellipses of random colours on a white background, not overlapping) and writes::

    root/train2017/000000000001.jpg ...
    root/val2017/...
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json

so that :class:`~mgd_lightning.data.COCODataModule` reads it unchanged. Each shape class is stored under a COCO
category id (:data:`SHAPE_CATEGORY_IDS`; the JSON's ``categories`` give the shape names), so the labels are valid
for torchvision's 91-class COCO detectors. Boxes are scikit-image's, clamped to the image (a triangle may start
above it), as COCO ``[x, y, w, h]`` pixel boxes; ``area`` is the box area; ``iscrowd`` is 0; there is no
``segmentation`` (boxes only). A fraction of the
images (``empty_fraction``) has no shape at all. The files depend only on the arguments and the installed
scikit-image/Pillow versions (same seed, same bytes). scikit-image comes with the package's ``detection`` extra.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SHAPE_CATEGORY_IDS", "draw_shapes_image", "write_shapes_coco"]

#: shape class -> the COCO category id it is stored under (COCO's own name for that id in brackets):
#: circle -> 37 (sports ball), ellipse -> 34 (frisbee), rectangle -> 84 (book), triangle -> 38 (kite).
SHAPE_CATEGORY_IDS: dict[str, int] = {"circle": 37, "ellipse": 34, "rectangle": 84, "triangle": 38}

#: the colour of an empty pixel (scikit-image draws shapes with channel values 0..254 on 255).
BACKGROUND = 255


def _import_random_shapes():
    try:
        from skimage.draw import random_shapes
    except ImportError as error:
        raise ImportError(
            "write_shapes_coco needs scikit-image (skimage.draw.random_shapes): "
            "pip install 'mgd-lightning[detection]' (or pip install scikit-image)"
        ) from error
    return random_shapes


def draw_shapes_image(
    height: int, width: int, max_shapes: int, min_size: int, max_size: int, seed: int, empty: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One image: ``(pixels, boxes, names)``.

    ``pixels`` uint8 ``(height, width, 3)``; ``boxes`` float64 ``(N, 4)`` ``x1, y1, x2, y2`` in pixels (``x2``,
    ``y2`` exclusive: a box is the pixel rectangle ``[x1, x2) x [y1, y2)``, tight around its shape); ``names`` the
    ``N`` shape classes. ``empty=True``: a blank image, ``N = 0`` (scikit-image's ``random_shapes`` may also fit no
    shape at all).
    """
    if empty:
        return np.full((height, width, 3), BACKGROUND, dtype=np.uint8), np.zeros((0, 4)), []
    random_shapes = _import_random_shapes()
    with warnings.catch_warnings():  # an image where no shape fits is a valid (empty) image here
        warnings.filterwarnings("ignore", message="Could not fit any shapes", category=UserWarning)
        pixels, labels = random_shapes(
            (height, width), max_shapes=max_shapes, min_shapes=1, min_size=min_size, max_size=max_size,
            num_channels=3, allow_overlap=False, rng=seed,
        )
    boxes, names = [], []
    for name, ((r0, r1), (c0, c1)) in labels:
        x1, y1 = min(max(int(c0), 0), width), min(max(int(r0), 0), height)
        x2, y2 = min(max(int(c1), 0), width), min(max(int(r1), 0), height)
        if x2 > x1 and y2 > y1:
            boxes.append((x1, y1, x2, y2))
            names.append(str(name))
    return np.ascontiguousarray(pixels, dtype=np.uint8), np.array(boxes, dtype=np.float64).reshape(-1, 4), names


def write_shapes_coco(
    root: str | Path,
    n_train: int,
    n_val: int,
    image_size: int | tuple[int, int] = (96, 128),
    max_shapes: int = 4,
    min_size: int = 16,
    max_size: int = 64,
    empty_fraction: float = 0.1,
    seed: int = 0,
    jpeg_quality: int = 95,
) -> Path:
    """Write ``n_train`` + ``n_val`` shape images and their COCO annotations under ``root``; returns ``root``.

    Args:
        root: the data set folder (created; the two splits' files are overwritten).
        n_train, n_val: images in ``train2017/`` and ``val2017/`` (image ids ``1..n_train``, then
            ``n_train + 1..n_train + n_val``; file ``<id as 12 digits>.jpg`` as COCO).
        image_size: ``S``, every image ``S x S``; or ``(lo, hi)``, height and width each drawn from ``lo..hi``.
        max_shapes: at most this many shapes per image (at least 1 is attempted, except in empty images).
        min_size, max_size: bounds of a shape's size in pixels (scikit-image's ``min_size`` / ``max_size``).
        empty_fraction: probability of an image with no shape (its entry in ``images`` has no annotation).
        seed: seed of every random draw.
        jpeg_quality: Pillow's JPEG quality.

    Raises:
        ValueError: an argument out of range, named with its value.
        ImportError: scikit-image is not installed.
    """
    from PIL import Image

    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0, got n_train={n_train}, n_val={n_val}")
    lo, hi = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if not 2 <= lo <= hi:
        raise ValueError(f"image_size must be an int >= 2 or a pair (lo, hi) with 2 <= lo <= hi, got {image_size!r}")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    if not 2 <= min_size <= max_size:
        raise ValueError(f"need 2 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if min_size > lo:
        raise ValueError(f"min_size ({min_size}) must be <= the smallest image side ({lo})")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    _import_random_shapes()  # fail before writing anything

    root = Path(root).expanduser()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": "shape"}
                  for name, cid in sorted(SHAPE_CATEGORY_IDS.items(), key=lambda item: item[1])]
    rng = np.random.default_rng(seed)
    image_id, annotation_id = 0, 0
    for split, count in (("train2017", n_train), ("val2017", n_val)):
        image_dir = root / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for _ in range(count):
            image_id += 1
            height, width = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            empty = bool(rng.random() < empty_fraction)
            image_seed = int(rng.integers(2**31))
            pixels, boxes, names = draw_shapes_image(
                height, width, max_shapes, min_size, max_size, image_seed, empty=empty)
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(pixels).save(image_dir / file_name, quality=jpeg_quality)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for (x1, y1, x2, y2), name in zip(boxes.tolist(), names):
                annotation_id += 1
                w, h = x2 - x1, y2 - y1
                annotations.append({
                    "id": annotation_id, "image_id": image_id, "category_id": SHAPE_CATEGORY_IDS[name],
                    "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0,
                })
        document = {
            "info": {"description": f"mgd-lightning synthetic shapes (scikit-image random_shapes), seed {seed}"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        path = root / "annotations" / f"instances_{split}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document))
        os.replace(tmp, path)
    return root
