"""What every feature distiller receives and returns (the competing baselines of paper Tables 1-3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["FeatureDistiller"]


class FeatureDistiller(nn.Module):
    """A feature-distillation loss over tap pairs, with any trainable student-side modules it needs.

    Args:
        tap_shapes: per tap ``(C_S, C_T, H, W)``.
        margins: per tap the teacher's (C_T,) margins (Eq. 4) or ``None``.
        tap_weights: per-tap weights.
        loss_factor: divisor of each tap's loss.

    ``forward(student_feats, teacher_feats)`` returns one scalar loss per tap, weighted and scaled.
    Its parameters are optimised with the student.
    """

    def __init__(
        self,
        tap_shapes: Sequence[tuple[int, int, int, int]],
        margins: Sequence[torch.Tensor | None],
        tap_weights: Sequence[float],
        loss_factor: float,
    ) -> None:
        super().__init__()
        self.tap_shapes = [tuple(s) for s in tap_shapes]
        self.tap_weights = [float(w) for w in tap_weights]
        self.loss_factor = float(loss_factor)
        for k, m in enumerate(margins):
            self.register_buffer(f"margin_{k}", m.detach().clone() if m is not None else torch.zeros(0))

    def margin(self, k: int) -> torch.Tensor | None:
        m = getattr(self, f"margin_{k}")
        return m if m.numel() else None

    def tap_loss(self, k: int, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            self.tap_loss(k, s, t.detach()) * (self.tap_weights[k] / self.loss_factor)
            for k, (s, t) in enumerate(zip(student_feats, teacher_feats))
        ]
