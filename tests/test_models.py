"""The CNNs of :mod:`mgd_lightning.models`: shapes, sizes, and the ``distillation_taps`` contract."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mgd_lightning.models import (
    CifarResNet,
    MobileNetV1,
    WideResNet,
    cifar_resnet,
    mobilenet_v1,
    resnet56,
    wide_resnet,
    wrn_16_2,
    wrn_16_4,
    wrn_28_2,
    wrn_28_4,
)

# builder, kwargs, num_classes, expected (C, H, W) at each tap for the default input size
CASES = {
    "mobilenet_v1": (mobilenet_v1, {}, 1000, [(128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)]),
    "mobilenet_v1_0.5": (
        mobilenet_v1,
        {"width_mult": 0.5, "num_classes": 10},
        10,
        [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
    ),
    "wrn_28_4": (wrn_28_4, {}, 100, [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "wrn_16_4": (wrn_16_4, {}, 100, [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "wrn_28_2": (wrn_28_2, {"num_classes": 10}, 10, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn_16_2": (wrn_16_2, {}, 100, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn_10_1": (
        wide_resnet,
        {"depth": 10, "widen_factor": 1},
        100,
        [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    ),
    "resnet56_2": (resnet56, {}, 100, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "resnet56_1": (resnet56, {"width": 1}, 100, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    "resnet20_1": (
        cifar_resnet,
        {"depth": 20, "num_classes": 10},
        10,
        [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    ),
    "resnet8_3": (
        cifar_resnet,
        {"depth": 8, "width": 3, "num_classes": 7},
        7,
        [(48, 32, 32), (96, 16, 16), (192, 8, 8)],
    ),
}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    builder, kwargs, _, _ = CASES[name]
    return builder(**kwargs)


def _input(model: nn.Module, batch: int = 2, size: int | None = None) -> torch.Tensor:
    c, h, w = type(model).default_input_size
    shape = (batch, c, h, w) if size is None else (batch, c, size, size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (lambda: wrn_28_4(num_classes=100), 5.87e6),
        (lambda: wrn_16_2(num_classes=100), 0.70e6),
        (lambda: mobilenet_v1(num_classes=1000), 4.2e6),
        (lambda: resnet56(num_classes=100, width=1), 0.86e6),
        (lambda: resnet56(num_classes=100), 3.42e6),
    ],
)
def test_parameter_counts(builder, expected):
    assert abs(_n_params(builder()) - expected) <= 0.03 * expected


def test_default_classes_and_attributes():
    assert mobilenet_v1().fc.out_features == 1000
    assert wide_resnet().fc.out_features == 100
    assert cifar_resnet().fc.out_features == 100
    assert MobileNetV1.default_input_size == (3, 224, 224)
    assert WideResNet.default_input_size == CifarResNet.default_input_size == (3, 32, 32)
    for cls, n_taps in ((MobileNetV1, 4), (WideResNet, 3), (CifarResNet, 3)):
        assert isinstance(cls.distillation_taps, tuple) and len(cls.distillation_taps) == n_taps
        assert all(isinstance(t, str) for t in cls.distillation_taps)
    # ResNet s:56-2 of the paper: 32/64/128 channels.
    model = resnet56()
    assert [model.get_submodule(f"layer{i}.last").conv2.out_channels for i in (1, 2, 3)] == [32, 64, 128]


@pytest.mark.parametrize("name", list(CASES))
def test_taps_exist_are_identity_and_no_inplace_ops(name):
    model = _build(name)
    modules = dict(model.named_modules())
    for tap in type(model).distillation_taps:
        assert tap in modules, tap
        assert type(modules[tap]) is nn.Identity, tap
    assert not [n for n, m in modules.items() if getattr(m, "inplace", False)]


@pytest.mark.parametrize(
    ("builder", "depth"),
    [(cifar_resnet, d) for d in (8, 14, 20, 32)] + [(wide_resnet, d) for d in (10, 16, 22)],
)
def test_tap_names_do_not_depend_on_depth(builder, depth):
    model = builder(depth, 1, 10)
    modules = dict(model.named_modules())
    assert all(isinstance(modules.get(tap), nn.Identity) for tap in type(model).distillation_taps)


@pytest.mark.parametrize("name", list(CASES))
def test_output_and_tap_shapes(name):
    model = _build(name)
    model.eval()
    shapes = {}
    for tap in type(model).distillation_taps:
        model.get_submodule(tap).register_forward_hook(
            lambda m, args, out, tap=tap: shapes.__setitem__(tap, tuple(out.shape))
        )
    with torch.no_grad():
        out = model(_input(model, batch=2))
    assert out.shape == (2, CASES[name][2])
    assert torch.isfinite(out).all()
    assert [shapes[t] for t in type(model).distillation_taps] == [(2, *s) for s in CASES[name][3]]


# ---- tapped value == direct recomputation, and never mutated afterwards -------------------------


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Functional BN: batch statistics in train mode, running statistics in eval mode."""
    if bn.training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, groups=conv.groups)


