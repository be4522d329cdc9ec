"""MoCo-v2 (He et al. 2020; Chen et al. 2020): a network trained without labels, as a model with its own loss.

:class:`MoCoV2` wraps a classification network: its classifier head becomes the identity (the **encoder**, whose
feature maps MGD taps), a 2-layer MLP **projector** maps the pooled features to ``dim`` unit vectors, a momentum
copy of both (the **key** encoder, never trained by gradients) encodes the second view, and a **queue** of past
keys gives the negatives of the InfoNCE loss (:meth:`MoCoV2.contrastive_loss`). The pieces are lightly's
(MIT licence, ``pip install 'mgd-lightning[self-supervised]'``): :class:`lightly.loss.NTXentLoss` with a memory
bank (the queue), :class:`lightly.models.modules.MoCoProjectionHead` and :func:`lightly.models.utils.update_momentum`,
so the loss is the maintained implementation users of self-supervised learning already trust. What this file
adds: the queue is kept in checkpoints (lightly does not persist it: a resumed run would restart from a random
queue), the momentum update runs only in training, and the encoder is the network given, so that the same tap
names work for MGD.

Defaults are MoCo-v2's ImageNet recipe (``main_moco.py --mlp --moco-t 0.2 --aug-plus --cos``, which the official
unsupervised MGD code, ``unsup/main_moco_mgd.py``, trains with): ``dim=128``, queue 65,536, temperature 0.2,
momentum 0.999, the MLP's hidden width the encoder's feature width. One difference, documented: MoCo shuffles the
key encoder's batch across GPUs ("shuffling BN"); here it is not shuffled (single-device runs are unaffected).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .heads import strip_head

__all__ = ["MoCoV2"]


def _lightly():
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import update_momentum
    except ImportError:
        raise ImportError("MoCoV2 needs lightly, which is not installed: pip install 'mgd-lightning[self-supervised]' "
                          "(or pip install lightly)") from None
    return NTXentLoss, MoCoProjectionHead, update_momentum


class MoCoV2(nn.Module):
    """MoCo-v2 around ``network``: encoder, projector, momentum key encoder and queue (see the module docstring).

    Args:
        network: a classification network (its last ``nn.Linear`` is the head, replaced by ``nn.Identity``: the
            network itself becomes :attr:`encoder`, its state_dict keys unchanged but for the head's).
        dim: the projection's width (MoCo-v2: 128).
        hidden_dim: the projector MLP's hidden width; ``None``: the encoder's feature width (MoCo-v2).
        queue_size: negatives kept (MoCo: 65,536; at most the number of training images is sensible).
        temperature: of the InfoNCE loss (MoCo-v2: 0.2).
        momentum: of the key encoder's moving average (MoCo: 0.999; shorter trainings want less, e.g. 0.99).

    ``forward(x)`` returns the query projection ``(B, dim)``; training uses :meth:`contrastive_loss`.

    Example (LightningCLI):

    ```yaml
    model:
      class_path: mgd_lightning.ClassificationModule
      init_args:
        task: self_supervised
        model:
          class_path: mgd_lightning.models.MoCoV2
          init_args:
            network: {class_path: mgd_lightning.models.build_model, init_args: {name: resnet18}}
    ```
    """

    def __init__(self, network: nn.Module, dim: int = 128, hidden_dim: int | None = None, queue_size: int = 65536,
                 temperature: float = 0.2, momentum: float = 0.999) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 (the negatives of the InfoNCE loss); got {queue_size}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        ntxent, projection_head, self._update_momentum = _lightly()
        features = strip_head(network)
        self.encoder = network
        self.projector = projection_head(features, hidden_dim or features, dim)
        # the key encoder: a copy, updated only as a moving average of the query side
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.criterion = ntxent(temperature=temperature, memory_bank_size=(queue_size, dim), gather_distributed=True)
        bank = self.criterion.memory_bank  # lightly keeps the queue out of state_dict: keep it in checkpoints
        bank.register_buffer("bank", bank.bank, persistent=True)
        bank.register_buffer("bank_ptr", bank.bank_ptr, persistent=True)
        self.dim, self.queue_size = int(dim), int(queue_size)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.feature_dim = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The query projection of ``x`` ``(B, C, H, W)``: ``(B, dim)`` (not normalised)."""
        return self.projector(self.encoder(x))

    def contrastive_loss(self, query_view: torch.Tensor, key_view: torch.Tensor) -> torch.Tensor:
        """MoCo's InfoNCE loss of one batch: the query encoder on ``query_view``, the key encoder (after its
        momentum update, in training) on ``key_view``, both ``(B, C, H, W)``; the keys then join the queue (in
        training). The query encoder runs first and once, so feature taps on :attr:`encoder` hold the query
        view's features afterwards."""
        if query_view.shape != key_view.shape:
            raise ValueError(f"the two views must have one shape; got {tuple(query_view.shape)} and "
                             f"{tuple(key_view.shape)}")
        query = self(query_view)
        with torch.no_grad():
            if self.training:
                self._update_momentum(self.encoder, self.key_encoder, self.momentum)
                self._update_momentum(self.projector, self.key_projector, self.momentum)
            key = self.key_projector(self.key_encoder(key_view))
        if self.training or not query.requires_grad:
            return self.criterion(query, key)
        # lightly enqueues the keys whenever the query needs gradients: outside training the queue stays as it was
        bank = self.criterion.memory_bank
        queue, pointer = bank.bank.clone(), bank.bank_ptr.clone()
        loss = self.criterion(query, key)
        with torch.no_grad():
            bank.bank.copy_(queue)
            bank.bank_ptr.copy_(pointer)
        return loss

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, queue_size={self.queue_size}, temperature={self.temperature}, "
                f"momentum={self.momentum}")
