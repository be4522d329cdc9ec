"""Transformer token features as channels over positions: ``(B, N, C)`` tokens viewed as a ``(B, C, H, W)`` map.

MGD matches and reduces *channels* and compares them position by position (Eq. 2-15); a vision transformer's
block output ``(B, N, C)`` has the same content, laid out differently: ``C`` channels at ``N = P + H * W`` tokens,
of which the first ``P`` are *prefix tokens* (class, distillation, register tokens: timm's ``num_prefix_tokens``)
and the other ``H * W`` the patches of the ``(H, W)`` patch grid in row-major order (timm's
``patch_embed.grid_size``). :func:`tokens_to_map` drops the prefix tokens and lays the patch tokens out on the
grid, so every tapped feature reaches the matching, the reduction and the losses as ``(B, C, H, W)``.

Layouts (:data:`LAYOUTS`), the ``layout`` of a :class:`~mgd_lightning.distill.feature_taps.Tap`:

``"nchw"``
    A CNN's feature map ``(B, C, H, W)``: returned as it is (the default; CNN taps are not touched).
``"tokens"``
    ``(B, N, C)``, ``N = P + H * W``: ViT, DeiT, ViT with registers, a hybrid's transformer blocks, MLP-Mixer.
``"nhwc"``
    ``(B, H, W, C)`` channels-last: timm's Swin stages (``model.output_fmt == "NHWC"``); no prefix tokens.

When teacher and student grids differ (a 14 x 14 ViT against a CNN's 56, 28, 14, 7 px stages), the teacher's map
is resampled to the student's grid by :func:`resample_to`: adaptive average pooling along a dimension that shrinks
(each student position gets the mean of the teacher positions it covers: no aliasing, the per-channel mean kept),
bilinear interpolation (``align_corners=False``) along one that grows (no new extrema, so the teacher's negative
responses stay within their range). The student is never resampled: its gradients stay on its own positions.

Plain torch; shapes in each docstring; every error is one ``ValueError`` line naming the bad argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["LAYOUTS", "tokens_to_map", "map_to_tokens", "resample_to", "grid_for", "as_hw"]

#: the token layouts a tap can have (see the module docstring)
LAYOUTS = ("nchw", "tokens", "nhwc")


def as_hw(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    """``value`` as an ``(H, W)`` tuple of two positive ints (``None`` stays ``None``); a one-line ``ValueError``
    naming ``name`` otherwise."""
    if value is None:
        return None
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (H, W), two positive ints; got {value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be (H, W), two positive ints; got {value!r}")
    return pair  # type: ignore[return-value]


def grid_for(num_patches: int, aspect: Sequence[int] = (1, 1)) -> tuple[int, int]:
    """The ``(H, W)`` grid of ``num_patches`` patch tokens closest to the ``aspect`` ``(height, width)`` of the input
    (e.g. the image's ``(H_in, W_in)``): ``H * W == num_patches`` with ``H / W`` nearest to ``aspect[0] / aspect[1]``.

    Raises ``ValueError`` (naming ``num_patches``) when it is not positive."""
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1; got {num_patches}")
    ratio = aspect[0] / aspect[1]
    best = None
    for h in range(1, num_patches + 1):
        if num_patches % h == 0:
            score = abs(math.log(h / (num_patches // h)) - math.log(ratio))
            if best is None or score < best[0]:
                best = (score, h)
    h = best[1]  # type: ignore[index]
    return h, num_patches // h


def tokens_to_map(
    x: torch.Tensor, grid: Sequence[int] | None = None, num_prefix_tokens: int = 0, layout: str = "tokens"
) -> torch.Tensor:
    """A transformer feature as a ``(B, C, H, W)`` map over its patch grid.

    Args:
        x: ``layout="tokens"``: ``(B, N, C)`` with ``N = num_prefix_tokens + H * W``, the patch tokens in row-major
            order of the grid; ``layout="nhwc"``: ``(B, H, W, C)``; ``layout="nchw"``: ``(B, C, H, W)``.
        grid: ``(H, W)`` of the patch grid (``"tokens"``); ``None``: a square grid (``H = W = sqrt(N - P)``).
            For ``"nhwc"`` / ``"nchw"``, when given, it must equal the tensor's own ``(H, W)``.
        num_prefix_tokens: ``P``, the class / distillation / register tokens in front of the patch tokens
            (``"tokens"`` only), dropped.
        layout: ``"tokens"``, ``"nhwc"`` or ``"nchw"`` (:data:`LAYOUTS`).

    Returns:
        ``(B, C, H, W)``, contiguous; ``x`` itself for ``"nchw"``. Autograd flows through it:
        ``out[b, c, i, j] == x[b, P + i * W + j, c]`` (``"tokens"``), ``x[b, i, j, c]`` (``"nhwc"``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    if num_prefix_tokens < 0 or (num_prefix_tokens and layout != "tokens"):
        raise ValueError(
            f"num_prefix_tokens must be >= 0, and 0 for layout {layout!r} (only 'tokens' has prefix tokens); "
            f"got {num_prefix_tokens}"
        )
    size = as_hw(grid, "grid")
    if layout == "nchw" or layout == "nhwc":
        if x.dim() != 4:
            raise ValueError(f"x must be 4-D (B, {'C, H, W' if layout == 'nchw' else 'H, W, C'}) for layout "
                             f"{layout!r}; got shape {tuple(x.shape)}")
        own = tuple(x.shape[2:]) if layout == "nchw" else tuple(x.shape[1:3])
        if size is not None and own != size:
            raise ValueError(f"grid {size} differs from the (H, W) {own} of the {layout} tensor {tuple(x.shape)}")
        return x if layout == "nchw" else x.permute(0, 3, 1, 2).contiguous()
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (B, N, C) tokens for layout 'tokens'; got shape {tuple(x.shape)}")
    b, n, c = x.shape
    patches = n - num_prefix_tokens
    if patches < 1:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} leaves no patch token of the N={n} tokens")
    if size is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"grid: N - num_prefix_tokens = {n} - {num_prefix_tokens} = {patches} patch tokens are "
                             "no square grid; give grid=(H, W)")
        size = (side, side)
    if size[0] * size[1] != patches:
        raise ValueError(f"grid {size} holds {size[0] * size[1]} patches but x has N - num_prefix_tokens = {n} - "
                         f"{num_prefix_tokens} = {patches} patch tokens")
    return x[:, num_prefix_tokens:].reshape(b, size[0], size[1], c).permute(0, 3, 1, 2).contiguous()


