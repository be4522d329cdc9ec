"""COCO box AP for detection: torchmetrics' ``MeanAveragePrecision`` set up for the package's batches, and its keys.

Usage in a detection task (predictions as torchvision's detectors return them in eval mode, targets as
:class:`~mgd_lightning.data.COCODataModule` yields them)::

    self.val_map = detection_map_metric()                        # in __init__ (a torchmetrics Metric: DDP-synced)
    update_detection_map(self.val_map, detections, targets)      # in validation_step
    self.log_dict(map_log_dict(self.val_map.compute()))           # on_validation_epoch_end, then .reset()

Logged keys: ``val/map`` (AP at IoU 0.50:0.95), ``val/map_50``, ``val/map_75``, ``val/map_small``,
``val/map_medium``, ``val/map_large`` (COCO's AP, AP50, AP75, APs, APm, APl, as fractions in [0, 1]; a size
bucket with no ground-truth box gives -1, as torchmetrics reports it). Crowd annotations (the targets'
``crowd_*`` keys) are passed as ``iscrowd=1`` boxes, so that, as in COCO's own evaluation, detections on crowd
regions count neither as true nor as false positives; the targets' ``area`` (COCO's segment area) decides the
size buckets, as in COCO's evaluation.

The computation needs pycocotools or faster-coco-eval (``pip install 'mgd-lightning[detection]'``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "MAP_BACKENDS",
    "MAP_KEYS",
    "coco_map_backend",
    "detection_map_metric",
    "map_log_dict",
    "map_predictions",
    "map_targets",
    "update_detection_map",
]

#: torchmetrics' result keys that are logged (COCO's AP, AP50, AP75, APs, APm, APl).
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")

#: evaluation backends of torchmetrics' MeanAveragePrecision -> the module each needs.
MAP_BACKENDS = {"pycocotools": "pycocotools", "faster_coco_eval": "faster_coco_eval"}


def coco_map_backend(backend: str | None = None) -> str:
    """The COCO evaluation backend to use: ``backend`` if given (checked), else the first installed of pycocotools
    and faster-coco-eval. ``ImportError`` naming what to install when none is."""
    if backend is not None and backend not in MAP_BACKENDS:
        raise ValueError(f"backend must be one of {sorted(MAP_BACKENDS)} or None, got {backend!r}")
    for name in [backend] if backend else list(MAP_BACKENDS):
        if importlib.util.find_spec(MAP_BACKENDS[name]) is not None:
            return name
    wanted = backend or " or ".join(MAP_BACKENDS)
    raise ImportError(
        f"COCO AP needs {wanted} (the evaluation backend of torchmetrics' MeanAveragePrecision): "
        "pip install 'mgd-lightning[detection]' (pycocotools) or pip install faster-coco-eval"
    )


def detection_map_metric(backend: str | None = None, **kwargs: Any):
    """torchmetrics' ``MeanAveragePrecision`` for ``xyxy`` pixel boxes (``iou_type="bbox"``), with ``backend``
    chosen by :func:`coco_map_backend`; ``kwargs`` go to it (e.g. ``class_metrics=True``)."""
    from torchmetrics.detection import MeanAveragePrecision

    options = {"box_format": "xyxy", "iou_type": "bbox", **kwargs}
    return MeanAveragePrecision(backend=coco_map_backend(backend), **options)


def map_predictions(detections: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """torchvision detections (``boxes`` ``(D, 4)`` xyxy, ``scores`` ``(D,)``, ``labels`` ``(D,)`` per image) as the
    metric's ``preds`` (detached; other keys, e.g. ``masks``, left out)."""
    out = []
    for i, det in enumerate(detections):
        for key in ("boxes", "scores", "labels"):
            if key not in det:
                raise KeyError(f"detections[{i}] lacks {key!r} (has {sorted(det)}): expected torchvision's output")
        out.append({"boxes": det["boxes"].detach().reshape(-1, 4), "scores": det["scores"].detach(),
                    "labels": det["labels"].detach()})
    return out


def map_targets(targets: Sequence[Mapping[str, Any]]) -> list[dict[str, torch.Tensor]]:
    """Targets of :class:`~mgd_lightning.data.COCODataModule` (``boxes`` ``(N, 4)``, ``labels`` ``(N,)``, optional
    ``area`` ``(N,)`` and ``crowd_boxes`` ``(K, 4)`` / ``crowd_labels`` ``(K,)`` / ``crowd_area`` ``(K,)``) as the
    metric's ``target``: ``boxes`` ``(N + K, 4)``, ``labels``, ``iscrowd`` (0 for the ``N``, 1 for the ``K``) and,
    when the targets have areas, ``area``."""
    out = []
    for i, t in enumerate(targets):
        for key in ("boxes", "labels"):
            if key not in t:
                raise KeyError(f"targets[{i}] lacks {key!r} (has {sorted(t)})")
        boxes, labels = t["boxes"].reshape(-1, 4), t["labels"]
        crowd_boxes = t.get("crowd_boxes", boxes.new_zeros((0, 4))).reshape(-1, 4)
        crowd_labels = t.get("crowd_labels", labels.new_zeros((0,)))
        if len(crowd_boxes) != len(crowd_labels):
            raise ValueError(f"targets[{i}]: {len(crowd_boxes)} crowd_boxes but {len(crowd_labels)} crowd_labels")
        item = {
            "boxes": torch.cat([boxes, crowd_boxes.to(boxes)]),
            "labels": torch.cat([labels, crowd_labels.to(labels)]),
            "iscrowd": torch.cat([labels.new_zeros(len(labels)), labels.new_ones(len(crowd_labels))]).int(),
        }
        if "area" in t:
            crowd_area = t.get("crowd_area", boxes.new_zeros((len(crowd_boxes),)))
            item["area"] = torch.cat([t["area"].float(), crowd_area.to(t["area"]).float()])
        out.append(item)
    return out


def update_detection_map(metric, detections: Sequence[Mapping[str, torch.Tensor]],
                         targets: Sequence[Mapping[str, Any]]) -> None:
    """``metric.update`` with :func:`map_predictions` of ``detections`` and :func:`map_targets` of ``targets``
    (one per image, in the same order)."""
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detections but {len(targets)} targets: one each per image")
    metric.update(map_predictions(detections), map_targets(targets))


def map_log_dict(results: Mapping[str, Any], prefix: str = "val/") -> dict[str, torch.Tensor]:
    """``{prefix + key: value}`` of :data:`MAP_KEYS` from ``MeanAveragePrecision.compute()``'s ``results``, as float
    scalars (``val/map``, ``val/map_50``, ...)."""
    missing = [key for key in MAP_KEYS if key not in results]
    if missing:
        raise KeyError(f"results lack {missing} (have {sorted(results)}): expected MeanAveragePrecision.compute()")
    return {f"{prefix}{key}": torch.as_tensor(results[key]).float().reshape(()) for key in MAP_KEYS}
