"""DistillationModule: frozen teacher, checks at construction, loss, buffers, export, optimiser."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.losses import kd_loss, margin_from_bn, partial_l2
from mgd_lightning.reduction import reduce_teacher_and_margin
from tests.toys import ToyNet, digits_dataset


def _pair(**kwargs):
    torch.manual_seed(0)
    return DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), **kwargs)


def _trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kwargs})


def test_construction_sizes_buffers_and_margins():
    m = _pair()
    assert m.tap_shapes == [(5, 12, 8, 8), (7, 24, 4, 4)]
    assert [tuple(g.shape) for g in m.matchings] == [(5, 2), (7, 3)]
    sd = m.state_dict()
    assert "matching_0" in sd and "matching_1" in sd and "last_matching_epoch" in sd
    torch.testing.assert_close(m.margins[0], margin_from_bn(m.teacher.bns[0]))
    assert m.tap_weights == [0.5, 1.0]
    assert [tuple(g.shape) for g in _pair(reducer="sm").matchings] == [(5, 1), (7, 1)]


def test_teacher_is_frozen_and_stays_in_eval(tmp_path):
    m = _pair()
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    assert not any(p.requires_grad for p in m.teacher.parameters())
    m.train()
    assert not m.teacher.training and m.student.training
    data = digits_dataset(limit=64)
    matching = MGDMatchingCallback(update_every_n_epochs=1)  # its passes run the teacher too
    _trainer(tmp_path, max_epochs=2, callbacks=[matching]).fit(m, DataLoader(data, batch_size=16),
                                                               DataLoader(data, batch_size=32))
    assert not m.teacher.training
    after = m.teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"teacher {k} changed"
    params = {id(p) for g in m.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not params & {id(p) for p in m.teacher.parameters()}
    assert {id(p) for p in m.student_bns.parameters()} <= params
    assert {id(p) for p in m.student.parameters()} <= params


def test_training_loss_is_ce_plus_weighted_partial_l2_plus_kd():
    m = _pair(kd_weight=0.5, loss_factor=10.0, distill_weight=2.0)
    m.eval()  # deterministic student BN for the comparison
    x, y = digits_dataset(limit=6).tensors
    logs = {}
    m.log_dict = lambda d, **kw: logs.update(d)
    loss = m.training_step((x, y), 0)
    s_logits, t_logits, s_feats, t_feats = m.forward_features(x)
    want = nn.functional.cross_entropy(s_logits, y) + 0.5 * kd_loss(s_logits, t_logits, 1.5)
    for k in range(2):
        red, mar = reduce_teacher_and_margin(t_feats[k], m.margins[k], m.matchings[k], "amp")
        want = want + 2.0 * m.tap_weights[k] * partial_l2(s_feats[k], red, mar) / (6 * 10.0)
    torch.testing.assert_close(loss, want)
    assert {"train/ce", "train/kd", "train/distill", "train/distill_tap0", "train/distill_tap1"} <= set(logs)
    loss.backward()
    assert m.student.convs[0].weight.grad is not None
    assert all(p.grad is None for p in m.teacher.parameters())


def test_student_export_loads_into_bare_student():
    m = _pair()
    with torch.no_grad():
        m.student.fc.bias.add_(1.0)
    bare = ToyNet((5, 7))
    bare.load_state_dict(m.student_state_dict())
    x = torch.randn(2, 3, 16, 16)
    m.eval()
    bare.eval()
    torch.testing.assert_close(bare(x), m(x))


def test_matching_buffers_survive_checkpoint(tmp_path):
    m = _pair()
    new = torch.stack([torch.arange(10).roll(3)[i::5] for i in range(5)]).sort(dim=1).values
    m.set_matching(0, new)
    trainer = _trainer(tmp_path, max_epochs=0)
    trainer.strategy.connect(m)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    loaded = DistillationModule.load_from_checkpoint(path, teacher=ToyNet((12, 24)), student=ToyNet((5, 7)))
    assert torch.equal(loaded.matchings[0], new)
    with pytest.raises(ValueError, match=r"matching for tap 0 must have shape \(5, 2\)"):
        m.set_matching(0, torch.zeros(5, 3, dtype=torch.long))


@pytest.mark.parametrize("reducer", ["sm", "rd", "amp", "mp", "avg"])
@pytest.mark.parametrize("matching", [True, False])
def test_every_reducer_trains(reducer, matching):
    m = _pair(reducer=reducer, matching=matching)
    assert (m.assignment is None) == (not matching)
    x, y = digits_dataset(limit=8).tensors
    m.log_dict = lambda *a, **k: None
    loss = m.training_step((x, y), 0)
    assert torch.isfinite(loss)
    loss.backward()


def test_student_bn_can_be_turned_off():
    m = _pair(student_bn=False)
    assert all(isinstance(b, nn.Identity) for b in m.student_bns)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"teacher_taps": ["tap0"], "student_taps": ["tap0", "tap1"]}, r"as many taps.*\(1\).*\(2\)"),
        (
            {"teacher_taps": ["tap0", "tap0"]},
            r"tap pair 1: teacher 'tap0' gives \(12, 8, 8\).*'tap1' gives \(7, 4, 4\)",
        ),
        ({"student_taps": ["nope"]}, r"student_taps: 'nope' is not a submodule.*Valid names: .*convs"),
        ({"reducer": "max"}, "reducer must be one of"),
        ({"tap_weights": [1.0]}, "tap_weights needs 2 values"),
        ({"margin_reduction": "x"}, "margin_reduction"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _pair(**kwargs)


def test_teacher_narrower_than_student_is_refused():
    with pytest.raises(ValueError, match=r"tap pair 0: teacher 'tap0' has C_T=4 channels < student 'tap0' C_S=5"):
        DistillationModule(ToyNet((4, 24)), ToyNet((5, 7)))


def test_unknown_architecture_needs_taps():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="no preset distillation taps for student Sequential"):
        DistillationModule(ToyNet((12, 24)), plain)


PAPER_PAIRS = [
    ("resnet50", "mobilenet_v2", [(144, 256, 56), (192, 512, 28), (576, 1024, 14), (960, 2048, 7)]),
    ("resnet50", "shufflenet_v2_x1_0", [(116, 512, 28), (232, 1024, 14), (464, 2048, 7)]),
    ("resnet152", "resnet50", [(256, 256, 56), (512, 512, 28), (1024, 1024, 14), (2048, 2048, 7)]),
    ("resnet50", "resnet18", [(64, 256, 56), (128, 512, 28), (256, 1024, 14), (512, 2048, 7)]),
    ("resnet50", "mobilenet_v1", [(128, 256, 56), (256, 512, 28), (512, 1024, 14), (1024, 2048, 7)]),
]


@pytest.mark.parametrize(("teacher", "student", "shapes"), PAPER_PAIRS, ids=[f"{t}-{s}" for t, s, _ in PAPER_PAIRS])
def test_paper_pairs_get_equal_spatial_sizes_from_presets(teacher, student, shapes):
    import torchvision

    from mgd_lightning import models

    build = {"mobilenet_v1": models.mobilenet_v1}
    t = torchvision.models.get_model(teacher, num_classes=10)
    s = build[student](num_classes=10) if student in build else torchvision.models.get_model(student, num_classes=10)
    m = DistillationModule(t, s)
    assert [(c_s, c_t, h) for c_s, c_t, h, w in m.tap_shapes] == shapes
    assert all(h == w for _, _, h, w in m.tap_shapes)
    assert all(mg is not None and bool((mg < 0).all()) for mg in m.margins)


def test_classification_module_trains_and_shares_the_recipe(tmp_path):
    from mgd_lightning import ClassificationModule

    torch.manual_seed(0)
    m = ClassificationModule(ToyNet((8, 16)), lr=0.1, lr_milestones=[1])
    assert m.hparams.lr == 0.1 and m._top_k == 5
    data = digits_dataset(limit=128)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(m, DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=64))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)
    assert "val/acc1" in trainer.callback_metrics and "val/acc5" in trainer.callback_metrics
    with pytest.raises(ValueError, match="lr must be > 0"):
        ClassificationModule(ToyNet(), lr=0)


def test_accuracy_is_images_right_over_images_not_a_per_class_average():
    """The paper's top-1: with unbalanced classes the per-class mean (torchmetrics' default) would differ."""
    from mgd_lightning import ClassificationModule

    m = ClassificationModule(ToyNet((8, 16)), num_classes=10)
    logits = torch.full((4, 10), -1.0)
    logits[torch.arange(4), torch.tensor([0, 0, 0, 1])] = 1.0  # predictions 0, 0, 0, 1
    m.metrics["val_acc1"].update(logits, torch.tensor([0, 0, 0, 0]))  # 3 of 4 right; class 0 recall 3/4
    assert float(m.metrics["val_acc1"].compute()) == pytest.approx(0.75)
    m.metrics["val_acc1"].reset()
    m.metrics["val_acc1"].update(logits, torch.tensor([0, 0, 0, 2]))  # 3 of 4 right; macro: (1 + 0) / 2
    assert float(m.metrics["val_acc1"].compute()) == pytest.approx(0.75)


def test_a_compiled_student_or_teacher_is_unwrapped_with_a_warning():
    """``torch.compile(student)`` prefixes every name with ``_orig_mod.``: the taps were not found (KeyError)."""
    torch.manual_seed(0)
    teacher, student = ToyNet((12, 24)), ToyNet((5, 7))
    with pytest.warns(UserWarning, match=r"the student given is a torch\.compile'd module.*uncompiled"):
        m = DistillationModule(teacher, torch.compile(student), lr=0.05)
    assert m.student is student
    assert not [k for k in m.state_dict() if "_orig_mod" in k]
    with pytest.warns(UserWarning, match=r"the teacher given is a torch\.compile'd module"):
        assert DistillationModule(torch.compile(teacher), student).teacher is teacher
    loss = m.training_step((torch.randn(2, 3, 16, 16), torch.tensor([1, 2])), 0)
    assert torch.isfinite(loss["loss"] if isinstance(loss, dict) else loss)
