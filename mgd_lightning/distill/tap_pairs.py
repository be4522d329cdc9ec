"""Teacher / student tap pairs of :class:`~mgd_lightning.DistillationModule`: chosen, probed and checked.

The ``k``-th teacher tap is distilled into the ``k``-th student tap (the ``T_k`` and ``S_k`` of Eq. 2). The pairs
are chosen from the taps given or found (:func:`pair_taps`), their shapes read from one probe forward of a zero
image through both networks (:func:`probe_tap_shapes`), and checked (:func:`tap_pair_shapes`): equal spatial
sizes, and for MGD at least as many teacher channels as student channels (``C_T >= C_S``, the matching's premise).
Each error is one ``ValueError`` line naming the taps or ``input_size`` and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from mgd_lightning.tasks import Task

from .auto_taps import pair_by_size, resample_teacher_taps
from .taps import FeatureTaps, Tap, preset_taps, resolve_taps

__all__ = ["TapShape", "pair_taps", "probe_input", "probe_tap_shapes", "tap_pair_shapes"]

#: one tap pair's ``(C_S, C_T, H, W)``: student channels, teacher channels and the common spatial size
TapShape = tuple[int, int, int, int]


def pair_taps(
    teacher_root: nn.Module, teacher_taps: Sequence[str | Tap] | None,
    student_root: nn.Module, student_taps: Sequence[str | Tap] | None, size: Sequence[int],
) -> tuple[list[Tap], list[Tap]]:
    """The teacher's and the student's taps, as many on both sides, in pair order.

    ``None`` on a side picks its preset, else its automatic taps (:func:`~mgd_lightning.distill.taps.resolve_taps`).
    With automatic taps on either side, the taps of the spatial sizes found on both sides are paired
    (:func:`~mgd_lightning.distill.auto_taps.pair_by_size`, at the ``(C, H, W)`` ``size``); with presets on both
    sides and unequal counts, the earliest taps of the longer list are dropped (the reference code's
    ``ignore_inds``). Raises ``ValueError`` when taps given by name differ in count.

    A transformer's taps (``Tap.layout`` ``"tokens"`` / ``"nhwc"``) on either side: pairs whose grids differ have the
    teacher's map resampled to the student's grid (``Tap.resample``;
    :func:`~mgd_lightning.distill.auto_taps.pair_by_size` pairs such automatic taps in order where their sizes do
    not pair them)."""
    t_taps = resolve_taps(teacher_root, teacher_taps, "teacher", size)
    s_taps = resolve_taps(student_root, student_taps, "student", size)
    sides = ((teacher_root, teacher_taps), (student_root, student_taps))
    if any(taps is None and preset_taps(root) is None for root, taps in sides):
        t_taps, s_taps = pair_by_size(teacher_root, t_taps, student_root, s_taps, size)
    elif teacher_taps is None and student_taps is None and len(t_taps) != len(s_taps):
        n = min(len(t_taps), len(s_taps))
        t_taps, s_taps = t_taps[len(t_taps) - n :], s_taps[len(s_taps) - n :]
    if len(t_taps) != len(s_taps):
        raise ValueError(
            f"teacher and student need as many taps: teacher_taps {[t.module for t in t_taps]} "
            f"({len(t_taps)}) vs student_taps {[t.module for t in s_taps]} ({len(s_taps)})"
        )
    return resample_teacher_taps(teacher_root, t_taps, student_root, s_taps, size), s_taps


def probe_input(size: Sequence[int], teacher: nn.Module) -> torch.Tensor:
    """A ``(1, C, H, W)`` zero image of ``size`` on the teacher's device: the probe of the tap shapes and of the
    BatchNorm before each teacher tap."""
    return torch.zeros(1, *size, device=next(teacher.parameters()).device)


def probe_tap_shapes(
    task: Task, teacher: nn.Module, student: nn.Module, teacher_taps: FeatureTaps, student_taps: FeatureTaps,
    example: torch.Tensor, size_given: bool = True,
) -> tuple[list[torch.Size], list[torch.Size]]:
    """The ``(1, C, H, W)`` shapes of the teacher's and the student's tapped tensors on one forward of the probe
    ``example`` ``(1, C, H, W)`` through each network's tap root (no gradients; the student in eval mode for
    the probe, its mode restored).

    Raises a one-line ``ValueError`` naming ``input_size`` when a network cannot run the probe (``size_given``:
    whether ``input_size`` was given, or came from the models' defaults)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            task.tap_root(teacher)(example)
            t_shapes = [f.shape for f in teacher_taps.features]
            task.tap_root(student)(example.to(next(student.parameters()).device))
            s_shapes = [f.shape for f in student_taps.features]
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        size = tuple(example.shape[1:])
        given = "" if size_given else " (not given: the models' default_input_size, else (3, 224, 224))"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"input_size={size}{given}: the teacher and student cannot run a (1, {size[0]}, {size[1]}, "
            f"{size[2]}) probe input ({type(err).__name__}: {reason}). input_size must be the (C, H, W) of "
            "the training images as the networks take them, e.g. (3, 32, 32) for CIFAR-100, (3, 224, 224) "
            "for CUB-200 / ImageNet, (3, 16, 16) for configs/digits"
        ) from err
    finally:
        student.train(was_training)
    return t_shapes, s_shapes


def tap_pair_shapes(
    teacher_taps: Sequence[Tap], student_taps: Sequence[Tap], teacher_shapes: Sequence[Sequence[int]],
    student_shapes: Sequence[Sequence[int]], size: Sequence[int], distiller: str,
) -> list[TapShape]:
    """Each pair's ``(C_S, C_T, H, W)`` from the probed ``(1, C, H, W)`` shapes, checked: equal ``(H, W)`` on both
    sides, and ``C_T >= C_S`` for ``distiller="mgd"`` (each student channel matches ``alpha = C_T // C_S >= 1``
    teacher channels, Eq. 8-11). Raises a one-line ``ValueError`` naming the pair's taps."""
    for k, (tt, st, ts, ss) in enumerate(zip(teacher_taps, student_taps, teacher_shapes, student_shapes)):
        if ts[2:] != ss[2:]:
            raise ValueError(
                f"tap pair {k}: teacher {tt.module!r} gives {tuple(ts[1:])} (C, H, W) but student "
                f"{st.module!r} gives {tuple(ss[1:])} at input {tuple(size)}: spatial sizes must be equal; "
                "choose other taps or another input_size"
            )
        if ts[1] < ss[1] and distiller == "mgd":
            raise ValueError(
                f"tap pair {k}: teacher {tt.module!r} has C_T={ts[1]} channels < student "
                f"{st.module!r} C_S={ss[1]}; MGD needs C_T >= C_S at every tap"
            )
    return [(int(ss[1]), int(ts[1]), int(ss[2]), int(ss[3])) for ts, ss in zip(teacher_shapes, student_shapes)]
