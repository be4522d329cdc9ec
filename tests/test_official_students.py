"""The reference code's students (``mobilenet_v2_mgd``, ``shufflenet_v2_x*_mgd``) and their tap presets.

Checked against the official code (``cls/models/mobilenetv2.py``, ``cls/models/shufflenetv2.py``,
``cls/main_mgd.py``): the tapped modules, channels, spatial sizes and alpha of the three distilled pairs
with a ResNet-50 teacher, torchvision's weights loading unchanged, the pre-ReLU sign of the ShuffleNet
taps and logits identical to torchvision's network. Random init only (no downloads).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
import torchvision.models as tvm

from mgd_lightning import DistillationModule
from mgd_lightning.distill.taps import FeatureTaps, preset_taps, resolve_taps
from mgd_lightning.models import (
    PACKAGE_MODELS,
    TORCHVISION_VARIANTS,
    MobileNetV2MGD,
    ShuffleNetV2MGD,
    available_models,
    build_model,
    weights_enum,
    weights_path,
)
from mgd_lightning.models.mobilenetv2_mgd import SKIPPED_TAP as MOBILENET_SKIPPED_TAP

VARIANTS = {
    "mobilenet_v2_mgd": "mobilenet_v2",
    "shufflenet_v2_x0_5_mgd": "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0_mgd": "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5_mgd": "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0_mgd": "shufflenet_v2_x2_0",
}
SHUFFLENETS = [n for n in VARIANTS if n.startswith("shufflenet")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomize_bn(model: nn.Module, seed: int = 2) -> None:
    """Non-trivial BN affine parameters and running statistics (eval mode then differs from the init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _x(batch: int = 2, size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- 1. the pairs with a ResNet-50 teacher
# (teacher tap, student tap, C_S, C_T, H = W, alpha) per pair, at 224 px
PAIRS = {
    "mobilenet_v2_mgd": [
        ("layer2.3.relu", "features.7.conv.1.1", 192, 512, 28, 2),
        ("layer3.5.relu", "features.11.conv.1.1", 384, 1024, 14, 2),
        ("layer4.2.relu", "features.17.conv.1.1", 960, 2048, 7, 2),
    ],
    "shufflenet_v2_x1_0_mgd": [
        ("layer2.3.relu", "stage2", 116, 512, 28, 4),
        ("layer3.5.relu", "stage3", 232, 1024, 14, 4),
        ("layer4.2.relu", "stage4", 464, 2048, 7, 4),
    ],
    # torchvision's standard MobileNet-V2 and its preset: four pairs, the last unit of each resolution
    "mobilenet_v2": [
        ("layer1.2.relu", "features.3.conv.1.1", 144, 256, 56, 1),
        ("layer2.3.relu", "features.6.conv.1.1", 192, 512, 28, 2),
        ("layer3.5.relu", "features.13.conv.1.1", 576, 1024, 14, 1),
        ("layer4.2.relu", "features.17.conv.1.1", 960, 2048, 7, 2),
    ],
}


@pytest.mark.parametrize("student_name", list(PAIRS))
def test_pairs_with_resnet50_teacher(student_name):
    torch.manual_seed(0)
    teacher = build_model("resnet50", num_classes=10)
    student = build_model(student_name, num_classes=10)
    module = DistillationModule(teacher, student)
    expected = PAIRS[student_name]
    assert [t.module for t in module.teacher_taps.taps] == [p[0] for p in expected]
    assert all(t.kind == "input" for t in module.teacher_taps.taps)  # ResNet: the residual sum
    assert [(t.module, t.kind) for t in module.student_taps.taps] == [(p[1], "output") for p in expected]
    assert module.tap_shapes == [(c_s, c_t, s, s) for _, _, c_s, c_t, s, _ in expected]
    assert [c_t // c_s for c_s, c_t, _, _ in module.tap_shapes] == [p[5] for p in expected]
    assert [tuple(m.shape) for m in module.matchings] == [(p[2], p[5]) for p in expected]
    assert module.tap_weights == ([0.25, 0.5, 1.0] if len(expected) == 3 else [0.125, 0.25, 0.5, 1.0])
    # the preset is the model's declared one (reference students) or torchvision's standard one
    if student_name in TORCHVISION_VARIANTS:
        assert [t.module for t in preset_taps(student)] == list(type(student).distillation_taps)
    else:
        assert type(student) is tvm.MobileNetV2 and not hasattr(student, "distillation_taps")


# ShuffleNet-V2 widths: (channels at stage2/3/4, alpha against ResNet-50's 512/1024/2048)
SHUFFLENET_TAPS = {
    "shufflenet_v2_x0_5_mgd": ((48, 96, 192), 10),
    "shufflenet_v2_x1_0_mgd": ((116, 232, 464), 4),
    "shufflenet_v2_x1_5_mgd": ((176, 352, 704), 2),
    "shufflenet_v2_x2_0_mgd": ((244, 488, 976), 2),
}


@pytest.mark.parametrize("name", SHUFFLENETS)
def test_shufflenet_widths_tap_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).eval()
    assert isinstance(model, ShuffleNetV2MGD)
    taps = resolve_taps(model, None)
    assert [(t.module, t.kind) for t in taps] == [("stage2", "output"), ("stage3", "output"), ("stage4", "output")]
    feature_taps = FeatureTaps(model, taps)
    with torch.no_grad():
        model(_x(1))
    channels, alpha = SHUFFLENET_TAPS[name]
    assert [tuple(f.shape) for f in feature_taps.features] == [(1, c, s, s) for c, s in zip(channels, (28, 14, 7))]
    assert [c_t // c for c, c_t in zip(channels, (512, 1024, 2048))] == [alpha] * 3


# ---------------------------------------------------------------- 2. torchvision's weights load unchanged
@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_is_torchvisions(name):
    base = VARIANTS[name]
    ours = build_model(name).state_dict()
    theirs = getattr(tvm, base)().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in theirs)
    assert TORCHVISION_VARIANTS[name] == base and name in PACKAGE_MODELS and name in available_models()
    assert weights_enum(name) is torchvision.models.get_model_weights(base)


@pytest.mark.parametrize("name", ["mobilenet_v2_mgd", "shufflenet_v2_x1_0_mgd"])
def test_build_model_loads_torchvision_weights_from_the_hub_cache(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    base = VARIANTS[name]
    weight = torchvision.models.get_model_weights(base).IMAGENET1K_V1
    with pytest.raises(FileNotFoundError, match=rf"weights {base}/IMAGENET1K_V1 are not available offline"):
        build_model(name, num_classes=10, weights="IMAGENET1K_V1")
    torch.manual_seed(5)
    reference = getattr(tvm, base)()
    _randomize_bn(reference)
    path = weights_path(weight.url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = build_model(name, num_classes=10, weights="IMAGENET1K_V1")
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert model.get_submodule(head).out_features == 10  # fine-tuning head
    state, expected = model.state_dict(), reference.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items() if not k.startswith(head + "."))
    full = build_model(name, weights="IMAGENET1K_V1")  # 1000 classes: every tensor is the file's
    assert all(torch.equal(full.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match=rf"weights='IMAGENET9K' is not a weight of {name} \(torchvision's {base}"):
        build_model(name, weights="IMAGENET9K")


# ---------------------------------------------------------------- 3. MobileNet-V2: strides and taps
def test_mobilenet_v2_mgd_strides_and_taps():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2_mgd", num_classes=10)
    standard = tvm.mobilenet_v2(num_classes=10)
    assert isinstance(model, MobileNetV2MGD) and isinstance(model, tvm.MobileNetV2)
    # the 64-channel stage (features 7-10) starts with stride 1, the 96-channel stage (11-13) with 2
    assert model.features[7].conv[-1].num_features == 64 and model.features[11].conv[-1].num_features == 96
    # the depthwise conv of each unit is conv[-3][0] (conv[0][0] for the unit without expansion)
    strides = {i: model.features[i].conv[-3][0].stride for i in range(1, 18)}
    standard_strides = {i: standard.features[i].conv[-3][0].stride for i in range(1, 18)}
    assert [i for i, s in strides.items() if s == (2, 2)] == [2, 4, 11, 14]
    assert [i for i, s in standard_strides.items() if s == (2, 2)] == [2, 4, 7, 14]
    assert model.features[7].stride == 1 and model.features[11].stride == 2
    assert model.classifier[0].p == 0.0  # the reference classifier has no dropout
    # the reference code's four taps (features 4, 7, 11, 17), the first not declared
    assert MOBILENET_SKIPPED_TAP == "features.4.conv.1.1"
    assert MobileNetV2MGD.distillation_taps == tuple(f"features.{i}.conv.1.1" for i in (7, 11, 17))
    modules = dict(model.named_modules())
    assert all(isinstance(modules[t], nn.BatchNorm2d) for t in (MOBILENET_SKIPPED_TAP, *model.distillation_taps))

    model.train()
    taps = resolve_taps(model, None)
    feature_taps = FeatureTaps(model, taps)
    at_tap, skipped = {}, {}
    for tap in taps:
        modules[tap.module].register_forward_hook(
            lambda m, a, o, n=tap.module: at_tap.__setitem__(n, o.detach().clone()))
    modules[MOBILENET_SKIPPED_TAP].register_forward_hook(lambda m, a, o: skipped.__setitem__(0, o.shape))
    model(_x()).sum().backward()
    feats = feature_taps.features
    assert [tuple(f.shape) for f in feats] == [(2, 192, 28, 28), (2, 384, 14, 14), (2, 960, 7, 7)]
    assert tuple(skipped[0]) == (2, 144, 28, 28)  # the reference's feat1: 144 channels at 28 px
    for tap, feat in zip(taps, feats, strict=True):
        assert torch.equal(feat.detach(), at_tap[tap.module]), f"{tap.module} was modified after the tap"
        assert (feat < 0).float().mean() > 0.2, "pre-ReLU6: about half negative"
        assert not modules[tap.module.rpartition(".")[0] + ".2"].inplace


# ---------------------------------------------------------------- 4. ShuffleNet-V2: pre-ReLU taps, same logits
@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0_mgd", "shufflenet_v2_x0_5_mgd"])
def test_shufflenet_same_logits_as_torchvision_and_pre_relu_taps(name):
    torch.manual_seed(3)
    reference = getattr(tvm, VARIANTS[name])(num_classes=10)
    _randomize_bn(reference)
    model = build_model(name, num_classes=10)
    model.load_state_dict(reference.state_dict())

    stage_outputs: dict[str, torch.Tensor] = {}
    for k in (2, 3, 4):
        getattr(reference, f"stage{k}").register_forward_hook(
            lambda m, a, o, k=k: stage_outputs.__setitem__(f"stage{k}", o.detach().clone()))
    feature_taps = FeatureTaps(model, resolve_taps(model, None))
    x = _x()
    for train in (False, True):  # eval: running statistics; train: batch statistics
        model.train(train)
        reference.train(train)
        with torch.no_grad():
            logits, expected = model(x), reference(x)
        assert torch.isfinite(logits).all() and logits.abs().max() > 1e-3
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        for tap, feat in zip(feature_taps.taps, feature_taps.features, strict=True):
            ours, theirs = feat.detach(), stage_outputs[tap.module]
            assert (ours < 0).float().mean() > 0.2, f"{tap.module}: pre-ReLU, about half negative"
            assert (theirs < 0).sum() == 0, "torchvision's unit outputs are post-ReLU"
            torch.testing.assert_close(torch.relu(ours), theirs, rtol=1e-5, atol=1e-5)


def test_shufflenet_structure_follows_the_reference():
    model = build_model("shufflenet_v2_x1_0_mgd")
    # branches end with their last BN; the ReLU sits at the unit's input (none in stage2's first unit)
    for stage in (model.stage2, model.stage3, model.stage4):
        for unit in stage:
            assert isinstance(unit.branch2[-1], nn.BatchNorm2d)
            if unit.stride > 1:
                assert isinstance(unit.branch1[-1], nn.BatchNorm2d)
    assert isinstance(model.stage2[0].input_relu, nn.Identity)
    others = [*model.stage2[1:], *model.stage3, *model.stage4]
    assert all(isinstance(u.input_relu, nn.ReLU) and not u.input_relu.inplace for u in others)
    assert isinstance(model.conv5_relu, nn.ReLU) and not model.conv5_relu.inplace
    assert model.distillation_taps == ("stage2", "stage3", "stage4")


def test_shufflenet_stage4_quirk_opt_in():
    """``post_relu_stage4_tap=True``: the last tap is the ReLU'd stage-4 output, as in the reference code."""
    torch.manual_seed(4)
    default = build_model("shufflenet_v2_x0_5_mgd", num_classes=10)
    quirk = build_model("shufflenet_v2_x0_5_mgd", num_classes=10, arch_args={"post_relu_stage4_tap": True})
    quirk.load_state_dict(default.state_dict())
    assert quirk.distillation_taps == ("stage2", "stage3", "conv5_relu")
    assert type(quirk).distillation_taps == ("stage2", "stage3", "stage4")  # the class default is untouched
    a, b = FeatureTaps(default, resolve_taps(default, None)), FeatureTaps(quirk, resolve_taps(quirk, None))
    x = _x(2, 96)
    for m in (default, quirk):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(default(x), quirk(x))
    fa, fb = a.features, b.features
    assert torch.equal(fa[0], fb[0]) and torch.equal(fa[1], fb[1])
    assert (fa[2] < 0).any() and (fb[2] >= 0).all()
    assert torch.equal(fb[2], torch.relu(fa[2]))
