"""Checkpoint files: one clear error naming the file and what is wrong with it (empty, truncated, not PyTorch), and
atomic writes (:func:`atomic_save`).

``torch.load`` on a 0-byte file raises an ``EOFError`` with an empty message, which jsonargparse's error formatter
cannot print (``IndexError``); the CLI checks the files a run will read with :func:`check_checkpoint_file` before
it builds anything (:class:`mgd_lightning.commands.cli.MGDCLI`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointFileError", "CheckpointMismatchError", "atomic_save", "check_checkpoint_file",
           "load_state_dict_checked"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive


class CheckpointFileError(ValueError):
    """A checkpoint file that exists but cannot be read: the message names the file and what is wrong."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose tensors do not fit the model built (another class count or architecture):
    one line naming the file, the first differences and what to change."""


def _shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def load_state_dict_checked(model: torch.nn.Module, state: dict, checkpoint: str | os.PathLike) -> None:
    """``model.load_state_dict(state)`` (strict), with a :class:`CheckpointMismatchError` instead of torch's
    multi-line ``RuntimeError`` when the keys or shapes differ: the size mismatches (the class count when only
    the classifier head differs) and the missing / unexpected keys, first few of each."""
    own = model.state_dict()
    sizes = [(k, _shape(v), _shape(own[k])) for k, v in state.items() if k in own and hasattr(v, "shape")
             and _shape(v) != _shape(own[k])]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not (sizes or missing or unexpected):
        model.load_state_dict(state)
        return
    name = type(model).__name__
    parts = []
    if sizes:
        shown = ", ".join(f"{k} {saved} in the checkpoint, {built} in the model" for k, saved, built in sizes[:2])
        parts.append(f"size mismatch for {len(sizes)} tensor(s): {shown}" + (", ..." if len(sizes) > 2 else ""))
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model missing in the checkpoint ({', '.join(missing[:2])}"
                     + (", ...)" if len(missing) > 2 else ")"))
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) of the checkpoint not in the model ({', '.join(unexpected[:2])}"
                     + (", ...)" if len(unexpected) > 2 else ")"))
    head = sizes and not (missing or unexpected) and all(
        len(saved) == len(built) and saved[1:] == built[1:] for _, saved, built in sizes) and \
        len({saved[0] for _, saved, _ in sizes}) == 1 and len({built[0] for _, _, built in sizes}) == 1
    if head:  # only the output layer differs (weight and bias): another number of classes
        saved_n, built_n = sizes[0][1][0], sizes[0][2][0]
        hint = (f"the checkpoint's model has {saved_n} outputs (classes), the {name} built here {built_n}: build it "
                f"with num_classes={saved_n} (or use a checkpoint trained on these {built_n} classes)")
    else:
        hint = (f"the checkpoint is of another architecture than the {name} built here: build the model as the "
                "run that wrote it (the same name, num_classes and arch_args: its config.yaml)")
    raise CheckpointMismatchError(f"checkpoint={os.fspath(checkpoint)!r} does not fit the model: "
                                  f"{'; '.join(parts)}; {hint}")


def _reason(error: BaseException) -> str:
    """The informative line of a torch.load error (its weights-only preamble is about something else)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    specific = [ln for ln in lines if ln.startswith(("Unsupported operand", "invalid load key", "PytorchStreamReader"))]
    return (specific or lines or [type(error).__name__])[0]


def _is_torchscript(path: Path) -> bool:
    """A zip archive written by ``torch.jit.save`` (its ``<name>/code/`` and ``constants.pkl`` entries)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def check_checkpoint_file(path: str | os.PathLike, what: str = "checkpoint", load: bool = True) -> None:
    """Raise a one-line error unless ``path`` is a readable PyTorch file.

    ``FileNotFoundError`` when it is missing; :class:`CheckpointFileError` when it is empty, truncated or
    corrupt (a zip archive without its end: a save or copy that was interrupted), not a PyTorch file, or (with
    ``load``) not loadable with ``torch.load(weights_only=True)``. With ``load`` the file is read as
    ``build_model(checkpoint=...)`` reads it (memory-mapped for the zip format: cheap for large files).
    """
    p = Path(path)
    name = f"{what} {os.fspath(path)!r}"
    if p.is_dir():
        found = sorted(c.name for c in p.glob("*.ckpt"))[:3]
        raise CheckpointFileError(f"{name} is a directory, not a checkpoint file: pass a file"
                                  + (f" in it ({', '.join(found)})" if found else ""))
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
    if is_zip and _is_torchscript(p):
        raise CheckpointFileError(
            f"{name} is a TorchScript file (torch.jit.save, e.g. mgd-lightning export --format torchscript), not a "
            "checkpoint: load it with torch.jit.load; pass the run's .ckpt file (or a state_dict file) here"
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


# ---------------------------------------------------------------------------------------------- atomic writes
#: name of the temporary file of a write in progress, beside its target: ``.ckpt-write-<host>-<pid>-<hex>.tmp``
#: (hidden; no "last" in it, which ModelCheckpoint would take for a last checkpoint; not ``*.ckpt``)
TEMP_PREFIX = ".ckpt-write-"
_TEMP_NAME = re.compile(rf"{re.escape(TEMP_PREFIX)}([0-9a-f]{{8}})-(\d+)-[0-9a-f]+\.tmp")


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files of writes whose process (on this host) is gone: a run killed mid-write."""
    host = _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMP_NAME.fullmatch(name)
        if match and match.group(1) == host and not _alive(int(match.group(2))):
            (folder / name).unlink(missing_ok=True)


def _write_bytes(f, data: memoryview) -> None:
    """Write ``data`` to the open temporary file (a function of its own: the fault-injection tests cut it short)."""
    f.write(data)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically: the bytes go to a temporary file beside ``path`` (same folder, so the
    same file system), which is flushed and ``fsync``'d, then renamed onto ``path`` with ``os.replace`` and the
    folder ``fsync``'d. A reader sees the old file or the new one, never a part of one, also when the system
    temporary directory is on another file system (where Lightning's write through fsspec ends in a copy onto
    the target). A write that fails removes its temporary file; one killed leaves it (hidden,
    ``.ckpt-write-*.tmp``), and the next write into that folder removes it."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = folder / f"{TEMP_PREFIX}{_host()}-{os.getpid()}-{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:  # created here, with the permissions of a new file (umask)
            _write_bytes(f, buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
