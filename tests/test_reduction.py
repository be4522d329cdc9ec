"""Every reduction rho(T, M) (Eq. 12-15) against its direct per-element formula."""

from __future__ import annotations

import pytest
import torch

from mgd_lightning.losses import margin_relu
from mgd_lightning.reduction import reduce_teacher, reduce_teacher_and_margin


def _setup(c_s=3, alpha=3, c_t=11, b=2, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, c_t, h, w, generator=g)
    groups = torch.randperm(c_t, generator=g)[: c_s * alpha].view(c_s, alpha)
    return teacher, groups


def _direct(teacher, groups, pick):
    """out[b, i, y, x] = pick(list of teacher[b, j, y, x] for j in groups[i])."""
    b, _, h, w = teacher.shape
    out = torch.empty(b, groups.shape[0], h, w)
    for n in range(b):
        for i, row in enumerate(groups.tolist()):
            for y in range(h):
                for x in range(w):
                    out[n, i, y, x] = pick([float(teacher[n, j, y, x]) for j in row])
    return out


@pytest.mark.parametrize(
    ("method", "pick"),
    [
        ("amp", lambda v: max(v, key=abs)),
        ("mp", max),
        ("avg", lambda v: sum(v) / len(v)),
    ],
)
def test_deterministic_reductions_match_formula(method, pick):
    teacher, groups = _setup()
    got = reduce_teacher(teacher, groups, method)
    torch.testing.assert_close(got, _direct(teacher, groups, pick))


def test_amp_keeps_sign():
    teacher = torch.tensor([[-5.0, 1.0, 2.0]]).view(1, 3, 1, 1)
    got = reduce_teacher(teacher, torch.tensor([[0, 1, 2]]), "amp")
    assert got.item() == -5.0
    assert reduce_teacher(teacher, torch.tensor([[0, 1, 2]]), "mp").item() == 2.0
    tie = torch.tensor([[3.0, -3.0, 3.0]]).view(1, 3, 1, 1)  # ties: the first member, as argmax
    assert reduce_teacher(tie, torch.tensor([[0, 1, 2]]), "amp").item() == 3.0
    assert reduce_teacher(tie, torch.tensor([[1, 0, 2]]), "amp").item() == -3.0


def test_sm_takes_the_matched_channel():
    teacher, _ = _setup()
    groups = torch.tensor([[7], [0], [3]])
    torch.testing.assert_close(reduce_teacher(teacher, groups, "sm"), teacher[:, [7, 0, 3]])


def test_rd_picks_group_members_independently_per_position():
    teacher, groups = _setup(c_s=2, alpha=4, c_t=8, b=8, h=16, w=16)
    gen = torch.Generator().manual_seed(1)
    got = reduce_teacher(teacher, groups, "rd", generator=gen)
    # every output equals one member of its group at the same position
    members = teacher[:, groups.flatten()].view(8, 2, 4, 16, 16)
    hits = members == got.unsqueeze(2)
    assert torch.all(hits.any(dim=2))
    chosen = hits.float().argmax(dim=2)  # (B, C_S, H, W) member index
    # per-position independence: all members drawn, roughly uniform, and different positions of
    # one image and the same position across images do not share a draw
    counts = torch.bincount(chosen.flatten(), minlength=4).float()
    assert torch.all((counts / counts.sum() - 0.25).abs() < 0.03)
    assert (chosen[:, :, :, 1:] != chosen[:, :, :, :-1]).float().mean() > 0.6  # 0.75 expected
    assert (chosen[1:] != chosen[:-1]).float().mean() > 0.6
    # neighbouring-position draws are uncorrelated
    a = chosen[:, :, :, 1:].flatten().float()
    b = chosen[:, :, :, :-1].flatten().float()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.05
    # reproducible with the same generator seed
    again = reduce_teacher(teacher, groups, "rd", generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, again)


