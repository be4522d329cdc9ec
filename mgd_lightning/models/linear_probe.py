"""Linear evaluation (MoCo's ``main_lincls.py``): a frozen encoder and a trained linear classifier on its features.

Plain torch. :class:`LinearProbe` takes a classification network (e.g. the distilled student, or MoCo's encoder from
``build_model(name, checkpoint=path, checkpoint_prefix="moco")``), freezes everything but a new linear head, and
keeps the frozen part in eval mode (its BatchNorm statistics fixed), as MoCo's linear evaluation does. The head is
initialised as MoCo's (weights normal(0, 0.01), bias 0). Train it with :class:`~mgd_lightning.ClassificationModule`
(MoCo's recipe: SGD lr 30, momentum 0.9, no weight decay, 100 epochs, x0.1 at 60 and 80;
``configs/unsup/lincls_resnet18.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .heads import strip_head

__all__ = ["LinearProbe"]


class LinearProbe(nn.Module):
    """``head(encoder(x))`` with ``encoder`` frozen and always in eval mode.

    Args:
        network: a classification network; its classifier head (last ``nn.Linear``) is replaced by
            ``nn.Identity`` and the rest frozen (``requires_grad=False``).
        num_classes: outputs of the new linear head.
        normalize: put a ``BatchNorm1d`` without affine parameters before the linear layer (MAE's linear probe:
            the features standardised, so that one learning rate suits encoders of any feature scale); ``False``
            (default): MoCo's probe, the linear layer alone (its lr 30 suits ResNet-50 features).

    Example (LightningCLI):

    ```yaml
    model:
      class_path: mgd_lightning.ClassificationModule
      init_args:
        model:
          class_path: mgd_lightning.models.LinearProbe
          init_args:
            num_classes: 1000
            network:
              class_path: mgd_lightning.models.build_model
              init_args: {name: resnet18, checkpoint: runs/mgd_moco/last.ckpt, checkpoint_prefix: moco}
    ```
    """

    def __init__(self, network: nn.Module, num_classes: int, normalize: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        features = strip_head(network)
        self.encoder = network.requires_grad_(False).eval()
        linear = nn.Linear(features, num_classes)
        nn.init.normal_(linear.weight, 0.0, 0.01)
        nn.init.zeros_(linear.bias)
        self.head: nn.Module = (nn.Sequential(nn.BatchNorm1d(features, affine=False), linear) if normalize
                                else linear)

    def train(self, mode: bool = True):
        """Only the head follows ``mode``; the frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's pooled features of ``x`` ``(B, C, H, W)``: ``(B, D)``, without gradients."""
        with torch.no_grad():
            return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