def map_to_tokens(m: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse of :func:`tokens_to_map`: a ``(B, C, H, W)`` map as ``(B, P + H * W, C)`` tokens, row-major,
    after the ``prefix`` tokens ``(B, P, C)`` when given."""
    if m.dim() != 4:
        raise ValueError(f"m must be 4-D (B, C, H, W); got shape {tuple(m.shape)}")
    tokens = m.flatten(2).transpose(1, 2)
    if prefix is None:
        return tokens
    if prefix.dim() != 3 or prefix.shape[0] != m.shape[0] or prefix.shape[2] != m.shape[1]:
        raise ValueError(f"prefix must be (B, P, C) = ({m.shape[0]}, P, {m.shape[1]}); got {tuple(prefix.shape)}")
    return torch.cat([prefix, tokens], dim=1)


def resample_to(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``(B, C, h, w)`` map resampled to ``(B, C, H, W)``, ``size = (H, W)``.

    Each spatial dimension that shrinks is averaged (adaptive average pooling: position ``i`` of ``H`` takes the mean
    of the input rows ``floor(i * h / H) .. ceil((i + 1) * h / H) - 1``); then each one that grows is interpolated
    bilinearly (``align_corners=False``). Equal sizes return ``m`` itself. Autograd flows through it.
    """
    target = as_hw(size, "size")
    if m.dim() != 4:
        raise ValueError(f"m must be 4-D (B, C, H, W); got shape {tuple(m.shape)}")
    h, w = m.shape[2:]
    if (h, w) == target:
        return m
    shrunk = (min(h, target[0]), min(w, target[1]))
    if shrunk != (h, w):
        m = F.adaptive_avg_pool2d(m, shrunk)
    if shrunk != target:
        m = F.interpolate(m, size=target, mode="bilinear", align_corners=False)
    return m
