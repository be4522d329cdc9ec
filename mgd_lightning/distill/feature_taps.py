"""Feature taps as hooks: a :class:`Tap` (one distillation position) and :class:`FeatureTaps`, the hooks that keep
the tapped tensors of a model's latest forward.

A :class:`Tap` names a submodule and says whether the feature is that module's *output* (forward
hook) or the *input of its last call* (forward pre-hook). :class:`FeatureTaps` registers the hooks
once; every normal forward of the model then leaves the tapped tensors in ``taps.features``: one
forward pass per step, no re-running of partial networks.

A transformer's tap (``Tap.layout`` ``"tokens"`` or ``"nhwc"``) is kept as the module gives it, ``(B, N, C)`` tokens
or ``(B, H, W, C)``, and ``features`` returns it as a ``(B, C, H, W)`` map over the patch grid, prefix tokens dropped
(:func:`~mgd_lightning.distill.token_grid.tokens_to_map`); a tap with ``resample`` set is resampled to that grid
(:func:`~mgd_lightning.distill.token_grid.resample_to`: a teacher's map at the student's grid). A CNN tap (``"nchw"``,
no ``resample``) is returned as the very tensor of the forward, as before.

Which taps a network gets (the paper's presets, or the automatic ones) is :mod:`mgd_lightning.distill.taps`'s and
:mod:`mgd_lightning.distill.auto_taps`'s; both build on this module.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .token_grid import LAYOUTS, as_hw, resample_to, tokens_to_map

__all__ = ["KINDS", "Tap", "FeatureTaps"]

KINDS = ("output", "input")


@dataclass(frozen=True)
class Tap:
    """One distillation position.

    Attributes:
        module: name of the submodule, as in ``model.named_modules()``.
        kind: ``"output"`` (the module's output) or ``"input"`` (the first positional input of the
            module's last call in a forward: for a shared ReLU, the tensor it activates last).
        non_inplace: activation modules to switch to ``inplace=False`` so the tapped tensor is
            never overwritten.
        clone: keep a copy of the tensor (autograd flows through it), for a tensor that the forward later
            overwrites with no module to switch: a functional in-place activation (DenseNet's
            ``F.relu(features, inplace=True)`` after ``features.norm5``).
        layout: how the tapped tensor lays out channels and positions
            (:data:`~mgd_lightning.distill.token_grid.LAYOUTS`): ``"nchw"`` (a CNN's map, the default), ``"tokens"``
            (a transformer block's ``(B, N, C)``) or ``"nhwc"`` (channels-last ``(B, H, W, C)``: timm's Swin
            stages). :attr:`FeatureTaps.features` gives every tap as ``(B, C, H, W)``.
        grid: ``(H, W)`` patch grid of a ``"tokens"`` tap; ``None``: square.
        prefix_tokens: the class / distillation / register tokens in front of a ``"tokens"`` tap's patch
            tokens (timm's ``num_prefix_tokens``), dropped.
        resample: ``(H, W)`` to resample the map to (:func:`~mgd_lightning.distill.token_grid.resample_to`):
            a teacher tap at the student's grid when the two differ; ``None``: as it is.
    """

    module: str
    kind: str = "output"
    non_inplace: tuple[str, ...] = ()
    clone: bool = False
    layout: str = "nchw"
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    resample: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Tap.kind must be one of {KINDS}; got {self.kind!r} for module {self.module!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"Tap.layout must be one of {LAYOUTS}; got {self.layout!r} for module {self.module!r}")
        if not isinstance(self.prefix_tokens, numbers.Integral) or isinstance(self.prefix_tokens, bool) or (
                self.prefix_tokens < 0 or (self.prefix_tokens and self.layout != "tokens")):
            raise ValueError(f"Tap.prefix_tokens must be an int >= 0 (0 unless layout='tokens'); got "
                             f"{self.prefix_tokens!r} for module {self.module!r}")
        object.__setattr__(self, "prefix_tokens", int(self.prefix_tokens))
        if self.grid is not None and self.layout != "tokens":
            raise ValueError(f"Tap.grid is the patch grid of a layout='tokens' tap (a {self.layout!r} map carries "
                             f"its own); got grid={self.grid!r} for module {self.module!r}: drop grid, or set "
                             "layout='tokens'")
        # lists (from a config file) become tuples: the tap stays hashable
        object.__setattr__(self, "grid", as_hw(self.grid, f"Tap.grid of module {self.module!r}"))
        object.__setattr__(self, "resample", as_hw(self.resample, f"Tap.resample of module {self.module!r}"))

    @property
    def mapped(self) -> bool:
        """Whether :meth:`to_map` changes the tapped tensor (a token layout, or a resampling)."""
        return self.layout != "nchw" or self.resample is not None

    def to_map(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tapped ``tensor`` as ``(B, C, H, W)``: laid out over its grid (``layout``), then resampled
        (``resample``); the tensor itself for a plain CNN tap."""
        if not self.mapped:
            return tensor
        try:
            m = tokens_to_map(tensor, self.grid, self.prefix_tokens, self.layout)
        except ValueError as err:
            raise ValueError(f"tap {self.module!r} (layout {self.layout!r}): {err}") from None
        return resample_to(m, self.resample) if self.resample is not None else m



def _version(tensor: torch.Tensor) -> int:
    """In-place modification counter; -1 for inference-mode tensors, which have none."""
    return -1 if tensor.is_inference() else tensor._version


class FeatureTaps:
    """Hooks that keep the tapped tensors of the model's latest forward.

    Args:
        model: the network; activations named by the taps are switched to ``inplace=False``.
        taps: resolved taps (:func:`~mgd_lightning.distill.taps.resolve_taps`).

    ``features`` is the list of tapped tensors of the most recent forward, in tap order; they are
    the very tensors of the forward (autograd flows through them), or for a token / resampled tap
    (:attr:`Tap.mapped`) their ``(B, C, H, W)`` map (:meth:`Tap.to_map`, made from the kept tensor on each read).
    """

    def __init__(self, model: nn.Module, taps: Sequence[Tap]) -> None:
        self.taps = list(taps)
        self._store: list[torch.Tensor | None] = [None] * len(self.taps)
        #: the first positional input of the model's latest forward (a detection backbone body: the batched,
        #: normalised images the detector's own transform made)
        self.root_input: torch.Tensor | None = None
        self._versions: list[int] = [0] * len(self.taps)
        modules = dict(model.named_modules())
        for tap in self.taps:
            for act in tap.non_inplace:
                if hasattr(modules[act], "inplace"):
                    modules[act].inplace = False
        self._handles = [model.register_forward_pre_hook(self._clear)]
        for i, tap in enumerate(self.taps):
            module = modules[tap.module]
            if tap.kind == "output":
                self._handles.append(module.register_forward_hook(functools.partial(self._keep_output, i)))
            else:
                self._handles.append(module.register_forward_pre_hook(functools.partial(self._keep_input, i)))

    def __getstate__(self) -> dict:
        # Copies and pickles (deepcopy of a model, ddp_spawn) carry the hooks, not the last forward's
        # tensors: those are non-leaf tensors that deepcopy refuses.
        state = dict(self.__dict__)
        state["_store"] = [None] * len(self.taps)
        state["_versions"] = [0] * len(self.taps)
        state["root_input"] = None
        return state

    def _clear(self, module: nn.Module, args: tuple) -> None:
        self._store = [None] * len(self.taps)
        self.root_input = args[0] if args else None

    # Hooks are bound methods wrapped in functools.partial (no closures), so models stay picklable
    # for ddp_spawn.
    def _keep_output(self, i: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._store[i] = output.clone() if self.taps[i].clone else output
        self._versions[i] = _version(self._store[i])

    def _keep_input(self, i: int, module: nn.Module, args: tuple) -> None:
        self._store[i] = args[0].clone() if self.taps[i].clone else args[0]
        self._versions[i] = _version(self._store[i])

    @property
    def features(self) -> list[torch.Tensor]:
        missing = [t.module for t, f in zip(self.taps, self._store) if f is None]
        if missing:
            raise RuntimeError(f"taps {missing} were not reached by the last forward pass")
        changed = [t.module for t, f, v in zip(self.taps, self._store, self._versions) if v >= 0 and f._version != v]
        if changed:
            raise RuntimeError(
                f"taps {changed}: the tapped tensor was modified in place later in the forward (e.g. "
                "`out += identity` after a ResNet block's last BN), so it no longer holds the value at the tap; "
                "tap another position, e.g. the input of the following module with 'name:input'"
            )
        return [t.to_map(f) if t.mapped else f for t, f in zip(self.taps, self._store)]  # type: ignore[arg-type]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
