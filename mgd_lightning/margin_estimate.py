"""An estimated margin for the margin ReLU (Eq. 4) of a teacher with no BatchNorm before its taps.

MGD's margin ``m_c`` is the expectation of the teacher's negative responses of channel ``c``: ``E[x | x < 0]``
(Eq. 4; Heo et al., ICCV 2019). :func:`~mgd_lightning.losses.margin_from_bn` computes it in closed form from the
BatchNorm before the tap, modelling its output as a Gaussian ``N(beta_c, gamma_c^2)``. A LayerNorm + GELU network (a
vision transformer) has no such BatchNorm; :func:`estimate_margin` measures the same expectation on the teacher's
features over a batch (or several) of data instead: per channel, the mean of the negative responses, with the same
fallback as the BN formula, ``-3 * std``, where at most ``threshold`` of the responses are negative. Over a data set,
add :func:`margin_statistics` of each batch (``5 * C`` numbers) and finish with :func:`margin_from_statistics`.

Opt-in: :class:`~mgd_lightning.DistillationModule` gives token taps no margin (the plain partial L2 on the reduced
teacher). Plain torch; no Lightning import.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["estimate_margin", "margin_statistics", "margin_from_statistics"]


def margin_statistics(features: torch.Tensor) -> torch.Tensor:
    """Additive per-channel statistics of one batch of teacher features, for :func:`margin_from_statistics`.

    Args:
        features: ``(B, C, H, W)`` or ``(B, C)`` (channels at dim 1), e.g. a tap of
            :attr:`~mgd_lightning.distill.feature_taps.FeatureTaps.features`.

    Returns:
        ``(5, C)`` float64, detached: per channel the sum of the negative responses, their count, the sum of all
        responses, their count and the sum of their squares. Statistics of several batches add up (``a + b``), so a
        pass over a data set keeps ``5 * C`` numbers per tap, not the features.
    """
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be (B, C, ...) tensors; got {got}")
    x = features.detach().double().transpose(0, 1).reshape(features.shape[1], -1)  # (C, B * H * W)
    return torch.stack([x.clamp_max(0).sum(1), (x < 0).sum(1).double(), x.sum(1),
                        torch.full_like(x[:, 0], x.shape[1]), x.square().sum(1)])


def margin_from_statistics(statistics: torch.Tensor, threshold: float = 1e-3) -> torch.Tensor:
    """The margins ``(C,)`` float32 from summed :func:`margin_statistics` ``(5, C)``: per channel the mean of the
    negative responses, or ``-3 * std`` where at most ``threshold`` of the responses are negative."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1); got {threshold}")
    if statistics.dim() != 2 or statistics.shape[0] != 5:
        raise ValueError(f"statistics must be (5, C) from margin_statistics; got {tuple(statistics.shape)}")
    neg_sum, neg_count, total, count, square = statistics.double()
    mean = total / count
    std = (square / count - mean.square()).clamp_min(0).sqrt()
    expectation = neg_sum / neg_count.clamp_min(1)
    return torch.where(neg_count / count > threshold, expectation, -3.0 * std).float()


def estimate_margin(features: torch.Tensor | Iterable[torch.Tensor], threshold: float = 1e-3) -> torch.Tensor:
    """Per-channel margin ``m_c = E[x | x < 0]`` of teacher features, estimated from data.

    Args:
        features: the teacher's tapped features, ``(B, C, H, W)`` or ``(B, C)`` (channels at dim 1; a token tap as
            :attr:`~mgd_lightning.distill.feature_taps.FeatureTaps.features` gives it), or an iterable of such
            tensors with one ``C`` (batches, read one at a time: accumulated as one big batch).
        threshold: a channel whose fraction of negative responses is at most this gets ``-3 * std`` (its
            responses' standard deviation), as :func:`~mgd_lightning.losses.margin_from_bn` for ``Phi(-b/s)``
            at most ``threshold``.

    Returns:
        ``(C,)`` float32 margins, ``<= 0``, detached, on the features' device. On Gaussian features
        ``N(b_c, s_c^2)`` it converges to ``margin_from_bn`` of a BatchNorm with ``bias = b_c``, ``weight = s_c``.

    Raises:
        ValueError: no features, a tensor of fewer than 2 dimensions, or channel counts that differ.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1); got {threshold}")
    total = None
    for f in [features] if isinstance(features, torch.Tensor) else features:
        stats = margin_statistics(f)
        if total is not None and stats.shape != total.shape:
            raise ValueError(f"features: channel counts differ ({total.shape[1]} and {stats.shape[1]})")
        total = stats if total is None else total + stats
    if total is None:
        raise ValueError("features: no tensors given")
    return margin_from_statistics(total, threshold)
