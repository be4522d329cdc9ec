"""Losses of Matching Guided Distillation (section 3.1, Eq. 4-5) and Hinton KD.

Plain torch; no Lightning import.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["margin_from_bn", "margin_relu", "partial_l2", "kd_loss"]


def margin_from_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, threshold: float = 1e-3) -> torch.Tensor:
    """Per-channel margin ``m < 0`` of the margin ReLU (Eq. 4), from the BatchNorm before the tap.

    The BN output of channel ``c`` is modelled as a Gaussian with std ``s = |gamma_c|`` and mean
    ``b = beta_c``; the margin is the expectation of its negative part::

        m = b - s * phi(b / s) / Phi(-b / s)    if Phi(-b / s) > threshold
        m = -3 s                                otherwise

    (``phi``/``Phi``: standard normal density / CDF), as in Heo et al. (ICCV 2019) and the
    reference code. Computed in float64.

    Args:
        bn: an affine BatchNorm module (or any module with ``weight`` and ``bias`` of shape (C,)).

    Returns:
        (C,) tensor, detached, on the BN's device and dtype.
    """
    weight = getattr(bn, "weight", None)
    bias = getattr(bn, "bias", None)
    if weight is None or bias is None:
        raise ValueError(
            f"bn must be an affine BatchNorm with weight and bias; got {type(bn).__name__} "
            f"(weight={'set' if weight is not None else None}, bias={'set' if bias is not None else None})"
        )
    s = weight.detach().double().abs().clamp_min(1e-12)
    b = bias.detach().double()
    z = b / s
    tail = torch.special.ndtr(-z)  # Phi(-b/s): probability of the negative part
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    expectation = b - s * pdf / tail.clamp_min(1e-300)
    margin = torch.where(tail > threshold, expectation, -3.0 * s)
    return margin.to(weight.dtype)


def _broadcast_margin(margin: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if margin.dim() == 1:
        if like.dim() < 2 or margin.shape[0] != like.shape[1]:
            raise ValueError(
                f"margin of shape {tuple(margin.shape)} must have one value per channel of the "
                f"teacher {tuple(like.shape)} (dim 1)"
            )
        return margin.view(1, -1, *([1] * (like.dim() - 2)))
    try:
        torch.broadcast_shapes(margin.shape, like.shape)
    except RuntimeError:
        raise ValueError(
            f"margin of shape {tuple(margin.shape)} does not broadcast to teacher {tuple(like.shape)}"
        ) from None
    return margin


def margin_relu(teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Teacher transform sigma_T(x) = max(x, m) (Eq. 4).

    Args:
        teacher: (B, C, H, W) or (B, C).
        margin: (C,) per channel, or any shape broadcasting to ``teacher``.
    """
    return torch.maximum(teacher, _broadcast_margin(margin, teacher).to(teacher.dtype))


def partial_l2(
    student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Partial L2 distance d_p (Eq. 5) after the optional margin ReLU (Eq. 4), summed.

    ``sum (t - s)^2`` over all elements except where ``s <= t <= 0`` (a student already below a
    non-positive teacher target is not pushed up).

    Args:
        student: (B, C, H, W) student feature (any shape equal to the teacher's).
        teacher: (B, C, H, W) teacher feature (reduced to the student's channels).
        margin: optional margin, (C,) or broadcastable to ``teacher``; when given, the teacher
            target is ``max(teacher, margin)``.

    Returns:
        0-dim tensor, the sum over every element (divide by the batch size yourself).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher must have the same shape; got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    target = teacher.detach()
    if margin is not None:
        target = margin_relu(target, margin)
    target = target.to(student.dtype)
    keep = (student > target) | (target > 0)
    return ((student - target).pow(2) * keep).sum()


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton knowledge distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K), no gradient flows into it.
        temperature: T > 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student_logits and teacher_logits must both be (B, K) with equal shapes; got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (temperature**2)
