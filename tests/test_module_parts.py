"""The parts DistillationModule is built from, each on its own: argument checks and defaults, tap pairs, tap norms
and margins, and the frozen teacher in checkpoints (mgd_lightning/distill/{arguments,tap_pairs,tap_norms,teacher}.py).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

from mgd_lightning.distill.arguments import (
    DEFAULT_INPUT_SIZE,
    MGD_LOSS_FACTOR,
    assignment_kind,
    check_distillation_args,
    check_task_has_logits,
    loss_scale,
    resolve_input_size,
    uncompiled,
)
from mgd_lightning.distill.tap_norms import margin_batchnorms, student_tap_norms, tap_margins, teacher_margins
from mgd_lightning.distill.tap_pairs import pair_taps, probe_input, probe_tap_shapes, tap_pair_shapes
from mgd_lightning.distill.taps import FeatureTaps, Tap, resolve_taps
from mgd_lightning.distill.teacher import (
    TEACHER_PREFIX,
    TeacherMismatchError,
    freeze_teacher,
    restore_teacher,
    strip_teacher,
)
from mgd_lightning.losses import margin_from_bn
from mgd_lightning.tasks import ClassificationTask, DetectionTask
from tests.toys import ToyNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARTS = ("arguments", "tap_pairs", "tap_norms", "teacher")

VALID = {"reducer": "amp", "distiller": "mgd", "kd_weight": 0.0, "unmatched": "official",
         "margin_reduction": "official", "loss_factor": None, "ce_weight": 1.0}


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------ layering
def test_parts_import_neither_the_module_nor_the_commands():
    """The parts sit under DistillationModule: importing them loads neither distill/module.py (no import cycle)
    nor experiments or the command modules."""
    code = (
        "import sys; "
        + "; ".join(f"import mgd_lightning.distill.{p}" for p in PARTS)
        + "; bad = sorted(m for m in sys.modules if m == 'mgd_lightning.distill.module' "
        "or m.startswith(('mgd_lightning.experiments', 'mgd_lightning.commands', 'mgd_lightning.cli'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_module_keeps_its_public_names():
    from mgd_lightning.distill import module

    assert module.TeacherMismatchError is TeacherMismatchError
    assert set(module.__all__) == {"DistillationModule", "NonFiniteLossError", "TeacherMismatchError"}


# ------------------------------------------------------------------ arguments
def test_valid_arguments_pass():
    check_distillation_args(**VALID)
    check_distillation_args(**{**VALID, "distiller": "kd", "kd_weight": 1.0, "loss_factor": 10.0})


@pytest.mark.parametrize(("bad", "match"), [
    ({"reducer": "max"}, r"^reducer must be one of .*; got 'max'$"),
    ({"distiller": "ab"}, r"^distiller must be one of .*; got 'ab'$"),
    ({"distiller": "kd"}, r"^distiller='kd' distils the logits only: set kd_weight > 0 \(got kd_weight=0.0\)$"),
    ({"unmatched": "drop"}, r"^unmatched must be one of .*; got 'drop'$"),
    ({"margin_reduction": "max"}, r"^margin_reduction must be one of .*; got 'max'$"),
    ({"loss_factor": 0.0}, r"^loss_factor must be > 0 \(or None for the distiller's default\); got 0.0$"),
    ({"ce_weight": -1.0}, r"^ce_weight and kd_weight must be >= 0; got ce_weight=-1.0, kd_weight=0.0$"),
    ({"kd_weight": -0.5}, r"^ce_weight and kd_weight must be >= 0; got ce_weight=1.0, kd_weight=-0.5$"),
])
def test_bad_argument_is_a_one_line_error_naming_it(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        check_distillation_args(**{**VALID, **bad})
    _one_line(err)


def test_kd_needs_a_task_with_logits():
    check_task_has_logits(ClassificationTask(), "kd", 1.0)
    check_task_has_logits(DetectionTask(), "mgd", 0.0)
    for distiller, kd_weight in (("kd", 1.0), ("mgd", 0.5)):
        with pytest.raises(ValueError, match=r"^task='detection' has no class logits to distil") as err:
            check_task_has_logits(DetectionTask(), distiller, kd_weight)
        assert f"kd_weight={kd_weight}" in _one_line(err)


def test_input_size_given_else_the_models_default_else_224():
    bare = nn.Conv2d(3, 4, 3)
    assert resolve_input_size([3, 32, 32.0], ToyNet()) == (3, 32, 32)
    assert resolve_input_size(None, bare, ToyNet()) == ToyNet.default_input_size
    assert resolve_input_size(None, bare) == DEFAULT_INPUT_SIZE == (3, 224, 224)
    with pytest.raises(ValueError, match=r"^input_size must be \(C, H, W\), e\.g\. \(3, 32, 32\); got \(32, 32\)$"):
        resolve_input_size((32, 32))


def test_assignment_kind():
    assert assignment_kind("mgd", "amp", True) == "balanced"
    assert assignment_kind("mgd", "sm", True) == "sparse"
    assert assignment_kind("mgd", "amp", False) is None
    assert assignment_kind("ofd", "amp", True) is None


def test_loss_scale_defaults_per_distiller_eq2():
    assert loss_scale("mgd", 4, None, None) == ([0.125, 0.25, 0.5, 1.0], MGD_LOSS_FACTOR)
    assert loss_scale("kd", 2, None, None) == ([0.5, 1.0], 1e4)
    assert loss_scale("at", 3, None, None) == ([1.0, 1.0, 1.0], 1.0)
    assert loss_scale("fitnets", 3, None, None) == ([0.0, 100.0, 0.0], 1.0)
    weights, factor = loss_scale("mgd", 2, (1, 2), 3)
    assert (weights, factor) == ([1.0, 2.0], 3.0) and all(type(w) is float for w in weights)
    with pytest.raises(ValueError, match=r"^tap_weights needs 3 values \(one per tap\); got \[1\.0\]$"):
        loss_scale("mgd", 3, [1.0], None)


def test_uncompiled_unwraps_a_compiled_module_with_a_warning():
    net = ToyNet()
    assert uncompiled(net, "student") is net
    wrapper = type("OptimizedModule", (nn.Module,), {})()
    wrapper._orig_mod = net
    with pytest.warns(UserWarning, match=r"the teacher given is a torch\.compile'd module"):
        assert uncompiled(wrapper, "teacher") is net


# ------------------------------------------------------------------ tap pairs
def test_pair_taps_drops_the_earliest_preset_taps_of_the_longer_side():
    teacher, student = ToyNet((8, 16, 32)), ToyNet((4, 8))
    t_taps, s_taps = pair_taps(teacher, None, student, None, (3, 16, 16))
    assert [t.module for t in t_taps] == ["tap1", "tap2"] and [t.module for t in s_taps] == ["tap0", "tap1"]


def test_pair_taps_given_by_name_must_be_as_many():
    with pytest.raises(ValueError, match=r"^teacher and student need as many taps: teacher_taps \['tap0'\] \(1\) "
                                         r"vs student_taps \['tap0', 'tap1'\] \(2\)$"):
        pair_taps(ToyNet((12, 24)), ["tap0"], ToyNet((5, 7)), ["tap0", "tap1"], (3, 16, 16))


def _hooked(teacher: nn.Module, student: nn.Module) -> tuple[FeatureTaps, FeatureTaps]:
    return (FeatureTaps(teacher, resolve_taps(teacher, None)), FeatureTaps(student, resolve_taps(student, None)))


def test_probe_reads_the_tap_shapes_and_restores_the_students_mode():
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7)).train()
    example = probe_input((3, 16, 16), teacher)
    assert example.shape == (1, 3, 16, 16) and not example.any()
    t_taps, s_taps = _hooked(teacher, student)
    t_shapes, s_shapes = probe_tap_shapes(ClassificationTask(), teacher, student, t_taps, s_taps, example)
    assert [tuple(s) for s in t_shapes] == [(1, 12, 8, 8), (1, 24, 4, 4)]
    assert [tuple(s) for s in s_shapes] == [(1, 5, 8, 8), (1, 7, 4, 4)]
    assert student.training
    assert tap_pair_shapes(t_taps.taps, s_taps.taps, t_shapes, s_shapes, (3, 16, 16), "mgd") == [
        (5, 12, 8, 8), (7, 24, 4, 4)]


@pytest.mark.parametrize("size_given", [True, False])
def test_probe_the_networks_cannot_run_is_a_one_line_error_naming_input_size(size_given):
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    t_taps, s_taps = _hooked(teacher, student)
    with pytest.raises(ValueError, match=r"^input_size=\(1, 16, 16\)") as err:
        probe_tap_shapes(ClassificationTask(), teacher, student, t_taps, s_taps, torch.zeros(1, 1, 16, 16), size_given)
    text = _one_line(err)
    assert ("not given: the models' default_input_size" in text) is not size_given
    assert "cannot run a (1, 1, 16, 16) probe input (RuntimeError" in text
    assert student.training


def test_tap_pair_shapes_are_checked():
    taps = [Tap("a"), Tap("b")]
    with pytest.raises(ValueError, match=r"^tap pair 1: teacher 'b' gives \(8, 2, 2\) \(C, H, W\) but student 'b' "
                                         r"gives \(4, 4, 4\) at input \(3, 16, 16\): spatial sizes must be equal"):
        tap_pair_shapes(taps, taps, [(1, 8, 4, 4), (1, 8, 2, 2)], [(1, 4, 4, 4), (1, 4, 4, 4)], (3, 16, 16), "mgd")
    fewer = ([(1, 4, 4, 4)], [(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"^tap pair 0: teacher 'a' has C_T=4 channels < student 'a' C_S=8; "
                                         r"MGD needs C_T >= C_S at every tap$"):
        tap_pair_shapes(taps, taps, *fewer, (3, 16, 16), "mgd")
    assert tap_pair_shapes(taps, taps, *fewer, (3, 16, 16), "at") == [(8, 4, 4, 4)]  # only MGD matches channels


# ------------------------------------------------------------------ tap norms and margins
def test_margins_come_from_the_batchnorm_before_each_tap_eq4():
    teacher = ToyNet((12, 24)).eval()
    with torch.no_grad():
        teacher.bns[1].weight.uniform_(0.5, 2.0)
        teacher.bns[1].bias.uniform_(-1.0, 1.0)
    taps = resolve_taps(teacher, None)
    bns, names = margin_batchnorms(teacher, taps, probe_input((3, 16, 16), teacher))
    assert bns == [teacher.bns[0], teacher.bns[1]] and names == ["bns.0", "bns.1"]
    margins = tap_margins(bns, taps)
    for margin, bn in zip(margins, bns):
        assert margin.dtype == torch.float32 and margin.shape == (bn.num_features,)
        torch.testing.assert_close(margin, margin_from_bn(bn).float())
    # recomputed from the teacher as it is now, by name
    for now, then in zip(teacher_margins(teacher, names), margins):
        torch.testing.assert_close(now, then)
    with torch.no_grad():
        teacher.bns[0].bias.add_(1.0)
    assert not torch.allclose(teacher_margins(teacher, names)[0], margins[0])
    assert teacher_margins(teacher, [None, "bns.1"])[0] is None


def test_a_tap_without_batchnorm_has_no_margin_and_says_so(caplog):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.ReLU())
    taps = [Tap("1")]
    bns, names = margin_batchnorms(net, taps, torch.zeros(1, 3, 8, 8))
    assert bns == [None] and names == [None]
    with caplog.at_level(logging.WARNING, logger="mgd_lightning"):
        margins = tap_margins(bns, taps)
    assert margins[0].shape == (0,)
    assert "teacher tap '1': no BatchNorm before it; no margin ReLU" in caplog.text


@pytest.mark.parametrize(("task", "norm"), [(ClassificationTask(), nn.BatchNorm2d), (DetectionTask(), nn.GroupNorm)])
def test_student_tap_norms_are_the_tasks(task, norm):
    shapes = [(64, 128, 8, 8), (96, 256, 4, 4)]
    norms = student_tap_norms(task, shapes, enabled=True)
    assert isinstance(norms, nn.ModuleList) and all(isinstance(m, norm) for m in norms)
    if norm is nn.GroupNorm:
        assert [(m.num_groups, m.num_channels) for m in norms] == [(32, 64), (32, 96)]
    else:
        assert [m.num_features for m in norms] == [64, 96]
    assert all(isinstance(m, nn.Identity) for m in student_tap_norms(task, shapes, enabled=False))


# ------------------------------------------------------------------ the frozen teacher in checkpoints
def _checkpoint(teacher: nn.Module, student: nn.Module) -> tuple[dict, dict]:
    """A checkpoint of a module holding ``teacher`` and ``student``, its margins, and that module's own state."""
    taps = resolve_taps(teacher, None)
    bns, _ = margin_batchnorms(teacher, taps, torch.zeros(1, 3, 16, 16))
    state = {f"margin_{k}": m for k, m in enumerate(tap_margins(bns, taps))}
    state.update({f"matching_{k}": torch.zeros(c, 2, dtype=torch.long) for k, c in enumerate((5, 7))})
    state.update({TEACHER_PREFIX + k: v.clone() for k, v in teacher.state_dict().items()})
    state.update({"model." + k: v.clone() for k, v in student.state_dict().items()})
    return {"state_dict": state, "epoch": 3}, dict(state)


