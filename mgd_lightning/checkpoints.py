"""Checkpoint files: one clear error naming the file and what is wrong with it (empty, truncated, not PyTorch).

``torch.load`` on a 0-byte file raises an ``EOFError`` with an empty message, which jsonargparse's error formatter
cannot print (``IndexError``); the CLI checks the files a run will read with :func:`check_checkpoint_file` before
it builds anything (:class:`mgd_lightning.cli.MGDCLI`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointFileError", "check_checkpoint_file"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive


class CheckpointFileError(ValueError):
    """A checkpoint file that exists but cannot be read: the message names the file and what is wrong."""


def _reason(error: BaseException) -> str:
    """The informative line of a torch.load error (its weights-only preamble is about something else)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    specific = [ln for ln in lines if ln.startswith(("Unsupported operand", "invalid load key", "PytorchStreamReader"))]
    return (specific or lines or [type(error).__name__])[0]


def check_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint", load: bool = True) -> None:
    """Raise a one-line error unless ``path`` is a readable PyTorch file.

    ``FileNotFoundError`` when it is missing; :class:`CheckpointFileError` when it is empty, truncated or
    corrupt (a zip archive without its end: a save or copy that was interrupted), not a PyTorch file, or (with
    ``load``) not loadable with ``torch.load(weights_only=True)``. With ``load`` the file is read as
    ``build_model(checkpoint=...)`` reads it (memory-mapped for the zip format: cheap for large files).
    """
    p = Path(path)
    name = f"{what} {os.fspath(path)!r}"
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointFileError(
            f"{name} is empty (0 bytes): a save or copy that was interrupted, or not a checkpoint; "
            "use another checkpoint or write this one again"
        )
    with p.open("rb") as f:
        is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    if is_zip and not zipfile.is_zipfile(p):
        raise CheckpointFileError(
            f"{name} is truncated or corrupt ({size} bytes, a zip archive without its central directory: a save "
            "or copy that was interrupted); use another checkpoint or write this one again"
        )
    if not load:
        return
    try:
        torch.load(p, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as error:  # noqa: BLE001 - every reason becomes one line naming the file
        reason = _reason(error)
        unsupported = [ln.strip() for ln in str(error).splitlines() if "Unsupported global" in ln]
        if unsupported:
            raise CheckpointFileError(
                f"{name} holds pickled Python objects that torch.load(weights_only=True) refuses "
                f"({unsupported[0]}): save a state_dict (or a Lightning checkpoint of this package) instead"
            ) from error
        if is_zip:
            raise CheckpointFileError(f"{name} is truncated or corrupt ({size} bytes; torch.load: {reason})") from error
        raise CheckpointFileError(
            f"{name} is not a PyTorch checkpoint or state_dict file ({size} bytes; torch.load: {reason})"
        ) from error
