"""Epoch-list matching schedules: the matching is updated at the start of the listed epochs.

The official unsupervised code (``unsup/main_moco_mgd.py``) updates the matching once before training, then after
each epoch ``e`` (0-based) with ``e + 1`` in ``ceil(logspace(0, 2.1, 10))`` = 1, 2, 3, 6, 9, 15, 26, 43, 74, 126: in
this package's terms, at the start of epochs 0, 1, 2, 3, 6, 9, 15, 26, 43, 74 and 126 (0-based). A schedule here is
the sorted tuple of those epoch numbers; epoch 0 (the first epoch of a run) is always an update, listed or not, as
with every other schedule of :class:`~mgd_lightning.MGDMatchingCallback`. Plain Python, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["EPOCH_SCHEDULES", "OFFICIAL_UNSUP_EPOCHS", "check_update_epochs", "log_spaced_epochs"]


def log_spaced_epochs(num: int = 10, stop_exponent: float = 2.1) -> tuple[int, ...]:
    """``ceil(logspace(0, stop_exponent, num))`` as ints, duplicates dropped: the official unsupervised code's
    update epochs (``np.ceil(np.logspace(0, 2.1, 10))``; NumPy's logspace is ``10 ** linspace``)."""
    if num < 1:
        raise ValueError(f"num must be >= 1; got {num}")
    exponents = [stop_exponent * i / (num - 1) for i in range(num)] if num > 1 else [0.0]
    return tuple(sorted({math.ceil(10 ** e) for e in exponents}))


#: the official MoCo-v2 + MGD code's update epochs (0-based epoch starts, besides epoch 0)
OFFICIAL_UNSUP_EPOCHS: tuple[int, ...] = log_spaced_epochs(10, 2.1)

#: named epoch schedules, for configs (``update_epochs: official_unsup``)
EPOCH_SCHEDULES: dict[str, tuple[int, ...]] = {"official_unsup": OFFICIAL_UNSUP_EPOCHS}


def check_update_epochs(update_epochs: Sequence[int] | str, arg: str = "update_epochs") -> tuple[int, ...]:
    """``update_epochs`` (a list of epoch numbers, or a name of :data:`EPOCH_SCHEDULES`) as a sorted tuple of
    distinct ints >= 0. Raises ``ValueError`` naming ``arg`` and the bad value."""
    if isinstance(update_epochs, str):
        if update_epochs not in EPOCH_SCHEDULES:
            raise ValueError(f"{arg} must be a list of epochs or one of {sorted(EPOCH_SCHEDULES)}; "
                             f"got {update_epochs!r}")
        return EPOCH_SCHEDULES[update_epochs]
    try:
        epochs = [int(e) for e in update_epochs]
    except (TypeError, ValueError):
        raise ValueError(f"{arg} must be a list of epoch numbers or a schedule name; got {update_epochs!r}") from None
    if any(isinstance(e, bool) or int(e) != e for e in update_epochs):
        raise ValueError(f"{arg} must hold whole epoch numbers; got {update_epochs!r}")
    if any(e < 0 for e in epochs):
        raise ValueError(f"{arg} must hold epochs >= 0; got {update_epochs!r}")
    return tuple(sorted(set(epochs)))
