"""Channel matching of Matching Guided Distillation (paper section 3.2, Eq. 6-11).

Plain torch + SciPy; no Lightning import. Three public pieces:

* :func:`channel_cost` builds the student x teacher channel distance matrix ``D`` (Eq. 6);
* :func:`balanced_assignment` solves the many-to-one balanced matching (Eq. 8-11) exactly,
  also when ``C_T`` is not divisible by ``C_S``;
* :func:`sparse_assignment` solves the one-to-one sparse matching (Eq. 12's ``M``);
* :func:`contiguous_groups` is the grouping *without* matching used by the "AMP without
  matching" ablation.

A matching is represented as a ``(C_S, alpha)`` LongTensor ``groups``: row ``i`` lists the
teacher channels assigned to student channel ``i`` (ascending). This is the index form of the
paper's binary matrix ``M``: ``M[i, groups[i, k]] = 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "METRICS",
    "channel_cost",
    "UNMATCHED",
    "balanced_assignment",
    "sparse_assignment",
    "contiguous_groups",
    "assignment_cost",
]

METRICS = ("cosine", "euclidean")


def _check_features(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if not isinstance(student, torch.Tensor) or student.dim() != 4:
        raise ValueError(
            f"student must be a 4-D tensor (B, C_S, H, W); got "
            f"{tuple(student.shape) if isinstance(student, torch.Tensor) else type(student).__name__}"
        )
    if not isinstance(teacher, torch.Tensor) or teacher.dim() != 4:
        raise ValueError(
            f"teacher must be a 4-D tensor (B, C_T, H, W); got "
            f"{tuple(teacher.shape) if isinstance(teacher, torch.Tensor) else type(teacher).__name__}"
        )
    b_s, _, h_s, w_s = student.shape
    b_t, _, h_t, w_t = teacher.shape
    if b_s != b_t or (h_s, w_s) != (h_t, w_t):
        raise ValueError(
            "student and teacher must share batch and spatial sizes: student "
            f"{tuple(student.shape)} (B, C_S, H, W) vs teacher {tuple(teacher.shape)} (B, C_T, H, W)"
        )


def channel_cost(
    student: torch.Tensor,
    teacher: torch.Tensor,
    metric: str = "cosine",
    dtype: torch.dtype | None = None,
    eps: float = 1e-12,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Channel distance matrix ``D`` of Eq. 6, summed over the batch.

    Args:
        student: (B, C_S, H, W) student feature.
        teacher: (B, C_T, H, W) teacher feature, same B, H, W.
        metric: ``"euclidean"`` is Eq. 6 itself, ``d_ij = sum_b ||s_bi - t_bj||^2`` over the
            flattened channel maps. ``"cosine"`` is the same distance on channel maps
            L2-normalised per image, i.e. ``sum_b (2 - 2 cos(s_bi, t_bj))`` (the reference
            code's choice, ``mgd/builder.py`` ``track_running_stats``). As there, the cosine of an
            all-zero map with any map is 0, so an all-zero channel costs 2 per image against every
            channel (also against another all-zero one): it is never preferred.
        dtype: dtype of the returned matrix, e.g. ``torch.float64`` to accumulate a long matching
            pass batch after batch. ``None``: the compute dtype.
        eps: guard against division by zero in the normalisation.
        compute_dtype: dtype of the normalisation and matmul; ``None`` keeps the inputs' floating
            dtype promoted to at least float32 (one batch's sums are small: float32 is exact enough,
            and float64 matmuls cost several times more). Pass ``torch.float64`` for full precision.

    Returns:
        (C_S, C_T) tensor on the inputs' device. Computed with one matmul, no loop over channels.
    """
    _check_features(student, teacher)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    if compute_dtype is None:
        compute_dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    b, c_s = student.shape[:2]
    c_t = teacher.shape[1]
    # (C, B*N) layouts: one matmul over the concatenated (batch, position) axis gives sum_b <s_bi, t_bj>.
    s = student.detach().to(compute_dtype).transpose(0, 1).reshape(c_s, b, -1)
    t = teacher.detach().to(compute_dtype).transpose(0, 1).reshape(c_t, b, -1)
    if metric == "cosine":
        s_norm = s.norm(dim=2, keepdim=True)
        t_norm = t.norm(dim=2, keepdim=True)
        s = s / s_norm.clamp_min(eps)
        t = t / t_norm.clamp_min(eps)
        # sum_b (2 - 2 cos): a zero map normalises to zero, so its cosine is 0 (reference code)
        cross = s.reshape(c_s, -1) @ t.reshape(c_t, -1).T
        cost = 2.0 * b - 2.0 * cross
    else:
        # ||s_bi - t_bj||^2 = ||s_bi||^2 + ||t_bj||^2 - 2 <s_bi, t_bj>, each summed over b.
        s_sq = s.pow(2).sum(dim=(1, 2))
        t_sq = t.pow(2).sum(dim=(1, 2))
        cross = s.reshape(c_s, -1) @ t.reshape(c_t, -1).T
        cost = s_sq[:, None] + t_sq[None, :] - 2.0 * cross
    if dtype is not None:
        cost = cost.to(dtype)
    return cost.clamp_min_(0.0)


