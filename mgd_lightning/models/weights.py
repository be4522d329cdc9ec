"""torchvision weights in the torch hub cache: downloaded with torchvision's own mechanism when missing.

:func:`ensure_weights` is what ``build_model(name, weights=...)`` calls before building: a weight file already in
``<torch hub dir>/checkpoints/`` is used as is; a missing one is downloaded there by
``WeightsEnum.get_state_dict(progress=True, check_hash=True)`` (``torch.hub.load_state_dict_from_url``: a
progress bar, a temporary file renamed once complete, the SHA-256 prefix of the file name checked). When the
download fails (no network) or downloads are off (``MGD_LIGHTNING_OFFLINE=1``, or ``download=False``), the
error is one line naming the file, its URL and where to put it.
"""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import torch
import torchvision

__all__ = ["OFFLINE_ENV", "downloads_disabled", "ensure_weights", "hub_weights_path"]

#: environment variable that switches every download of the package off (``1``, ``true``, ``yes``, ``on``); the
#: same variable as :data:`mgd_lightning.data.download.OFFLINE_ENV` (not imported: models do not import Lightning).
OFFLINE_ENV = "MGD_LIGHTNING_OFFLINE"


def downloads_disabled() -> bool:
    """Whether ``MGD_LIGHTNING_OFFLINE`` switches downloads off."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def hub_weights_path(url: str) -> Path:
    """Where torchvision reads a weight file: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _not_available(base: str, weight: torchvision.models.WeightsEnum, target: Path, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"weights {base}/{weight.name} are not available offline: expected the file {target} "
        f"(torch hub cache). Download {weight.url} on a machine with internet and copy it there, "
        f"or set TORCH_HOME to a directory whose hub/checkpoints/ holds it ({why})."
    )


def ensure_weights(weight: torchvision.models.WeightsEnum, base: str, download: bool | None = None) -> Path:
    """The hub-cache file of ``weight`` (of torchvision's model ``base``), downloaded there if missing.

    Args:
        weight: a torchvision weight, e.g. ``ResNet18_Weights.IMAGENET1K_V1``.
        base: the torchvision model it belongs to (for the message).
        download: ``False``: never download; ``True`` / ``None``: download unless ``MGD_LIGHTNING_OFFLINE`` is set.

    Raises:
        FileNotFoundError: one line naming the file, its URL and where to put it, when the file is missing and
            downloads are off or the download failed (no network, HTTP error, hash mismatch).
    """
    target = hub_weights_path(weight.url)
    if target.is_file():
        return target
    if download is False:
        raise _not_available(base, weight, target, "downloads are off: download=False")
    if downloads_disabled():
        raise _not_available(base, weight, target, f"downloads are off: {OFFLINE_ENV}={os.environ[OFFLINE_ENV]}")
    created = [d for d in (target.parent, target.parent.parent) if not d.exists()]  # checkpoints/, hub/
    try:
        weight.get_state_dict(progress=True, check_hash=True)  # torch.hub.load_state_dict_from_url into the cache
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as error:
        # URLError / HTTPError / timeouts are OSErrors; a hash mismatch or a truncated file is a RuntimeError
        for directory in created:  # leave the cache as it was (torch.hub made the folders before failing)
            try:
                directory.rmdir()
            except OSError:
                pass
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        raise _not_available(base, weight, target, f"the download failed: {cause}") from error
    if not target.is_file():  # get_state_dict saved it elsewhere (a changed hub dir?): say where it was expected
        raise _not_available(base, weight, target, "the download did not create it")
    return target
