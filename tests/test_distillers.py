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


def test_fitnets_is_half_squared_error_of_the_regressed_hint():
    d = FitNets(SHAPES, [None, None], [0.5, 1.0], 10.0)
    s, t = _feats()
    losses = d(s, t)
    for k in range(2):
        r = torch.einsum("oc,bchw->bohw", d.regressors[k].weight[:, :, 0, 0], s[k])
        want = 0.5 * ((r - t[k]) ** 2).sum() / 2 * [0.5, 1.0][k] / 10.0
        torch.testing.assert_close(losses[k], want)
    assert sum(p.numel() for p in d.parameters()) == 3 * 6 + 5 * 8


def test_attention_transfer_matches_the_formula():
    d = AttentionTransfer(SHAPES, [None, None], [1.0, 1.0], 1.0)
    s, t = _feats()
    for k, loss in enumerate(d(s, t)):
        q_s = (s[k] ** 2).mean(1).flatten(1)
        q_t = (t[k] ** 2).mean(1).flatten(1)
        q_s, q_t = q_s / q_s.norm(dim=1, keepdim=True), q_t / q_t.norm(dim=1, keepdim=True)
        torch.testing.assert_close(loss, 1000.0 / 2 * ((q_s - q_t) ** 2).mean())
    assert attention_map(s[0]).shape == (2, 16)
    assert not list(d.parameters())


def test_overhaul_is_partial_l2_of_the_connector_against_margin_relu():
    margins = [-torch.rand(6), None]
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


CASES = [("kd", {"kd_weight": 1.0, "kd_temperature": 4.0}), ("fitnets", {}), ("at", {"loss_factor": 1.0}),
         ("ofd", {}), ("mgd", {"kd_weight": 1.0})]


@pytest.mark.parametrize(("distiller", "extra"), CASES)
def test_each_distiller_trains_a_few_steps(distiller, extra, tmp_path):
    import pytorch_lightning as pl

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