def _as_cost_matrix(cost: Any) -> np.ndarray:
    if isinstance(cost, torch.Tensor):
        arr = cost.detach().to("cpu", torch.float64).numpy()
    elif isinstance(cost, np.ndarray):
        arr = cost.astype(np.float64, copy=False)
    else:
        raise ValueError(f"cost must be a torch.Tensor or numpy.ndarray; got {type(cost).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"cost must be 2-D (C_S, C_T); got shape {tuple(arr.shape)}")
    c_s, c_t = arr.shape
    if c_s == 0:
        raise ValueError(f"cost must have at least one student row; got shape {tuple(arr.shape)}")
    if c_t < c_s:
        raise ValueError(
            f"cost has C_T={c_t} teacher columns < C_S={c_s} student rows; the teacher needs at "
            "least as many channels as the student (swap the arguments or tap a wider teacher layer)"
        )
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"cost contains NaN or infinite values (first at row {bad[0]}, column {bad[1]}: "
            f"{arr[bad[0], bad[1]]}); check the features it was computed from"
        )
    return arr


#: what :func:`balanced_assignment` does with the ``C_T - alpha * C_S`` teacher channels no student can take:
#: ``"optimal"`` (ours: the exact rectangular assignment chooses them), ``"official"`` (the reference code's
#: "shave": the highest-index teacher channels are dropped before solving).
UNMATCHED = ("optimal", "official")


def balanced_assignment(cost: torch.Tensor | np.ndarray, unmatched: str = "optimal") -> torch.Tensor:
    """Exact many-to-one balanced matching (Eq. 8-11).

    Every student channel receives exactly ``alpha = C_T // C_S`` teacher channels and every
    teacher channel is used at most once; the total cost ``trace(D^T M)`` (Eq. 9) is the exact
    minimum. Solved as one rectangular linear assignment on ``D`` stacked ``alpha`` times
    (Eq. 10-11): its ``alpha * C_S`` rows each take a distinct teacher column. When ``C_T`` is not
    divisible by ``C_S`` the ``C_T - alpha * C_S`` unused teacher channels are therefore chosen by
    the optimisation (the paper's footnote 2 and the reference code drop fixed channels instead).

    Args:
        cost: (C_S, C_T) finite distance matrix, torch tensor or numpy array, ``C_T >= C_S``.
        unmatched: ``"optimal"`` (default here, ours): the exact assignment above; ``"official"``: the
            reference code's ``shave`` (``mgd/builder.py``, ``update_flow``): only the first
            ``alpha * C_S`` teacher channels enter the assignment, the highest-index ones are never used.
            Identical when ``C_S`` divides ``C_T``.

    Returns:
        (C_S, alpha) int64 CPU tensor; row ``i`` holds the teacher channels of student ``i``,
        ascending.
    """
    if unmatched not in UNMATCHED:
        raise ValueError(f"unmatched must be one of {UNMATCHED}; got {unmatched!r}")
    arr = _as_cost_matrix(cost)
    c_s, c_t = arr.shape
    alpha = c_t // c_s
    if unmatched == "official" and alpha * c_s != c_t:
        arr, c_t = arr[:, : alpha * c_s], alpha * c_s  # the reference drops the remainder before solving
    stacked = np.tile(arr, (alpha, 1))  # row r is student r % C_S (Eq. 10's D')
    if alpha * c_s == c_t:
        # Square problem: SciPy's solver is 1.5-2x faster on the transpose (duplicate rows become
        # duplicate columns); measured in benchmarks/solver.py.
        cols, rows = linear_sum_assignment(np.ascontiguousarray(stacked.T))
    else:
        rows, cols = linear_sum_assignment(stacked)
    groups = np.empty((c_s, alpha), dtype=np.int64)
    groups[rows % c_s, rows // c_s] = cols
    groups.sort(axis=1)
    return torch.from_numpy(groups)


def sparse_assignment(cost: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Optimal sparse matching (section 3.3, the ``M`` of Eq. 12).

    Each student channel gets one distinct teacher channel, minimising the summed cost; the
    remaining ``C_T - C_S`` teacher channels are unused (the paper's dummy student rows).

    Args:
        cost: (C_S, C_T) finite distance matrix, ``C_T >= C_S``.

    Returns:
        (C_S, 1) int64 CPU tensor.
    """
    arr = _as_cost_matrix(cost)
    rows, cols = linear_sum_assignment(arr)
    groups = np.empty((arr.shape[0], 1), dtype=np.int64)
    groups[rows, 0] = cols
    return torch.from_numpy(groups)


def contiguous_groups(num_student: int, num_teacher: int) -> torch.Tensor:
    """Grouping without matching: student ``i`` gets teacher channels ``[i*alpha, (i+1)*alpha)``.

    The paper's "AMP without matching" ablation (Table 4). Trailing teacher channels beyond
    ``alpha * C_S`` are unused.

    Returns:
        (C_S, alpha) int64 tensor, ``alpha = C_T // C_S``.
    """
    if num_student < 1:
        raise ValueError(f"num_student must be >= 1; got {num_student}")
    if num_teacher < num_student:
        raise ValueError(
            f"num_teacher={num_teacher} must be >= num_student={num_student} (C_T >= C_S)"
        )
    alpha = num_teacher // num_student
    return torch.arange(num_student * alpha, dtype=torch.int64).view(num_student, alpha)


def assignment_cost(cost: torch.Tensor | np.ndarray, groups: torch.Tensor) -> float:
    """Objective of Eq. 9, ``sum_i sum_{j in groups[i]} D[i, j]``, for a given matching."""
    arr = _as_cost_matrix(cost)
    g = torch.as_tensor(groups).to("cpu", torch.int64).numpy()
    if g.ndim != 2 or g.shape[0] != arr.shape[0]:
        raise ValueError(f"groups must be (C_S={arr.shape[0]}, alpha); got shape {tuple(g.shape)}")
    return float(np.take_along_axis(arr, g, axis=1).sum())
