"""Feature taps: the preset positions against an independent, non-inplace recomputation of each network.

The recomputation never goes through :class:`FeatureTaps`: a test hook clones the input of the unit that
holds the tap, and the tapped tensor is rebuilt from the unit's parameters with ``torch.nn.functional``
(no inplace activation). BatchNorm in train mode is recomputed from batch statistics without touching
the running statistics.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.resnet import Bottleneck

from mgd_lightning.distill.taps import FeatureTaps, Tap, batchnorm_before_taps, preset_taps, resolve_taps

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
SHUFFLENETS = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
ARCHS = [*RESNETS, "mobilenet_v2", *SHUFFLENETS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(arch: str) -> nn.Module:
    """A fresh random-init model with 10 classes."""
    torch.manual_seed(0)
    return getattr(tvm, arch)(num_classes=10)


# ---------------------------------------------------------------- independent, non-inplace recomputation
def _conv(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _bn(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if m.training:  # batch statistics, running statistics left alone
        return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=m.eps)


def _apply(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Sequential):
        for sub in m:
            x = _apply(sub, x)
        return x
    if isinstance(m, nn.Conv2d):
        return _conv(m, x)
    if isinstance(m, nn.BatchNorm2d):
        return _bn(m, x)
    if isinstance(m, nn.ReLU6):
        return F.relu6(x)
    if isinstance(m, nn.ReLU):
        return F.relu(x)
    raise TypeError(f"unexpected module {type(m).__name__}")


def _resnet_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual sum of a BasicBlock / Bottleneck, before its final ReLU."""
    out = F.relu(_bn(block.bn1, _conv(block.conv1, x)))
    if isinstance(block, Bottleneck):
        out = F.relu(_bn(block.bn2, _conv(block.conv2, out)))
        out = _bn(block.bn3, _conv(block.conv3, out))
    else:
        out = _bn(block.bn2, _conv(block.conv2, out))
    identity = x if block.downsample is None else _apply(block.downsample, x)
    return out + identity


def _mobilenet_dw_bn(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output of the depthwise BN of an inverted residual unit with an expansion layer."""
    expand, depthwise = unit.conv[0], unit.conv[1]
    assert len(unit.conv) == 4, "the tapped MobileNet-V2 units have an expansion layer"
    return _bn(depthwise[1], _conv(depthwise[0], _apply(expand, x)))


def _shuffle_unit(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ShuffleNet-V2 unit: split / two branches, concatenation, channel shuffle (groups = 2)."""
    if unit.stride == 1:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, _apply(unit.branch2, x2)), dim=1)
    else:
        out = torch.cat((_apply(unit.branch1, x), _apply(unit.branch2, x)), dim=1)
    n, c, h, w = out.shape
    return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def _expected_units(model: nn.Module):
    """The units holding the paper's positions, chosen here independently of ``preset_taps``."""
    if isinstance(model, tvm.ResNet):
        return [getattr(model, f"layer{k}")[-1] for k in range(1, 5)], _resnet_sum
    if isinstance(model, tvm.MobileNetV2):
        return [model.features[i] for i in (3, 6, 13, 17)], _mobilenet_dw_bn
    assert isinstance(model, tvm.ShuffleNetV2)
    return [getattr(model, f"stage{k}")[-1] for k in (2, 3, 4)], _shuffle_unit


def _spy(model: nn.Module, taps: list[Tap], units: list[nn.Module]):
    """Test-only hooks: a clone of each unit's input and of each tapped tensor at the moment it exists."""
    unit_inputs: dict[int, torch.Tensor] = {}
    at_tap: dict[int, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for i, unit in enumerate(units):
        hook = unit.register_forward_pre_hook(lambda m, a, i=i: unit_inputs.__setitem__(i, a[0].detach().clone()))
        handles.append(hook)
    for i, tap in enumerate(taps):
        if tap.kind == "input":  # last call wins, as for the tap
            hook = modules[tap.module].register_forward_pre_hook(
                lambda m, a, i=i: at_tap.__setitem__(i, a[0].detach().clone())
            )
        else:
            hook = modules[tap.module].register_forward_hook(
                lambda m, a, o, i=i: at_tap.__setitem__(i, o.detach().clone())
            )
        handles.append(hook)
    return unit_inputs, at_tap, handles


# ---------------------------------------------------------------- 1. presets == recomputation
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("arch", ARCHS)
def test_preset_taps_equal_independent_recomputation(arch, train):
    torch.manual_seed(1)
    model = _build(arch)
    taps = resolve_taps(model, None)
    assert taps == preset_taps(model)
    units, recompute = _expected_units(model)
    assert len(taps) == len(units)
    feature_taps = FeatureTaps(model, taps)
    unit_inputs, at_tap, handles = _spy(model, taps, units)
    x = torch.randn(2, 3, 64, 64)

    model.train(train)
    if not train:  # eval with running statistics that differ from the init
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0.0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    with torch.set_grad_enabled(train):
        model(x)
    feats = feature_taps.features
    for h in handles:
        h.remove()

    assert len(feats) == len(taps)
    with torch.no_grad():
        for i, (feat, unit) in enumerate(zip(feats, units, strict=True)):
            assert feat.requires_grad == train
            if train:
                assert feat.grad_fn is not None, "the tapped tensor must be the forward's own tensor"
            # Not mutated by the rest of the forward (e.g. by an inplace ReLU after the tap).
            assert torch.equal(feat, at_tap[i]), f"tap {i} ({taps[i].module}) was modified after the tap"
            expected = recompute(unit, unit_inputs[i])
            assert feat.shape == expected.shape
            torch.testing.assert_close(feat, expected, rtol=1e-4, atol=1e-4)
            if not isinstance(model, tvm.ShuffleNetV2):  # pre-activation: an overwrite by ReLU would show
                assert (feat < 0).any()


# ---------------------------------------------------------------- 2. documented shapes at 224 px
@pytest.mark.parametrize(
    "arch, expected",
    [
        ("resnet50", [(256, 56), (512, 28), (1024, 14), (2048, 7)]),
        ("resnet18", [(64, 56), (128, 28), (256, 14), (512, 7)]),
        ("mobilenet_v2", [(144, 56), (192, 28), (576, 14), (960, 7)]),
        ("shufflenet_v2_x1_0", [(116, 28), (232, 14), (464, 7)]),
    ],
)
def test_preset_shapes_at_224(arch, expected):
    model = _build(arch).eval()
    feature_taps = FeatureTaps(model, resolve_taps(model, None))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feature_taps.features] == [(1, c, s, s) for c, s in expected]


