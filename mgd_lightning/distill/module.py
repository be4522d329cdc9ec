"""DistillationModule: a frozen teacher, a trainable student and the MGD loss (paper Eq. 2-5, 12-15).

The matching itself is updated by :class:`mgd_lightning.MGDMatchingCallback` (coordinate descent,
section 3.4); this module holds it in persistent buffers and applies it in every training step.

Safety nets. ``matching=True`` (MGD's default) without the callback in the Trainer is an error at fit start (it
would silently train the "without matching" ablation). A non-finite loss term stops training with
:class:`NonFiniteLossError`, which names the step and the term, before any checkpoint with non-finite weights is
written (checked without a host synchronisation per step: see :meth:`DistillationModule.check_finite_loss`).

Reproducibility. Checkpoints hold the process's random states (torch CPU / CUDA, numpy, Python, as tensors:
:mod:`mgd_lightning.distill.rng`), restored at the start of ``fit(ckpt_path=...)`` in a single-process run. A
resume from an end-of-epoch checkpoint (``ModelCheckpoint``'s default) then reproduces the uninterrupted run
bit for bit on CPU: same data order and augmentation, same matchings, same student weights (given the same
data, loader workers and deterministic kernels; GPU kernels may add their own nondeterminism). A mid-epoch
checkpoint (``every_n_train_steps``) restores weights, optimiser, matching and random states, but Lightning
restarts a plain DataLoader at the start of its order, so the rest of that epoch sees other batches than the
uninterrupted run would have: equivalent, not identical. Under DDP the states are not restored (rank 0's
states would be given to every rank).

Lean checkpoints. The frozen teacher is not written into checkpoints (``save_teacher=False``, the default): it is
built again from its config, or passed again, at load time (ResNet-50 -> MobileNet-V2: 94 MB of a 113 MB
checkpoint). Such a checkpoint says so (``checkpoint["teacher_omitted"] = True``) and records the teacher's
tensor shapes (``checkpoint["teacher_shapes"]``); loading it (``fit(ckpt_path=...)``,
``load_from_checkpoint(path, teacher=..., student=...)``) puts the live teacher's own tensors back into the
loaded state_dict, so that Lightning's strict loading passes and the teacher stays the one given. A teacher of
another architecture is a :class:`TeacherMismatchError`; one with other BatchNorm weights than the teacher the
run was trained with (its margins differ from the checkpoint's) is a warning, and the margins (Eq. 4) are
recomputed from the teacher given (never the checkpoint's with another teacher's features). ``save_teacher=True``
writes the teacher as before; checkpoints holding it (also older ones) load as before.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from mgd_lightning.distillers import DISTILLERS, FEATURE_DISTILLERS
from mgd_lightning.losses import kd_loss, margin_from_bn, partial_l2
from mgd_lightning.matching import UNMATCHED, balanced_assignment, contiguous_groups, sparse_assignment
from mgd_lightning.reduction import MARGIN_REDUCTIONS, METHODS, reduce_teacher_and_margin
from mgd_lightning.tasks import Task
from mgd_lightning.tasks.base import total_loss

from .auto_taps import pair_by_size
from .classifier import WARMUP_START_FACTOR, ClassificationModule, NonFiniteLossError
from .rng import get_rng_states, set_rng_states
from .taps import FeatureTaps, Tap, batchnorm_before_taps, preset_taps, resolve_taps

__all__ = ["DistillationModule", "NonFiniteLossError", "TeacherMismatchError"]

log = logging.getLogger(__name__)


class TeacherMismatchError(RuntimeError, ValueError):
    """A checkpoint loaded with a teacher (or taps) of another architecture than the run's (raised by
    :meth:`DistillationModule.on_load_checkpoint`). A ``RuntimeError`` as Lightning's strict-loading error it
    replaces, and a ``ValueError`` (a wrong argument)."""


#: key prefix of the frozen teacher in the module's state_dict
TEACHER_PREFIX = "teacher."


def _uncompiled(model: nn.Module, role: str) -> nn.Module:
    """The network inside a ``torch.compile``'d module (``OptimizedModule``), with a warning; others as they are.

    The taps hook the network's submodules by name and checkpoints, exports and ``load_from_checkpoint`` name
    its tensors: a compiled wrapper would prefix every name with ``_orig_mod.`` (the taps were not found, and
    checkpoints would not load into the bare network)."""
    original = getattr(model, "_orig_mod", None)
    if not isinstance(original, nn.Module) or type(model).__name__ != "OptimizedModule":
        return model
    warnings.warn(
        f"DistillationModule: the {role} given is a torch.compile'd module; the network inside it is used, "
        f"uncompiled (the taps hook its submodules, and checkpoints and exports name its tensors without the "
        f"'_orig_mod.' prefix). Pass the {role} itself; this module does not compile the networks.",
        UserWarning, stacklevel=3,
    )
    return original


def _default_input_size(*models: nn.Module) -> tuple[int, int, int]:
    for model in models:
        size = getattr(model, "default_input_size", None)
        if size is not None:
            return tuple(size)
    return (3, 224, 224)


class DistillationModule(ClassificationModule):
    """Matching Guided Distillation of ``teacher`` into ``student``.

    Loss per step (Eq. 2): ``ce_weight * CE(student) + distill_weight * sum_k w_k d_p(BN_k(S_k),
    sigma_T(rho(T_k, M_k))) / (B * loss_factor) [+ kd_weight * KD]``, with ``rho`` the reducer
    (Eq. 12-15), ``sigma_T`` the margin ReLU (Eq. 4) and ``d_p`` the partial L2 (Eq. 5).

    Args:
        teacher: the teacher network (frozen here: no gradients, always in eval mode).
        student: the student network.
        reducer: ``"sm"``, ``"rd"``, ``"amp"`` (default), ``"mp"`` or ``"avg"``.
        distiller: ``"mgd"`` (default), or a competing baseline on the same taps, data and metrics:
            ``"kd"`` (logits only; needs ``kd_weight > 0``), ``"fitnets"``, ``"at"``, ``"ofd"``
            (:mod:`mgd_lightning.distillers`). Only ``"mgd"`` uses the matching.
        matching: ``True`` to learn the matching (MGD); ``False`` for the "without matching"
            ablation (contiguous groups of ``alpha`` teacher channels, never updated).
        teacher_taps, student_taps: module names (or ``"name:input"``) to tap; ``None`` picks the
            preset of the architecture (:mod:`mgd_lightning.distill.taps`), else automatic taps, one per
            stage (:mod:`mgd_lightning.distill.auto_taps`). With presets on both sides and unequal counts,
            the earliest taps of the longer list are dropped (the paper skips the first stage of
            MobileNet-V2 / ShuffleNet-V2); with automatic taps on either side, the taps of the spatial sizes
            found on both sides are paired.
        input_size: (C, H, W) used to probe tap shapes at construction; default from the models'
            ``default_input_size`` or (3, 224, 224).
        distill_weight: gamma of Eq. 2.
        tap_weights: per-tap weights; ``None``: the distiller's own default (MGD and OFD: ``1 / 2^(N-k-1)``,
            the reference code's 1/8, 1/4, 1/2, 1; AT: equal; FitNets: 100 at the hint tap only).
        loss_factor: divisor of the distillation term; ``None``: the distiller's own default (MGD and OFD:
            1e4, the reference code's factor for 224 px inputs, use 1e3 for 32 px; AT, FitNets: 1).
        student_bn: a trainable norm on each student tap (reference code), optimised with the student: the
            task's (:meth:`Task.tap_norm <mgd_lightning.tasks.Task.tap_norm>`: ``BatchNorm2d`` for classification,
            ``GroupNorm(32, C)`` for detection as ``mgd/builder.py`` with ``det=True``); ``False`` compares the raw
            student feature.
        margin_reduction: how margins follow the reduction: ``"official"`` (default, the reference code:
            group mean for AMP, group max for MP, a random member for RD) or ``"selected"`` (opt-in, ours:
            the margin of the channel selected at each position) (:mod:`mgd_lightning.reduction`).
        unmatched: the ``C_T - alpha * C_S`` teacher channels no student channel takes when ``C_S`` does not
            divide ``C_T`` (balanced matching): ``"official"`` (default, the reference code's "shave": the
            highest-index teacher channels are dropped before solving) or ``"optimal"`` (opt-in, ours: the exact
            rectangular assignment chooses them) (:func:`mgd_lightning.matching.balanced_assignment`). SM
            (a sparse assignment over all teacher channels, as the reference's SMDistiller) is unaffected.
        kd_weight, kd_temperature: Hinton KD on top (MGD reference: weight 1, T = 1.5 when enabled); the
            KD baseline's recipes are in :data:`mgd_lightning.distillers.KD_RECIPES`.
        ce_weight: weight of the student's cross-entropy (1; mdistiller's KD recipes use 0.1 / 0.5).
        lr, momentum, nesterov, weight_decay, lr_milestones, lr_gamma, warmup_epochs: SGD with step decay
            after an optional linear warm-up (:class:`~mgd_lightning.distill.classifier.ClassificationModule`;
            reference ``main_mgd.py``: 0.01 for a pre-trained student, 0.9, Nesterov, 1e-4, x0.1 at 31 / 61 / 81
            of 120 epochs on CUB-200; ImageNet MobileNet-V1: 10 warm-up epochs).
        num_classes: for the accuracy metrics; default from the student's output width.
        save_teacher: write the frozen teacher into checkpoints too (one self-contained file). Default
            ``False``: lean checkpoints without ``teacher.*`` keys; the teacher is given again at load time
            (see the module docstring).
        task: ``"classification"`` (default) or ``"detection"`` (:mod:`mgd_lightning.tasks`): torchvision detectors
            (e.g. :func:`mgd_lightning.models.build_detector`), taps in their backbone bodies, ``(images, targets)``
            batches, the student's own detection losses in place of the cross-entropy (weighted by ``ce_weight``,
            logged as ``train/<loss name>``), COCO AP on validation. KD needs logits: classification only.
        lr_interval, warmup_steps, warmup_factor: an iteration schedule (detection:
            :class:`~mgd_lightning.distill.classifier.ClassificationModule`).
        weight_decay_norm: weight decay of norm-layer parameters (the student's and the tap norms); ``None``: the
            task's (classification ``weight_decay``; detection 0, Detectron2's ``WEIGHT_DECAY_NORM``).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        reducer: str = "amp",
        distiller: str = "mgd",
        matching: bool = True,
        teacher_taps: Sequence[str | Tap] | None = None,
        student_taps: Sequence[str | Tap] | None = None,
        input_size: Sequence[int] | None = None,
        distill_weight: float = 1.0,
        tap_weights: Sequence[float] | None = None,
        loss_factor: float | None = None,
        student_bn: bool = True,
        margin_reduction: str = "official",
        unmatched: str = "official",
        kd_weight: float = 0.0,
        kd_temperature: float = 1.5,
        ce_weight: float = 1.0,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 1e-4,
        lr_milestones: Sequence[int] = (30, 60, 90),
        lr_gamma: float = 0.1,
        num_classes: int | None = None,
        warmup_epochs: int = 0,
        save_teacher: bool = False,
        task: str | Task = "classification",
        lr_interval: str = "epoch",
        warmup_steps: int = 0,
        warmup_factor: float = WARMUP_START_FACTOR,
        weight_decay_norm: float | None = None,
    ) -> None:
        teacher, student = _uncompiled(teacher, "teacher"), _uncompiled(student, "student")
        if reducer not in METHODS:
            raise ValueError(f"reducer must be one of {METHODS}; got {reducer!r}")
        if distiller not in DISTILLERS:
            raise ValueError(f"distiller must be one of {DISTILLERS}; got {distiller!r}")
        if distiller == "kd" and kd_weight <= 0:
            raise ValueError(f"distiller='kd' distils the logits only: set kd_weight > 0 (got kd_weight={kd_weight})")
        if unmatched not in UNMATCHED:
            raise ValueError(f"unmatched must be one of {UNMATCHED}; got {unmatched!r}")
        if margin_reduction not in MARGIN_REDUCTIONS:
            raise ValueError(f"margin_reduction must be one of {MARGIN_REDUCTIONS}; got {margin_reduction!r}")
        if loss_factor is not None and loss_factor <= 0:
            raise ValueError(f"loss_factor must be > 0 (or None for the distiller's default); got {loss_factor}")
        if ce_weight < 0 or kd_weight < 0:
            raise ValueError(f"ce_weight and kd_weight must be >= 0; got ce_weight={ce_weight}, kd_weight={kd_weight}")
        super().__init__(
            student, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            lr_milestones=lr_milestones, lr_gamma=lr_gamma, num_classes=num_classes, warmup_epochs=warmup_epochs,
            task=task, lr_interval=lr_interval, warmup_steps=warmup_steps, warmup_factor=warmup_factor,
            weight_decay_norm=weight_decay_norm,
        )
        if not self.task.has_logits and (kd_weight > 0 or distiller == "kd"):
            raise ValueError(
                f"task={self.task.name!r} has no class logits to distil: Hinton KD needs them "
                f"(got distiller={distiller!r}, kd_weight={kd_weight}); use kd_weight=0 and a feature distiller"
            )
        self.task.check_models(teacher, student)
        # Taps, probes and margins live in each network's tap root (classification: the network; detection:
        # its backbone body, the bottom-up network before the FPN).
        t_root, s_root = self.task.tap_root(teacher), self.task.tap_root(student)
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.reducer = reducer
        self.distiller_name = distiller
        if distiller != "mgd" or not matching:
            self.assignment = None
        else:
            self.assignment = "sparse" if reducer == "sm" else "balanced"

        size = tuple(int(v) for v in input_size) if input_size is not None else _default_input_size(student, teacher)
        if len(size) != 3:
            raise ValueError(f"input_size must be (C, H, W), e.g. (3, 32, 32); got {size}")
        t_taps = resolve_taps(t_root, teacher_taps, "teacher", size)
        s_taps = resolve_taps(s_root, student_taps, "student", size)
        sides = ((t_root, teacher_taps), (s_root, student_taps))
        if any(taps is None and preset_taps(m) is None for m, taps in sides):
            # automatic taps (one per stage) on either side: the stages of equal spatial size are paired
            t_taps, s_taps = pair_by_size(t_root, t_taps, s_root, s_taps, size)
        elif teacher_taps is None and student_taps is None and len(t_taps) != len(s_taps):
            n = min(len(t_taps), len(s_taps))
            t_taps, s_taps = t_taps[len(t_taps) - n :], s_taps[len(s_taps) - n :]
        if len(t_taps) != len(s_taps):
            raise ValueError(
                f"teacher and student need as many taps: teacher_taps {[t.module for t in t_taps]} "
                f"({len(t_taps)}) vs student_taps {[t.module for t in s_taps]} ({len(s_taps)})"
            )
        self.teacher_taps = FeatureTaps(t_root, t_taps)
        self.student_taps = FeatureTaps(s_root, s_taps)
        self.num_taps = len(t_taps)

        example = torch.zeros(1, *size, device=next(teacher.parameters()).device)
        try:
            t_shapes, s_shapes = self._probe(example)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            given = "" if input_size is not None else (
                " (not given: the models' default_input_size, else (3, 224, 224))"
            )
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"input_size={size}{given}: the teacher and student cannot run a (1, {size[0]}, {size[1]}, "
                f"{size[2]}) probe input ({type(err).__name__}: {reason}). input_size must be the (C, H, W) of "
                "the training images as the networks take them, e.g. (3, 32, 32) for CIFAR-100, (3, 224, 224) "
                "for CUB-200 / ImageNet, (3, 16, 16) for configs/digits"
            ) from err
        for k, (tt, st, ts, ss) in enumerate(zip(t_taps, s_taps, t_shapes, s_shapes)):
            if ts[2:] != ss[2:]:
                raise ValueError(
                    f"tap pair {k}: teacher {tt.module!r} gives {tuple(ts[1:])} (C, H, W) but student "
                    f"{st.module!r} gives {tuple(ss[1:])} at input {size}: spatial sizes must be equal; "
                    "choose other taps or another input_size"
                )
            if ts[1] < ss[1] and distiller == "mgd":
                raise ValueError(
                    f"tap pair {k}: teacher {tt.module!r} has C_T={ts[1]} channels < student "
                    f"{st.module!r} C_S={ss[1]}; MGD needs C_T >= C_S at every tap"
                )
        self.tap_shapes = [(int(ss[1]), int(ts[1]), int(ss[2]), int(ss[3])) for ts, ss in zip(t_shapes, s_shapes)]

        # Matching buffers, sized now, updated in place by the callback: in every checkpoint.
        for k, (c_s, c_t, _, _) in enumerate(self.tap_shapes if distiller == "mgd" else []):
            groups = contiguous_groups(c_s, c_t)
            if reducer == "sm":
                groups = groups[:, :1].contiguous()
            self.register_buffer(f"matching_{k}", groups)
        self.register_buffer("last_matching_epoch", torch.tensor(-1, dtype=torch.long))

        # Margins (Eq. 4) from the teacher BN right before each tap (reference: residual-branch BN).
        bns = batchnorm_before_taps(t_root, t_taps, example)
        # their names in the tap root: a lean checkpoint's margins are recomputed from the teacher given at load time
        names = {id(m): n for n, m in t_root.named_modules()}
        self._margin_bn_names = [names.get(id(bn)) if bn is not None else None for bn in bns]
        for k, bn in enumerate(bns):
            margin = margin_from_bn(bn).float() if bn is not None else torch.zeros(0)
            if bn is None:
                log.warning("teacher tap %r: no BatchNorm before it; no margin ReLU", t_taps[k].module)
            self.register_buffer(f"margin_{k}", margin)

        self.distill_weight = 0.0 if distiller == "kd" else float(distill_weight)
        if tap_weights is not None and len(tap_weights) != self.num_taps:
            raise ValueError(f"tap_weights needs {self.num_taps} values (one per tap); got {list(tap_weights)}")
        if distiller in FEATURE_DISTILLERS:
            cls = FEATURE_DISTILLERS[distiller]
            tap_weights = cls.default_tap_weights(self.num_taps) if tap_weights is None else tap_weights
            loss_factor = cls.default_loss_factor if loss_factor is None else loss_factor
        else:  # MGD (and KD, which has no feature term): the reference code's weights and 1e4
            tap_weights = [1.0 / 2 ** (self.num_taps - k - 1) for k in range(self.num_taps)] if tap_weights is None \
                else tap_weights
            loss_factor = 1e4 if loss_factor is None else loss_factor
        self.tap_weights = [float(w) for w in tap_weights]
        self.loss_factor = float(loss_factor)
        use_bn = student_bn and self.distill_weight > 0 and distiller == "mgd"
        self.student_bns = nn.ModuleList(
            self.task.tap_norm(c_s) if use_bn else nn.Identity() for c_s, _, _, _ in self.tap_shapes
        )
        self.margin_reduction = margin_reduction
        self.unmatched = unmatched
        self.feature_distiller = None
        if distiller in FEATURE_DISTILLERS and self.distill_weight > 0:
            self.feature_distiller = FEATURE_DISTILLERS[distiller](
                self.tap_shapes, self.margins, self.tap_weights, self.loss_factor
            )
        self.kd_weight = float(kd_weight)
        self.kd_temperature = float(kd_temperature)
        self.ce_weight = float(ce_weight)
        # Set by MGDMatchingCallback(mode="online"): keep the last training step's (detached) tap features
        # for the matching cost: "raw" student taps (reference code), "bn" after the student-side BN, or None.
        self.keep_train_features: str | None = None
        self.last_train_features: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        # Random states of the checkpoint being resumed (on_load_checkpoint), applied at fit start.
        self._resume_rng_states: dict[str, torch.Tensor] | None = None
        self.save_teacher = bool(save_teacher)

    # ------------------------------------------------------------------ construction helpers
    def _probe(self, example: torch.Tensor):
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                self.task.tap_root(self.teacher)(example)
                t_shapes = [f.shape for f in self.teacher_taps.features]
                self.task.tap_root(self.student)(example.to(next(self.student.parameters()).device))
                s_shapes = [f.shape for f in self.student_taps.features]
        finally:
            self.student.train(was_training)
        return t_shapes, s_shapes

    # ------------------------------------------------------------------ fit checks and checkpoint state
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.assignment is not None and not any(
            getattr(cb, "updates_mgd_matching", False) for cb in self.trainer.callbacks
        ):
            raise RuntimeError(
                f"DistillationModule(distiller='mgd', reducer={self.reducer!r}, matching=True) learns the channel "
                "matching, but this Trainer has no MGDMatchingCallback: the matching would never be updated and "
                "the run would silently be the paper's 'without matching' ablation. Add MGDMatchingCallback() to "
                "the Trainer's callbacks (pl.Trainer(callbacks=[MGDMatchingCallback(), ...])), or pass "
                "matching=False to train that ablation on purpose."
            )
        states, self._resume_rng_states = self._resume_rng_states, None
        # Only for fit(ckpt_path=...): load_from_checkpoint also runs on_load_checkpoint, and a new fit of
        # the loaded module (fine-tuning) is a new run with its own randomness.
        if states is not None and self.trainer.ckpt_path is not None and self.trainer.world_size == 1:
            set_rng_states(states)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random states in, and (unless ``save_teacher``) the frozen teacher's ``teacher.*`` tensors out: the
        checkpoint then says ``teacher_omitted`` and records the teacher's tensor shapes."""
        super().on_save_checkpoint(checkpoint)  # first: the non-finite check (no checkpoint with non-finite weights)
        checkpoint["rng_states"] = get_rng_states()
        state = checkpoint.get("state_dict")
        if self.save_teacher or state is None:
            return
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]
        checkpoint["teacher_omitted"] = True
        checkpoint["teacher_shapes"] = {k: list(v.shape) for k, v in self.teacher.state_dict().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random states kept for the resume; a lean checkpoint's teacher put back from the live teacher (after
        checking that its architecture is the run's)."""
        super().on_load_checkpoint(checkpoint)
        self._resume_rng_states = checkpoint.get("rng_states")
        state = checkpoint.get("state_dict")
        if state is not None:
            self._restore_teacher_state(state, checkpoint)

    def _restore_teacher_state(self, state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> None:
        saved = {k[len(TEACHER_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(TEACHER_PREFIX)}
        omitted = bool(checkpoint.get("teacher_omitted")) or not saved
        if omitted:
            recorded = checkpoint.get("teacher_shapes")
            saved = {k: tuple(v) for k, v in recorded.items()} if recorded is not None else None
        live = self.teacher.state_dict()
        problems = []
        if saved is not None:
            problems += [f"teacher.{k}: {tuple(v)} in the checkpoint's teacher, {tuple(live[k].shape)} in the "
                         "teacher given" for k, v in saved.items() if k in live and tuple(live[k].shape) != v]
            missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
            if missing:
                problems.append(f"{len(missing)} teacher tensor(s) the checkpoint's teacher does not have "
                                f"(teacher.{missing[0]}, ...)")
            if extra:
                problems.append(f"{len(extra)} tensor(s) of the checkpoint's teacher missing in the teacher given "
                                f"(teacher.{extra[0]}, ...)")
        own = self.state_dict()
        for key in (k for k in state if k.startswith(("matching_", "margin_"))):
            if key not in own:
                problems.append(f"{key}: in the checkpoint, not in this module (another number of tap pairs)")
            elif tuple(own[key].shape) != tuple(state[key].shape):
                problems.append(f"{key}: {tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} with "
                                "the teacher and student given")
        if problems:
            how = ("it was saved without its teacher (save_teacher=False), so the teacher is the one given at load "
                   "time" if omitted else "it holds its teacher")
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise TeacherMismatchError(
                f"this checkpoint does not fit the teacher (or taps) given: {how}, and the architecture differs "
                f"from the run's: {shown}. Build the teacher and student as the run did (the same names, "
                "num_classes and arch_args: its config.yaml) and pass the same teacher_taps / student_taps."
            )
        if not omitted:
            return
        # Lightning loads the state_dict strictly: the live teacher's own tensors stand in for the omitted ones
        # (loading a tensor into itself leaves it as it is).
        state.update({TEACHER_PREFIX + k: v for k, v in live.items()})
        # The margins (Eq. 4) are the teacher's: recomputed from the teacher given, for the module and for a
        # feature distiller's copies (``feature_distiller.margin_k``), never the checkpoint's with this teacher.
        margins = self._teacher_margins()
        changed = []
        for key in [k for k in state if k.startswith(("margin_", "feature_distiller.margin_"))]:
            k = int(key.rpartition("_")[2])
            if k >= len(margins) or margins[k] is None or not state[key].numel():
                continue
            fresh = margins[k].to(device=state[key].device, dtype=state[key].dtype)
            if fresh.shape != state[key].shape:
                continue
            if not torch.allclose(state[key].detach().float().cpu(), fresh.float().cpu(), rtol=1e-4, atol=1e-6):
                changed.append(key)
            state[key] = fresh
        if changed:
            warnings.warn(
                f"the teacher given is not the one this checkpoint was trained with: its BatchNorm margins (Eq. 4) "
                f"differ from the checkpoint's ({', '.join(changed)}). The checkpoint was saved without its teacher "
                "(save_teacher=False), so the teacher given is used, with its margins recomputed from it (not the "
                "checkpoint's). Build it as the run did (e.g. with the same checkpoint= / weights= of build_model) "
                "unless that is what you mean.",
                UserWarning, stacklevel=2,
            )

    def _teacher_margins(self) -> list[torch.Tensor | None]:
        """The margins (Eq. 4) of the teacher as it is now, from the BatchNorm before each tap (found at
        construction); ``None`` for a tap without one."""
        modules = dict(self.task.tap_root(self.teacher).named_modules())
        return [margin_from_bn(modules[name]).float() if name is not None else None
                for name in self._margin_bn_names]

    # ------------------------------------------------------------------ state
    def train(self, mode: bool = True):
        """Switch the student's mode; the teacher stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @property
    def student(self) -> nn.Module:
        """The trainable network (stored as ``self.model``, shared with ClassificationModule)."""
        return self.model

    @property
    def matchings(self) -> list[torch.Tensor]:
        """Current matching per tap pair: ``(C_S, alpha)`` LongTensors (``alpha = 1`` for SM); empty for
        the other distillers."""
        if self.distiller_name != "mgd":
            return []
        return [getattr(self, f"matching_{k}") for k in range(self.num_taps)]

    @property
    def margins(self) -> list[torch.Tensor | None]:
        out = []
        for k in range(self.num_taps):
            m = getattr(self, f"margin_{k}")
            out.append(m if m.numel() else None)
        return out

    def set_matching(self, k: int, groups: torch.Tensor) -> None:
        """Replace tap ``k``'s matching in place (keeps buffers, devices and checkpoints consistent)."""
        buf = getattr(self, f"matching_{k}")
        if tuple(groups.shape) != tuple(buf.shape):
            raise ValueError(f"matching for tap {k} must have shape {tuple(buf.shape)}; got {tuple(groups.shape)}")
        buf.copy_(groups.to(buf.device))

    def solve_matching(self, cost: torch.Tensor) -> torch.Tensor:
        """The assignment for one tap's (C_S, C_T) cost: balanced (Eq. 8-11) or sparse (SM)."""
        if self.assignment is None:
            raise RuntimeError("this module was built with matching=False: its grouping is fixed")
        if self.assignment == "balanced":
            return balanced_assignment(cost, unmatched=self.unmatched)
        return sparse_assignment(cost)

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The distilled student alone: loads into the bare student model with ``load_state_dict``."""
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    # ------------------------------------------------------------------ forward and losses
    def forward_features(self, x, student_bn: bool = True, targets=None):
        """One forward of each network (:meth:`Task.forward_pair <mgd_lightning.tasks.Task.forward_pair>`).
        Returns ``(student_outputs, teacher_outputs, student_feats, teacher_feats)``: classification the two
        logits; detection the student's loss dict in training with ``targets`` (else ``None``) and ``None``.
        Student features have passed the student-side BN unless ``student_bn=False`` (the raw taps, which the
        matching cost uses); no teacher gradients."""
        s_logits, t_logits = self.task.forward_pair(self.teacher, self.student, x, targets, self.student_taps)
        t_feats = self.teacher_taps.features
        s_feats = self.student_taps.features
        if student_bn:
            s_feats = self.apply_student_bn(s_feats)
        return s_logits, t_logits, s_feats, t_feats

    def apply_student_bn(self, s_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student-side norm of each tap (the task's :meth:`~mgd_lightning.tasks.Task.tap_norm`; identity when
        ``student_bn=False``)."""
        return [bn(f) for bn, f in zip(self.student_bns, s_feats)]

    def distillation_losses(self, s_feats: list[torch.Tensor], t_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-tap weighted partial L2 (Eq. 5) between student and reduced teacher, scaled by
        ``1 / (B * loss_factor)``; for another ``distiller``, its per-tap losses."""
        if self.feature_distiller is not None:
            return self.feature_distiller(s_feats, t_feats)
        losses = []
        for k, (s, t, groups, margin) in enumerate(zip(s_feats, t_feats, self.matchings, self.margins)):
            reduced, red_margin = reduce_teacher_and_margin(
                t, margin, groups, self.reducer, margin_reduction=self.margin_reduction
            )
            d = partial_l2(s, reduced, red_margin)
            losses.append(d * (self.tap_weights[k] / (s.shape[0] * self.loss_factor)))
        return losses

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self.task.split(batch)
        s_logits, t_logits, raw_feats, t_feats = self.forward_features(x, student_bn=False, targets=y)
        s_feats = self.apply_student_bn(raw_feats)
        if self.keep_train_features is not None:
            kept = raw_feats if self.keep_train_features == "raw" else s_feats
            self.last_train_features = ([f.detach() for f in kept], [f.detach() for f in t_feats])
        # the task loss: classification the cross-entropy ("ce"), detection the detector's own losses
        terms = self.task.loss_terms(s_logits, y)
        task_loss = total_loss(terms)
        loss = self.ce_weight * task_loss if self.ce_weight != 1.0 else task_loss
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        terms = dict(terms)
        if self.distill_weight > 0:
            per_tap = self.distillation_losses(s_feats, t_feats)
            distill = torch.stack(per_tap).sum()
            loss = loss + self.distill_weight * distill
            logs["train/distill"] = distill.detach()
            logs.update({f"train/distill_tap{k}": v.detach() for k, v in enumerate(per_tap)})
            for k, v in enumerate(per_tap):
                tt, st = self.teacher_taps.taps[k].module, self.student_taps.taps[k].module
                terms[f"distill tap {k} (teacher {tt!r}, student {st!r})"] = v
        if self.kd_weight > 0:
            kd = kd_loss(s_logits, t_logits, self.kd_temperature)
            loss = loss + self.kd_weight * kd
            logs["train/kd"] = kd.detach()
            terms["kd"] = kd
        logs["train/loss"] = loss.detach()
        self._track_finite(terms)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=self.task.batch_size(x))
        return loss

    def trainable_modules(self) -> list[nn.Module]:
        """The student, its tap BatchNorms and a baseline's connectors / regressors; never the teacher."""
        modules = [self.student, self.student_bns]
        return modules + ([self.feature_distiller] if self.feature_distiller is not None else [])
