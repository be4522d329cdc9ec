"""Step-based matching schedules (detection): at which training steps the matching is updated.

A schedule is a list of segments ``(start_step, every)``. Step ``s`` lies in the segment with the largest
``start_step <= s``, and is an update step when ``s % every == 0``: the period counts from step 0, not from the
segment's start. That is the reference detection code's rule (``d2/train_net.py``, ``mgd_update_step``: an update
when ``iter % update_freq == 0``, ``update_freq`` = ``MGD.UPDATE_FREQ[0]`` below ``MGD.UPDATE_SLOW_STEP`` and
``MGD.UPDATE_FREQ[1]`` from then on; ``d2/mgd/config.py``: 5,000 until iteration 20,000, then 31,000). Its
schedule is :data:`REFERENCE_DETECTION_SCHEDULE`, ``((0, 5000), (20000, 31000))``: updates at steps 0, 5k, 10k,
15k, 31k and 62k of a 90k-step (1x) run (20,000 itself is no multiple of 31,000). The first update of a run is at
its first step whatever the schedule (:class:`~mgd_lightning.MGDMatchingCallback`). Plain Python, no torch.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

__all__ = ["REFERENCE_DETECTION_SCHEDULE", "check_step_schedule", "is_scheduled_step", "scheduled_steps"]

#: the reference detection code's matching schedule: ``(start_step, every)`` segments (``d2/mgd/config.py``:
#: ``MGD.UPDATE_FREQ = [5000, 31000]``, ``MGD.UPDATE_SLOW_STEP = [20000]``)
REFERENCE_DETECTION_SCHEDULE: tuple[tuple[int, int], ...] = ((0, 5000), (20000, 31000))


def check_step_schedule(schedule: Sequence[Sequence[int]], arg: str = "step_schedule") -> tuple[tuple[int, int], ...]:
    """``schedule`` as a tuple of ``(start_step, every)`` int pairs, checked: at least one segment, the first
    starting at step 0, starts strictly increasing, every ``every >= 1``. Raises ``ValueError`` naming ``arg``."""
    try:
        pairs = tuple((int(start), int(every)) for start, every in schedule)
    except (TypeError, ValueError):
        raise ValueError(f"{arg} must be a list of [start_step, every] pairs; got {schedule!r}") from None
    if not pairs:
        raise ValueError(f"{arg} needs at least one [start_step, every] pair; got {schedule!r}")
    if pairs[0][0] != 0:
        raise ValueError(f"{arg} must start at step 0 (the first update of a run); got {schedule!r}")
    if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
        raise ValueError(f"{arg}: the start steps must increase; got {schedule!r}")
    if any(every < 1 for _, every in pairs):
        raise ValueError(f"{arg}: every must be >= 1 step; got {schedule!r}")
    return pairs


def is_scheduled_step(step: int, schedule: Sequence[tuple[int, int]]) -> bool:
    """Whether ``step`` (0-based count of optimizer steps done) is an update step of a checked ``schedule``:
    ``step % every == 0`` with ``every`` the period of the segment ``step`` lies in."""
    if step < 0:
        return False
    _, every = schedule[bisect_right([s for s, _ in schedule], step) - 1]
    return step % every == 0


def scheduled_steps(schedule: Sequence[tuple[int, int]], max_steps: int) -> list[int]:
    """The update steps of a checked ``schedule`` below ``max_steps``, in order."""
    steps: list[int] = []
    for i, (start, every) in enumerate(schedule):
        end = min(schedule[i + 1][0] if i + 1 < len(schedule) else max_steps, max_steps)
        first = -(-start // every) * every  # the first multiple of ``every`` at or after ``start``
        steps += range(first, end, every)
    return steps
