"""Transformer taps: token grids (:mod:`mgd_lightning.distill.token_grid`), token taps in :class:`Tap` /
:class:`FeatureTaps`, automatic taps on tiny timm / torchvision transformers (:mod:`mgd_lightning.distill.token_taps`),
pairing with resampling, and MGD end to end for ViT -> ViT, CNN -> ViT and ViT -> CNN."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.distill.auto_taps import auto_taps, pair_by_size, tap_shapes, token_layouts
from mgd_lightning.distill.feature_taps import FeatureTaps, Tap
from mgd_lightning.distill.taps import batchnorm_before_taps, resolve_taps
from mgd_lightning.distill.token_grid import grid_for, map_to_tokens, resample_to, tokens_to_map
from mgd_lightning.matching import contiguous_groups
from tests.toys import ToyNet

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (3, 32, 32)


def _vit(embed_dim=32, depth=4, patch_size=4, **kwargs) -> nn.Module:
    """A tiny timm ViT at 32 px: an (32 / patch_size)^2 grid, one class token."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=patch_size,
                             depth=depth, embed_dim=embed_dim, num_heads=2, num_classes=10, **kwargs)


def _swin() -> nn.Module:
    """A tiny timm Swin at 32 px: 16, 8, 4, 2 px stages of 24, 48, 96, 192 channels, channels-last."""
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=2,
                             window_size=4, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                             num_classes=10)


def _names(taps):
    return [t.module for t in taps]


# ---------------------------------------------------------------------------------------------- token_grid


def test_tokens_to_map_drops_prefix_tokens_and_round_trips():
    x = torch.randn(2, 2 + 3 * 4, 5)  # 2 prefix tokens (class + distillation), a 3 x 4 grid, 5 channels
    m = tokens_to_map(x, grid=(3, 4), num_prefix_tokens=2)
    assert m.shape == (2, 5, 3, 4) and m.is_contiguous()
    for i, j in ((0, 0), (1, 3), (2, 1)):
        torch.testing.assert_close(m[:, :, i, j], x[:, 2 + i * 4 + j, :])
    assert torch.equal(map_to_tokens(m, prefix=x[:, :2]), x)
    assert torch.equal(map_to_tokens(m), x[:, 2:])
    # default: a square grid
    assert tokens_to_map(torch.randn(1, 1 + 16, 3), num_prefix_tokens=1).shape == (1, 3, 4, 4)


def test_channels_last_and_nchw_layouts():
    x = torch.randn(2, 3, 4, 5)  # (B, H, W, C), a Swin stage
    m = tokens_to_map(x, layout="nhwc")
    assert m.shape == (2, 5, 3, 4) and torch.equal(m, x.permute(0, 3, 1, 2))
    assert tokens_to_map(x, layout="nchw") is x  # a CNN map: the tensor itself


