"""Automatic taps (:mod:`mgd_lightning.distill.auto_taps`) across torchvision (and timm) families at 64 px.

Each architecture: the taps found (the last pre-activation tensor of each stage), that each is
pre-activation (negative values on a random input in eval mode), the ResNet presets' tensors; then
DistillationModule with automatic taps on either side (pairs of equal spatial size, one training step),
the ViT's token taps and the MLP error, ``mgd-lightning taps`` and ``build_model("timm/...")``.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm

from mgd_lightning import DistillationModule
from mgd_lightning.commands.main import main as cli_main
from mgd_lightning.distill.auto_taps import auto_taps, tap_shapes
from mgd_lightning.distill.taps import FeatureTaps, Tap, preset_taps, resolve_taps
from mgd_lightning.models import build_model

SIZE = (3, 64, 64)

#: architecture -> the automatic taps at 64 px (stage sizes 32, 16, 8, 4, 2 unless noted)
EXPECTED = {
    "resnet18": ["relu:input", "layer1.1.relu:input", "layer2.1.relu:input", "layer3.1.relu:input",
                 "layer4.1.relu:input"],
    "resnext50_32x4d": ["relu:input", "layer1.2.relu:input", "layer2.3.relu:input", "layer3.5.relu:input",
                        "layer4.2.relu:input"],
    "wide_resnet50_2": ["relu:input", "layer1.2.relu:input", "layer2.3.relu:input", "layer3.5.relu:input",
                        "layer4.2.relu:input"],
    "regnet_y_400mf": ["stem.2:input", "trunk_output.block1.block1-0.activation:input",
                       "trunk_output.block2.block2-2.activation:input", "trunk_output.block3.block3-5.activation:input",
                       "trunk_output.block4.block4-5.activation:input"],
    "efficientnet_b0": ["features.1.0.block.0.2:input", "features.2.1.block.1.2:input",
                        "features.3.1.block.1.2:input", "features.5.2.block.1.2:input", "features.8.2:input"],
    "efficientnet_v2_s": ["features.1.1.block.0.2:input", "features.2.3.block.0.2:input",
                          "features.3.3.block.0.2:input", "features.5.8.block.1.2:input", "features.7.2:input"],
    "mobilenet_v3_small": ["features.0.2:input", "features.1.block.0.2:input", "features.3.block.1.2:input",
                           "features.8.block.1.2:input", "features.12.2:input"],
    "mnasnet0_5": ["layers.5:input", "layers.8.2.layers.5:input", "layers.9.2.layers.5:input",
                   "layers.11.1.layers.5:input", "layers.16:input"],
    # the last stage ends on features.norm5, then a functional in-place ReLU (kept as a copy)
    "densenet121": ["features.relu0:input", "features.transition1.relu:input", "features.transition2.relu:input",
                    "features.transition3.relu:input", "features.norm5:output"],
    # no NCHW activation (GELU runs channels-last): the stage outputs; 16, 8, 4, 2 px (4 x 4 stem)
    "convnext_tiny": ["features.1:output", "features.3:output", "features.5:output", "features:output"],
    # 29, 14, 7, 3 px (ceil-mode pools)
    "squeezenet1_0": ["features.1:input", "features.5.expand3x3_activation:input",
                      "features.10.expand3x3_activation:input", "features.12.expand3x3_activation:input"],
    # 64, 32, 16, 8, 4 px (the first stage is at the input's size)
    "vgg11_bn": ["features.2:input", "features.6:input", "features.13:input", "features.20:input",
                 "features.27:input"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tvm, arch)(num_classes=10, **kwargs)


def _names(taps: list[Tap]) -> list[str]:
    return [f"{t.module}:{t.kind}" for t in taps]


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_auto_taps_per_architecture(arch):
    model = _build(arch)
    taps = auto_taps(model, SIZE)
    assert _names(taps) == EXPECTED[arch]
    modules = dict(model.named_modules())
    for tap in taps:
        if tap.kind == "input":  # the input of an activation module: pre-activation by construction
            assert type(modules[tap.module]).__name__ in ("ReLU", "ReLU6", "SiLU", "Hardswish"), tap
            assert tap.non_inplace == (tap.module,)
    feature_taps = FeatureTaps(model, taps)
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, *SIZE))
    features = feature_taps.features
    sizes = [tuple(f.shape[2:]) for f in features]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)  # one tap per stage
    for tap, f in zip(taps, features):
        assert (f < 0).any(), f"{arch} {tap.module}: no negative value, not pre-activation"
    assert model.training is False and all(not getattr(m, "inplace", False) or m not in
                                           [modules[t.module] for t in taps] for m in model.modules())
    preset = preset_taps(model)
    if preset is not None:  # ResNet / ResNeXt / Wide ResNet: the preset's taps, plus the stem
        assert taps[1:] == preset


def test_auto_taps_leave_the_model_as_it_was():
    model = _build("mobilenet_v3_small").train()
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    auto_taps(model, SIZE)
    assert model.training and all(m.training for m in model.modules())
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == inplace
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_mobilenet_v2_auto_taps_are_the_preset_tensors():
    """Spelled differently (input of the ReLU6 vs output of the BN): the same tensors at 16, 8, 4 px."""
    model = _build("mobilenet_v2").eval()
    auto, preset = auto_taps(model, SIZE), preset_taps(model)
    both = FeatureTaps(model, auto[1:4] + preset[:3])
    with torch.no_grad():
        model(torch.randn(2, *SIZE))
    features = both.features
    for a, p in zip(features[:3], features[3:]):
        assert a is p


def test_googlenet_functional_relus():
    """GoogLeNet's ReLUs are functional and in place: the stem stages end on a BN then ``F.relu(inplace=True)``, a
    BN output kept as a copy; the inception stages end on a concatenation of activated branches, which has no
    pre-activation tensor: their outputs."""
    model = _build("googlenet", aux_logits=False, init_weights=False)
    taps = auto_taps(model, SIZE)
    assert _names(taps) == ["conv1.bn:output", "conv3.bn:output", "inception3b:output", "inception4e:output",
                            "inception5b:output"]
    assert [t.clone for t in taps] == [True, True, False, False, False]
    features = FeatureTaps(model, taps[:2])
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, *SIZE))
    assert all((f < 0).any() for f in features.features)  # before the ReLU


def test_densenet_last_tap_is_norm5_before_the_functional_relu():
    """DenseNet's last stage ends on ``features.norm5`` (1024 channels), then ``F.relu(features, inplace=True)``:
    not a 128-channel bottleneck inside the last dense layer (which made DenseNet -> ResNet-18 fail: C_T < C_S)."""
    model = _build("densenet121").eval()
    taps = auto_taps(model, SIZE)
    assert taps[-1].module == "features.norm5" and taps[-1].kind == "output" and taps[-1].clone
    feature_taps = FeatureTaps(model, taps)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        model(x)
        norm5 = model.features(x)  # the stage output before the functional ReLU
    assert feature_taps.features[-1].shape == (2, 1024, 2, 2)
    assert torch.equal(feature_taps.features[-1], norm5) and (norm5 < 0).any()
    feature_taps.remove()
    module = DistillationModule(_build("densenet121"), _build("resnet18"), input_size=SIZE, lr_milestones=())
    assert [(c_s, c_t, h) for c_s, c_t, h, _ in module.tap_shapes] == [(64, 256, 16), (128, 512, 8), (256, 1024, 4),
                                                                     (512, 1024, 2)]
    assert module.teacher_taps.taps[-1].module == "features.norm5" and module.margins[-1] is not None


class _PlainCNN(nn.Module):
    """Convolutions, BatchNorm and functional ReLUs (``F.relu``), functional pooling: no activation module."""

    def __init__(self, widths=(8, 16, 32), relu_inplace: bool = False) -> None:
        super().__init__()
        self.relu_inplace = relu_inplace
        self.convs, self.bns, c = nn.ModuleList(), nn.ModuleList(), 3
        for i, w in enumerate(widths):
            self.convs.append(nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(w))
            c = w
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = torch.nn.functional.relu(bn(conv(x)), inplace=self.relu_inplace)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("relu_inplace", [False, True])
def test_a_plain_cnn_with_functional_relus_gets_its_batchnorm_outputs(relu_inplace):
    model = _PlainCNN(relu_inplace=relu_inplace)
    taps = auto_taps(model, (3, 16, 16))
    assert _names(taps) == ["bns.0:output", "bns.1:output", "bns.2:output"]
    assert all(t.clone == relu_inplace for t in taps)  # a copy only where F.relu overwrites the BN output
    module = DistillationModule(_PlainCNN((16, 32, 64)), model, input_size=(3, 16, 16), lr_milestones=())
    assert [(c_s, c_t, h) for c_s, c_t, h, _ in module.tap_shapes] == [(8, 16, 16), (16, 32, 8), (32, 64, 4)]
    assert all(m is not None for m in module.margins)
    module.student.train()
    loss = module.training_step((torch.randn(2, 3, 16, 16), torch.tensor([1, 2])), 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.student.parameters())
    features = module.student_taps.features
    assert all((f < 0).any() for f in features)  # pre-activation


def test_functional_convolutions_are_named_as_the_reason():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.nn.functional.conv2d(x, self.weight, stride=2).relu().mean((2, 3)))

    class Scaled(nn.Module):  # the stage's pre-activation tensor is made by an op, not a module
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc((self.conv(x) * 2).relu().mean((2, 3)))

    with pytest.raises(ValueError, match=r"Functional: no spatial stages found \(no nn\.Conv2d module returns NCHW "
                                         r"feature maps: the network convolves functionally"):
        auto_taps(Functional(), (3, 16, 16))
    with pytest.raises(ValueError, match=r"Scaled: no spatial stages found with a tensor a hook can take \(nn\.Conv2d "
                                         r"outputs of sizes \[\(7, 7\)\]\).*made by functional ops.*student_taps"):
        auto_taps(Scaled(), (3, 16, 16))


def test_resolve_taps_falls_back_to_automatic_taps():
    model = _build("efficientnet_b0")
    assert resolve_taps(model, None, "student", SIZE) == auto_taps(model, SIZE)
    resnet = _build("resnet18")
    assert resolve_taps(resnet, None, "teacher", SIZE) == preset_taps(resnet)  # a preset wins


def _tiny_vit() -> nn.Module:
    return tvm.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)


def test_vit_has_no_stages_but_token_blocks():
    # no CNN stage; its encoder blocks are tapped as maps over the 2 x 2 patch grid, the class token dropped
    # (tests/test_token_taps.py); a model with neither is an error
    taps = auto_taps(_tiny_vit(), (3, 32, 32))
    assert [(t.module, t.layout, t.grid, t.prefix_tokens) for t in taps] == [
        ("encoder.layers.encoder_layer_0", "tokens", (2, 2), 1)]
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ValueError, match=r"Sequential: no spatial stages.*no token grid.*teacher_taps=.* / "
                                         r"student_taps"):
        auto_taps(mlp, (3, 32, 32))
    with pytest.raises(ValueError, match=r"no preset distillation taps for student Sequential.*student_taps"):
        DistillationModule(_build("resnet18"), mlp, input_size=(3, 32, 32))


PAIRS = [
    # teacher, student, the spatial sizes paired
    ("resnet50", "efficientnet_b0", [16, 8, 4, 2]),  # preset (4 taps) against automatic (5): by size
    ("convnext_tiny", "mobilenet_v3_small", [16, 8, 4, 2]),  # the student's 32 px stem has no partner
    ("vgg11_bn", "mnasnet0_5", [32, 16, 8, 4]),  # VGG's 64 px and MNASNet's 2 px stages have none
]


@pytest.mark.parametrize(("teacher", "student", "sizes"), PAIRS)
def test_distillation_module_pairs_automatic_taps_by_size(teacher, student, sizes):
    module = DistillationModule(_build(teacher), _build(student), input_size=SIZE, lr_milestones=())
    assert [h for _, _, h, _ in module.tap_shapes] == sizes
    assert all(c_t >= c_s for c_s, c_t, _, _ in module.tap_shapes)
    module.student.train()
    loss = module.training_step((torch.randn(2, *SIZE), torch.tensor([1, 2])), 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.student.parameters() if p.requires_grad)


def test_no_common_size_is_an_error():
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    assert _names(auto_taps(teacher, SIZE)) == ["2:input"]
    with pytest.raises(ValueError, match="no tap of the same spatial size"):
        DistillationModule(teacher, student, input_size=SIZE)


def test_taps_command_prints_taps_and_pairs(capsys):
    cli_main(["taps", "resnet50", "--input-size", "3", "64", "64", "--student", "mobilenet_v3_small"])
    out = capsys.readouterr().out
    assert "teacher resnet50 (ResNet), preset taps at input (3, 64, 64)" in out
    assert "student mobilenet_v3_small (MobileNetV3), automatic taps" in out
    assert any(line.split() == ["4", "features.12.2:input", "(576,", "2,", "2)", "576"] for line in out.splitlines())
    pairs = out.split("pairs (paired by spatial size):")[1].strip().splitlines()[2:]
    assert [p.split()[1] for p in pairs] == [f"layer{k}.{n}.relu:input" for k, n in ((1, 2), (2, 3), (3, 5), (4, 2))]
    assert [int(p.split()[-1]) for p in pairs] == [256 // 16, 512 // 88, 1024 // 144, 2048 // 576]


def test_taps_command_error_is_one_line():
    with pytest.raises(SystemExit, match=r"mgd-lightning taps: error: .*cannot run a \(1, 3, 32, 32\) probe input"):
        cli_main(["taps", "vit_b_16", "--input-size", "3", "32", "32"])  # torchvision's ViT takes 224 px only


def test_timm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'mgd-lightning\[timm\]'"):
        build_model("timm/resnet10t")


def test_timm_models_with_automatic_taps():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    teacher, student = build_model("timm/resnet10t", num_classes=10), build_model("timm/mobilenetv3_small_050",
                                                                                  num_classes=10)
    assert _names(auto_taps(student, SIZE)) == [
        "bn1.act:input", "blocks.0.0.bn1.act:input", "blocks.1.1.bn2.act:input", "blocks.3.1.bn2.act:input",
        "blocks.5.0.bn1.act:input"]  # not the 1 x 1 head convolution after the global pool
    assert [s[1:] for s in tap_shapes(teacher, auto_taps(teacher, SIZE), SIZE)] == [
        (64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    module = DistillationModule(teacher, student, input_size=SIZE, lr_milestones=())
    assert [h for _, _, h, _ in module.tap_shapes] == [32, 16, 8, 4, 2]
    loss = module.training_step((torch.randn(2, *SIZE), torch.tensor([1, 2])), 0)
    assert torch.isfinite(loss["loss"] if isinstance(loss, dict) else loss)
    with pytest.raises(ValueError, match="not a timm model"):
        build_model("timm/no_such_net")
