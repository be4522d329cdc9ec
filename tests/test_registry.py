"""Models by name, torchvision weights from a pre-seeded hub cache, checkpoints of earlier runs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mgd_lightning.models import build_model, weights_path


def test_torchvision_and_package_names():
    assert build_model("resnet18", num_classes=7).fc.out_features == 7
    assert build_model("wrn_16_2", num_classes=100).distillation_taps
    with pytest.raises(ValueError, match="name='resnet9000' is not a known model; available: .*mobilenet_v1"):
        build_model("resnet9000")


def test_weights_from_the_hub_cache_and_head_replacement(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(FileNotFoundError, match=r"resnet18/IMAGENET1K_V1 are not available offline: .*hub/checkpoints"):
        build_model("resnet18", num_classes=10, weights="IMAGENET1K_V1")
    reference = torchvision.models.resnet18()
    path = weights_path(url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", num_classes=10, weights="IMAGENET1K_V1")
    assert model.fc.out_features == 10
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert build_model("resnet18", num_classes=3, weights="null").fc.out_features == 3  # CLI spelling
    with pytest.raises(ValueError, match="weights='IMAGENET9K' is not a weight of resnet18"):
        build_model("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="no published weights"):
        build_model("wrn_16_2", weights="IMAGENET1K_V1")


def test_checkpoint_state_dict_and_lightning_checkpoint(tmp_path):
    source = build_model("resnet18", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": {f"teacher.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "run.ckpt")
    a = build_model("resnet18", num_classes=5, checkpoint=str(tmp_path / "plain.pt"))
    b = build_model("resnet18", num_classes=5, checkpoint=str(tmp_path / "run.ckpt"), checkpoint_prefix="teacher.")
    assert torch.equal(a.fc.weight, source.fc.weight) and torch.equal(b.fc.weight, source.fc.weight)
    with pytest.raises(ValueError, match=r"no keys under checkpoint_prefix='model.'; its prefixes are \['teacher.'\]"):
        build_model("resnet18", num_classes=5, checkpoint=str(tmp_path / "run.ckpt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model("resnet18", checkpoint=str(tmp_path / "missing.pt"))
