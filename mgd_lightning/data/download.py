"""Download, verify and extract a data set archive, atomically (plain Python + tqdm).

:func:`download_and_extract` is what ``download=True`` of the data modules uses:

1. the archive is streamed to a temporary file in the destination folder (``.<name>.part-*``), with a
   tqdm progress bar; a connection that ends before ``Content-Length`` bytes arrived is an error;
2. its MD5 is checked: a mismatch is a :class:`ChecksumError` naming the expected and actual sums and the URL;
3. it is extracted into a temporary folder beside the destination (``.<name>.extract-*``) and each top-level
   entry is moved into place with ``os.replace``, the data set's own folder last.

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
from pathlib import Path

__all__ = [
    "OFFLINE_ENV",
    "ChecksumError",
    "DownloadError",
    "download_and_extract",
    "download_file",
    "downloads_disabled",
    "extract_archive",
    "md5sum",
]

log = logging.getLogger(__name__)

#: environment variable that switches every download of the package off (``1``, ``true``, ``yes``, ``on``).
OFFLINE_ENV = "MGD_LIGHTNING_OFFLINE"

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed, was interrupted or is refused (``MGD_LIGHTNING_OFFLINE=1``)."""


class ChecksumError(DownloadError):
    """A downloaded file whose MD5 is not the expected one."""


def downloads_disabled() -> bool:
    """Whether ``MGD_LIGHTNING_OFFLINE`` switches downloads off."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


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
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
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


def _extract_all(archive: tarfile.TarFile, into: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuses absolute paths, links out, devices
        archive.extractall(into, filter="data")
        return
    base = os.path.realpath(into)
    for member in archive.getmembers():
        target = os.path.realpath(os.path.join(into, member.name))
        if os.path.commonpath([base, target]) != base or member.issym() or member.islnk() or member.isdev():
            raise DownloadError(f"unsafe archive member {member.name!r}")
    archive.extractall(into)  # noqa: S202 (members checked above)


def extract_archive(archive: str | Path, parent: str | Path, main: str) -> Path:
    """Extract a tar archive (``.tgz``, ``.tar.gz``, ``.tar``) into ``parent`` atomically; returns ``parent/main``.

    The archive is extracted into a temporary folder in ``parent``, then each top-level entry is moved into
    ``parent`` with ``os.replace``, ``main`` (the data set's folder, which must be in the archive) last, so that
    ``parent/main`` exists only once everything is there. Existing top-level entries other than ``main`` are
    kept (e.g. a ``README`` beside the data set). If ``parent/main`` appears meanwhile (another process did
    the same download), that copy is kept.
    """
    archive, parent = Path(archive), Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{main}.extract-", dir=parent))
    try:
        try:
            with tarfile.open(archive) as tar:
                _extract_all(tar, staging)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DownloadError(f"could not extract {archive}: {type(error).__name__}: {error}") from error
        entries = sorted(os.listdir(staging))
        if main not in entries:
            raise DownloadError(f"{archive} has no top-level {main}/ (it holds: {', '.join(entries) or 'nothing'})")
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
                         filename: str | None = None, keep_archive: bool = False, progress: bool = True) -> Path:
    """Download the archive at ``url`` into ``parent``, verify its MD5, extract it atomically (:func:`extract_archive`)
    and, unless ``keep_archive``, delete it; returns ``parent/main``. A no-op (no request) when ``parent/main``
    exists."""
    parent = Path(parent)
    target = parent / main
    if target.exists():
        return target
    archive = parent / (filename or os.path.basename(urllib.parse.urlparse(url).path) or f"{main}.tar.gz")
    log.info("downloading %s to %s", url, archive)
    download_file(url, archive, md5=md5, progress=progress)
    try:
        return extract_archive(archive, parent, main)
    finally:
        if not keep_archive:
            archive.unlink(missing_ok=True)
