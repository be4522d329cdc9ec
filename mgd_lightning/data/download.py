"""Download, verify and extract a data set archive, atomically (plain Python + tqdm).

:func:`download_and_extract` is what ``download=True`` of the data modules uses:

1. the archive is streamed to a temporary file in the destination folder (``.<name>.part-*``), with a
   tqdm progress bar; a connection that ends before ``Content-Length`` bytes arrived is an error;
2. its MD5 is checked: a mismatch is a :class:`ChecksumError` naming the expected and actual sums and the URL;
3. it is extracted into a temporary folder beside the destination (``.<name>.extract-*``); members with an
   absolute path or a ``..`` component, links and devices are refused; the extracted tree is checked (the
   data module's layout check: an archive with the right MD5 but an incomplete tree is an error, nothing is
   moved into place) and each top-level entry is moved into place with ``os.replace``, the data set's own
   folder last.

A failed or interrupted download or extraction removes its temporary files: no half tree is left behind
that a later run could take for the data. ``MGD_LIGHTNING_OFFLINE=1`` refuses every download
(:class:`DownloadError`), for clusters without internet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "OFFLINE_ENV",
    "ChecksumError",
    "DownloadError",
    "UnwritableError",
    "download_and_extract",
    "download_file",
    "downloads_disabled",
    "extract_archive",
    "md5sum",
    "writable_dir",
]

log = logging.getLogger(__name__)

#: environment variable that switches every download of the package off (``1``, ``true``, ``yes``, ``on``).
OFFLINE_ENV = "MGD_LIGHTNING_OFFLINE"

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed, was interrupted or is refused (``MGD_LIGHTNING_OFFLINE=1``)."""


class ChecksumError(DownloadError):
    """A downloaded file whose MD5 is not the expected one."""


class UnwritableError(DownloadError):
    """A download destination that cannot be written: a file where a folder should be, a read-only folder."""


def downloads_disabled() -> bool:
    """Whether ``MGD_LIGHTNING_OFFLINE`` switches downloads off."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _unwritable(folder: Path, what: str, error: OSError) -> str:
    reason = error.strerror or type(error).__name__
    return (f"cannot write {what} into {folder} ({type(error).__name__}: {reason}): "
            "pass a root folder this process can write to")


def writable_dir(folder: str | Path, what: str = "the data") -> Path:
    """``folder``, created if missing; :class:`DownloadError` (one line) when it is a file, under a file, or not
    writable (a read-only file system or folder)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UnwritableError(f"cannot write {what} into {folder}: it is a file, not a folder; pass a folder as root")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UnwritableError(
                f"cannot write {what} into {folder}: {blocker} is a file, not a folder; pass a folder as root"
            ) from None
        raise UnwritableError(_unwritable(folder, what, error)) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnwritableError(_unwritable(folder, what, PermissionError(13, "Permission denied")))
    return folder


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled)


