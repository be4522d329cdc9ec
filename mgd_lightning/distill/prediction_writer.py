"""Prediction writers of ``trainer.predict`` (``mgd-lightning predict``): classes as a CSV file, detections as COCO
results JSON.

:class:`PredictionWriter` (classification):

One row per image, in the order of the prediction loader: ``index`` (the image's index in the loader's
dataset), ``class_id`` (the predicted class), ``probability`` (its softmax probability) and, with ``top_k = K``,
``top1_class_id, top1_probability, ..., topK_class_id, topK_probability``. It reads what
:meth:`~mgd_lightning.distill.classifier.ClassificationModule.predict_step` returns (a dict with ``class_id``,
``probability`` and ``probabilities``); a plain tensor of logits or probabilities (another module's
``predict_step``) is read as scores over the classes.

``mgd-lightning predict`` adds one by default, writing ``predictions.csv`` in the run folder
(``<default_root_dir>/lightning_logs/version_N/``); the path is printed at the end.

:class:`DetectionWriter` (``task="detection"``, what ``mgd-lightning predict`` adds for a detection module): the
detector's boxes, scores and labels in COCO's results format (what COCO's evaluation and its users read), a JSON
list of ``{"image_id", "category_id", "bbox": [x, y, width, height], "score"}``, one entry per detection, in
``detections.json`` in the run folder. ``image_id`` is the batch target's ``image_id`` (COCO's, as
:class:`~mgd_lightning.data.COCODataModule` yields it), else the image's index in the loader's dataset;
``category_id`` is the detector's label (COCO category ids for torchvision's COCO detectors and this package's
COCO data); boxes are in the pixels of the image as loaded (COCO's images are not resized by the data module).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch

from mgd_lightning._lightning import callbacks, pl

BasePredictionWriter = callbacks.BasePredictionWriter

__all__ = ["DetectionWriter", "PredictionFormatError", "PredictionWriter"]

DEFAULT_FILE_NAME = "predictions.csv"
DEFAULT_DETECTIONS_FILE_NAME = "detections.json"


class PredictionFormatError(TypeError):
    """``predict_step`` returned something the writer cannot write: the message says what and which writer can."""


def _as_scores(prediction: Any) -> dict[str, torch.Tensor]:
    if isinstance(prediction, dict) and "class_id" in prediction:
        return prediction
    if isinstance(prediction, torch.Tensor) and prediction.dim() == 2:
        probabilities = prediction if _is_distribution(prediction) else prediction.softmax(dim=-1)
        probability, class_id = probabilities.max(dim=-1)
        return {"class_id": class_id, "probability": probability, "probabilities": probabilities}
    if _is_detections(prediction):
        raise PredictionFormatError(
            "PredictionWriter writes classes, but predict_step returned detections (boxes, scores, labels): use "
            "mgd_lightning.distill.prediction_writer.DetectionWriter (COCO results JSON; mgd-lightning predict adds "
            "it for task: detection)"
        )
    raise PredictionFormatError(
        "PredictionWriter needs predict_step to return ClassificationModule's dict (class_id, probability, "
        f"probabilities) or a (batch, classes) tensor of scores; got {type(prediction).__name__}"
    )


def _is_detections(prediction: Any) -> bool:
    return isinstance(prediction, (list, tuple)) and all(
        isinstance(p, dict) and {"boxes", "scores", "labels"} <= set(p) for p in prediction)


def _rank_path(path: Path, trainer: pl.Trainer) -> Path:
    return path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}") if trainer.world_size > 1 else path


def _is_distribution(x: torch.Tensor) -> bool:
    x = x.detach().float()
    return bool((x >= 0).all() and torch.allclose(x.sum(dim=-1), torch.ones(x.shape[0], device=x.device), atol=1e-4))


class PredictionWriter(BasePredictionWriter):
    """Write one CSV row per predicted image (see the module docstring).

    Args:
        output: the CSV file. ``None`` (default): ``predictions.csv`` in the run folder (``trainer.log_dir``,
            or ``default_root_dir`` without a logger). A relative path is relative to the working directory.
        top_k: also write the ``top_k`` most probable classes and their probabilities (0: none).
        verbose: print the path and the number of rows at the end.

    Under several processes each rank writes its own file, ``<stem>.rank<R><suffix>``.
    """

    def __init__(self, output: str | os.PathLike | None = None, top_k: int = 0, verbose: bool = True) -> None:
        super().__init__(write_interval="batch")
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0; got {top_k!r}")
        self.output = output
        self.top_k = int(top_k)
        self.verbose = verbose
        #: where the latest prediction run wrote (set when it starts), and how many rows
        self.path: Path | None = None
        self.rows = 0
        self._file = None
        self._writer = None
        self._header_written = False
        self._multiple_loaders = False
        self._next_index: dict[int, int] = {}

    def resolve_path(self, trainer: pl.Trainer) -> Path:
        """The file this writer writes for ``trainer`` (this rank's under several processes)."""
        if self.output is None:
            folder = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
            path = Path(folder) / DEFAULT_FILE_NAME
        else:
            path = Path(self.output)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path = self.resolve_path(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._header_written = False
        self._multiple_loaders = len(trainer.num_predict_batches) > 1
        self._next_index = {}
        self.rows = 0

    def _header(self) -> list[str]:
        header = ["dataloader"] if self._multiple_loaders else []
        header += ["index", "class_id", "probability"]
        for k in range(1, self.top_k + 1):
            header += [f"top{k}_class_id", f"top{k}_probability"]
        return header

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        if self._writer is None:  # not started by on_predict_start (a direct call)
            self.on_predict_start(trainer, pl_module)
        if not self._header_written:
            self._writer.writerow(self._header())
            self._header_written = True
        scores = _as_scores(prediction)
        class_id = scores["class_id"].detach().cpu().tolist()
        probability = scores["probability"].detach().float().cpu().tolist()
        n = len(class_id)
        if batch_indices is not None and len(batch_indices) == n:
            indices = [int(i) for i in batch_indices]
        else:  # no sampler indices (an iterable dataset): the running count of this loader's images
            start = self._next_index.get(dataloader_idx, 0)
            indices = list(range(start, start + n))
        self._next_index[dataloader_idx] = self._next_index.get(dataloader_idx, 0) + n
        top_ids = top_probs = None
        if self.top_k:
            probabilities = scores["probabilities"].detach().float()
            k = min(self.top_k, probabilities.shape[-1])
            values, ids = probabilities.topk(k, dim=-1)
            top_probs, top_ids = values.cpu().tolist(), ids.cpu().tolist()
        for row in range(n):
            line: list[Any] = [dataloader_idx] if self._multiple_loaders else []
            line += [indices[row], int(class_id[row]), f"{probability[row]:.6g}"]
            for k in range(self.top_k):
                if top_ids is not None and k < len(top_ids[row]):
                    line += [int(top_ids[row][k]), f"{top_probs[row][k]:.6g}"]
                else:  # fewer classes than top_k
                    line += ["", ""]
            self._writer.writerow(line)
        self.rows += n

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        if self.verbose and self.path is not None:
            print(f"predictions: {self.rows} rows written to {self.path}")  # noqa: T201 - where the file is

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            if not self._header_written:  # no batch: the header alone
                self._writer.writerow(self._header())
                self._header_written = True
            self._file.close()
        self._file = self._writer = None


class DetectionWriter(BasePredictionWriter):
    """Write the detections of ``trainer.predict`` as COCO results JSON (see the module docstring).

    Args:
        output: the JSON file. ``None`` (default): ``detections.json`` in the run folder (``trainer.log_dir``, or
            ``default_root_dir`` without a logger). A relative path is relative to the working directory.
        verbose: print the path and the number of detections at the end.

    Under several processes each rank writes its own file, ``<stem>.rank<R><suffix>``. The file is written as the
    batches come (one detection a line) and is a complete JSON list once prediction ends.
    """

    def __init__(self, output: str | os.PathLike | None = None, verbose: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.verbose = verbose
        #: where the latest prediction run wrote (set when it starts), how many detections and images
        self.path: Path | None = None
        self.detections = 0
        self.images = 0
        self._file = None
        self._next_index: dict[int, int] = {}

    def resolve_path(self, trainer: pl.Trainer) -> Path:
        """The file this writer writes for ``trainer`` (this rank's under several processes)."""
        if self.output is None:
            folder = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
            return _rank_path(Path(folder) / DEFAULT_DETECTIONS_FILE_NAME, trainer)
        return _rank_path(Path(self.output), trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path = self.resolve_path(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")
        self._file.write("[")
        self.detections = self.images = 0
        self._next_index = {}

    @staticmethod
    def _image_ids(batch: Any, batch_indices: Any, n: int, start: int) -> list[int]:
        targets = batch[1] if isinstance(batch, (list, tuple)) and len(batch) == 2 else None
        if isinstance(targets, (list, tuple)) and len(targets) == n and all(
                isinstance(t, dict) and "image_id" in t for t in targets):
            return [int(t["image_id"]) for t in targets]
        if batch_indices is not None and len(batch_indices) == n:
            return [int(i) for i in batch_indices]
        return list(range(start, start + n))  # no sampler indices: the running count of this loader's images

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        if self._file is None:  # not started by on_predict_start (a direct call)
            self.on_predict_start(trainer, pl_module)
        if not _is_detections(prediction):
            raise PredictionFormatError(
                "DetectionWriter needs predict_step to return a detector's list of {boxes, scores, labels} per image "
                f"(task: detection); got {type(prediction).__name__}: use PredictionWriter for classes"
            )
        start = self._next_index.get(dataloader_idx, 0)
        image_ids = self._image_ids(batch, batch_indices, len(prediction), start)
        self._next_index[dataloader_idx] = start + len(prediction)
        for image_id, detections in zip(image_ids, prediction):
            boxes = detections["boxes"].detach().float().cpu().reshape(-1, 4).tolist()
            scores = detections["scores"].detach().float().cpu().tolist()
            labels = detections["labels"].detach().cpu().tolist()
            for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
                entry = {"image_id": image_id, "category_id": int(label),
                         "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                         "score": round(float(score), 5)}
                self._file.write(("\n" if self.detections == 0 else ",\n") + json.dumps(entry))
                self.detections += 1
        self.images += len(prediction)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        if self.verbose and self.path is not None:
            print(f"detections: {self.detections} on {self.images} images written to {self.path} "  # noqa: T201
                  "(COCO results JSON)")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.write("\n]\n")
            self._file.close()
        self._file = None
