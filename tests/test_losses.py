"""Margin (Eq. 4), partial L2 (Eq. 5) and KD against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from scipy.stats import norm

from mgd_lightning.losses import kd_loss, margin_from_bn, margin_relu, partial_l2


def test_margin_from_bn_matches_gaussian_formula():
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 1.0, 3.0, 0.1]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -0.3, 4.0, -1.0, 0.5]))
    got = margin_from_bn(bn)
    for c in range(6):
        s, b = abs(bn.weight[c].item()), bn.bias[c].item()
        tail = norm.cdf(-b / s)
        want = b - s * norm.pdf(b / s) / tail if tail > 1e-3 else -3 * s
        assert got[c].item() == pytest.approx(want, rel=1e-5)
    assert torch.all(got < 0)
    # channel 3 has b/s = 4: Phi(-4) < 1e-3, so the fallback -3|g| applies
    assert got[3].item() == pytest.approx(-3.0)
    # b = 0: m = -s * phi(0) / 0.5 = -s * sqrt(2/pi)
    assert got[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    # the margin is the mean of the negative part: check by Monte Carlo for channel 2
    x = torch.randn(2_000_000, dtype=torch.float64) * 0.5 - 0.3
    assert got[2].item() == pytest.approx(x[x < 0].mean().item(), rel=5e-3)


def test_margin_from_bn_rejects_non_affine():
    with pytest.raises(ValueError, match="affine BatchNorm"):
        margin_from_bn(nn.BatchNorm2d(4, affine=False))


def test_partial_l2_masks_only_s_le_t_le_0():
    s = torch.tensor([-3.0, -1.0, 0.5, -1.0, 2.0, -2.0])
    t = torch.tensor([-1.0, -3.0, 1.0, 1.0, 0.5, -2.0])
    # element: s<=t<=0 ? -> masked
    # 0: -3<=-1<=0 yes; 1: -1<=-3 no; 2: t>0; 3: t>0; 4: s>t; 5: s==t<=0 yes (masked, 0 anyway)
    want = (2.0**2) + (0.5**2) + (2.0**2) + (1.5**2)
    got = partial_l2(s.view(1, 6, 1, 1), t.view(1, 6, 1, 1))
    assert got.item() == pytest.approx(want)


def test_partial_l2_with_margin_matches_elementwise_formula():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g)
    m = -torch.rand(4, generator=g)
    got = partial_l2(s, t, m)
    want = 0.0
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in s.shape)).tolist():
        sv = s[tuple(idx)].item()
        tv = max(t[tuple(idx)].item(), m[idx[1]].item())
        if not (sv <= tv <= 0):
            want += (tv - sv) ** 2
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # per-position margins (from a reduction) broadcast too
    full = m.view(1, 4, 1, 1).expand_as(t)
    assert partial_l2(s, t, full).item() == pytest.approx(got.item())
    torch.testing.assert_close(margin_relu(t, m), torch.maximum(t, full))


def test_partial_l2_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"student \(2, 3, 4, 4\).*teacher \(2, 4, 4, 4\)"):
        partial_l2(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="margin"):
        partial_l2(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(5))


def test_kd_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g)
    t = torch.randn(5, 7, generator=g)
    temp = 1.5
    p_t = torch.softmax(t / temp, 1)
    want = (p_t * (p_t.log() - torch.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
    assert kd_loss(s, t, temp).item() == pytest.approx(want.item(), rel=1e-5)
    assert kd_loss(t, t, temp).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="equal shapes"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
