"""Teacher channel reductions rho(T, M) of Matching Guided Distillation (section 3.3, Eq. 12-15).

Plain torch; no Lightning import. A matching is a ``(C_S, alpha)`` LongTensor ``groups`` (see
:mod:`mgd_lightning.matching`). Every reduction is one vectorised gather of the ``C_S * alpha``
matched teacher channels into a ``(B, C_S, alpha, H, W)`` tensor followed by a selection along the
group axis (for AMP / MP a running comparison over the ``alpha`` members); no Python loop over groups.

Margins and reductions
----------------------
The teacher transform (Eq. 4) is a per-channel margin ReLU ``max(t, m)``. After a reduction a
student channel faces values coming from different teacher channels, so the margin has to be
reduced too. :func:`reduce_teacher_and_margin` supports two choices:

* ``margin_reduction="official"`` (default: the reference code, ``mgd/builder.py``), one margin per
  student channel: the group's *mean* margin for ``amp`` (``amp``: ``m.mean(dim=2)``) and ``avg``,
  the group's *max* margin for ``mp`` (``sp``: ``adaptive_max_pool3d`` of the margins), the margin
  of a random group member for ``rd`` (drawn per student channel, not per position), the matched
  channel's margin for ``sm``.
* ``margin_reduction="selected"`` (opt-in, ours): wherever a reduction *selects* one teacher
  channel (``sm``, ``rd``, ``amp``, ``mp``), the margin is the margin of that very channel, at
  that very position. Hence ``max(rho(T)_i, m_sel) = sigma_T(t_sel)``: the reduced target equals
  the teacher's transformed value exactly, which the official per-channel margin does not
  guarantee. ``avg`` mixes channels and uses the group's mean margin either way. Measured as a
  row of the study (``mgd-lightning study``).
"""

from __future__ import annotations

import torch

__all__ = ["METHODS", "MARGIN_REDUCTIONS", "reduce_teacher", "reduce_teacher_and_margin"]

METHODS = ("sm", "rd", "amp", "mp", "avg")
MARGIN_REDUCTIONS = ("official", "selected")


def _check(teacher: torch.Tensor, groups: torch.Tensor, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if not isinstance(teacher, torch.Tensor) or teacher.dim() != 4:
        shape = tuple(teacher.shape) if isinstance(teacher, torch.Tensor) else type(teacher).__name__
        raise ValueError(f"teacher must be a 4-D tensor (B, C_T, H, W); got {shape}")
    if not isinstance(groups, torch.Tensor) or groups.dim() != 2 or groups.numel() == 0:
        shape = tuple(groups.shape) if isinstance(groups, torch.Tensor) else type(groups).__name__
        raise ValueError(f"groups must be a non-empty 2-D LongTensor (C_S, alpha); got {shape}")
    if groups.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"groups must hold integer channel indices; got dtype {groups.dtype}")
    c_t = teacher.shape[1]
    lo, hi = int(groups.min()), int(groups.max())
    if lo < 0 or hi >= c_t:
        raise ValueError(
            f"groups index teacher channels in [{lo}, {hi}] but teacher has C_T={c_t} channels "
            f"(valid: 0..{c_t - 1}); was the matching computed for another layer?"
        )
    if method == "sm" and groups.shape[1] != 1:
        raise ValueError(
            f"method 'sm' needs one teacher channel per student channel, groups of shape (C_S, 1); "
            f"got groups of shape {tuple(groups.shape)} (use sparse_assignment, or another method)"
        )


def _gather(teacher: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B, C_T, H, W) -> (B, C_S, alpha, H, W) with ``out[:, i, k] = teacher[:, groups[i, k]]``."""
    b, _, h, w = teacher.shape
    c_s, alpha = groups.shape
    flat = groups.reshape(-1).to(device=teacher.device, dtype=torch.int64)
    return teacher.index_select(1, flat).view(b, c_s, alpha, h, w)


def _running_max(
    gathered: torch.Tensor, absolute: bool, want_index: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per position, the group member of largest value (or magnitude) and its index (first on ties).

    A running comparison over the ``alpha`` members: on CPU it is 8-18x faster than ``argmax`` over the
    non-innermost group axis of a (B, C_S, alpha, H, W) tensor (benchmarks/reduction.py).
    Returns ``(values, index)``, both (B, C_S, H, W); ``index`` is ``None`` unless ``want_index``.
    """
    alpha = gathered.shape[2]
    best = gathered[:, :, 0]
    best_key = best.abs() if absolute else best
    index = None
    for k in range(1, alpha):
        member = gathered[:, :, k]
        key = member.abs() if absolute else member
        take = key > best_key
        best = torch.where(take, member, best)
        if k < alpha - 1:  # the last member's key is never compared again
            best_key = torch.where(take, key, best_key)
        if want_index:
            index = take.long() if index is None else torch.where(take, k, index)
    if want_index and index is None:
        index = torch.zeros_like(best, dtype=torch.int64)
    return best, index


