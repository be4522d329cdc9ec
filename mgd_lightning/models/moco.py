"""MoCo checkpoints as teachers or students: the query encoder of a MoCo (v1 / v2) pre-training file.

The same reads the Lightning checkpoint of a :class:`~mgd_lightning.models.MoCoV2` trained with this package
(alone, or as the student of a ``DistillationModule``): its encoder is ``model.encoder.*``.

MoCo's ``main_moco.py`` (and the official MGD unsupervised code, ``unsup/main_moco_mgd.py``, whose teacher is MoCo-v2's
200-epoch ResNet-50) saves ``{"epoch", "arch", "state_dict", "optimizer"}`` with the model wrapped in
DistributedDataParallel: the keys are ``module.encoder_q.<torchvision ResNet key>`` for the query encoder,
``module.encoder_k.*`` for the momentum encoder, ``module.queue`` and ``module.queue_ptr``. Its encoder's ``fc`` is
the projection head (v2: ``fc.0`` / ``fc.2``, a 2-layer MLP to 128 dims; v1: one linear layer), not a classifier.

:func:`moco_encoder_state` takes the query encoder's tensors, without the projection head: the network keeps its own
classifier head as initialised (what MoCo's linear evaluation, ``main_lincls.py``, does), and every other tensor
must match the network exactly (the official MGD code loads with ``strict=False``, which would let a wrong file
through silently). ``build_model(name, checkpoint=path, checkpoint_prefix="moco")`` uses it. Plain torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["MOCO", "MOCO_PREFIXES", "moco_encoder_state"]

#: the ``checkpoint_prefix`` value of :func:`~mgd_lightning.models.build_model` that reads a MoCo checkpoint
MOCO = "moco"
#: where the query encoder's keys live: saved from DistributedDataParallel (MoCo's own files), or not; or a
#: Lightning checkpoint of a :class:`~mgd_lightning.models.MoCoV2` trained here (``ClassificationModule`` /
#: ``DistillationModule`` store it as ``model``; its encoder has no head, its projector is ``model.projector.*``)
MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.", "model.encoder.")


def moco_encoder_state(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], checkpoint: str,
                       head: str = "fc") -> dict[str, torch.Tensor]:
    """The query encoder's ``state_dict`` from a MoCo checkpoint's ``state`` (its ``"state_dict"`` entry), ready for
    a strict load into a network whose ``state_dict`` is ``own``: the keys under ``module.encoder_q.`` (or
    ``encoder_q.``, or ``model.encoder.`` for a :class:`~mgd_lightning.models.MoCoV2` trained here) with the prefix
    removed, the projection head (keys under ``head``) dropped and replaced by the
    network's own ``head`` tensors. Raises ``ValueError`` naming the file when no key is under either prefix."""
    for prefix in MOCO_PREFIXES:
        encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if encoder:
            break
    else:
        prefixes = sorted({k.split(".")[0] + "." for k in state})[:6]
        raise ValueError(f"checkpoint={checkpoint!r} is not a MoCo checkpoint: no keys under "
                         f"{' or '.join(MOCO_PREFIXES)} (its keys start with {prefixes}); for a Lightning checkpoint "
                         "or a plain state_dict, give checkpoint_prefix='model.' (the default) or ''")
    picked = {k: v for k, v in encoder.items() if not k.startswith(head + ".")}
    picked.update({k: v for k, v in own.items() if k.startswith(head + ".")})
    return picked
