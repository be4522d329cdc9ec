"""The frozen teacher of :class:`~mgd_lightning.DistillationModule`: frozen once, left out of lean checkpoints, and
put back from the live teacher when such a checkpoint is loaded.

Lean checkpoints (``save_teacher=False``, the default): :func:`strip_teacher` removes the teacher's ``teacher.*``
tensors from a checkpoint's ``state_dict`` (ResNet-50 -> MobileNet-V2: 94 MB of a 113 MB checkpoint), marks it
``teacher_omitted`` and records the teacher's tensor shapes (``teacher_shapes``). :func:`restore_teacher` checks
a checkpoint being loaded against the teacher given (its architecture, and the tap pairs' matching and margin
buffers: a :class:`TeacherMismatchError` otherwise) and, for a lean one, puts the live teacher's own tensors back
into its ``state_dict`` (Lightning loads it strictly) and recomputes the margins (Eq. 4) from the teacher given,
with a warning when they differ from the checkpoint's (another teacher than the run's). Checkpoints holding their
teacher (``save_teacher=True``, or older ones) load as they are, after the same check.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = ["TEACHER_PREFIX", "TeacherMismatchError", "freeze_teacher", "restore_teacher", "strip_teacher"]

#: key prefix of the frozen teacher in the module's state_dict
TEACHER_PREFIX = "teacher."

#: state_dict key prefixes of the per-tap buffers whose shapes follow the teacher and the taps
TAP_BUFFER_PREFIXES = ("matching_", "margin_")

#: state_dict key prefixes of the margins (Eq. 4): the module's and a feature distiller's copies
MARGIN_PREFIXES = ("margin_", "feature_distiller.margin_")


class TeacherMismatchError(RuntimeError, ValueError):
    """A checkpoint loaded with a teacher (or taps) of another architecture than the run's (raised by
    :meth:`DistillationModule.on_load_checkpoint <mgd_lightning.DistillationModule.on_load_checkpoint>`). A
    ``RuntimeError`` as Lightning's strict-loading error it replaces, and a ``ValueError`` (a wrong argument)."""


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """``teacher`` frozen in place (no gradients, eval mode: its BatchNorm statistics fixed) and returned."""
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def strip_teacher(checkpoint: dict[str, Any], teacher: nn.Module) -> None:
    """Remove the ``teacher.*`` tensors from ``checkpoint["state_dict"]`` in place, set
    ``checkpoint["teacher_omitted"] = True`` and record ``checkpoint["teacher_shapes"]`` (the live teacher's
    tensor shapes, by name without the prefix). A checkpoint without a ``state_dict`` is left as it is."""
    state = checkpoint.get("state_dict")
    if state is None:
        return
    for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
        del state[key]
    checkpoint["teacher_omitted"] = True
    checkpoint["teacher_shapes"] = {k: list(v.shape) for k, v in teacher.state_dict().items()}


def restore_teacher(
    checkpoint: dict[str, Any], teacher: nn.Module, module_state: Mapping[str, torch.Tensor],
    teacher_margins: Callable[[], list[torch.Tensor | None]],
) -> None:
    """Check ``checkpoint`` against the ``teacher`` given and, for a lean one, put the teacher back into its
    ``state_dict`` in place (see the module docstring).

    Args:
        checkpoint: the checkpoint being loaded (its ``state_dict`` is changed in place).
        teacher: the live teacher.
        module_state: the loading module's own ``state_dict`` (the shapes of its matching / margin buffers).
        teacher_margins: the live teacher's margins (Eq. 4), ``(C_T,)`` per tap or ``None``; called only for a
            lean checkpoint.

    Raises:
        TeacherMismatchError: the checkpoint's teacher or tap buffers differ in architecture from those given.
    """
    state = checkpoint.get("state_dict")
    if state is None:
        return
    omitted, saved = _saved_teacher_shapes(checkpoint)
    live = teacher.state_dict()
    problems = _teacher_problems(saved, live) + _tap_buffer_problems(state, module_state)
    if problems:
        raise TeacherMismatchError(_mismatch_message(problems, omitted))
    if not omitted:
        return
    # Lightning loads the state_dict strictly: the live teacher's own tensors stand in for the omitted ones
    # (loading a tensor into itself leaves it as it is).
    state.update({TEACHER_PREFIX + k: v for k, v in live.items()})
    changed = _refresh_margins(state, teacher_margins())
    if changed:
        warnings.warn(
            f"the teacher given is not the one this checkpoint was trained with: its BatchNorm margins (Eq. 4) "
            f"differ from the checkpoint's ({', '.join(changed)}). The checkpoint was saved without its teacher "
            "(save_teacher=False), so the teacher given is used, with its margins recomputed from it (not the "
            "checkpoint's). Build it as the run did (e.g. with the same checkpoint= / weights= of build_model) "
            "unless that is what you mean.",
            UserWarning, stacklevel=2,
        )