def reduce_teacher(
    teacher: torch.Tensor,
    groups: torch.Tensor,
    method: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reduce teacher channels onto student channels, rho(T, M) (Eq. 12-15).

    Args:
        teacher: (B, C_T, H, W) teacher feature.
        groups: (C_S, alpha) LongTensor, teacher channels per student channel.
        method: ``"sm"`` sparse matching, the group's single channel (Eq. 12; needs alpha = 1);
            ``"rd"`` random drop, a member drawn independently per batch element and spatial
            position (Eq. 13); ``"amp"`` absolute max pooling, per position the member of largest
            magnitude, sign kept (Eq. 14-15); ``"mp"`` max pooling; ``"avg"`` average pooling.
        generator: optional ``torch.Generator`` (on the teacher's device) for ``"rd"``.

    Returns:
        (B, C_S, H, W) tensor.
    """
    return reduce_teacher_and_margin(teacher, None, groups, method, generator)[0]


def reduce_teacher_and_margin(
    teacher: torch.Tensor,
    margin: torch.Tensor | None,
    groups: torch.Tensor,
    method: str,
    generator: torch.Generator | None = None,
    margin_reduction: str = "official",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reduce teacher feature and its per-channel margin consistently (Eq. 4 with Eq. 12-15).

    Args:
        teacher: (B, C_T, H, W).
        margin: (C_T,) per-channel margins of Eq. 4, or ``None``.
        groups, method, generator: as in :func:`reduce_teacher`.
        margin_reduction: ``"official"`` (default) or ``"selected"`` (module docstring).

    Returns:
        ``(reduced, reduced_margin)``: reduced is (B, C_S, H, W); reduced_margin broadcasts
        against it: (B, C_S, H, W) when it follows a per-position selection, else (1, C_S, 1, 1);
        ``None`` when ``margin`` is ``None``.
    """
    _check(teacher, groups, method)
    if margin_reduction not in MARGIN_REDUCTIONS:
        raise ValueError(f"margin_reduction must be one of {MARGIN_REDUCTIONS}; got {margin_reduction!r}")
    if margin is not None and (margin.dim() != 1 or margin.shape[0] != teacher.shape[1]):
        raise ValueError(
            f"margin must be (C_T,) = ({teacher.shape[1]},) to match teacher {tuple(teacher.shape)}; "
            f"got shape {tuple(margin.shape)}"
        )
    c_s, alpha = groups.shape
    gathered = _gather(teacher, groups)
    b, _, _, h, w = gathered.shape
    index = None  # (B, C_S, H, W) member chosen per position, for the "selected" margins
    if method == "avg":
        reduced = gathered.mean(dim=2)
    elif alpha == 1:  # sm always (checked above), or any method on a one-to-one matching
        reduced = gathered[:, :, 0]
    elif method == "rd":  # Eq. 13: independent draw per batch element and spatial position
        index = torch.randint(alpha, (b, c_s, h, w), generator=generator, device=teacher.device)
        reduced = gathered.gather(2, index.unsqueeze(2)).squeeze(2)
    else:  # amp (Eq. 14-15: largest magnitude, sign kept) or mp
        want_index = margin is not None and margin_reduction == "selected"
        reduced, index = _running_max(gathered, absolute=method == "amp", want_index=want_index)
    if margin is None:
        return reduced, None

    g = groups.to(device=margin.device, dtype=torch.int64)
    group_margin = margin[g]  # (C_S, alpha)
    if method == "avg" or (margin_reduction == "official" and method == "amp"):
        red_margin = group_margin.mean(dim=1).view(1, c_s, 1, 1)
    elif margin_reduction == "official" and method == "mp":
        red_margin = group_margin.amax(dim=1).view(1, c_s, 1, 1)
    elif index is None:  # alpha == 1: one channel per student channel
        red_margin = group_margin[:, 0].view(1, c_s, 1, 1)
    elif margin_reduction == "official" and method == "rd":
        pick = torch.randint(alpha, (c_s, 1), generator=generator, device=teacher.device).to(margin.device)
        red_margin = group_margin.gather(1, pick).view(1, c_s, 1, 1)
    else:  # "selected": the margin of the channel chosen at each position
        expanded = group_margin.to(teacher.dtype).view(1, c_s, alpha, 1, 1).expand(b, c_s, alpha, h, w)
        red_margin = expanded.gather(2, index.unsqueeze(2)).squeeze(2)
    return reduced, red_margin.to(reduced.dtype)