@pytest.mark.parametrize("method", ["rd", "amp", "mp"])
def test_selected_margin_is_exact_margin_relu_of_chosen_channel(method):
    teacher, groups = _setup()
    margin = -torch.rand(teacher.shape[1]) - 0.1
    gen = torch.Generator().manual_seed(3)
    reduced, red_margin = reduce_teacher_and_margin(teacher, margin, groups, method, generator=gen,
                                                     margin_reduction="selected")
    assert red_margin.shape == reduced.shape
    # the reduced target equals sigma_T of the chosen teacher value, element by element
    target = torch.maximum(reduced, red_margin)
    transformed = margin_relu(teacher, margin)[:, groups.flatten()].view(2, 3, 3, 4, 5)
    original = teacher[:, groups.flatten()].view(2, 3, 3, 4, 5)
    chosen = (original == reduced.unsqueeze(2)).float().argmax(dim=2, keepdim=True)
    torch.testing.assert_close(target, transformed.gather(2, chosen).squeeze(2))


def test_official_margins_per_reduction():
    """The reference code's margins (``mgd/builder.py``): AMP the group mean, MP (``sp``) the group max, AvgP
    the mean, RD one random member per student channel, SM the matched channel; one value per channel. It is
    the default."""
    teacher, groups = _setup()
    margin = -torch.rand(teacher.shape[1])
    _, m_amp = reduce_teacher_and_margin(teacher, margin, groups, "amp")
    assert m_amp.shape == (1, 3, 1, 1)
    torch.testing.assert_close(m_amp.flatten(), margin[groups].mean(dim=1))
    _, m_mp = reduce_teacher_and_margin(teacher, margin, groups, "mp", margin_reduction="official")
    torch.testing.assert_close(m_mp.flatten(), margin[groups].max(dim=1).values)
    assert not torch.allclose(m_mp.flatten(), margin[groups].mean(dim=1))
    _, m_avg = reduce_teacher_and_margin(teacher, margin, groups, "avg")
    torch.testing.assert_close(m_avg.flatten(), margin[groups].mean(dim=1))
    _, m_rd = reduce_teacher_and_margin(teacher, margin, groups, "rd")
    assert m_rd.shape == (1, 3, 1, 1)
    for i, row in enumerate(groups.tolist()):
        assert any(torch.isclose(m_rd.flatten()[i], margin[j]) for j in row)
    sm_groups = groups[:, :1]
    _, m_sm = reduce_teacher_and_margin(teacher, margin, sm_groups, "sm")
    torch.testing.assert_close(m_sm.flatten(), margin[sm_groups[:, 0]])


def test_selected_margins_are_opt_in_and_per_position():
    teacher, groups = _setup()
    margin = -torch.rand(teacher.shape[1])
    for method in ("amp", "mp", "rd"):
        _, m_default = reduce_teacher_and_margin(teacher, margin, groups, method)
        _, m_sel = reduce_teacher_and_margin(teacher, margin, groups, method, margin_reduction="selected")
        assert m_default.shape == (1, 3, 1, 1) and m_sel.shape == (2, 3, 4, 5)


def test_gradients_do_not_need_teacher_but_flow_when_asked():
    teacher, groups = _setup()
    teacher.requires_grad_(True)
    reduce_teacher(teacher, groups, "amp").sum().backward()
    # each selected element gets gradient 1, the rest 0
    assert teacher.grad.sum().item() == pytest.approx(2 * 3 * 4 * 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "max"}, "method must be one of"),
        ({"groups": torch.tensor([[0, 11]])}, r"groups index teacher channels in \[0, 11\].*C_T=11"),
        ({"groups": torch.tensor([[-1, 2]])}, "groups index"),
        ({"groups": torch.tensor([0, 1])}, "groups must be a non-empty 2-D"),
        ({"groups": torch.tensor([[0.0, 1.0]])}, "integer"),
        ({"teacher": torch.zeros(2, 11, 4)}, "teacher must be a 4-D"),
        ({"method": "sm"}, "method 'sm' needs one teacher channel"),
    ],
)
def test_bad_input(kwargs, match):
    teacher, groups = _setup()
    args = {"teacher": teacher, "groups": groups, "method": "amp", **kwargs}
    with pytest.raises(ValueError, match=match):
        reduce_teacher(**args)


def test_bad_margin():
    teacher, groups = _setup()
    with pytest.raises(ValueError, match=r"margin must be \(C_T,\) = \(11,\)"):
        reduce_teacher_and_margin(teacher, torch.zeros(3), groups, "amp")
    with pytest.raises(ValueError, match="margin_reduction"):
        reduce_teacher_and_margin(teacher, torch.zeros(11), groups, "amp", margin_reduction="max")