# ---------------------------------------------------------------- 3. gradients reach the student
@pytest.mark.parametrize(
    "arch, first_conv, head",
    [
        ("resnet18", "conv1", "fc"),
        ("mobilenet_v2", "features.0.0", "classifier.1"),
        ("shufflenet_v2_x0_5", "conv1.0", "fc"),
    ],
)
def test_gradients_flow_through_taps(arch, first_conv, head):
    torch.manual_seed(2)
    model = _build(arch).train()
    feature_taps = FeatureTaps(model, resolve_taps(model, None))
    model(torch.randn(2, 3, 64, 64))
    loss = sum(f.pow(2).sum() for f in feature_taps.features)
    loss.backward()
    modules = dict(model.named_modules())
    grad = modules[first_conv].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert modules[head].weight.grad is None, "the loss depends on the taps only"


# ---------------------------------------------------------------- 4. resolve_taps
def test_resolve_taps_bad_name_lists_valid_names():
    model = _build("resnet18")
    with pytest.raises(ValueError) as err:
        resolve_taps(model, ["layer2", "layer1.0.conv9"], role="student")
    msg = str(err.value)
    assert "layer1.0.conv9" in msg and "student_taps" in msg
    assert "layer1.0.conv1" in msg and "layer4.1.relu" in msg and "Valid names" in msg


@pytest.mark.parametrize("taps", [[""], [], [Tap("nope", "input")]], ids=["root", "empty", "tap-object"])
def test_resolve_taps_rejects_root_empty_and_unknown(taps):
    with pytest.raises(ValueError):
        resolve_taps(_build("resnet18"), taps)


def test_resolve_taps_unknown_architecture_is_tapped_automatically_or_needs_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert preset_taps(model) is None
    assert resolve_taps(model, None, role="teacher") == [Tap("1", "input", ("1",))]  # the pre-ReLU tensor
    with pytest.raises(ValueError, match="teacher_taps"):  # no spatial stage at all
        resolve_taps(nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 2)), None, role="teacher")
    assert resolve_taps(model, "0") == [Tap("0", "output", ("1",))]


@pytest.mark.parametrize(
    "bad", [lambda: Tap("layer2", "inputs"), lambda: resolve_taps(_build("resnet18"), ["layer2:out"])]
)
def test_bad_tap_kind(bad):
    with pytest.raises(ValueError, match="kind"):
        bad()


def test_custom_tap_names():
    torch.manual_seed(3)
    model = _build("resnet18").train()
    taps = resolve_taps(model, ["layer2", "layer3.1.bn1", "layer4.1.relu:input"])
    assert [(t.module, t.kind) for t in taps] == [
        ("layer2", "output"),
        ("layer3.1.bn1", "output"),
        ("layer4.1.relu", "input"),
    ]
    assert resolve_taps(model, [Tap("layer2")]) == [Tap("layer2")]
    feature_taps = FeatureTaps(model, taps)
    # Taps by name make every activation non-inplace.
    assert all(not m.inplace for m in model.modules() if hasattr(m, "inplace"))
    unit_inputs, _, handles = _spy(model, [], [model.layer4[1]])
    model(torch.randn(2, 3, 64, 64))
    feats = feature_taps.features
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    with torch.no_grad():
        expected = _resnet_sum(model.layer4[1], unit_inputs[0])
    torch.testing.assert_close(feats[2].detach(), expected, rtol=1e-4, atol=1e-4)
    for h in handles:
        h.remove()