def _saved_teacher_shapes(checkpoint: dict[str, Any]) -> tuple[bool, dict[str, tuple[int, ...]] | None]:
    """Whether the checkpoint's teacher was omitted, and the shapes of its teacher's tensors (by name without the
    prefix): those held, or for a lean checkpoint those recorded (``None`` when it recorded none)."""
    state = checkpoint["state_dict"]
    saved = {k[len(TEACHER_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(TEACHER_PREFIX)}
    omitted = bool(checkpoint.get("teacher_omitted")) or not saved
    if omitted:
        recorded = checkpoint.get("teacher_shapes")
        saved = {k: tuple(v) for k, v in recorded.items()} if recorded is not None else None
    return omitted, saved


def _teacher_problems(saved: dict[str, tuple[int, ...]] | None, live: Mapping[str, torch.Tensor]) -> list[str]:
    """How the checkpoint's teacher tensors (``saved`` shapes) differ from the live teacher's, one line each."""
    if saved is None:
        return []
    problems = [f"teacher.{k}: {tuple(v)} in the checkpoint's teacher, {tuple(live[k].shape)} in the "
                "teacher given" for k, v in saved.items() if k in live and tuple(live[k].shape) != v]
    missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
    if missing:
        problems.append(f"{len(missing)} teacher tensor(s) the checkpoint's teacher does not have "
                        f"(teacher.{missing[0]}, ...)")
    if extra:
        problems.append(f"{len(extra)} tensor(s) of the checkpoint's teacher missing in the teacher given "
                        f"(teacher.{extra[0]}, ...)")
    return problems


def _tap_buffer_problems(state: Mapping[str, torch.Tensor], module_state: Mapping[str, torch.Tensor]) -> list[str]:
    """How the checkpoint's matching / margin buffers differ from the module's (other taps), one line each."""
    problems = []
    for key in (k for k in state if k.startswith(TAP_BUFFER_PREFIXES)):
        if key not in module_state:
            problems.append(f"{key}: in the checkpoint, not in this module (another number of tap pairs)")
        elif tuple(module_state[key].shape) != tuple(state[key].shape):
            problems.append(f"{key}: {tuple(state[key].shape)} in the checkpoint, {tuple(module_state[key].shape)} "
                            "with the teacher and student given")
    return problems


def _mismatch_message(problems: list[str], omitted: bool) -> str:
    """The one-line :class:`TeacherMismatchError` message: the first three problems and how to fix them."""
    how = ("it was saved without its teacher (save_teacher=False), so the teacher is the one given at load "
           "time" if omitted else "it holds its teacher")
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return (
        f"this checkpoint does not fit the teacher (or taps) given: {how}, and the architecture differs "
        f"from the run's: {shown}. Build the teacher and student as the run did (the same names, "
        "num_classes and arch_args: its config.yaml) and pass the same teacher_taps / student_taps."
    )


def _refresh_margins(state: dict[str, torch.Tensor], margins: list[torch.Tensor | None]) -> list[str]:
    """Replace in place the margins (Eq. 4) in ``state`` (``margin_k``, and a feature distiller's
    ``feature_distiller.margin_k``, each ``(C_T,)``) by the live teacher's ``margins[k]`` (cast to the saved
    tensor's device and dtype); a tap without margins, or of another shape, is left as it is. Returns the keys
    whose values changed (beyond ``rtol=1e-4, atol=1e-6``)."""
    changed = []
    for key in [k for k in state if k.startswith(MARGIN_PREFIXES)]:
        k = int(key.rpartition("_")[2])
        if k >= len(margins) or margins[k] is None or not state[key].numel():
            continue
        fresh = margins[k].to(device=state[key].device, dtype=state[key].dtype)
        if fresh.shape != state[key].shape:
            continue
        if not torch.allclose(state[key].detach().float().cpu(), fresh.float().cpu(), rtol=1e-4, atol=1e-6):
            changed.append(key)
        state[key] = fresh
    return changed