def test_tokens_to_map_keeps_gradients():
    x = torch.randn(1, 5, 3, requires_grad=True)
    tokens_to_map(x, (2, 2), 1).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0] * 3] + [[1.0] * 3] * 4).unsqueeze(0))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: tokens_to_map(torch.randn(1, 5, 3), layout="nlc"), r"^layout must be one of"),
    (lambda: tokens_to_map(torch.randn(1, 5, 3), grid=(2, 3), num_prefix_tokens=1), r"^grid \(2, 3\) holds 6"),
    (lambda: tokens_to_map(torch.randn(1, 6, 3), num_prefix_tokens=1), r"^grid: N - num_prefix_tokens = 6 - 1 = 5"),
    (lambda: tokens_to_map(torch.randn(1, 3, 3), num_prefix_tokens=3), r"^num_prefix_tokens=3 leaves no patch"),
    (lambda: tokens_to_map(torch.randn(1, 3, 3), num_prefix_tokens=-1), r"^num_prefix_tokens must be >= 0"),
    (lambda: tokens_to_map(torch.randn(1, 2, 2, 3), layout="nhwc", num_prefix_tokens=1), r"^num_prefix_tokens"),
    (lambda: tokens_to_map(torch.randn(1, 2, 2, 3)), r"^x must be 3-D \(B, N, C\)"),
    (lambda: tokens_to_map(torch.randn(1, 4, 3), layout="nhwc"), r"^x must be 4-D \(B, H, W, C\)"),
    (lambda: tokens_to_map(torch.randn(1, 2, 2, 3), grid=(3, 3), layout="nhwc"), r"^grid \(3, 3\) differs"),
    (lambda: tokens_to_map(torch.randn(1, 4, 3), grid=(2, 0)), r"^grid must be \(H, W\)"),
    (lambda: resample_to(torch.randn(1, 4, 3), (2, 2)), r"^m must be 4-D"),
    (lambda: resample_to(torch.randn(1, 1, 4, 4), (2,)), r"^size must be \(H, W\)"),
    (lambda: map_to_tokens(torch.randn(1, 3, 2, 2), prefix=torch.randn(1, 1, 4)), r"^prefix must be \(B, P, C\)"),
    (lambda: grid_for(0), r"^num_patches must be >= 1"),
])
def test_errors_are_one_line_and_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_resample_pools_when_shrinking_and_interpolates_when_growing():
    m = torch.randn(2, 3, 8, 8)
    assert resample_to(m, (8, 8)) is m
    torch.testing.assert_close(resample_to(m, (4, 4)), F.avg_pool2d(m, 2))  # each cell: the mean it covers
    torch.testing.assert_close(resample_to(m, (16, 16)), F.interpolate(m, size=(16, 16), mode="bilinear",
                                                                       align_corners=False))
    # one dimension shrinks, the other grows: pooled along the first, then interpolated along the second
    mixed = resample_to(m, (4, 12))
    want = F.interpolate(F.adaptive_avg_pool2d(m, (4, 8)), size=(4, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mixed, want)
    # non-divisible shrink: adaptive pooling; the per-channel mean of an even split is kept
    assert resample_to(torch.randn(1, 2, 7, 5), (3, 2)).shape == (1, 2, 3, 2)
    torch.testing.assert_close(resample_to(m, (2, 2)).mean((2, 3)), m.mean((2, 3)))
    # bilinear growth makes no new extrema (a negative response stays within the teacher's range)
    grown = resample_to(m, (13, 13))
    assert grown.min() >= m.min() - 1e-6 and grown.max() <= m.max() + 1e-6
    x = m.clone().requires_grad_()
    resample_to(x, (3, 12)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_grid_for_follows_the_input_aspect():
    assert grid_for(64) == (8, 8)
    assert grid_for(12, (48, 64)) == (3, 4)
    assert grid_for(12, (64, 48)) == (4, 3)
    assert grid_for(7) in ((1, 7), (7, 1))


# ---------------------------------------------------------------------------------------------- Tap / FeatureTaps


def test_tap_token_fields_are_checked_hashable_and_picklable():
    tap = Tap("blocks.3", layout="tokens", grid=[8, 8], prefix_tokens=1, resample=[16, 16])
    assert tap.grid == (8, 8) and tap.resample == (16, 16) and hash(tap) == hash(pickle.loads(pickle.dumps(tap)))
    assert pickle.loads(pickle.dumps(tap)) == tap and tap.mapped
    plain = Tap("layer1.0.relu", "input")
    assert not plain.mapped and plain == Tap("layer1.0.relu", "input", (), False)
    t = torch.randn(1, 2, 3, 3)
    assert plain.to_map(t) is t
    with pytest.raises(ValueError, match=r"^Tap.layout must be one of .* for module 'x'$"):
        Tap("x", layout="nlc")
    with pytest.raises(ValueError, match=r"^Tap.prefix_tokens must be an int >= 0 \(0 unless layout='tokens'\)"):
        Tap("x", layout="nhwc", prefix_tokens=1)
    with pytest.raises(ValueError, match=r"^Tap.prefix_tokens must be an int >= 0 .*got None"):
        Tap("x", layout="tokens", prefix_tokens=None)
    with pytest.raises(ValueError, match=r"^Tap.grid is the patch grid .*'nhwc'.*grid=\(4, 4\)"):
        Tap("x", layout="nhwc", grid=(4, 4))
    with pytest.raises(ValueError, match=r"^Tap.grid is the patch grid .*'nchw'"):
        Tap("x", grid=(4, 4))
    with pytest.raises(ValueError, match=r"^Tap.grid of module 'x' must be \(H, W\)"):
        Tap("x", layout="tokens", grid=(8,))
    with pytest.raises(ValueError, match=r"^tap 'x' \(layout 'tokens'\): grid \(3, 3\) holds 9 patches"):
        Tap("x", layout="tokens", grid=(3, 3)).to_map(torch.randn(1, 4, 2))


def test_feature_taps_give_token_taps_as_maps_and_cnn_taps_untouched():
    torch.manual_seed(0)
    vit = _vit().eval()
    kept = {}
    vit.blocks[1].register_forward_hook(lambda m, a, o: kept.__setitem__("tokens", o))
    taps = FeatureTaps(vit, [Tap("blocks.1", layout="tokens", grid=(8, 8), prefix_tokens=1),
                             Tap("blocks.3", layout="tokens", prefix_tokens=1, resample=(4, 4))])
    x = torch.randn(2, *SIZE)
    vit(x)
    f1, f3 = taps.features
    assert f1.shape == (2, 32, 8, 8) and f3.shape == (2, 32, 4, 4)
    torch.testing.assert_close(f1, kept["tokens"][:, 1:].reshape(2, 8, 8, 32).permute(0, 3, 1, 2))
    f3.sum().backward()  # autograd reaches the network through the map
    assert vit.blocks[0].mlp.fc1.weight.grad is not None
    # a CNN tap is the very tensor of the forward, as before
    net = ToyNet((4, 8))
    outs = []
    net.tap0.register_forward_hook(lambda m, a, o: outs.append(o))
    cnn = FeatureTaps(net, [Tap("tap0")])
    net(torch.randn(1, 3, 16, 16))
    assert cnn.features[0] is outs[0]
    fresh = _vit()  # a model with token taps survives a pickle with its hooks (ddp_spawn, deepcopy)
    model, copied = pickle.loads(pickle.dumps((fresh, FeatureTaps(fresh, taps.taps))))
    model(x)
    assert copied.taps == taps.taps and [tuple(f.shape) for f in copied.features] == [(2, 32, 8, 8), (2, 32, 4, 4)]


# ---------------------------------------------------------------------------------------------- automatic taps


def test_auto_taps_on_a_plain_vit_takes_evenly_spaced_blocks():
    taps = auto_taps(_vit(depth=4), SIZE)
    assert _names(taps) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert {(t.layout, t.grid, t.prefix_tokens) for t in taps} == {("tokens", (8, 8), 1)}
    assert _names(auto_taps(_vit(embed_dim=16, depth=12), SIZE)) == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert _names(auto_taps(_vit(embed_dim=16, depth=12), SIZE, num_token_taps=2)) == ["blocks.5", "blocks.11"]
    assert tap_shapes(_vit(), taps, SIZE) == [(1, 32, 8, 8)] * 4


def test_auto_taps_drop_distillation_and_register_tokens():
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             depth=2, embed_dim=16, num_heads=2, num_classes=10)
    taps = auto_taps(deit, SIZE)
    assert [(t.module, t.grid, t.prefix_tokens) for t in taps] == [("blocks.0", (4, 4), 2), ("blocks.1", (4, 4), 2)]
    registers = _vit(depth=2, reg_tokens=4)
    assert {t.prefix_tokens for t in auto_taps(registers, SIZE)} == {5}
    assert tap_shapes(registers, auto_taps(registers, SIZE), SIZE) == [(1, 32, 8, 8)] * 2


def test_auto_taps_on_swin_take_the_channels_last_stage_ends():
    swin = _swin()
    taps = auto_taps(swin, SIZE)
    assert _names(taps) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert {t.layout for t in taps} == {"nhwc"}
    assert tap_shapes(swin, taps, SIZE) == [(1, 24, 16, 16), (1, 48, 8, 8), (1, 96, 4, 4), (1, 192, 2, 2)]


def test_auto_taps_on_a_hybrid_and_torchvision_vit():
    hybrid = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=64, depth=2, num_classes=10)
    taps = auto_taps(hybrid, (3, 64, 64))  # the transformer's blocks, not the ResNet stem's stages
    assert [(t.module, t.layout, t.grid, t.prefix_tokens) for t in taps] == [
        ("blocks.0", "tokens", (2, 2), 1), ("blocks.1", "tokens", (2, 2), 1)]
    tv = tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    taps = auto_taps(tv, SIZE)  # the class token has no attribute there: N - H * W of the patch convolution
    assert [(t.module, t.grid, t.prefix_tokens) for t in taps] == [
        ("encoder.layers.encoder_layer_0", (4, 4), 1), ("encoder.layers.encoder_layer_1", (4, 4), 1)]
    assert tap_shapes(tv, taps, SIZE) == [(1, 16, 4, 4)] * 2


