"""The competing feature distillers, selectable with ``DistillationModule(distiller=...)``.

=============  =====================================  =========================================
name           class                                  defaults (the authors' code; see each class)
=============  =====================================  =========================================
``mgd``        (built into DistillationModule)        BatchNorm per tap, weights 1/2^(N-k-1), 1e4
``kd``         (logits only: ``kd_weight`` > 0)       set T and the CE / KD weights (recipes below)
``fitnets``    :class:`FitNets`                       one hint tap, conv+BN+ReLU regressor, MSE x100
``at``         :class:`AttentionTransfer`             post-ReLU, equal weights, beta = 1e3
``ofd``        :class:`Overhaul`                      1x1 conv + BN connector, 1/2^(N-k-1), 1e4
=============  =====================================  =========================================

KD recipes (Hinton et al.; mdistiller ``engine/cfg.py`` and ``configs/imagenet/r34_r18/kd.yaml``): on CIFAR
``kd_temperature=4, ce_weight=0.1, kd_weight=0.9``; on ImageNet ``kd_temperature=1, ce_weight=0.5,
kd_weight=0.5`` (:data:`KD_RECIPES`). MGD + KD uses the MGD reference code's ``T = 1.5``, weights 1 / 1.

All share the taps, data, logging and metrics of :class:`~mgd_lightning.DistillationModule`; KD can be
added on top of any of them with ``kd_weight``.
"""

from __future__ import annotations

from .attention import AttentionTransfer, attention_map
from .base import FeatureDistiller
from .fitnets import FitNets
from .overhaul import Overhaul

__all__ = ["DISTILLERS", "FEATURE_DISTILLERS", "KD_RECIPES", "AttentionTransfer", "FeatureDistiller", "FitNets",
           "Overhaul", "attention_map"]

#: feature distillers by name (``mgd`` and ``kd`` are handled by the module itself)
FEATURE_DISTILLERS: dict[str, type[FeatureDistiller]] = {"fitnets": FitNets, "at": AttentionTransfer, "ofd": Overhaul}
DISTILLERS = ("mgd", "kd", *FEATURE_DISTILLERS)

#: Hinton KD at its recipes: DistillationModule arguments (``distiller="kd"``) per dataset family, as mdistiller
#: (``mdistiller/engine/cfg.py`` ``CFG.KD``: CIFAR; ``configs/imagenet/r34_r18/kd.yaml``: ImageNet).
KD_RECIPES: dict[str, dict[str, float]] = {
    "cifar": {"kd_temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    "imagenet": {"kd_temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
}
