"""Channel cost and the exact assignments (Eq. 6-12) against brute force and an independent LP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from mgd_lightning.matching import (
    assignment_cost,
    balanced_assignment,
    channel_cost,
    contiguous_groups,
    sparse_assignment,
)


def _check_valid(groups: torch.Tensor, c_s: int, c_t: int, alpha: int) -> None:
    assert groups.dtype == torch.int64
    assert tuple(groups.shape) == (c_s, alpha)
    flat = groups.flatten().tolist()
    assert len(set(flat)) == len(flat), "a teacher channel is used twice"
    assert all(0 <= j < c_t for j in flat)


def _brute_force(cost: np.ndarray, alpha: int) -> float:
    """Minimum of Eq. 9 over every labelling of teacher channels (student id or unmatched)."""
    c_s, c_t = cost.shape
    best = np.inf
    for labels in itertools.product(range(-1, c_s), repeat=c_t):
        counts = np.bincount([x for x in labels if x >= 0], minlength=c_s)
        if np.all(counts == alpha):
            best = min(best, sum(cost[i, j] for j, i in enumerate(labels) if i >= 0))
    return best


def _lp_optimum(cost: np.ndarray, alpha: int) -> float:
    """Independent solver: the transportation LP (integral polytope) solved by HiGHS."""
    c_s, c_t = cost.shape
    n = c_s * c_t
    a_eq = np.zeros((c_s, n))
    for i in range(c_s):
        a_eq[i, i * c_t : (i + 1) * c_t] = 1.0
    a_ub = np.zeros((c_t, n))
    for j in range(c_t):
        a_ub[j, j::c_t] = 1.0
    res = linprog(
        cost.ravel(), A_ub=a_ub, b_ub=np.ones(c_t), A_eq=a_eq, b_eq=np.full(c_s, alpha),
        bounds=(0, 1), method="highs",
    )
    assert res.status == 0
    return res.fun


def _cost_matrix(draw, max_s: int, max_t: int, integer: bool):
    c_s = draw(st.integers(1, max_s))
    c_t = draw(st.integers(c_s, max_t))
    if integer:  # many ties: the hard case for exactness
        vals = st.integers(0, 5).map(float)
    else:
        vals = st.floats(-100, 100, allow_nan=False, width=32)
    data = draw(st.lists(vals, min_size=c_s * c_t, max_size=c_s * c_t))
    return np.array(data, dtype=np.float64).reshape(c_s, c_t)


@st.composite
def tiny_costs(draw):
    return _cost_matrix(draw, 3, 7, draw(st.booleans()))


@st.composite
def medium_costs(draw):
    return _cost_matrix(draw, 9, 40, draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(tiny_costs())
def test_balanced_assignment_matches_brute_force(cost):
    c_s, c_t = cost.shape
    alpha = c_t // c_s
    groups = balanced_assignment(cost)
    _check_valid(groups, c_s, c_t, alpha)
    assert assignment_cost(cost, groups) == pytest.approx(_brute_force(cost, alpha), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(tiny_costs())
def test_sparse_assignment_matches_brute_force(cost):
    c_s, c_t = cost.shape
    groups = sparse_assignment(cost)
    _check_valid(groups, c_s, c_t, 1)
    assert assignment_cost(cost, groups) == pytest.approx(_brute_force(cost, 1), abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(medium_costs())
def test_assignments_match_linear_program(cost):
    c_s, c_t = cost.shape
    alpha = c_t // c_s
    balanced = balanced_assignment(torch.from_numpy(cost))
    _check_valid(balanced, c_s, c_t, alpha)
    assert assignment_cost(cost, balanced) == pytest.approx(_lp_optimum(cost, alpha), abs=1e-5)
    sparse = sparse_assignment(cost)
    _check_valid(sparse, c_s, c_t, 1)
    assert assignment_cost(cost, sparse) == pytest.approx(_lp_optimum(cost, 1), abs=1e-5)


def test_non_divisible_leaves_the_optimal_channels_unmatched():
    # C_S=2, C_T=5, alpha=2: dropping the last channel by index (reference code) costs 100 more.
    cost = np.array([[0.0, 9.0, 9.0, 9.0, 0.0], [9.0, 0.0, 0.0, 9.0, 9.0]])
    groups = balanced_assignment(cost)
    assert groups.tolist() == [[0, 4], [1, 2]]
    assert assignment_cost(cost, groups) == 0.0


def test_official_unmatched_drops_the_highest_index_teacher_channels_before_solving():
    """The reference code's "shave" (mgd/builder.py update_flow: ``cols = rows``): only the first alpha * C_S
    teacher channels enter the assignment, which is then optimal among them."""
    cost = np.array([[0.0, 9.0, 9.0, 9.0, 0.0], [9.0, 0.0, 0.0, 9.0, 9.0]])
    groups = balanced_assignment(cost, unmatched="official")
    assert 4 not in groups.flatten().tolist()
    assert groups.tolist() == [[0, 3], [1, 2]] and assignment_cost(cost, groups) == 9.0
    with pytest.raises(ValueError, match=r"unmatched must be one of \('optimal', 'official'\); got 'best'"):
        balanced_assignment(cost, unmatched="best")


@settings(max_examples=40, deadline=None)
@given(medium_costs())
def test_official_unmatched_is_the_optimum_over_the_first_channels_and_never_beats_the_exact_one(cost):
    c_s, c_t = cost.shape
    alpha = c_t // c_s
    official = balanced_assignment(cost, unmatched="official")
    _check_valid(official, c_s, alpha * c_s, alpha)
    assert assignment_cost(cost, official) == pytest.approx(_lp_optimum(cost[:, : alpha * c_s], alpha), abs=1e-5)
    exact = balanced_assignment(cost)
    assert assignment_cost(cost, exact) <= assignment_cost(cost, official) + 1e-6
    if alpha * c_s == c_t:
        assert torch.equal(official, exact)


def test_rows_sorted_and_numpy_torch_agree():
    rng = np.random.default_rng(0)
    cost = rng.random((16, 64))
    g_np = balanced_assignment(cost)
    g_t = balanced_assignment(torch.from_numpy(cost).float())
    assert torch.equal(g_np, g_t)
    assert torch.all(g_np[:, 1:] > g_np[:, :-1])


def test_contiguous_groups():
    assert contiguous_groups(3, 7).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert contiguous_groups(4, 4).tolist() == [[0], [1], [2], [3]]


def _direct_cost(student, teacher, metric):
    b, c_s = student.shape[:2]
    c_t = teacher.shape[1]
    out = torch.zeros(c_s, c_t, dtype=torch.float64)
    for n in range(b):
        for i in range(c_s):
            for j in range(c_t):
                s = student[n, i].flatten().double()
                t = teacher[n, j].flatten().double()
                if metric == "cosine":  # the reference code: 2 - 2 cos, cos = 0 for an all-zero map
                    cos = (s @ t) / (s.norm() * t.norm()) if s.norm() > 0 and t.norm() > 0 else 0.0
                    out[i, j] += 2 - 2 * cos
                else:
                    out[i, j] += ((s - t) ** 2).sum()
    return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_channel_cost_matches_eq6(metric):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 4, 5, 6, generator=g)
    teacher = torch.randn(3, 9, 5, 6, generator=g)
    teacher[1, 2] = 0.0  # an all-zero map
    got = channel_cost(student, teacher, metric=metric, dtype=torch.float64, compute_dtype=torch.float64)
    assert got.shape == (4, 9) and got.dtype == torch.float64
    torch.testing.assert_close(got, _direct_cost(student, teacher, metric), rtol=1e-9, atol=1e-9)
    if metric == "cosine":  # 2 - 2cos per image, within [0, 4B]
        assert float(got.min()) >= 0.0 and float(got.max()) <= 12.0


def test_channel_cost_of_zero_maps_is_two_per_image_as_the_reference_code():
    """An all-zero channel map has cosine 0 with anything: 2 per image (``mgd/builder.py``: ``2 - 2 * bmm`` of
    ``F.normalize``d maps), also against another all-zero map; euclidean is the plain squared distance."""
    student = torch.randn(3, 2, 4, 4)
    teacher = torch.randn(3, 4, 4, 4)
    student[:, 0] = 0.0  # student channel 0 all-zero in every image
    teacher[:, 3] = 0.0  # teacher channel 3 all-zero in every image
    cost = channel_cost(student, teacher, dtype=torch.float64)
    torch.testing.assert_close(cost[0], torch.full((4,), 6.0, dtype=torch.float64))  # 2 per image x 3 images
    torch.testing.assert_close(cost[:, 3], torch.full((2,), 6.0, dtype=torch.float64))
    # so a zero teacher channel is the worst partner of a student channel it is positively correlated with
    teacher[:, 2] = student[:, 1] * 3.0
    cost = channel_cost(student, teacher, dtype=torch.float64)
    assert float(cost[1, 2]) < 1e-5 < float(cost[1, 3]) - 5.99
    euclid = channel_cost(student, teacher, metric="euclidean", dtype=torch.float64)
    torch.testing.assert_close(euclid[0, 3], torch.tensor(0.0, dtype=torch.float64))


def test_channel_cost_keeps_dtype_and_device_and_is_additive():
    student = torch.randn(4, 2, 3, 3)
    teacher = torch.randn(4, 6, 3, 3)
    whole = channel_cost(student, teacher)
    assert whole.dtype == torch.float32 and whole.device == student.device
    halves = channel_cost(student[:2], teacher[:2]) + channel_cost(student[2:], teacher[2:])
    torch.testing.assert_close(whole, halves)
    half = channel_cost(student.half(), teacher.half())
    assert half.dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: balanced_assignment(np.zeros((4, 3))), "C_T=3 .* C_S=4"),
        (lambda: sparse_assignment(np.zeros((4, 3))), "C_T=3"),
        (lambda: balanced_assignment(np.zeros(5)), "cost must be 2-D"),
        (lambda: balanced_assignment(np.zeros((2, 2, 2))), "cost must be 2-D"),
        (lambda: balanced_assignment(np.array([[0.0, np.nan]])), "NaN or infinite.*row 0, column 1"),
        (lambda: sparse_assignment(torch.tensor([[np.inf, 0.0]])), "NaN or infinite"),
        (lambda: balanced_assignment([[1.0, 2.0]]), "torch.Tensor or numpy.ndarray"),
        (lambda: balanced_assignment(np.zeros((0, 3))), "at least one student"),
        (lambda: channel_cost(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4), metric="l1"), "metric"),
        (lambda: channel_cost(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)), "spatial"),
        (lambda: channel_cost(torch.zeros(2, 3, 4, 4), torch.zeros(3, 5, 4, 4)), "batch"),
        (lambda: channel_cost(torch.zeros(3, 4, 4), torch.zeros(2, 5, 4, 4)), "student must be a 4-D"),
        (lambda: contiguous_groups(4, 3), "num_teacher=3"),
        (lambda: assignment_cost(np.zeros((2, 4)), torch.zeros(3, 2, dtype=torch.long)), "groups"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
