"""A classification network's head: find it, and swap it (for an encoder without a classifier, or a new linear head).

Plain torch. The head is the network's last ``nn.Linear`` in registration order (torchvision's ``fc`` /
``classifier.1``, timm's ``head`` / ``classifier``, the package's own models).
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["head_name", "replace_head", "strip_head"]


def head_name(model: nn.Module) -> str:
    """The name of ``model``'s last ``nn.Linear`` (its classifier head); ``ValueError`` when it has none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier head (its last nn.Linear is taken "
                         "as the head: to replace it, or to take the pooled features before it)")
    return names[-1]


def replace_head(model: nn.Module, new: nn.Module) -> nn.Linear:
    """Put ``new`` in place of ``model``'s classifier head (in place); returns the old head."""
    name = head_name(model)
    old = model.get_submodule(name)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return old  # type: ignore[return-value]


def strip_head(model: nn.Module) -> int:
    """Replace ``model``'s classifier head by ``nn.Identity`` (in place): ``model(x)`` then returns its pooled
    features ``(B, D)``. Returns ``D``, the old head's ``in_features``."""
    return replace_head(model, nn.Identity()).in_features
