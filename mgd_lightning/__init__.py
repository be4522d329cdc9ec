"""mgd-lightning: Matching Guided Distillation (Yue, Deng, Zhou, ECCV 2020) for PyTorch Lightning.

Layers, bottom to top (lower layers never import upper ones):

* math core, plain torch + SciPy: :mod:`mgd_lightning.matching`, :mod:`mgd_lightning.reduction`,
  :mod:`mgd_lightning.losses`;
* models and feature taps, plain torch: :mod:`mgd_lightning.models`;
* the Lightning layer: :class:`DistillationModule`, :class:`MGDMatchingCallback`
  (:mod:`mgd_lightning.distill`).

``import mgd_lightning`` stays light: the Lightning layer is imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DistillationModule": "mgd_lightning.distill.module",
    "MGDMatchingCallback": "mgd_lightning.distill.callback",
    "ClassificationModule": "mgd_lightning.distill.classifier",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mgd_lightning' has no attribute {name!r}")
