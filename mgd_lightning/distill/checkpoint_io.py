"""Atomic checkpoint writes for Lightning: :class:`AtomicCheckpointIO`.

Lightning's ``TorchCheckpointIO`` writes a local checkpoint through an fsspec transaction: a temporary file in the
system temporary directory, moved onto the target at commit. When that directory is on another file system
(``/tmp`` on tmpfs, the checkpoints on a network or scratch disk) the move is a copy onto the target: a kill or a
full disk in the middle leaves a partial ``.ckpt`` under its final name. :class:`AtomicCheckpointIO` writes beside
the target instead, ``fsync``'s and renames it in place (:func:`mgd_lightning.checkpoints.atomic_save`); remote
paths (``s3://``, ...) and ``storage_options`` go to Lightning's own writer.

:class:`~mgd_lightning.ClassificationModule` and :class:`~mgd_lightning.DistillationModule` install it at fit
start in place of a plain ``TorchCheckpointIO`` (:func:`use_atomic_checkpoint_io`); another CheckpointIO plugin
given to the Trainer is left as it is.
"""

from __future__ import annotations

from typing import Any

from mgd_lightning._lightning import pl
from mgd_lightning.checkpoints import atomic_save

__all__ = ["AtomicCheckpointIO", "use_atomic_checkpoint_io"]

_TorchCheckpointIO = pl.plugins.TorchCheckpointIO


def _local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(_TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic on every file system (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _local(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        text = str(path)
        atomic_save(checkpoint, text[len("file://"):] if text.startswith("file://") else text)


def use_atomic_checkpoint_io(trainer: Any) -> None:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` where it has Lightning's default writer (also
    inside a wrapping plugin such as ``AsyncCheckpointIO``); any other CheckpointIO is left as it is."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return
    current = strategy.checkpoint_io
    if type(current) is _TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif type(getattr(current, "checkpoint_io", None)) is _TorchCheckpointIO:  # a wrapper: its inner writer
        current.checkpoint_io = AtomicCheckpointIO()