def _mobilenet_block(block, x):
    out = torch.relu(_bn(_conv(x, block.dw), block.bn1))
    return _bn(_conv(out, block.pw), block.bn2)


def _cifar_resnet_block(block, x):
    out = torch.relu(_bn(_conv(x, block.conv1), block.bn1))
    out = _bn(_conv(out, block.conv2), block.bn2)
    shortcut = x if block.shortcut is None else _bn(_conv(x, block.shortcut[0]), block.shortcut[1])
    return out + shortcut


# For each tap: the module whose input is captured, and the recomputation from that input.
RECOMPUTE = {
    "mobilenet_v1": {
        "layer2.1.preact": ("layer2.1", _mobilenet_block),
        "layer3.1.preact": ("layer3.1", _mobilenet_block),
        "layer4.5.preact": ("layer4.5", _mobilenet_block),
        "layer5.1.preact": ("layer5.1", _mobilenet_block),
    },
    "wrn_16_2": {
        "group2.0.preact": ("group2.0", lambda block, x: _bn(x, block.bn1)),
        "group3.0.preact": ("group3.0", lambda block, x: _bn(x, block.bn1)),
        "final_preact": ("final_bn", lambda bn, x: _bn(x, bn)),
    },
    "resnet8_3": {f"layer{i}.last.preact": (f"layer{i}.last", _cifar_resnet_block) for i in (1, 2, 3)},
}
RECOMPUTE["wrn_10_1"] = RECOMPUTE["wrn_16_2"]
RECOMPUTE["resnet20_1"] = RECOMPUTE["resnet8_3"]


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN affine parameters and running statistics, so that eval mode is tested too."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(RECOMPUTE))
def test_tap_equals_recomputation_and_is_not_mutated(name, train):
    model = _build(name)
    assert set(RECOMPUTE[name]) == set(type(model).distillation_taps)
    _randomize_bn(model)
    model.train(train)
    seen = {}
    for tap, (parent, _) in RECOMPUTE[name].items():
        model.get_submodule(parent).register_forward_pre_hook(
            lambda m, args, tap=tap: seen.__setitem__((tap, "input"), args[0].detach().clone())
        )
        model.get_submodule(tap).register_forward_hook(
            lambda m, args, out, tap=tap: seen.update(
                {(tap, "out"): out, (tap, "clone"): out.detach().clone(), (tap, "version"): out._version}
            )
        )
    logits = model(_input(model, size=96 if isinstance(model, MobileNetV1) else None))  # speed
    logits.sum().backward()  # autograd must not have needed to modify the tapped tensors either

    model.train(train)  # the recomputation reads `training` from the BN modules
    with torch.no_grad():
        for tap, (parent, recompute) in RECOMPUTE[name].items():
            out, clone = seen[(tap, "out")], seen[(tap, "clone")]
            assert out._version == seen[(tap, "version")], f"{tap} was modified in place"
            assert torch.equal(out.detach(), clone), f"{tap} was mutated after the hook"
            expected = recompute(model.get_submodule(parent), seen[(tap, "input")])
            torch.testing.assert_close(clone, expected, rtol=1e-4, atol=1e-5, msg=tap)


def test_wrn_projection_takes_preactivated_input():
    """In a block with a projection shortcut, the projection sees relu(bn1(x)), not x."""
    torch.manual_seed(0)
    model = wide_resnet(10, 2, 10)
    _randomize_bn(model)
    model.eval()
    block = model.group2[0]
    x = torch.randn(2, 32, 16, 16)
    pre = torch.relu(_bn(x, block.bn1))
    branch = _conv(torch.relu(_bn(_conv(pre, block.conv1), block.bn2)), block.conv2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), branch + _conv(pre, block.shortcut))


# ---- argument checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [4, 15, 27, 29, 0, -2])
def test_wide_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match=rf"depth.*depth={depth}"):
        wide_resnet(depth=depth)


@pytest.mark.parametrize("depth", [2, 18, 55, 57, 0])
def test_cifar_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match=rf"depth.*depth={depth}"):
        cifar_resnet(depth=depth)


def test_bad_width_arguments():
    with pytest.raises(ValueError, match="widen_factor"):
        wide_resnet(widen_factor=0)
    with pytest.raises(ValueError, match="width"):
        cifar_resnet(width=0)
    with pytest.raises(ValueError, match="width_mult"):
        mobilenet_v1(width_mult=0.0)


def test_models_do_not_import_lightning():
    code = (
        "import sys, mgd_lightning.models; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
