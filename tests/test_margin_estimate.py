"""The estimated margin (:mod:`mgd_lightning.margin_estimate`) against the BatchNorm formula (Eq. 4) on Gaussian
data."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mgd_lightning.losses import margin_from_bn
from mgd_lightning.margin_estimate import estimate_margin, margin_from_statistics, margin_statistics


def _gaussian(bias, std, n=8, hw=64, seed=0):
    """(n, C, hw, hw) features with channel c ~ N(bias_c, std_c^2)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(bias), hw, hw, generator=g, dtype=torch.float64)
    return z * torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) + torch.tensor(
        bias, dtype=torch.float64).view(1, -1, 1, 1)


def test_estimate_matches_the_batchnorm_formula_on_gaussian_data():
    bias = [-2.0, -0.5, 0.0, 0.7, 2.0, 4.0]  # the last: P(x < 0) = Phi(-4) < 1e-3, the -3 s fallback
    std = [0.5, 1.0, 2.0, 1.5, 1.0, 1.0]
    bn = nn.BatchNorm2d(len(bias))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(std))
        bn.bias.copy_(torch.tensor(bias))
    want = margin_from_bn(bn)
    got = estimate_margin(_gaussian(bias, std).float())
    assert got.dtype == torch.float32 and got.shape == (len(bias),) and (got <= 0).all()
    torch.testing.assert_close(got, want, atol=0.03, rtol=0.02)


def test_batches_accumulate_as_one_batch_and_2d_features_work():
    x = _gaussian([0.3, -1.0], [1.0, 0.5], n=6, hw=8)
    parts = estimate_margin(iter([x[:2], x[2:5], x[5:]]))  # a generator: read one batch at a time
    torch.testing.assert_close(parts, estimate_margin(x))
    summed = margin_statistics(x[:2]) + margin_statistics(x[2:])  # (5, C) statistics add up
    assert summed.shape == (5, 2)
    torch.testing.assert_close(margin_from_statistics(summed), estimate_margin(x))
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 2)  # (B, C) rows
    torch.testing.assert_close(estimate_margin(tokens), estimate_margin(x))
    # the mean of the negative responses, exactly
    neg = x[:, 0][x[:, 0] < 0]
    torch.testing.assert_close(estimate_margin(x)[0], neg.mean().float())


def test_a_channel_without_negatives_gets_minus_three_std():
    x = torch.stack([torch.linspace(1, 3, 1000), torch.linspace(-1, 1, 1000)], dim=1)  # (B, C)
    m = estimate_margin(x)
    torch.testing.assert_close(m[0], (-3 * x[:, 0].double().std(unbiased=False)).float())
    assert -0.6 < float(m[1]) < -0.4


@pytest.mark.parametrize(("features", "message"), [
    ([], r"^features: no tensors given$"),
    (torch.randn(5), r"^features must be \(B, C, \.\.\.\) tensors"),
    ([torch.randn(2, 3), torch.randn(2, 4)], r"^features: channel counts differ \(3 and 4\)$"),
])
def test_errors(features, message):
    with pytest.raises(ValueError, match=message):
        estimate_margin(features)
    with pytest.raises(ValueError, match=r"^threshold must be in \[0, 1\)"):
        estimate_margin(torch.randn(2, 3), threshold=1.0)
    with pytest.raises(ValueError, match=r"^statistics must be \(5, C\) from margin_statistics; got \(4, 3\)$"):
        margin_from_statistics(torch.zeros(4, 3))
