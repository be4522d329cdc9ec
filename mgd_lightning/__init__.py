"""mgd-lightning: Matching Guided Distillation (Yue, Deng, Zhou, ECCV 2020) for PyTorch Lightning.

Layers, bottom to top (lower layers never import upper ones; ``tests/test_layering.py`` checks it):

* math core, plain torch + SciPy: :mod:`mgd_lightning.matching`, :mod:`mgd_lightning.reduction`,
  :mod:`mgd_lightning.losses`;
* support: :mod:`mgd_lightning.metrics`, :mod:`mgd_lightning.checkpoints`, :mod:`mgd_lightning._lightning` (the
  Lightning namespace), :mod:`mgd_lightning.plotting` (matplotlib);
* building blocks: :mod:`mgd_lightning.models` (plain torch), :mod:`mgd_lightning.data`,
  :mod:`mgd_lightning.distillers`, :mod:`mgd_lightning.tasks`;
* the Lightning layer: feature taps, :class:`DistillationModule`, :class:`MGDMatchingCallback`
  (:mod:`mgd_lightning.distill`);
* the studies: :mod:`mgd_lightning.experiments`;
* the demos' bodies: :mod:`mgd_lightning.demos`;
* the ways in, one module per ``mgd-lightning`` subcommand: :mod:`mgd_lightning.commands`. The modules that stood
  at this package's top before it (``cli``, ``demo``, ``demo_detection``, ``taps_command``, ``export``, ``study``,
  ``compare``) still import, with a ``DeprecationWarning`` naming the new place.

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