def test_a_model_without_a_token_grid_is_a_one_line_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.GELU(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"^automatic taps for Sequential: no spatial stages found .* and no token "
                                         r"grid to map .*student_taps") as info:
        auto_taps(mlp, SIZE)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"no preset distillation taps for student Sequential.*no token grid"):
        DistillationModule(ToyNet((8, 16)), mlp, input_size=SIZE)


def test_taps_given_by_name_learn_their_layout():
    vit, swin = _vit(), _swin()
    taps = resolve_taps(vit, ["blocks.1", "patch_embed.proj"], "student", SIZE)
    assert [(t.layout, t.grid, t.prefix_tokens) for t in taps] == [("tokens", (8, 8), 1), ("nchw", None, 0)]
    assert tap_shapes(vit, taps, SIZE) == [(1, 32, 8, 8), (1, 32, 8, 8)]
    assert [t.layout for t in resolve_taps(swin, ["layers.2", "patch_embed.proj"], "student", SIZE)] == [
        "nhwc", "nchw"]
    given = Tap("blocks.1", layout="tokens", grid=(8, 8), prefix_tokens=1)
    assert token_layouts(vit, [given], SIZE) == [given]  # a layout given is kept
    cnn = ToyNet((4, 8))
    assert resolve_taps(cnn, ["tap0"], "student", SIZE)[0].layout == "nchw"  # no LayerNorm: no probe
    # a token tensor with no grid to find
    flat = _LayerNormed(nn.Sequential(nn.Flatten(2), nn.Linear(32 * 32, 8)))  # (1, 3, 8): no convolution
    with pytest.raises(ValueError, match=r"^tap 'inner.1' of _LayerNormed gives \(1, 3, 8\) tokens over no patch "
                                         r"grid found .*prefix_tokens=P\)$"):
        token_layouts(flat, [Tap("inner.1")], SIZE)


