"""Automatic taps for vision transformers and hybrids: token blocks, tapped as ``(B, C, H, W)`` maps.

:func:`~mgd_lightning.distill.auto_taps.auto_taps` traces one probe forward; this module reads that trace (a list of
module calls with their output tensors, in call order) and finds a transformer's *block sequence*:

1. **Token tensors.** A module output is a token tensor over a patch grid when it is

   * ``(1, N, C)`` tokens (ViT, DeiT, ViT with registers, a hybrid's transformer, MLP-Mixer): the grid is the
     spatial size of the latest ``nn.Conv2d`` output computed before it (the patch embedding's projection) whose
     ``H * W`` leaves ``P = N - H * W`` prefix tokens, ``P`` the model's ``num_prefix_tokens`` where it has one
     (timm), else ``0 <= P < H * W`` (torchvision's ViT: its class token); or
   * ``(1, H, W, C)`` channels-last (timm's Swin stages), not a convolution's own output: the model says
     ``output_fmt == "NHWC"``, or ``(H, W)`` is the patch grid or a halving of it while the last two dimensions are
     no convolution's output size (so a CNN's NCHW map is not taken for one).

2. **The block sequence**: the ``nn.Sequential`` / ``nn.ModuleList`` whose children are all composite modules (not a
   ``Linear`` / ``GELU`` list such as torchvision's ``MLPBlock``) returning token tensors; among several, the one over
   the most distinct grids (a hierarchical model's stages, e.g. Swin's ``layers``, before the blocks of one stage),
   then the one with the most children.

3. **The taps** (block outputs: the residual stream, which the next block normalises; there is no pre-activation
   tensor and no BatchNorm: see :mod:`~mgd_lightning.distill.tap_norms` for the margin):

   * a hierarchical sequence (children over several grids): the last child of each grid, the stage ends (Swin);
   * a plain one (one grid): the ends of ``num_taps`` equal parts of the sequence, e.g. ``blocks.2/5/8/11`` of a
     12-block ViT for 4 taps, every block of a 4-block one.

   Each is ``Tap(name, "output", layout=..., grid=..., prefix_tokens=...)``:
   :attr:`~mgd_lightning.distill.feature_taps.FeatureTaps.features` gives it as ``(B, C, H, W)``.

A model without such a sequence gives ``None`` here, and the CNN rule of ``auto_taps`` applies (ConvNeXt / ConvNeXt-V2,
whose stages return NCHW maps, are CNNs to it). :func:`token_info` is also how a tap given by name on a transformer
learns its layout (:func:`~mgd_lightning.distill.auto_taps.token_layouts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .feature_taps import Tap
from .token_grid import grid_for

__all__ = ["TokenInfo", "token_info", "token_block_taps", "looks_like_transformer"]

#: ``(layout, grid, prefix_tokens)`` of a token tensor
TokenInfo = tuple[str, tuple[int, int], int]


def looks_like_transformer(model: nn.Module) -> bool:
    """Whether ``model`` may hold token tensors worth a probe: timm's ``num_prefix_tokens`` / ``output_fmt``
    attributes, a ``LayerNorm`` or a ``MultiheadAttention`` module (a cheap test, no forward)."""
    if hasattr(model, "num_prefix_tokens") or getattr(model, "output_fmt", None) == "NHWC":
        return True
    return any(isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)) for m in model.modules())


def _conv_sizes(calls: Sequence[Any]) -> list[tuple[int, tuple[int, int]]]:
    """``(end time, (H, W))`` of every ``nn.Conv2d`` call with an NCHW output, in call order."""
    return [(c.end, tuple(c.out.shape[2:])) for c in calls
            if isinstance(c.module, nn.Conv2d) and isinstance(c.out, torch.Tensor) and c.out.dim() == 4]


def token_info(model: nn.Module, calls: Sequence[Any], tensor: torch.Tensor | None, time: int,
               example: torch.Tensor) -> TokenInfo | None:
    """``(layout, grid, prefix_tokens)`` of ``tensor``, a module output at ``time`` in the traced forward ``calls``
    (objects with ``module``, ``out`` and ``end``), if it is a token tensor over a patch grid (module docstring, 1);
    else ``None``."""
    if not isinstance(tensor, torch.Tensor):
        return None
    convs = _conv_sizes(calls)
    before = [s for end, s in convs if end <= time]
    if tensor.dim() == 3:
        n = tensor.shape[1]
        prefix = getattr(model, "num_prefix_tokens", None)
        prefix = int(prefix) if isinstance(prefix, int) else None
        for size in reversed(before):
            m = size[0] * size[1]
            if (prefix is None and 0 <= n - m < m) or (prefix is not None and n - m == prefix):
                return "tokens", size, n - m
        if prefix is not None and n - prefix >= 1 and before:  # a grid no convolution shows: from the input's shape
            return "tokens", grid_for(n - prefix, tuple(example.shape[2:])), prefix
        return None
    if tensor.dim() == 4 and before:
        h, w = tensor.shape[1:3]
        patch = before[0]
        halvings = {(math.ceil(patch[0] / 2**k), math.ceil(patch[1] / 2**k)) for k in range(8)}
        if any(c.out is tensor for c in calls if isinstance(c.module, nn.Conv2d)):  # a convolution's own map
            return None
        nchw = tuple(tensor.shape[2:]) in {s for _, s in convs}  # of a convolution's map size: NCHW
        if getattr(model, "output_fmt", None) == "NHWC" or ((h, w) in halvings and not nchw):
            return "nhwc", (int(h), int(w)), 0
    return None


def _ends(length: int, parts: int) -> list[int]:
    """The last index of each of ``parts`` near-equal parts of ``range(length)``."""
    parts = min(parts, length)
    return sorted({math.ceil((k + 1) * length / parts) - 1 for k in range(parts)})


def token_block_taps(
    model: nn.Module, calls: Sequence[Any], example: torch.Tensor, num_taps: int = 4
) -> list[Tap] | None:
    """The taps of a transformer's block sequence (module docstring), from the traced forward ``calls`` of the probe
    ``example`` ``(1, C, H, W)`` (objects with ``name``, ``module``, ``out``, ``out_version``, ``start``, ``end``);
    ``None`` when the model has no block sequence of token tensors."""
    if num_taps < 1:
        raise ValueError(f"num_taps must be >= 1; got {num_taps}")
    last: dict[str, Any] = {}
    count: dict[str, int] = {}
    for c in calls:
        last[c.name] = c
        count[c.name] = count.get(c.name, 0) + 1
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        kids = [(f"{name}.{k}" if name else k, child) for k, child in module.named_children()]
        if not kids or any(k not in last or not any(True for _ in child.children()) for k, child in kids):
            continue
        infos = []
        for k, _ in kids:
            c = last[k]
            info = token_info(model, calls, c.out, c.end, example) if count[k] == 1 else None
            if info is None or c.out._version != c.out_version:
                break
            infos.append(info)
        else:
            score = (len({info[1] for info in infos}), len(kids))
            if best is None or score > best[0]:
                best = (score, [k for k, _ in kids], infos)
    if best is None:
        return None
    (grids, _), names, infos = best
    if grids > 1:  # stage ends: the last child of each run of one grid
        picks = [i for i in range(len(names)) if i + 1 == len(names) or infos[i + 1][1] != infos[i][1]]
    else:
        picks = _ends(len(names), num_taps)
    # a channels-last tap needs no grid (the tensor has it): the tap then follows the input size
    return [Tap(names[i], "output", layout=infos[i][0], grid=infos[i][1] if infos[i][0] == "tokens" else None,
                prefix_tokens=infos[i][2]) for i in picks]