def download_file(url: str, dest: str | Path, md5: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary file in ``dest``'s folder, check its MD5, then rename it.

    Raises :class:`DownloadError` (network error, interrupted transfer, downloads switched off) or
    :class:`ChecksumError`; either way no file is left at ``dest`` and the temporary file is removed.
    """
    dest = Path(dest)
    if downloads_disabled():
        raise DownloadError(f"{OFFLINE_ENV}=1: not downloading {url} to {dest}")
    writable_dir(dest.parent, what=f"the download of {url}")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    except OSError as error:
        raise UnwritableError(_unwritable(dest.parent, f"the download of {url}", error)) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "mgd-lightning"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    received = 0
                    with _progress(total, dest.name, progress) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts, resets are OSErrors
                raise DownloadError(f"could not download {url}: {type(error).__name__}: {error}") from error
        if total is not None and received != total:
            raise DownloadError(
                f"interrupted download of {url}: got {received} of {total} bytes (the connection closed early); "
                "run again to retry"
            )
        if md5 is not None:
            actual = md5sum(tmp)
            if actual != md5.lower():
                raise ChecksumError(
                    f"MD5 mismatch for {url}: expected {md5.lower()}, got {actual} ({received} bytes); the download "
                    "is corrupt or the file at that URL changed; nothing was extracted"
                )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _check_members(archive: tarfile.TarFile) -> None:
    """Refuse members that would land outside the extraction folder: an absolute path (``/etc/x``, ``C:/x``,
    which tarfile's data filter would silently extract under the folder) or a ``..`` component."""
    for member in archive.getmembers():
        name = member.name
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or os.path.isabs(name) or (name[1:2] == ":" and name[:1].isalpha()):
            raise DownloadError(f"unsafe archive member {name!r} (an absolute path): refusing to extract it")
        if ".." in parts:
            raise DownloadError(f"unsafe archive member {name!r} (a '..' component): refusing to extract it")


def _extract_all(archive: tarfile.TarFile, into: Path) -> None:
    _check_members(archive)
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuses links out and devices
        archive.extractall(into, filter="data")
        return
    base = os.path.realpath(into)
    for member in archive.getmembers():
        target = os.path.realpath(os.path.join(into, member.name))
        if os.path.commonpath([base, target]) != base or member.issym() or member.islnk() or member.isdev():
            raise DownloadError(f"unsafe archive member {member.name!r}")
    archive.extractall(into)  # noqa: S202 (members checked above)


def extract_archive(archive: str | Path, parent: str | Path, main: str,
                    check: Callable[[Path], None] | None = None) -> Path:
    """Extract a tar archive (``.tgz``, ``.tar.gz``, ``.tar``) into ``parent`` atomically; returns ``parent/main``.

    The archive is extracted into a temporary folder in ``parent``, then each top-level entry is moved into
    ``parent`` with ``os.replace``, ``main`` (the data set's folder, which must be in the archive) last, so that
    ``parent/main`` exists only once everything is there. Existing top-level entries other than ``main`` are
    kept (e.g. a ``README`` beside the data set). If ``parent/main`` appears meanwhile (another process did
    the same download), that copy is kept. ``check(extracted_main)``, when given, runs before anything is moved
    into place: its ``FileNotFoundError`` / ``ValueError`` (an incomplete or malformed tree) becomes a
    :class:`DownloadError` and nothing is left behind.
    """
    archive, parent = Path(archive), Path(parent)
    writable_dir(parent, what=f"the contents of {archive.name}")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{main}.extract-", dir=parent))
    except OSError as error:
        raise UnwritableError(_unwritable(parent, f"the contents of {archive.name}", error)) from None
    try:
        try:
            with tarfile.open(archive) as tar:
                _extract_all(tar, staging)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DownloadError(f"could not extract {archive}: {type(error).__name__}: {error}") from error
        entries = sorted(os.listdir(staging))
        if main not in entries:
            raise DownloadError(f"{archive} has no top-level {main}/ (it holds: {', '.join(entries) or 'nothing'})")
        if check is not None:
            try:
                check(staging / main)
            except (FileNotFoundError, ValueError) as error:
                first = str(error).splitlines()[0].split("; expected ")[0].replace(str(staging / main), main)
                raise DownloadError(
                    f"{archive.name} extracted to an incomplete or malformed {main}/ ({first}); nothing was moved "
                    f"into {parent}: the archive itself is incomplete (its checksum matched, so downloading it "
                    "again gives the same tree); use another copy of the data set (url=..., md5=...)"
                ) from None
        for name in [e for e in entries if e != main] + [main]:
            target = parent / name
            if target.exists():
                if name == main:
                    log.info("%s appeared while extracting (another process); keeping it", target)
                continue
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return parent / main


def download_and_extract(url: str, parent: str | Path, main: str, md5: str | None = None,
                         filename: str | None = None, keep_archive: bool = False, progress: bool = True,
                         check: Callable[[Path], None] | None = None) -> Path:
    """Download the archive at ``url`` into ``parent``, verify its MD5, extract it atomically (:func:`extract_archive`,
    with its tree ``check``) and, unless ``keep_archive``, delete it; returns ``parent/main``. A no-op (no request)
    when ``parent/main`` exists."""
    parent = Path(parent)
    target = parent / main
    if target.exists():
        return target
    archive = parent / (filename or os.path.basename(urllib.parse.urlparse(url).path) or f"{main}.tar.gz")
    log.info("downloading %s to %s", url, archive)
    download_file(url, archive, md5=md5, progress=progress)
    try:
        return extract_archive(archive, parent, main, check=check)
    finally:
        if not keep_archive:
            archive.unlink(missing_ok=True)
