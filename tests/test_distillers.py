"""The competing baselines: each loss against its paper's formula, and each trains in the module."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning.distillers import AttentionTransfer, FitNets, Overhaul, attention_map
from mgd_lightning.losses import partial_l2
from tests.toys import ToyNet, digits_dataset

SHAPES = [(3, 6, 4, 4), (5, 8, 2, 2)]


def _feats(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(2, c_s, h, w, generator=g) for c_s, _, h, w in SHAPES]
    t = [torch.randn(2, c_t, h, w, generator=g) for _, c_t, h, w in SHAPES]
    return s, t


def test_fitnets_defaults_are_mdistillers_one_hint_mse_x100():
    """mdistiller FitNet: one hint layer (the middle stage), ConvReg = conv + BN + ReLU, 100 * F.mse_loss on the
    post-ReLU features; no loss and no regressor at the other taps."""
    shapes = [(3, 6, 4, 4), (5, 8, 2, 2), (4, 9, 2, 2)]
    d = FitNets(shapes, [None] * 3).train()
    assert d.tap_weights == [0.0, 100.0, 0.0] and d.loss_factor == 1.0
    assert FitNets.default_tap_weights(4) == [0.0, 100.0, 0.0, 0.0]  # mdistiller HINT_LAYER 2 = stage 2 of 4
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, c_s, h, w, generator=g) for c_s, _, h, w in shapes]
    t = [torch.randn(2, c_t, h, w, generator=g) for _, c_t, h, w in shapes]
    losses = d(s, t)
    assert float(losses[0]) == 0.0 and float(losses[2]) == 0.0
    conv, bn = d.regressors["1"][0], d.regressors["1"][1]
    r = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], s[1].clamp_min(0)) + conv.bias.view(1, -1, 1, 1)
    r = ((r - r.mean(dim=(0, 2, 3), keepdim=True)) / (r.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
                                                     + bn.eps).sqrt()).clamp_min(0)  # BN (train, init), ReLU
    torch.testing.assert_close(losses[1], 100.0 * ((r - t[1].clamp_min(0)) ** 2).mean())
    assert sum(p.numel() for p in d.parameters()) == (5 * 8 + 8) + 2 * 8  # one regressor: conv with bias + BN


def test_fitnets_hints_where_the_weights_say():
    d = FitNets(SHAPES, [None, None], [0.5, 1.0], 10.0, post_relu=False)
    s, t = _feats()
    losses = d(s, t)
    for k in range(2):
        want = torch.nn.functional.mse_loss(d.regressors[str(k)](s[k]), t[k]) * [0.5, 1.0][k] / 10.0
        torch.testing.assert_close(losses[k], want)


def test_attention_transfer_matches_the_authors_formula():
    """szagoruyko/attention-transfer (cifar.py): at(x) = normalize(x.pow(2).mean(1).view(B, -1)); loss + beta *
    sum of (at_s - at_t).pow(2).mean() over the groups, beta = 1e3 (not the paper's beta / 2), equal weights,
    post-activation features."""
    d = AttentionTransfer(SHAPES, [None, None])
    assert d.tap_weights == [1.0, 1.0] and d.loss_factor == 1.0
    s, t = _feats()
    for k, loss in enumerate(d(s, t)):
        q_s = (s[k].clamp_min(0) ** 2).mean(1).flatten(1)
        q_t = (t[k].clamp_min(0) ** 2).mean(1).flatten(1)
        q_s, q_t = q_s / q_s.norm(dim=1, keepdim=True), q_t / q_t.norm(dim=1, keepdim=True)
        torch.testing.assert_close(loss, 1000.0 * ((q_s - q_t) ** 2).mean())
    pre = AttentionTransfer(SHAPES, [None, None], post_relu=False)(s, t)
    assert not torch.allclose(pre[0], d(s, t)[0])
    assert attention_map(s[0]).shape == (2, 16)
    assert not list(d.parameters())


def test_overhaul_is_partial_l2_of_the_connector_against_margin_relu():
    margins = [-torch.rand(6), None]
    default = Overhaul(SHAPES, margins)  # OFD's ImageNet code: weights 1/2^(N-k-1), / batch / 1e4
    assert default.tap_weights == [0.5, 1.0] and default.loss_factor == 1e4
    d = Overhaul(SHAPES, margins, [1.0, 1.0], 100.0).eval()
    s, t = _feats()
    losses = d(s, t)
    for k in range(2):
        conn = d.connectors[k](s[k])
        target = torch.maximum(t[k], margins[0].view(1, -1, 1, 1)) if k == 0 else t[k]
        keep = ~((conn <= target) & (target <= 0))
        want = (((conn - target) ** 2) * keep).sum() / 2 / 100.0
        torch.testing.assert_close(losses[k], want)
        torch.testing.assert_close(losses[k], partial_l2(conn, t[k], margins[k]) / 2 / 100.0)
    assert sum(p.numel() for p in d.parameters()) == (3 * 6 + 2 * 6) + (5 * 8 + 2 * 8)


CASES = [("kd", {"kd_weight": 0.9, "kd_temperature": 4.0, "ce_weight": 0.1}), ("fitnets", {}), ("at", {}),
         ("ofd", {}), ("mgd", {"kd_weight": 1.0})]


@pytest.mark.parametrize(("distiller", "extra"), CASES)
def test_each_distiller_trains_a_few_steps(distiller, extra, tmp_path):
    from mgd_lightning._lightning import pl

    torch.manual_seed(0)
    m = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), distiller=distiller, **extra)
    assert (m.assignment is not None) == (distiller == "mgd")
    before = [p.detach().clone() for p in m.student.parameters()]
    cb = MGDMatchingCallback()
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, callbacks=[cb],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, DataLoader(digits_dataset(limit=48), batch_size=16))
    assert trainer.global_step == 3
    assert len(cb.history) == (distiller == "mgd")  # the matching runs for MGD only
    assert any(not torch.equal(a, b) for a, b in zip(before, m.student.parameters()))
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    if m.feature_distiller is not None:
        assert {id(p) for p in m.feature_distiller.parameters()} <= opt_params
    logged = trainer.callback_metrics
    assert ("train/kd" in logged) == ("kd_weight" in extra)
    assert ("train/distill" in logged) == (distiller != "kd")


def test_bad_distiller_arguments():
    with pytest.raises(ValueError, match="distiller must be one of"):
        DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), distiller="ab")
    with pytest.raises(ValueError, match="kd_weight > 0"):
        DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), distiller="kd")


@pytest.mark.parametrize("distiller", ["at", "fitnets", "ofd"])
def test_baselines_accept_a_student_wider_than_the_teacher(distiller):
    m = DistillationModule(ToyNet((4, 6)), ToyNet((5, 7)), distiller=distiller)
    assert m.matchings == [] and m.assignment is None
    x = torch.randn(2, 3, 16, 16)
    _, _, s, t = m.forward_features(x)
    assert all(torch.isfinite(v) for v in m.distillation_losses(s, t))
    with pytest.raises(ValueError, match="MGD needs C_T >= C_S"):
        DistillationModule(ToyNet((4, 6)), ToyNet((5, 7)), distiller="mgd")


def test_kd_recipe_weights_the_cross_entropy_and_the_kd_term():
    """mdistiller KD (CIFAR): ce_weight * CE + kd_weight * T^2 KL(batchmean), T = 4, 0.1 / 0.9."""
    from mgd_lightning.distillers import KD_RECIPES
    from mgd_lightning.losses import kd_loss

    assert KD_RECIPES["cifar"] == {"kd_temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    assert KD_RECIPES["imagenet"] == {"kd_temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}
    torch.manual_seed(0)
    m = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), distiller="kd", **KD_RECIPES["cifar"])
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    m.log_dict = lambda *a, **k: None
    loss = m.training_step((x, y), 0)
    s_logits, t_logits = m.student(x), m.teacher(x)
    want = 0.1 * torch.nn.functional.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
    torch.testing.assert_close(loss, want)
    with pytest.raises(ValueError, match="ce_weight"):
        DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), ce_weight=-1.0)


@pytest.mark.parametrize(("distiller", "weights", "factor"), [
    ("mgd", [0.5, 1.0], 1e4), ("ofd", [0.5, 1.0], 1e4), ("at", [1.0, 1.0], 1.0), ("fitnets", [100.0, 0.0], 1.0)])
def test_each_distiller_gets_its_authors_scale_by_default(distiller, weights, factor):
    m = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), distiller=distiller)
    assert m.tap_weights == weights and m.loss_factor == factor
    custom = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), distiller=distiller, tap_weights=[1.0, 2.0],
                                loss_factor=10.0)
    assert custom.tap_weights == [1.0, 2.0] and custom.loss_factor == 10.0
