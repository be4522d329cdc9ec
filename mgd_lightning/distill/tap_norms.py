"""The norms at the distilled taps: the teacher's BatchNorm before each tap, and the student's trainable tap norm.

Teacher side: the BatchNorm that ran last before each tapped teacher tensor (for a ResNet block the residual
branch's last BN, as the reference code) gives that tap's margins ``m_c`` of the margin ReLU ``sigma_T`` (Eq. 4,
:func:`~mgd_lightning.losses.margin_from_bn`). The BatchNorms are found once, by tracing the shape probe
(:func:`~mgd_lightning.distill.taps.batchnorm_before_taps`), and kept by name, so a checkpoint's margins can be
recomputed from the teacher given at load time (:func:`teacher_margins`).

Student side: the trainable norm ``BN_k`` applied to each student tap before the loss (Eq. 2), the task's
(:meth:`Task.tap_norm <mgd_lightning.tasks.Task.tap_norm>`: ``BatchNorm2d(C_S)`` for classification,
``GroupNorm(32, C_S)`` for detection), or the identity when disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn

from mgd_lightning.losses import margin_from_bn
from mgd_lightning.tasks import Task

from .taps import Tap, batchnorm_before_taps

__all__ = ["margin_batchnorms", "student_tap_norms", "tap_margins", "teacher_margins"]

log = logging.getLogger(__name__)


def margin_batchnorms(
    teacher_root: nn.Module, teacher_taps: Sequence[Tap], example: torch.Tensor
) -> tuple[list[nn.Module | None], list[str | None]]:
    """The BatchNorm before each teacher tap (found on one forward of the probe ``example``, ``(1, C, H, W)``)
    and its name in ``teacher_root``; ``None`` for a tap without one."""
    bns = batchnorm_before_taps(teacher_root, teacher_taps, example)
    names = {id(m): n for n, m in teacher_root.named_modules()}
    return bns, [names.get(id(bn)) if bn is not None else None for bn in bns]


def tap_margins(bns: Sequence[nn.Module | None], teacher_taps: Sequence[Tap]) -> list[torch.Tensor]:
    """The margins (Eq. 4) of each teacher tap, ``(C_T,)`` float32, from the BatchNorm before it; an empty
    ``(0,)`` tensor (no margin ReLU) for a tap without one, with a logged warning.

    A transformer's token taps (``Tap.layout`` ``"tokens"`` / ``"nhwc"``: LayerNorm + GELU, no BatchNorm before a
    ReLU) have no margin by design: the teacher target is the plain reduced teacher under the partial L2 (Eq. 5),
    said once for all of them at info level (no warning). An estimated margin is opt-in
    (:meth:`DistillationModule.estimate_margins <mgd_lightning.DistillationModule.estimate_margins>`,
    :func:`mgd_lightning.margin_estimate.estimate_margin`)."""
    margins = []
    token_taps = []
    for tap, bn in zip(teacher_taps, bns):
        if bn is None and tap.layout != "nchw":
            token_taps.append(tap.module)
        elif bn is None:
            log.warning("teacher tap %r: no BatchNorm before it; no margin ReLU", tap.module)
        margins.append(margin_from_bn(bn).float() if bn is not None else torch.zeros(0))
    if token_taps:
        log.info("teacher token taps %s: no BatchNorm (LayerNorm network); no margin ReLU, the plain partial L2 on "
                 "the reduced teacher", token_taps)
    return margins


def teacher_margins(teacher_root: nn.Module, bn_names: Sequence[str | None]) -> list[torch.Tensor | None]:
    """The margins (Eq. 4) of the teacher as it is now, ``(C_T,)`` float32 per tap, from the BatchNorms named
    ``bn_names`` in ``teacher_root`` (:func:`margin_batchnorms`); ``None`` for a tap without one."""
    modules = dict(teacher_root.named_modules())
    return [margin_from_bn(modules[name]).float() if name is not None else None for name in bn_names]


def student_tap_norms(task: Task, tap_shapes: Sequence[Sequence[int]], enabled: bool) -> nn.ModuleList:
    """One student-side norm per tap pair ``(C_S, C_T, H, W)``: the task's ``tap_norm(C_S)`` (``BN_k`` of Eq. 2,
    taking and giving ``(B, C_S, H, W)``), or ``nn.Identity()`` on every tap unless ``enabled``."""
    return nn.ModuleList(task.tap_norm(shape[0]) if enabled else nn.Identity() for shape in tap_shapes)
