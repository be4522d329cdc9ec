"""``mgd-lightning taps``: the distillation taps of a network (and of a teacher-student pair) before training.

    mgd-lightning taps resnet50
    mgd-lightning taps efficientnet_b0 --input-size 3 64 64
    mgd-lightning taps wrn_28_4 --student wrn_16_2        # probed at their default_input_size, 3 x 32 x 32
    mgd-lightning taps convnext_tiny --student mobilenet_v3_small
    mgd-lightning taps timm/resnet18d --student timm/mobilenetv3_small_100   # needs pip install mgd-lightning[timm]

Prints the taps that :class:`~mgd_lightning.DistillationModule` uses without ``teacher_taps`` /
``student_taps`` (the architecture's preset, else the automatic taps of
:mod:`mgd_lightning.distill.auto_taps`) with each tapped tensor's shape and channel count; with
``--student``, the teacher-student pairs (matched as the module does) with ``alpha = C_T // C_S``, the
teacher channels per student channel. Networks are built without weights (random init, 1000 classes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

import torch.nn as nn

from mgd_lightning.distill.auto_taps import pair_by_size, tap_shapes
from mgd_lightning.distill.taps import Tap, preset_taps, resolve_taps

__all__ = ["main", "describe_taps"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgd-lightning taps",
        description="Print the distillation taps of a network (tensor shapes, channels) and, with --student, "
                    "the teacher-student pairs with alpha = C_T // C_S.",
    )
    parser.add_argument("model", help="a build_model name (resnet50, efficientnet_b0, timm/<name>, ...): the teacher "
                                      "when --student is given")
    parser.add_argument("--input-size", "--input_size", nargs=3, type=int, metavar=("C", "H", "W"),
                        default=None, help="probe input size (default: the models' default_input_size, as "
                                           "DistillationModule's: 3 32 32 for the CIFAR networks, else 3 224 224)")
    parser.add_argument("--student", help="a build_model name: print the teacher-student pairs too")
    return parser


def _source(model: nn.Module) -> str:
    return "preset" if preset_taps(model) is not None else "automatic"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _tap_name(tap: Tap) -> str:
    return f"{tap.module}:{tap.kind}" if tap.kind != "output" else tap.module


def describe_taps(name: str, input_size: Sequence[int] | None = None, student: str | None = None) -> str:
    """The text ``mgd-lightning taps`` prints; ``input_size`` ``None``: the models' ``default_input_size`` (the
    student's first, as :class:`~mgd_lightning.DistillationModule`), else (3, 224, 224)."""
    from mgd_lightning.models import build_model

    out = []
    models = [("teacher" if student else "model", name)] + ([("student", student)] if student else [])
    networks = {role: build_model(model_name) for role, model_name in models}
    if input_size is None:
        defaults = [getattr(networks[r], "default_input_size", None) for r in ("student", "teacher", "model")
                    if r in networks]
        input_size = next((d for d in defaults if d is not None), (3, 224, 224))
    size = tuple(int(v) for v in input_size)
    built = {}
    for role, model_name in models:
        model = networks[role]
        taps = resolve_taps(model, None, role, size)
        shapes = tap_shapes(model, taps, size)
        built[role] = (model, taps)
        out.append(f"{role} {model_name} ({type(model).__name__}), {_source(model)} taps at input {size}:")
        out.append(_table([[str(k), _tap_name(t), str(tuple(s[1:])), str(s[1])] for k, (t, s) in
                           enumerate(zip(taps, shapes))], ["#", "tap", "shape (C, H, W)", "C"]))
        out.append("")
    if student:
        (teacher, t_taps), (stud, s_taps) = built["teacher"], built["student"]
        if preset_taps(teacher) is None or preset_taps(stud) is None:
            t_taps, s_taps = pair_by_size(teacher, t_taps, stud, s_taps, size)
            how = "paired by spatial size"
        else:
            n = min(len(t_taps), len(s_taps))
            t_taps, s_taps = t_taps[len(t_taps) - n:], s_taps[len(s_taps) - n:]
            how = "presets: the earliest taps of the longer list dropped"
        resampled = any(t.resample is not None for t in t_taps)  # token taps, paired in order (pair_by_size)
        if resampled:
            how = "in order, the last of each side; teacher maps resampled to the student's grid"
        t_shapes, s_shapes = tap_shapes(teacher, t_taps, size), tap_shapes(stud, s_taps, size)
        rows = []
        tapped = tap_shapes(teacher, [replace(t, resample=None) for t in t_taps], size) if resampled else t_shapes
        for k, (tt, st, ts, ss, own) in enumerate(zip(t_taps, s_taps, t_shapes, s_shapes, tapped)):
            alpha = ts[1] // ss[1]
            notes = [f"resampled from {own[2]} x {own[3]}"] if own[2:] != ts[2:] else []
            if ts[2:] != ss[2:]:
                notes.append("spatial sizes differ")
            elif alpha < 1:
                notes.append("C_T < C_S: MGD needs C_T >= C_S")
            note = "; ".join(notes)
            rows.append([str(k), _tap_name(tt), str(tuple(ts[1:])), _tap_name(st), str(tuple(ss[1:])), str(alpha),
                         note])
        out.append(f"pairs ({how}):")
        out.append(_table(rows, ["#", "teacher tap", "teacher (C, H, W)", "student tap", "student (C, H, W)",
                                 "alpha", "note"]))
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        text = describe_taps(args.model, args.input_size, args.student)
    except (ValueError, ImportError, FileNotFoundError) as error:
        raise SystemExit(f"mgd-lightning taps: error: {error}") from None
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