def _margins_of(teacher: nn.Module):
    return lambda: teacher_margins(teacher, ["bns.0", "bns.1"])


def test_freeze_teacher():
    teacher = freeze_teacher(ToyNet().train())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_strip_teacher_leaves_the_teacher_out_and_records_its_shapes():
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    checkpoint, _ = _checkpoint(teacher, student)
    strip_teacher(checkpoint, teacher)
    assert not any(k.startswith(TEACHER_PREFIX) for k in checkpoint["state_dict"])
    assert "model.convs.0.weight" in checkpoint["state_dict"] and "margin_0" in checkpoint["state_dict"]
    assert checkpoint["teacher_omitted"] is True
    assert checkpoint["teacher_shapes"] == {k: list(v.shape) for k, v in teacher.state_dict().items()}
    empty = {"epoch": 1}
    strip_teacher(empty, teacher)
    assert empty == {"epoch": 1}


def test_restore_teacher_puts_the_live_teacher_back_into_a_lean_checkpoint():
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    checkpoint, own = _checkpoint(teacher, student)
    full = dict(checkpoint["state_dict"])
    strip_teacher(checkpoint, teacher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the teacher the run had: no margin warning
        restore_teacher(checkpoint, teacher, own, _margins_of(teacher))
    assert sorted(checkpoint["state_dict"]) == sorted(full)
    for key, value in teacher.state_dict().items():
        assert checkpoint["state_dict"][TEACHER_PREFIX + key].data_ptr() == value.data_ptr()  # the live tensors


def test_restore_teacher_recomputes_the_margins_of_another_teacher_with_a_warning():
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    checkpoint, own = _checkpoint(teacher, student)
    strip_teacher(checkpoint, teacher)
    other = ToyNet((12, 24)).eval()
    with torch.no_grad():
        other.bns[1].bias.fill_(0.7)
    with pytest.warns(UserWarning, match=r"^the teacher given is not the one this checkpoint was trained with: its "
                                         r"BatchNorm margins \(Eq\. 4\) differ from the checkpoint's \(margin_1\)"):
        restore_teacher(checkpoint, other, own, _margins_of(other))
    torch.testing.assert_close(checkpoint["state_dict"]["margin_1"], margin_from_bn(other.bns[1]).float())


def test_restore_teacher_leaves_a_checkpoint_holding_its_teacher_as_it_is():
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    checkpoint, own = _checkpoint(teacher, student)
    before = dict(checkpoint["state_dict"])

    def never():
        raise AssertionError("the margins of a checkpoint holding its teacher are its own")

    restore_teacher(checkpoint, teacher, own, never)
    assert checkpoint["state_dict"] == before
    restore_teacher({"epoch": 1}, teacher, own, never)  # no state_dict: nothing to check


@pytest.mark.parametrize("lean", [True, False])
def test_restore_teacher_of_another_architecture_is_a_one_line_error(lean):
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    checkpoint, own = _checkpoint(teacher, student)
    if lean:
        strip_teacher(checkpoint, teacher)
    wider = ToyNet((16, 24)).eval()
    how = "saved without its teacher" if lean else "it holds its teacher"
    match = (rf"^this checkpoint does not fit the teacher \(or taps\) given: .*{how}.*teacher\.convs\.0\.weight: "
             r"\(12, 3, 3, 3\) in the checkpoint's teacher, \(16, 3, 3, 3\) in the teacher given")
    with pytest.raises(TeacherMismatchError, match=match) as err:
        restore_teacher(checkpoint, wider, own, _margins_of(wider))
    assert "; and 3 more." in _one_line(err)  # convs.0, the 4 tensors of bns.0 and convs.1 differ: 3 shown


def test_restore_teacher_with_other_taps_is_an_error():
    teacher, student = ToyNet((12, 24)).eval(), ToyNet((5, 7))
    checkpoint, own = _checkpoint(teacher, student)
    strip_teacher(checkpoint, teacher)
    fewer = {k: v for k, v in own.items() if not k.endswith("_1")}
    fewer["matching_0"] = torch.zeros(5, 1, dtype=torch.long)
    with pytest.raises(TeacherMismatchError) as err:
        restore_teacher(checkpoint, teacher, fewer, _margins_of(teacher))
    text = _one_line(err)
    assert "matching_0: (5, 2) in the checkpoint, (5, 1) with the teacher and student given" in text
    assert "margin_1: in the checkpoint, not in this module (another number of tap pairs)" in text
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, ValueError)