class _LayerNormed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.norm = inner, nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.inner(x))


def test_token_taps_have_no_batchnorm_margin():
    vit = _vit()
    taps = auto_taps(vit, SIZE)
    assert batchnorm_before_taps(vit, taps, torch.zeros(1, *SIZE)) == [None] * 4


# ---------------------------------------------------------------------------------------------- pairing


def test_vit_and_cnn_pair_in_order_with_the_teacher_resampled():
    vit, cnn = _vit(), ToyNet((8, 16))  # ViT: 4 taps at 8 x 8; ToyNet at 32 px: 16 x 16 and 8 x 8
    t_taps, s_taps = pair_by_size(vit, auto_taps(vit, SIZE), cnn, resolve_taps(cnn, None, "student", SIZE), SIZE)
    assert _names(t_taps) == ["blocks.2", "blocks.3"] and _names(s_taps) == ["tap0", "tap1"]
    assert [t.resample for t in t_taps] == [(16, 16), None]
    assert [s[2:] for s in tap_shapes(vit, t_taps, SIZE)] == [(16, 16), (8, 8)]
    # CNN teacher -> ViT student: the CNN's 16 x 16 map pooled to the ViT's grid
    t_taps, s_taps = pair_by_size(cnn, resolve_taps(cnn, None, "teacher", SIZE), vit, auto_taps(vit, SIZE), SIZE)
    assert _names(t_taps) == ["tap0", "tap1"] and _names(s_taps) == ["blocks.2", "blocks.3"]
    assert [t.resample for t in t_taps] == [(8, 8), None]
    # Swin -> CNN: stage sizes exist on both sides: by size, nothing resampled
    swin = _swin()
    t_taps, s_taps = pair_by_size(swin, auto_taps(swin, SIZE), cnn, resolve_taps(cnn, None, "student", SIZE), SIZE)
    assert _names(t_taps) == ["layers.0", "layers.1"] and all(t.resample is None for t in t_taps)


# ---------------------------------------------------------------------------------------------- end to end


def _fit(teacher, student, steps=2, **kwargs):
    torch.manual_seed(0)
    module = DistillationModule(teacher, student, input_size=SIZE, lr_milestones=(), loss_factor=1.0, **kwargs)
    initial = [m.clone() for m in module.matchings]
    data = TensorDataset(torch.randn(8, *SIZE), torch.randint(0, 10, (8,)))
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[MGDMatchingCallback(update_every_n_epochs=1, progress_bar=False), Record()])
    trainer.fit(module, DataLoader(data, batch_size=4))
    return module, initial, losses


