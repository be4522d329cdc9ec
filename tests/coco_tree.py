"""A tiny COCO-2017 tree for tests: real layout and JSON format, a few small JPEG images.

:func:`write_coco_tree` writes ``root/train2017/``, ``root/val2017/`` and
``root/annotations/instances_{train2017,val2017}.json`` from :data:`TRAIN_IMAGES` and :data:`VAL_IMAGES`, which the
tests can also read for the expected values. Edge cases in it: an image without objects (train 25, val 285),
crowd annotations (train 30 and val 285, with an uncompressed RLE as COCO's crowd annotations have), a box of
width 0 (train 30, dropped by the reader), a box reaching past the image border (val 139, clamped), fractional
box coordinates, category ids with gaps (1, 3, 18, 44, 90: the real COCO ids, so valid for torchvision's 91-class
COCO detectors), and images of different sizes, non-square both ways.

Each object is a filled rectangle of its own colour on a noise background, so a detector can in principle
learn it and a flip visibly changes the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: the COCO categories used (real ids and names).
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 44, "name": "bottle", "supercategory": "kitchen"},
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
]

#: (image id, width, height, [(category id, [x, y, w, h], iscrowd), ...]) of the training split.
TRAIN_IMAGES = [
    (9, 64, 48, [(1, [4.0, 6.0, 20.0, 18.0], 0), (18, [30.5, 10.0, 25.0, 30.0], 0)]),
    (25, 40, 56, []),
    (30, 56, 40, [(3, [10.0, 8.0, 30.0, 20.0], 1), (3, [2.0, 2.0, 12.0, 10.0], 0), (44, [20.0, 20.0, 0.0, 10.0], 0)]),
    (42, 48, 48, [(90, [8.0, 8.0, 16.0, 24.0], 0)]),
]

#: the same for the validation split.
VAL_IMAGES = [
    (139, 60, 44, [(1, [5.0, 5.0, 20.0, 20.0], 0), (90, [40.0, 10.0, 30.0, 25.0], 0)]),
    (285, 48, 40, [(1, [4.0, 4.0, 30.0, 24.0], 1)]),
    (632, 44, 52, []),
]


def xyxy_clamped(bbox: list[float], width: int, height: int) -> list[float]:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` clamped to a ``width`` x ``height`` image."""
    x, y, w, h = bbox
    return [min(max(x, 0), width), min(max(y, 0), height), min(max(x + w, 0), width), min(max(y + h, 0), height)]


def expected_targets(split: str = "train2017") -> dict[int, dict[str, list]]:
    """``{image id: {"boxes": [...], "labels": [...], "crowd_boxes": [...], "crowd_labels": [...]}}`` (xyxy, clamped,
    boxes without width or height left out) as the reader should give them, images sorted by id."""
    out = {}
    for image_id, width, height, anns in sorted(TRAIN_IMAGES if split == "train2017" else VAL_IMAGES):
        entry: dict[str, list] = {"boxes": [], "labels": [], "crowd_boxes": [], "crowd_labels": []}
        for cid, bbox, crowd in anns:
            box = xyxy_clamped(bbox, width, height)
            if box[2] > box[0] and box[3] > box[1]:
                entry["crowd_boxes" if crowd else "boxes"].append(box)
                entry["crowd_labels" if crowd else "labels"].append(cid)
        out[image_id] = entry
    return out


def _rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a boolean ``(H, W)`` mask (column-major runs, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"counts": runs, "size": list(mask.shape)}


def _write_split(root: Path, split: str, images: list, seed: int, first_annotation_id: int) -> int:
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    entries, annotations, ann_id = [], [], first_annotation_id
    for image_id, width, height, anns in images:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for cid, (x, y, w, h), crowd in anns:
            x1, y1, x2, y2 = (int(round(v)) for v in xyxy_clamped([x, y, w, h], width, height))
            pixels[y1:y2, x1:x2] = (37 * cid % 256, 255 - 11 * cid % 256, 128 if crowd else 0)
            mask = np.zeros((height, width), dtype=bool)
            mask[y1:y2, x1:x2] = True
            segmentation = _rle(mask) if crowd else [[x1, y1, x2, y1, x2, y2, x1, y2]]
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cid, "bbox": [x, y, w, h],
                "area": float(mask.sum()), "iscrowd": crowd, "segmentation": segmentation,
            })
            ann_id += 1
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(root / split / file_name, quality=90)
        entries.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                        "license": 1, "date_captured": "2013-11-14 11:18:45"})
    document = {
        "info": {"description": "mgd-lightning test tree", "version": "1.0", "year": 2017},
        "licenses": [{"id": 1, "name": "test", "url": ""}],
        "images": entries[::-1],  # not sorted by id, as in the real files
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return ann_id


def write_coco_tree(root: str | Path, seed: int = 0) -> Path:
    """Write the tiny COCO-2017 tree under ``root`` (created) and return ``root``."""
    root = Path(root)
    next_id = _write_split(root, "train2017", TRAIN_IMAGES, seed, 1)
    _write_split(root, "val2017", VAL_IMAGES, seed + 1, next_id)
    return root
