"""The arguments of :class:`~mgd_lightning.DistillationModule`: checked, then resolved to what the module uses.

Checks run before anything is built; each error is one ``ValueError`` line naming the argument, the value given
and the values allowed. Resolution turns the ``None`` defaults into each distiller's own values (the tap weights
``w_k`` and ``loss_factor`` of Eq. 2, the input size of the shape probe) and a ``torch.compile``'d network into
the network inside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch.nn as nn

from mgd_lightning.distillers import DISTILLERS, FEATURE_DISTILLERS
from mgd_lightning.matching import UNMATCHED
from mgd_lightning.reduction import MARGIN_REDUCTIONS, METHODS
from mgd_lightning.tasks import Task

__all__ = [
    "DEFAULT_INPUT_SIZE", "MGD_LOSS_FACTOR", "assignment_kind", "check_distillation_args", "check_task_has_logits",
    "loss_scale", "resolve_input_size", "uncompiled",
]

#: (C, H, W) of the shape probe when neither ``input_size`` nor a model's ``default_input_size`` says otherwise
DEFAULT_INPUT_SIZE: tuple[int, int, int] = (3, 224, 224)

#: MGD's ``loss_factor`` (Eq. 2's divisor): the reference code's factor for 224 px inputs
MGD_LOSS_FACTOR = 1e4


def uncompiled(model: nn.Module, role: str) -> nn.Module:
    """The network inside a ``torch.compile``'d module (``OptimizedModule``), with a warning; others as they are.

    The taps hook the network's submodules by name and checkpoints, exports and ``load_from_checkpoint`` name
    its tensors: a compiled wrapper would prefix every name with ``_orig_mod.`` (the taps were not found, and
    checkpoints would not load into the bare network). The warning points at the caller of the caller (the
    line that built the :class:`~mgd_lightning.DistillationModule`)."""
    original = getattr(model, "_orig_mod", None)
    if not isinstance(original, nn.Module) or type(model).__name__ != "OptimizedModule":
        return model
    warnings.warn(
        f"DistillationModule: the {role} given is a torch.compile'd module; the network inside it is used, "
        f"uncompiled (the taps hook its submodules, and checkpoints and exports name its tensors without the "
        f"'_orig_mod.' prefix). Pass the {role} itself; this module does not compile the networks.",
        UserWarning, stacklevel=3,
    )
    return original


def check_distillation_args(
    *, reducer: str, distiller: str, kd_weight: float, unmatched: str, margin_reduction: str,
    loss_factor: float | None, ce_weight: float,
) -> None:
    """Raise a one-line ``ValueError`` for a distillation argument out of its range: an unknown ``reducer``
    (Eq. 12-15), ``distiller``, ``unmatched`` or ``margin_reduction``; ``distiller="kd"`` without
    ``kd_weight > 0``; ``loss_factor <= 0``; a negative ``ce_weight`` or ``kd_weight``."""
    if reducer not in METHODS:
        raise ValueError(f"reducer must be one of {METHODS}; got {reducer!r}")
    if distiller not in DISTILLERS:
        raise ValueError(f"distiller must be one of {DISTILLERS}; got {distiller!r}")
    if distiller == "kd" and kd_weight <= 0:
        raise ValueError(f"distiller='kd' distils the logits only: set kd_weight > 0 (got kd_weight={kd_weight})")
    if unmatched not in UNMATCHED:
        raise ValueError(f"unmatched must be one of {UNMATCHED}; got {unmatched!r}")
    if margin_reduction not in MARGIN_REDUCTIONS:
        raise ValueError(f"margin_reduction must be one of {MARGIN_REDUCTIONS}; got {margin_reduction!r}")
    if loss_factor is not None and loss_factor <= 0:
        raise ValueError(f"loss_factor must be > 0 (or None for the distiller's default); got {loss_factor}")
    if ce_weight < 0 or kd_weight < 0:
        raise ValueError(f"ce_weight and kd_weight must be >= 0; got ce_weight={ce_weight}, kd_weight={kd_weight}")


def check_task_has_logits(task: Task, distiller: str, kd_weight: float) -> None:
    """Raise a one-line ``ValueError`` when Hinton KD (``kd_weight > 0`` or ``distiller="kd"``) is asked of a
    task without class logits (detection)."""
    if not task.has_logits and (kd_weight > 0 or distiller == "kd"):
        raise ValueError(
            f"task={task.name!r} has no class logits to distil: Hinton KD needs them "
            f"(got distiller={distiller!r}, kd_weight={kd_weight}); use kd_weight=0 and a feature distiller"
        )


def resolve_input_size(input_size: Sequence[int] | None, *models: nn.Module) -> tuple[int, ...]:
    """The ``(C, H, W)`` of the shape probe: ``input_size`` if given, else the first of the ``models``'
    ``default_input_size``, else :data:`DEFAULT_INPUT_SIZE`. Raises ``ValueError`` unless it has three values."""
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
    else:
        size = next((tuple(s) for s in (getattr(m, "default_input_size", None) for m in models) if s is not None),
                    DEFAULT_INPUT_SIZE)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), e.g. (3, 32, 32); got {size}")
    return size


def assignment_kind(distiller: str, reducer: str, matching: bool) -> str | None:
    """How the matching is solved: ``"sparse"`` (SM: any teacher channel per student channel), ``"balanced"``
    (``alpha`` teacher channels per student channel, Eq. 8-11), or ``None`` when it is never solved (another
    distiller than MGD, or the ``matching=False`` ablation's fixed contiguous groups)."""
    if distiller != "mgd" or not matching:
        return None
    return "sparse" if reducer == "sm" else "balanced"


def loss_scale(
    distiller: str, num_taps: int, tap_weights: Sequence[float] | None, loss_factor: float | None
) -> tuple[list[float], float]:
    """The per-tap weights ``w_k`` and the divisor ``loss_factor`` of the distillation term (Eq. 2).

    ``None`` takes the distiller's own default: MGD (and KD, which has no feature term) the reference code's
    ``w_k = 1 / 2^(N-k-1)`` and :data:`MGD_LOSS_FACTOR`; a feature baseline its ``default_tap_weights`` and
    ``default_loss_factor``. Raises a one-line ``ValueError`` unless ``tap_weights`` has ``num_taps`` values."""
    if tap_weights is not None and len(tap_weights) != num_taps:
        raise ValueError(f"tap_weights needs {num_taps} values (one per tap); got {list(tap_weights)}")
    if distiller in FEATURE_DISTILLERS:
        cls = FEATURE_DISTILLERS[distiller]
        tap_weights = cls.default_tap_weights(num_taps) if tap_weights is None else tap_weights
        loss_factor = cls.default_loss_factor if loss_factor is None else loss_factor
    else:
        tap_weights = [1.0 / 2 ** (num_taps - k - 1) for k in range(num_taps)] if tap_weights is None else tap_weights
        loss_factor = MGD_LOSS_FACTOR if loss_factor is None else loss_factor
    return [float(w) for w in tap_weights], float(loss_factor)
