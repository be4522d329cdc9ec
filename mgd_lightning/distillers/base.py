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
        tap_weights: per-tap weights; ``None``: the method's authors' default (:meth:`default_tap_weights`).
            A tap of weight 0 is not distilled (no loss, no trainable module built for it).
        loss_factor: divisor of each tap's loss; ``None``: :attr:`default_loss_factor`.

    ``forward(student_feats, teacher_feats)`` returns one scalar loss per tap, weighted and scaled.
    Its parameters are optimised with the student. Each subclass's defaults cite the authors' code they follow.
    """

    #: divisor of the per-tap losses when ``loss_factor`` is not given
    default_loss_factor: float = 1.0

    @classmethod
    def default_tap_weights(cls, num_taps: int) -> list[float]:
        """Per-tap weights when ``tap_weights`` is not given: equal weights."""
        return [1.0] * num_taps

    def __init__(
        self,
        tap_shapes: Sequence[tuple[int, int, int, int]],
        margins: Sequence[torch.Tensor | None],
        tap_weights: Sequence[float] | None = None,
        loss_factor: float | None = None,
    ) -> None:
        super().__init__()
        self.tap_shapes = [tuple(s) for s in tap_shapes]
        if tap_weights is None:
            tap_weights = self.default_tap_weights(len(self.tap_shapes))
        if len(tap_weights) != len(self.tap_shapes):
            raise ValueError(f"tap_weights needs {len(self.tap_shapes)} values (one per tap); got {list(tap_weights)}")
        self.tap_weights = [float(w) for w in tap_weights]
        self.loss_factor = float(self.default_loss_factor if loss_factor is None else loss_factor)
        if self.loss_factor <= 0:
            raise ValueError(f"loss_factor must be > 0; got {loss_factor}")
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
            if self.tap_weights[k] != 0 else s.new_zeros(())
            for k, (s, t) in enumerate(zip(student_feats, teacher_feats))
        ]