@pytest.mark.parametrize(
    "arch, name",
    [
        ("resnet18", "layer2"),
        ("resnet18", "layer3.1.bn1"),
        ("resnet18", "layer3.0.downsample.1"),
        ("resnet18", "layer4.1.relu:input"),
    ],
)
def test_custom_tap_not_modified_after_the_tap(arch, name):
    model = _build(arch).train()
    taps = resolve_taps(model, [name])
    feature_taps = FeatureTaps(model, taps)
    _, at_tap, handles = _spy(model, taps, [])
    model(torch.randn(2, 3, 64, 64))
    for h in handles:
        h.remove()
    assert torch.equal(feature_taps.features[0], at_tap[0]), f"{name} was modified in place after the tap"


@pytest.mark.parametrize(("arch", "name"), [("resnet18", "layer3.1.bn2"), ("resnet50", "layer3.5.bn3")])
def test_tap_overwritten_in_place_is_an_error_not_a_wrong_value(arch, name):
    # BasicBlock/Bottleneck do `out += identity` on the last BN's output
    model = _build(arch).train()
    feature_taps = FeatureTaps(model, resolve_taps(model, [name]))
    model(torch.randn(2, 3, 64, 64))
    with pytest.raises(RuntimeError, match=rf"taps \['{name}'\]: the tapped tensor was modified in place"):
        _ = feature_taps.features


# ---------------------------------------------------------------- 5. batchnorm_before_taps
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_batchnorm_before_taps(arch):
    model = _build(arch).eval()
    taps = resolve_taps(model, None)
    modules = dict(model.named_modules())
    if isinstance(model, tvm.ResNet):
        last = [getattr(model, f"layer{k}")[-1] for k in range(1, 5)]
        expected = [b.bn3 if isinstance(b, Bottleneck) else b.bn2 for b in last]
    elif isinstance(model, tvm.MobileNetV2):
        expected = [modules[t.module] for t in taps]
        assert all(isinstance(bn, nn.BatchNorm2d) for bn in expected)
    else:  # the unit output mixes two branches: no BN of the full channel count
        expected = [None] * len(taps)
    found = batchnorm_before_taps(model, taps, torch.randn(1, 3, 64, 64))
    assert len(found) == len(expected)
    assert all(f is e for f, e in zip(found, expected, strict=True)), (found, expected)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


# ---------------------------------------------------------------- 6. missing taps, remove(), pickling
class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.use_b = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x) if self.use_b else self.a(x)


def test_features_missing_and_remove():
    model = _Branchy()
    feature_taps = FeatureTaps(model, resolve_taps(model, ["b"]))
    with pytest.raises(RuntimeError, match="'b'"):
        feature_taps.features  # noqa: B018  (no forward yet)
    x = torch.randn(1, 3, 4, 4)
    model(x)
    (kept,) = feature_taps.features
    assert kept.shape == (1, 4, 4, 4)
    model.use_b = False
    model(x)
    with pytest.raises(RuntimeError, match="not reached"):
        feature_taps.features  # noqa: B018  (a stale tensor must not survive a forward that missed the tap)

    model.use_b = True
    model(x)
    (kept,) = feature_taps.features
    feature_taps.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model(torch.randn(1, 3, 4, 4))
    assert feature_taps.features[0] is kept, "no hook may run after remove()"


def test_model_with_taps_pickles_before_forward():
    model = _build("shufflenet_v2_x0_5")
    FeatureTaps(model, resolve_taps(model, None))  # hooks: functools.partial of bound methods, no closures
    loaded = pickle.loads(pickle.dumps(model))
    assert len(loaded._forward_pre_hooks) == 1 and all(len(u._forward_hooks) == 1 for u in loaded.stage4[-1:])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_after_forward_carries_hooks_not_tensors(how):
    """EMA / AveragedModel / ddp_spawn copy a model whose store holds the last forward's non-leaf tensors."""
    model = _build("resnet18").train()
    feature_taps = FeatureTaps(model, resolve_taps(model, None))
    model(torch.randn(2, 3, 64, 64))
    before = feature_taps.features
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert all(a is b for a, b in zip(feature_taps.features, before, strict=True)), "original store untouched"
    (clear,) = clone._forward_pre_hooks.values()
    clone_taps = clear.__self__
    assert isinstance(clone_taps, FeatureTaps) and clone_taps is not feature_taps
    with pytest.raises(RuntimeError, match="not reached"):
        clone_taps.features  # noqa: B018  (no tensors copied)
    with torch.no_grad():
        clone(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in clone_taps.features] == [64, 128, 256, 512]
    assert all(a is b for a, b in zip(feature_taps.features, before, strict=True)), "the copy's hooks are its own"
    clone_taps.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in clone.modules())
    assert model._forward_pre_hooks and model.layer4[1].relu._forward_pre_hooks, "original hooks kept"


def test_taps_work_under_inference_mode():
    model = _build("resnet18").eval()
    feature_taps = FeatureTaps(model, resolve_taps(model, None))
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
        assert len(feature_taps.features) == 4