def _check_fit(module, initial, losses, steps=2):
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    assert int(module.last_matching_epoch) == 0
    changed = False
    for (c_s, c_t, _, _), groups, before in zip(module.tap_shapes, module.matchings, initial):
        assert groups.shape == (c_s, c_t // c_s)
        flat = groups.flatten()
        assert len(set(flat.tolist())) == flat.numel() and 0 <= int(flat.min()) and int(flat.max()) < c_t
        changed |= not torch.equal(groups, before)
    assert changed, "the callback did not change any matching"
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in module.student_bns)  # BN2d over the (B, C, H, W) maps


def test_mgd_vit_to_vit_with_other_grids(caplog):
    # teacher: 64 channels on an 8 x 8 grid; student: 16 channels on a 4 x 4 grid (8 px patches)
    with caplog.at_level(logging.INFO, logger="mgd_lightning.distill.tap_norms"):
        module, initial, losses = _fit(_vit(embed_dim=64, depth=4), _vit(embed_dim=16, depth=2, patch_size=8))
    assert _names(module.teacher_taps.taps) == ["blocks.2", "blocks.3"]
    assert [t.resample for t in module.teacher_taps.taps] == [(4, 4), (4, 4)]
    assert module.tap_shapes == [(16, 64, 4, 4), (16, 64, 4, 4)]
    assert module.margins == [None, None]  # LayerNorm network: no margin ReLU
    records = [r for r in caplog.records if r.name == "mgd_lightning.distill.tap_norms"]
    assert [r.levelno for r in records] == [logging.INFO]  # said once, no warning per tap
    _check_fit(module, initial, losses)


def test_mgd_cnn_to_vit():
    module, initial, losses = _fit(ToyNet((32, 64)), _vit(embed_dim=16, depth=2))
    assert module.tap_shapes == [(16, 32, 8, 8), (16, 64, 8, 8)]
    assert [t.resample for t in module.teacher_taps.taps] == [(8, 8), None]
    assert all(m is not None for m in module.margins)  # the CNN teacher keeps its BatchNorm margins
    _check_fit(module, initial, losses)


def test_mgd_vit_to_cnn():
    module, initial, losses = _fit(_vit(embed_dim=32, depth=4), ToyNet((8, 16)))
    assert module.tap_shapes == [(8, 32, 16, 16), (16, 32, 8, 8)]
    _check_fit(module, initial, losses)


def test_mgd_swin_to_cnn_pairs_by_size():
    module, initial, losses = _fit(_swin(), ToyNet((8, 16)), steps=1)
    assert _names(module.teacher_taps.taps) == ["layers.0", "layers.1"]
    assert module.tap_shapes == [(8, 24, 16, 16), (16, 48, 8, 8)]
    _check_fit(module, initial, losses, steps=1)


def test_contiguous_groups_is_the_initial_matching():
    # the matching the end-to-end tests start from (what "changed" compares against)
    assert torch.equal(contiguous_groups(16, 64)[0], torch.arange(4))


def test_the_taps_command_says_which_teacher_maps_are_resampled_and_from_what():
    from mgd_lightning.commands.taps import describe_taps

    text = describe_taps("timm/vit_tiny_patch16_224", student="resnet18")  # 14 x 14 tokens vs 56 / 28 / 14 / 7 px
    pairs = text.split("pairs (")[1]
    assert pairs.startswith("in order, the last of each side; teacher maps resampled to the student's grid")
    rows = [line.split() for line in pairs.splitlines()[3:7]]
    assert [r[1] for r in rows] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert [r[2:5] for r in rows] == [["(192,", "56,", "56)"], ["(192,", "28,", "28)"], ["(192,", "14,", "14)"],
                                      ["(192,", "7,", "7)"]]
    assert "resampled from 14 x 14" in pairs.splitlines()[3] and "resampled" not in pairs.splitlines()[5]
    assert "C_T < C_S" in pairs.splitlines()[6]
    # two CNNs keep their pairing by size, no resampling
    cnns = describe_taps("resnet50", (3, 64, 64), student="mobilenet_v3_small")
    assert "(paired by spatial size)" in cnns and "resampled" not in cnns
