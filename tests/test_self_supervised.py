"""Self-supervised learning: MoCoV2 (its queue, momentum key encoder and loss), the linear probe, the head helpers,
``task="self_supervised"`` (view splitting, MoCo + MGD and MGD-only distillation with the matching callback), MoCo's
cosine schedule, the two-view data modules and MoCo checkpoints read back by ``build_model(checkpoint_prefix="moco")``.

Everything is tiny (CIFAR ResNet-8 of width 1 and 2, 16 x 16 random images, a 32-key queue, 1-3 steps)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

pytest.importorskip("lightly")

from mgd_lightning import ClassificationModule, DistillationModule, MGDMatchingCallback  # noqa: E402
from mgd_lightning._lightning import pl  # noqa: E402
from mgd_lightning.data import FashionMNISTDataModule, ImageNetDataModule  # noqa: E402
from mgd_lightning.models import LinearProbe, MoCoV2, build_model  # noqa: E402
from mgd_lightning.models.heads import head_name, replace_head, strip_head  # noqa: E402
from mgd_lightning.tasks import SelfSupervisedTask  # noqa: E402
from mgd_lightning.tasks.self_supervised import split_views  # noqa: E402
from tests.test_data import _make_fashion, _make_folders  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (3, 16, 16)
ARCH = {"depth": 8, "width": 1}


# ---------------------------------------------------------------------------------------------- helpers
def _net(width: int = 1) -> nn.Module:
    return build_model("cifar_resnet", num_classes=10, arch_args={"depth": 8, "width": width})


def _moco(seed: int = 0, **kwargs) -> MoCoV2:
    torch.manual_seed(seed)
    return MoCoV2(_net(1), **{"dim": 16, "queue_size": 32, "momentum": 0.9, **kwargs})


def _views(b: int = 4, seed: int = 0, size=SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *size, generator=g)
    return x + 0.3 * torch.randn(b, *size, generator=g), x + 0.3 * torch.randn(b, *size, generator=g)


class _TwoViews(Dataset):
    """Fixed random images; items ``([view_1, view_2], label)`` (``two=False``: ``(view_1, label)``)."""

    def __init__(self, n: int = 8, two: bool = True, seed: int = 0) -> None:
        self.v1, self.v2 = _views(n, seed)
        self.two = two

    def __len__(self) -> int:
        return len(self.v1)

    def __getitem__(self, i: int):
        return ([self.v1[i], self.v2[i]] if self.two else self.v1[i]), i % 10


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _bank(model: MoCoV2) -> tuple[torch.Tensor, int]:
    bank = model.criterion.memory_bank
    return bank.bank.detach().clone(), int(bank.bank_ptr)


class _LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


# ---------------------------------------------------------------------------------------------- heads
def test_head_helpers():
    net = _net(1)
    assert head_name(net) == "fc"
    nested = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Sequential(nn.Dropout(), nn.Linear(4, 7)))
    assert head_name(nested) == "2.1"
    new = nn.Linear(4, 3)
    old = replace_head(nested, new)
    assert isinstance(old, nn.Linear) and old.out_features == 7 and nested[2][1] is new
    assert strip_head(net) == 64 and isinstance(net.fc, nn.Identity)
    assert net(torch.zeros(2, *SIZE)).shape == (2, 64)
    with pytest.raises(ValueError, match="has no nn.Linear classifier head"):
        head_name(nn.Sequential(nn.Conv2d(3, 4, 3)))


# ---------------------------------------------------------------------------------------------- MoCoV2
def test_moco_structure_and_queue_in_state_dict():
    net = _net(1)
    m = MoCoV2(net, dim=16, queue_size=32)
    assert m.encoder is net and isinstance(net.fc, nn.Identity) and m.feature_dim == 64
    x = torch.randn(2, *SIZE)
    assert m(x).shape == (2, 16) and m.encoder(x).shape == (2, 64)
    assert not any(p.requires_grad for p in m.key_encoder.parameters())
    assert not any(p.requires_grad for p in m.key_projector.parameters())
    assert all(p.requires_grad for p in m.encoder.parameters())
    for (_, q), (_, k) in zip(m.encoder.named_parameters(), m.key_encoder.named_parameters()):
        assert torch.equal(q, k) and q.data_ptr() != k.data_ptr()  # a copy, not shared
    state = m.state_dict()
    assert state["criterion.memory_bank.bank"].shape == (32, 16)
    assert state["criterion.memory_bank.bank_ptr"].tolist() == [0]
    torch.testing.assert_close(state["criterion.memory_bank.bank"].norm(dim=1), torch.ones(32))
    assert "queue_size=32" in repr(m) and "momentum=0.999" in repr(m)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=0), "dim must be >= 1"),
    (dict(queue_size=0), "queue_size must be >= 1"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
    (dict(temperature=0.0), "temperature must be > 0"),
])
def test_moco_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        MoCoV2(_net(1), **kwargs)
    assert "\n" not in str(error.value)


def test_moco_views_of_another_shape():
    m = _moco()
    with pytest.raises(ValueError, match=r"the two views must have one shape; got \(4, 3, 16, 16\) and "
                                         r"\(4, 3, 12, 12\)") as error:
        m.contrastive_loss(torch.randn(4, *SIZE), torch.randn(4, 3, 12, 12))
    assert "\n" not in str(error.value)


def test_momentum_update_only_in_training():
    m = _moco(momentum=0.9)
    with torch.no_grad():  # move the query side away from the key side (a copy of it), so the rule shows
        for p in [*m.encoder.parameters(), *m.projector.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    v1, v2 = _views()
    q0 = {**_params(m.encoder), **{f"proj.{k}": v for k, v in _params(m.projector).items()}}
    k0 = {**_params(m.key_encoder), **{f"proj.{k}": v for k, v in _params(m.key_projector).items()}}

    m.eval()
    with torch.no_grad():
        m.contrastive_loss(v1, v2)
    k_eval = {**_params(m.key_encoder), **{f"proj.{k}": v for k, v in _params(m.key_projector).items()}}
    assert all(torch.equal(k_eval[n], k0[n]) for n in k0)

    m.train()
    loss = m.contrastive_loss(v1, v2)
    assert torch.isfinite(loss) and loss.requires_grad
    k1 = {**_params(m.key_encoder), **{f"proj.{k}": v for k, v in _params(m.key_projector).items()}}
    assert set(k1) == set(q0)
    for n in k0:
        torch.testing.assert_close(k1[n], 0.9 * k0[n] + 0.1 * q0[n], rtol=0, atol=1e-6)
    assert any(not torch.equal(k1[n], k0[n]) for n in k0)
    # the query side is not touched by the momentum update
    assert all(torch.equal(v, _params(m.encoder)[k]) for k, v in q0.items() if not k.startswith("proj."))


def test_queue_takes_the_keys_only_in_training():
    m = _moco(queue_size=32)
    bank0, ptr0 = _bank(m)
    assert ptr0 == 0
    v1, v2 = _views(4, seed=1)

    m.eval()
    with torch.no_grad():
        m.contrastive_loss(v1, v2)
    bank, ptr = _bank(m)
    assert ptr == 0 and torch.equal(bank, bank0)

    m.train()
    m.contrastive_loss(v1, v2)
    bank1, ptr1 = _bank(m)
    assert ptr1 == 4
    with torch.no_grad():  # the keys: the (updated) key encoder on the second view, train mode, unit length
        keys = F.normalize(m.key_projector(m.key_encoder(v2)), dim=1)
    torch.testing.assert_close(bank1[:4], keys, rtol=1e-5, atol=1e-6)
    assert torch.equal(bank1[4:], bank0[4:])

    w1, w2 = _views(4, seed=2)
    m.contrastive_loss(w1, w2)
    bank2, ptr2 = _bank(m)
    assert ptr2 == 8 and torch.equal(bank2[:4], bank1[:4]) and not torch.equal(bank2[4:8], bank1[4:8])
    assert torch.equal(bank2[8:], bank0[8:])


def test_queue_unchanged_in_eval_mode_with_gradients_enabled():
    m = _moco()
    bank0, ptr0 = _bank(m)
    m.eval()
    m.contrastive_loss(*_views(4))
    bank, ptr = _bank(m)
    assert ptr == ptr0 and torch.equal(bank, bank0)


def test_resumed_moco_continues_with_the_same_queue():
    a = _moco(seed=0).train()
    for seed in range(3):
        a.contrastive_loss(*_views(4, seed=seed))
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert int(state["criterion.memory_bank.bank_ptr"]) == 12

    b = _moco(seed=1).train()
    assert not torch.equal(_bank(b)[0], state["criterion.memory_bank.bank"])  # another random queue
    b.load_state_dict(state)
    assert torch.equal(_bank(b)[0], _bank(a)[0]) and _bank(b)[1] == 12

    # a copy restored without the queue: the same weights, another loss (so the comparison below can fail)
    c = _moco(seed=1).train()
    c.load_state_dict({k: v for k, v in state.items() if not k.startswith("criterion.")}, strict=False)

    nxt = _views(4, seed=9)
    loss_a, loss_b, loss_c = a.contrastive_loss(*nxt), b.contrastive_loss(*nxt), c.contrastive_loss(*nxt)
    torch.testing.assert_close(loss_b, loss_a)
    assert not torch.allclose(loss_c, loss_a)
    assert torch.equal(_bank(b)[0], _bank(a)[0]) and _bank(a)[1] == _bank(b)[1] == 16


# ---------------------------------------------------------------------------------------------- split_views
def test_split_views():
    x, y = torch.randn(4, *SIZE), torch.arange(4)
    v1, v2 = _views(4)

    def same(got, want):
        return len(got) == len(want) and all(g is w for g, w in zip(got, want))

    assert same(split_views(x), [x])
    assert same(split_views((x, y)), [x])
    assert same(split_views([v1, v2]), [v1, v2])
    assert same(split_views(([v1, v2], y)), [v1, v2])
    assert same(split_views([[v1, v2], y]), [v1, v2])
    assert same(split_views({"image": x, "label": y}), [x])
    assert same(split_views({"image": [v1, v2]}), [v1, v2])
    inputs, targets = SelfSupervisedTask().split(([v1, v2], y))
    assert same(inputs, [v1, v2]) and targets is None  # labels never used
    for bad in ("images", [], (), {"label": y}, [torch.zeros(4), torch.zeros(4)], 3):
        with pytest.raises(ValueError, match="cannot find image views in a batch of type"):
            split_views(bad)


def test_task_predict_gives_encoder_features():
    m = _moco().eval()
    x = torch.randn(3, *SIZE)
    out = SelfSupervisedTask().predict(m, (x, torch.zeros(3)))
    torch.testing.assert_close(out["features"], m.encoder(x))
    assert out["features"].shape == (3, 64)


# ---------------------------------------------------------------------------------------------- LinearProbe
def test_linear_probe_freezes_encoder_and_keeps_it_in_eval_mode():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        LinearProbe(_net(1), num_classes=0)
    probe = LinearProbe(_net(1), num_classes=5)
    assert isinstance(probe.head, nn.Linear) and probe.head.weight.shape == (5, 64)
    assert torch.equal(probe.head.bias, torch.zeros(5))
    assert 0.006 < probe.head.weight.std().item() < 0.014 and abs(probe.head.weight.mean().item()) < 0.003
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    assert all(p.requires_grad for p in probe.head.parameters())
    probe.train()
    assert probe.training and probe.head.training
    assert not any(m.training for m in probe.encoder.modules())
    stats = {k: v.clone() for k, v in probe.encoder.state_dict().items()}
    out = probe(torch.randn(4, *SIZE))
    out.sum().backward()
    assert out.shape == (4, 5)
    assert all(torch.equal(v, probe.encoder.state_dict()[k]) for k, v in stats.items())  # BN statistics fixed
    assert all(p.grad is None for p in probe.encoder.parameters()) and probe.head.weight.grad is not None
    assert not probe.features(torch.randn(2, *SIZE)).requires_grad
    probe.eval()
    probe.train(True)
    assert not probe.encoder.training

    norm = LinearProbe(_net(1), num_classes=3, normalize=True).train()
    bn, linear = norm.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.num_features == 64 and bn.training
    assert isinstance(linear, nn.Linear) and linear.out_features == 3
    norm(torch.randn(4, *SIZE))
    assert int(bn.num_batches_tracked) == 1 and not norm.encoder.training


def test_linear_probe_fit_trains_the_head_only(tmp_path):
    torch.manual_seed(0)
    probe = LinearProbe(_net(1), num_classes=10)
    encoder_state = {k: v.clone() for k, v in probe.encoder.state_dict().items()}
    head = _params(probe.head)
    module = ClassificationModule(probe, lr=0.5, weight_decay=0.0)
    data = _TwoViews(8, two=False)
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    optimised = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert len(optimised) == 2 and {id(p) for p in optimised} == {id(p) for p in probe.head.parameters()}
    assert all(torch.equal(v, probe.encoder.state_dict()[k]) for k, v in encoder_state.items())
    assert any(not torch.equal(v, _params(probe.head)[k]) for k, v in head.items())
    assert not probe.encoder.training


# ---------------------------------------------------------------------------------------------- errors
def test_self_supervised_module_errors():
    with pytest.raises(ValueError, match="MoCoV2"):
        ClassificationModule(_net(1), task="self_supervised")
    with pytest.raises(ValueError, match=r"distill_weight > 0"):
        DistillationModule(_net(2), _net(1), task="self_supervised", input_size=SIZE, distill_weight=0)
    x, y = torch.randn(4, *SIZE), torch.arange(4)
    single = ClassificationModule(_moco(), task="self_supervised").train()
    with pytest.raises(ValueError, match="two_views"):
        single.training_step((x, y), 0)
    distill = DistillationModule(_net(2), _moco(), task="self_supervised", input_size=SIZE).train()
    with pytest.raises(ValueError, match="two_views"):
        distill.training_step(x, 0)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        ClassificationModule(_moco(), task="self_supervised", lr_schedule="cos")


# ---------------------------------------------------------------------------------------------- taps
def test_student_taps_hold_the_query_view_features():
    torch.manual_seed(0)
    m = DistillationModule(_net(2), _moco(), task="self_supervised", input_size=SIZE).train()
    v1, v2 = _views(4, seed=3)
    s_out, t_out, s_feats, t_feats = m.forward_features([v1, v2], student_bn=False)
    assert s_out is not None and s_out.requires_grad and t_out is None  # the InfoNCE loss
    after_loss = [f.detach().clone() for f in s_feats]
    teacher = [f.clone() for f in t_feats]
    with torch.no_grad():  # train mode, no optimiser step: the query encoder gives the same features again
        m.student.encoder(v1)
        on_query = [f.clone() for f in m.student_taps.features]
        m.student.encoder(v2)
        on_key = [f.clone() for f in m.student_taps.features]
        m.teacher(v1)
        teacher_on_query = [f.clone() for f in m.teacher_taps.features]
    assert len(after_loss) == 3
    for got, want, other in zip(after_loss, on_query, on_key):
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, other)
    for got, want in zip(teacher, teacher_on_query):
        torch.testing.assert_close(got, want)


def test_matching_pass_runs_only_the_encoders():
    torch.manual_seed(0)
    m = DistillationModule(_net(2), _moco(), task="self_supervised", input_size=SIZE)
    bank0, ptr0 = _bank(m.student)

    def boom(*args, **kwargs):
        raise AssertionError("not in the matching pass")

    m.student.key_encoder.forward = boom
    m.student.contrastive_loss = boom
    m.eval()
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        s_out, t_out, s_feats, t_feats = m.forward_features(m.task.split((x, torch.arange(4)))[0], student_bn=False)
    assert s_out is None and t_out is None
    assert [tuple(f.shape) for f in s_feats] == [(4, 16, 16, 16), (4, 32, 8, 8), (4, 64, 4, 4)]
    assert [tuple(f.shape) for f in t_feats] == [(4, 32, 16, 16), (4, 64, 8, 8), (4, 128, 4, 4)]
    bank, ptr = _bank(m.student)
    assert ptr == ptr0 and torch.equal(bank, bank0)


# ---------------------------------------------------------------------------------------------- MoCo fit
@pytest.fixture(scope="module")
def moco_fit(tmp_path_factory):
    """ClassificationModule(MoCoV2, task="self_supervised"): 3 epochs of one 4-image step, cosine schedule with a
    2-epoch warm-up from 0.01; a checkpoint written at the end."""
    tmp = tmp_path_factory.mktemp("moco_fit")
    model = _moco(seed=0)
    start = {"encoder": _params(model.encoder), "key": _params(model.key_encoder), "bank": _bank(model)[0]}
    module = ClassificationModule(model, task="self_supervised", lr=0.1, lr_schedule="cosine", warmup_epochs=2,
                                  warmup_factor=0.01, weight_decay=0.0)
    lrs = _LrRecorder()
    trainer = _trainer(tmp, max_epochs=3, limit_train_batches=1, callbacks=[lrs])
    trainer.fit(module, DataLoader(_TwoViews(8), batch_size=4, shuffle=True))
    path = tmp / "moco.ckpt"
    trainer.save_checkpoint(path)
    return SimpleNamespace(model=model, module=module, trainer=trainer, start=start, lrs=lrs.lrs, path=path)


def test_moco_fit_end_to_end(moco_fit):
    model, trainer = moco_fit.model, moco_fit.trainer
    assert trainer.global_step == 3
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and loss > 0
    bank, ptr = _bank(model)
    assert ptr == 12 and torch.equal(bank[12:], moco_fit.start["bank"][12:])
    assert not torch.equal(bank[:12], moco_fit.start["bank"][:12])
    assert any(not torch.equal(v, _params(model.encoder)[k]) for k, v in moco_fit.start["encoder"].items())
    assert any(not torch.equal(v, _params(model.key_encoder)[k]) for k, v in moco_fit.start["key"].items())
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in [*model.key_encoder.parameters(), *model.key_projector.parameters()]}
    assert {id(p) for p in model.encoder.parameters()} <= optimised
    assert len(moco_fit.module.metrics) == 0


def test_moco_fit_cosine_schedule_with_warmup(moco_fit):
    # epoch 0, 1: warm-up 0.01 * (1 - e / 2) + e / 2; epoch 2: 0.5 * (1 + cos(pi * 2 / 3))
    want = [0.1 * 0.01, 0.1 * (0.01 * 0.5 + 0.5), 0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 3))]
    assert moco_fit.lrs == pytest.approx(want, rel=1e-6)


def test_moco_checkpoint_holds_the_queue_and_reloads(moco_fit):
    state = torch.load(moco_fit.path, map_location="cpu", weights_only=False)["state_dict"]
    bank, ptr = _bank(moco_fit.model)
    assert torch.equal(state["model.criterion.memory_bank.bank"], bank)
    assert state["model.criterion.memory_bank.bank_ptr"].tolist() == [ptr]
    loaded = ClassificationModule.load_from_checkpoint(moco_fit.path, model=_moco(seed=7))
    assert torch.equal(_bank(loaded.model)[0], bank) and _bank(loaded.model)[1] == ptr
    assert all(torch.equal(v, _params(moco_fit.model.key_encoder)[k])
               for k, v in _params(loaded.model.key_encoder).items())


def _check_encoder_loaded(built: nn.Module, encoder: nn.Module, seed: int) -> None:
    want = encoder.state_dict()
    got = built.state_dict()
    assert set(got) - set(want) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(got[k], v) for k, v in want.items())
    torch.manual_seed(seed)
    fresh = build_model("cifar_resnet", num_classes=10, arch_args=ARCH)
    assert got["fc.weight"].shape == (10, 64)
    assert torch.equal(got["fc.weight"], fresh.fc.weight) and torch.equal(got["fc.bias"], fresh.fc.bias)


def test_build_model_reads_a_moco_checkpoint_written_by_a_trainer(moco_fit):
    torch.manual_seed(11)
    built = build_model("cifar_resnet", num_classes=10, arch_args=ARCH, checkpoint=str(moco_fit.path),
                        checkpoint_prefix="moco")
    _check_encoder_loaded(built, moco_fit.model.encoder, seed=11)
    # not the key encoder's weights (they differ after training)
    key = moco_fit.model.key_encoder.state_dict()
    assert any(not torch.equal(built.state_dict()[k], v) for k, v in key.items() if k.endswith("weight"))


def test_build_model_reads_a_hand_made_moco_checkpoint(tmp_path):
    model = _moco(seed=3)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)  # unlike any fresh network
    path = tmp_path / "hand.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    torch.manual_seed(12)
    built = build_model("cifar_resnet", num_classes=10, arch_args=ARCH, checkpoint=str(path),
                        checkpoint_prefix="moco")
    _check_encoder_loaded(built, model.encoder, seed=12)


def test_cosine_factor_via_configure_optimizers():
    module = ClassificationModule(_moco(), task="self_supervised", lr=0.1, lr_schedule="cosine", warmup_epochs=3,
                                  warmup_factor=0.001)
    module.trainer = SimpleNamespace(max_epochs=10)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    want = [0.1 * (0.001 * (1 - e / 3) + e / 3) if e < 3 else 0.1 * 0.5 * (1 + math.cos(math.pi * e / 10))
            for e in range(10)]
    assert lrs == pytest.approx(want, rel=1e-9)
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(0.05)

    plain = ClassificationModule(_moco(), task="self_supervised", lr=0.1, lr_schedule="cosine")
    plain.trainer = SimpleNamespace(max_epochs=4)
    config = plain.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    got = []
    for _ in range(4):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert got == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)], rel=1e-9)


# ---------------------------------------------------------------------------------------------- distillation
@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return _make_fashion(tmp_path_factory.mktemp("fashion"), n_train=16, n_test=4)


def _check_matchings(module: DistillationModule) -> None:
    for groups, (c_s, c_t, _, _) in zip(module.matchings, module.tap_shapes):
        assert groups.shape == (c_s, c_t // c_s)
        assert groups.unique().numel() == groups.numel() and int(groups.max()) < c_t


def test_moco_mgd_fit_with_two_view_data_module(fashion_root, tmp_path):
    """MoCo + MGD on the two-view Fashion-MNIST module: InfoNCE and distillation logged, the matching updated at
    epochs 0 and 1 (official_unsup) on the one-view matching set, the queue fed by the training keys only."""
    dm = FashionMNISTDataModule(root=str(fashion_root), two_views=True, channels=3, batch_size=4, limit_train=8)
    size = (3, 28, 28)
    torch.manual_seed(0)
    student = _moco(seed=0)
    module = DistillationModule(_net(2), student, task="self_supervised", input_size=size, lr=0.05,
                                loss_factor=1e3)
    initial = [g.clone() for g in module.matchings]
    start = _params(student.encoder)
    cb = MGDMatchingCallback(update_epochs="official_unsup", num_samples=8, progress_bar=False)
    trainer = _trainer(tmp_path, max_epochs=2, limit_train_batches=1, callbacks=[cb])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    assert [r["epoch"] for r in cb.history] == [0, 1] and int(module.last_matching_epoch) == 1
    assert cb.last_num_images == 8 and all(r["images"] == 8 for r in cb.history)
    _check_matchings(module)
    assert any(not torch.equal(a, b) for a, b in zip(initial, module.matchings))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/infonce", "train/distill"):
        assert key in metrics and torch.isfinite(metrics[key])
    assert metrics["train/loss"] == pytest.approx(float(metrics["train/infonce"] + metrics["train/distill"]),
                                                  rel=1e-5)
    assert _bank(student)[1] == 8  # 2 steps x 4 keys; the matching passes added none
    assert any(not torch.equal(v, _params(student.encoder)[k]) for k, v in start.items())
    # the student encoder of a DistillationModule checkpoint loads with checkpoint_prefix="moco"
    path = tmp_path / "mgd.ckpt"
    trainer.save_checkpoint(path)
    built = build_model("cifar_resnet", num_classes=10, arch_args=ARCH, checkpoint=str(path),
                        checkpoint_prefix="moco")
    assert all(torch.equal(built.state_dict()[k], v) for k, v in student.encoder.state_dict().items())


def test_mgd_only_fit_with_plain_student(tmp_path):
    torch.manual_seed(0)
    student = _net(1)
    module = DistillationModule(_net(2), student, task="self_supervised", input_size=SIZE, lr=0.05,
                                loss_factor=1e3)
    initial = [g.clone() for g in module.matchings]
    start = _params(student)
    cb = MGDMatchingCallback(update_epochs="official_unsup", num_samples=8, progress_bar=False)
    trainer = _trainer(tmp_path, max_epochs=2, limit_train_batches=1, callbacks=[cb])
    trainer.fit(module, DataLoader(_TwoViews(8), batch_size=4, shuffle=True))
    assert trainer.global_step == 2
    assert [r["epoch"] for r in cb.history] == [0, 1] and int(module.last_matching_epoch) == 1
    _check_matchings(module)
    assert any(not torch.equal(a, b) for a, b in zip(initial, module.matchings))
    metrics = trainer.callback_metrics
    assert "train/infonce" not in metrics
    assert torch.isfinite(metrics["train/distill"]) and metrics["train/distill"] > 0
    assert metrics["train/loss"] == pytest.approx(float(metrics["train/distill"]), rel=1e-6)
    assert any(not torch.equal(v, _params(student)[k]) for k, v in start.items() if k.startswith("layer"))


# ---------------------------------------------------------------------------------------------- data modules
def test_fashion_mnist_two_views(fashion_root):
    dm = FashionMNISTDataModule(root=str(fashion_root), two_views=True, channels=3, batch_size=4, limit_train=8)
    dm.setup()
    torch.manual_seed(0)
    views, label = dm.train_dataset[0]
    assert isinstance(views, list) and len(views) == 2 and isinstance(label, int)
    v1, v2 = views
    assert v1.shape == v2.shape == (3, 28, 28) and not torch.equal(v1, v2)
    assert torch.equal(v1[0], v1[1]) and torch.equal(v1[0], v1[2])  # the grey channel repeated
    again, _ = dm.train_dataset[0]
    assert not torch.equal(again[0], v1)  # a new random augmentation each time
    m1, m_label = dm.matching_dataset()[0]
    m2, _ = dm.matching_dataset()[0]
    assert isinstance(m1, torch.Tensor) and m1.shape == (3, 28, 28) and torch.equal(m1, m2) and m_label == label
    val, _ = dm.val_dataset[0]
    assert isinstance(val, torch.Tensor) and val.shape == (3, 28, 28)
    batch = next(iter(dm.train_dataloader()))
    inputs = split_views(batch)
    assert len(inputs) == 2 and inputs[0].shape == inputs[1].shape == (4, 3, 28, 28)
    one_view = FashionMNISTDataModule(root=str(fashion_root), channels=3, limit_train=8)
    one_view.setup()
    assert isinstance(one_view.train_dataset[0][0], torch.Tensor)


def test_imagenet_train_per_class_nested_and_two_views(tmp_path):
    _make_folders(tmp_path, {"train": 5, "val": 1}, classes=("n01", "n02", "n03"))
    small = dict(image_size=32, resize_size=40)

    def chosen(n, seed=0):
        dm = ImageNetDataModule(str(tmp_path), train_per_class=n, seed=seed, **small)
        dm.setup()
        assert dm.matching_dataset().samples == dm.train_dataset.samples
        return dm.train_dataset.samples

    two, three, many = chosen(2), chosen(3), chosen(10)
    for picked, n in ((two, 2), (three, 3), (many, 5)):
        assert sorted(label for _, label in picked).count(0) == n and len(picked) == 3 * n
        assert all(sum(1 for _, label in picked if label == c) == n for c in range(3))
    assert set(two) < set(three) < set(many)
    assert len(many) == 15 and chosen(2) == two and chosen(2, seed=1) != two
    with pytest.raises(ValueError, match="train_per_class must be >= 1"):
        ImageNetDataModule(str(tmp_path), train_per_class=0, **small)

    dm = ImageNetDataModule(str(tmp_path), train_per_class=1, two_views=True, **small)
    dm.setup()
    assert len(dm.train_dataset) == 3
    torch.manual_seed(0)
    views, label = dm.train_dataset[0]
    assert len(views) == 2 and views[0].shape == views[1].shape == (3, 32, 32)
    assert not torch.equal(views[0], views[1]) and label in (0, 1, 2)
    single, _ = dm.matching_dataset()[0]
    assert isinstance(single, torch.Tensor) and single.shape == (3, 32, 32)
