"""The competing feature distillers, selectable with ``DistillationModule(distiller=...)``.

=============  =====================================  =========================================
name           class                                  student-side trainable modules
=============  =====================================  =========================================
``mgd``        (built into DistillationModule)        one BatchNorm per tap (reference code)
``kd``         (logits only: ``kd_weight`` > 0)       none
``fitnets``    :class:`FitNets`                       1x1 conv regressor per tap
``at``         :class:`AttentionTransfer`             none
``ofd``        :class:`Overhaul`                      1x1 conv + BatchNorm connector per tap
=============  =====================================  =========================================

All share the taps, data, logging and metrics of :class:`~mgd_lightning.DistillationModule`; KD can be
added on top of any of them with ``kd_weight``.
"""

from __future__ import annotations

from .attention import AttentionTransfer, attention_map
from .base import FeatureDistiller
from .fitnets import FitNets
from .overhaul import Overhaul

__all__ = ["DISTILLERS", "FEATURE_DISTILLERS", "AttentionTransfer", "FeatureDistiller", "FitNets", "Overhaul",
           "attention_map"]

#: feature distillers by name (``mgd`` and ``kd`` are handled by the module itself)
FEATURE_DISTILLERS: dict[str, type[FeatureDistiller]] = {"fitnets": FitNets, "at": AttentionTransfer, "ofd": Overhaul}
DISTILLERS = ("mgd", "kd", *FEATURE_DISTILLERS)
