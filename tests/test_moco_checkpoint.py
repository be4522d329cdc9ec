"""MoCo pre-training files as networks (``build_model(..., checkpoint=path, checkpoint_prefix="moco")``): the query
encoder without its projection head, from a file written here in MoCo's own layout (``main_moco.py``'s
``save_checkpoint``: ``{"epoch", "arch", "state_dict", "optimizer"}``, the model under DistributedDataParallel)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from mgd_lightning.models import build_model
from mgd_lightning.models.moco import moco_encoder_state


def _moco_file(path, prefix="module.", mlp=True, arch="resnet18"):
    """A MoCo-v2 checkpoint as MoCo writes it: query and momentum encoders (torchvision ResNets whose ``fc`` is the
    MLP projection head to 128 dims), the queue and its pointer."""
    torch.manual_seed(1)
    encoder_q = torchvision.models.__dict__[arch](num_classes=128)
    if mlp:
        dim = encoder_q.fc.weight.shape[1]
        encoder_q.fc = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), encoder_q.fc)
    state = {f"{prefix}encoder_q.{k}": v for k, v in encoder_q.state_dict().items()}
    state.update({f"{prefix}encoder_k.{k}": v + 1 for k, v in encoder_q.state_dict().items()})
    state[f"{prefix}queue"] = torch.randn(128, 64)
    state[f"{prefix}queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               path)
    return encoder_q


@pytest.mark.parametrize("prefix, mlp", [("module.", True), ("", True), ("module.", False)])
def test_query_encoder_loads_without_its_projection_head(tmp_path, prefix, mlp):
    path = tmp_path / "moco_v2_200ep_pretrain.pth.tar"
    encoder_q = _moco_file(path, prefix, mlp)
    torch.manual_seed(2)
    model = build_model("resnet18", num_classes=10, checkpoint=str(path), checkpoint_prefix="moco")
    torch.manual_seed(2)
    fresh = build_model("resnet18", num_classes=10)
    saved = encoder_q.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("fc."):  # the classifier head keeps its initialisation (MoCo's linear evaluation)
            assert torch.equal(value, fresh.state_dict()[key]), key
        else:  # every other tensor is the query encoder's, not the momentum encoder's
            assert torch.equal(value, saved[key]), key


def test_a_file_of_another_network_is_refused_in_one_line(tmp_path):
    path = tmp_path / "moco.pth.tar"
    _moco_file(path)
    with pytest.raises(Exception, match="size mismatch|missing|not in the model") as err:
        build_model("resnet50", num_classes=10, checkpoint=str(path), checkpoint_prefix="moco")
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_moco_is_refused_in_one_line(tmp_path):
    path = tmp_path / "student.pt"
    torch.save(build_model("resnet18", num_classes=10).state_dict(), path)
    message = (r"student.pt' is not a MoCo checkpoint: no keys under module.encoder_q. or encoder_q. or "
               r"model.encoder. \(its keys start with \['bn1.', 'conv1.', 'fc.', 'layer1.'")
    with pytest.raises(ValueError, match=message) as err:
        build_model("resnet18", num_classes=10, checkpoint=str(path), checkpoint_prefix="moco")
    assert "\n" not in str(err.value)


def test_head_name_is_a_parameter():
    own = {"head.weight": torch.zeros(2, 3), "body.weight": torch.zeros(3)}
    state = {"encoder_q.head.weight": torch.ones(5, 3), "encoder_q.body.weight": torch.ones(3)}
    picked = moco_encoder_state(state, own, "f", head="head")
    assert torch.equal(picked["head.weight"], own["head.weight"]) and torch.equal(picked["body.weight"], torch.ones(3))
