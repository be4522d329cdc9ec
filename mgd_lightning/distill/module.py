"""DistillationModule: a frozen teacher, a trainable student and the MGD loss (paper Eq. 2-5, 12-15).

The matching itself is updated by :class:`mgd_lightning.MGDMatchingCallback` (coordinate descent,
section 3.4); this module holds it in persistent buffers and applies it in every training step.

Parts, one job each: :mod:`~mgd_lightning.distill.arguments` (the arguments checked, and the distillers' defaults),
:mod:`~mgd_lightning.distill.tap_pairs` (the teacher / student tap pairs and their shapes),
:mod:`~mgd_lightning.distill.tap_norms` (the teacher's margins and the student's tap norms) and
:mod:`~mgd_lightning.distill.teacher` (the frozen teacher, left out of and put back into checkpoints); the
non-finite loss stop and the optimiser are the base class's (:class:`~mgd_lightning.ClassificationModule`).

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
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from mgd_lightning.distillers import FEATURE_DISTILLERS
from mgd_lightning.losses import kd_loss, partial_l2
from mgd_lightning.margin_estimate import margin_from_statistics, margin_statistics
from mgd_lightning.matching import balanced_assignment, contiguous_groups, sparse_assignment
from mgd_lightning.reduction import reduce_teacher_and_margin
from mgd_lightning.tasks import Task
from mgd_lightning.tasks.base import total_loss

from .arguments import (
    assignment_kind,
    check_distillation_args,
    check_task_has_logits,
    loss_scale,
    resolve_input_size,
    uncompiled,
)
from .classifier import WARMUP_START_FACTOR, ClassificationModule, NonFiniteLossError
from .rng import get_rng_states, set_rng_states
from .tap_norms import margin_batchnorms, student_tap_norms, tap_margins, teacher_margins
from .tap_pairs import pair_taps, probe_input, probe_tap_shapes, tap_pair_shapes
from .taps import FeatureTaps, Tap
from .teacher import TeacherMismatchError, freeze_teacher, restore_teacher, strip_teacher

__all__ = ["DistillationModule", "NonFiniteLossError", "TeacherMismatchError"]

log = logging.getLogger(__name__)


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
        task: ``"classification"`` (default), ``"self_supervised"`` (no labels: a
            :class:`~mgd_lightning.models.MoCoV2` student trains with MoCo-v2's loss plus the distillation on its
            query view, any other student by distillation alone; :class:`~mgd_lightning.tasks.SelfSupervisedTask`) or
            ``"detection"`` (:mod:`mgd_lightning.tasks`): torchvision detectors
            (e.g. :func:`mgd_lightning.models.build_detector`), taps in their backbone bodies, ``(images, targets)``
            batches, the student's own detection losses in place of the cross-entropy (weighted by ``ce_weight``,
            logged as ``train/<loss name>``), COCO AP on validation. KD needs logits: classification only.
        lr_interval, warmup_steps, warmup_factor, lr_schedule: an iteration schedule (detection), MoCo's cosine
            schedule (:class:`~mgd_lightning.distill.classifier.ClassificationModule`).
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
        lr_schedule: str = "step",
    ) -> None:
        teacher, student = uncompiled(teacher, "teacher"), uncompiled(student, "student")
        check_distillation_args(
            reducer=reducer, distiller=distiller, kd_weight=kd_weight, unmatched=unmatched,
            margin_reduction=margin_reduction, loss_factor=loss_factor, ce_weight=ce_weight,
        )
        super().__init__(  # saves the hyperparameters: every argument above, as given, less the networks
            student, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            lr_milestones=lr_milestones, lr_gamma=lr_gamma, num_classes=num_classes, warmup_epochs=warmup_epochs,
            task=task, lr_interval=lr_interval, warmup_steps=warmup_steps, warmup_factor=warmup_factor,
            weight_decay_norm=weight_decay_norm, lr_schedule=lr_schedule,
        )
        check_task_has_logits(self.task, distiller, kd_weight)
        self.task.check_models(teacher, student)
        self.teacher = freeze_teacher(teacher)
        self.reducer = reducer
        self.distiller_name = distiller
        self.assignment = assignment_kind(distiller, reducer, matching)
        # Taps (their pairs, hooks and (C_S, C_T, H, W) shapes), then the buffers sized by them.
        example = self._build_taps(teacher_taps, student_taps, resolve_input_size(input_size, student, teacher),
                                   size_given=input_size is not None)
        self._register_matchings()
        self._register_margins(example)
        # The loss (Eq. 2): its weights, the student-side tap norms and a baseline's own modules.
        self.distill_weight = 0.0 if distiller == "kd" else float(distill_weight)
        if not self.task.has_objective(student) and self.distill_weight <= 0:
            raise ValueError(
                f"task={self.task.name!r} with a {type(student).__name__} student (no objective of its own: "
                f"distillation only) needs distill_weight > 0 and a feature distiller; got distill_weight="
                f"{distill_weight}, distiller={distiller!r}"
            )
        self.tap_weights, self.loss_factor = loss_scale(distiller, self.num_taps, tap_weights, loss_factor)
        self.student_bns = student_tap_norms(
            self.task, self.tap_shapes, enabled=student_bn and self.distill_weight > 0 and distiller == "mgd"
        )
        self.margin_reduction = margin_reduction
        self.unmatched = unmatched
        self.feature_distiller = self._build_feature_distiller()
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

    # ------------------------------------------------------------------ construction steps
    def _build_taps(
        self, teacher_taps: Sequence[str | Tap] | None, student_taps: Sequence[str | Tap] | None,
        size: tuple[int, ...], size_given: bool,
    ) -> torch.Tensor:
        """Pair the taps (:mod:`~mgd_lightning.distill.tap_pairs`), hook them (``teacher_taps``, ``student_taps``:
        :class:`~mgd_lightning.distill.taps.FeatureTaps`) and probe their shapes (``num_taps``, ``tap_shapes``:
        ``(C_S, C_T, H, W)`` per pair). Taps live in each network's tap root (classification: the network;
        detection: its backbone body, the bottom-up network before the FPN). Returns the probe input
        ``(1, C, H, W)``."""
        t_root, s_root = self.task.tap_root(self.teacher), self.task.tap_root(self.student)
        t_taps, s_taps = pair_taps(t_root, teacher_taps, s_root, student_taps, size)
        self.teacher_taps = FeatureTaps(t_root, t_taps)
        self.student_taps = FeatureTaps(s_root, s_taps)
        self.num_taps = len(t_taps)
        example = probe_input(size, self.teacher)
        t_shapes, s_shapes = probe_tap_shapes(
            self.task, self.teacher, self.student, self.teacher_taps, self.student_taps, example, size_given
        )
        self.tap_shapes = tap_pair_shapes(t_taps, s_taps, t_shapes, s_shapes, size, self.distiller_name)
        return example

    def _register_matchings(self) -> None:
        """The matching buffers (MGD only), ``matching_k``: ``(C_S, alpha)`` contiguous groups of teacher channels
        (SM: ``(C_S, 1)``), updated in place by the callback, in every checkpoint; and ``last_matching_epoch``."""
        for k, (c_s, c_t, _, _) in enumerate(self.tap_shapes if self.distiller_name == "mgd" else []):
            groups = contiguous_groups(c_s, c_t)
            if self.reducer == "sm":
                groups = groups[:, :1].contiguous()
            self.register_buffer(f"matching_{k}", groups)
        self.register_buffer("last_matching_epoch", torch.tensor(-1, dtype=torch.long))

    def _register_margins(self, example: torch.Tensor) -> None:
        """The margin buffers (Eq. 4), ``margin_k``: ``(C_T,)`` from the teacher BatchNorm right before each tap
        (reference: the residual-branch BN), ``(0,)`` without one; the BatchNorms' names are kept, so that a
        lean checkpoint's margins are recomputed from the teacher given at load time."""
        bns, self._margin_bn_names = margin_batchnorms(self.task.tap_root(self.teacher), self.teacher_taps.taps,
                                                       example)
        for k, margin in enumerate(tap_margins(bns, self.teacher_taps.taps)):
            self.register_buffer(f"margin_{k}", margin)

    def _build_feature_distiller(self) -> nn.Module | None:
        """A feature baseline's loss module on the taps (its connectors / regressors are trained with the
        student); ``None`` for MGD, KD, or ``distill_weight=0``."""
        if self.distiller_name in FEATURE_DISTILLERS and self.distill_weight > 0:
            baseline = FEATURE_DISTILLERS[self.distiller_name]
            return baseline(self.tap_shapes, self.margins, self.tap_weights, self.loss_factor)
        return None

    def _teacher_margins(self) -> list[torch.Tensor | None]:
        """The margins (Eq. 4) of the teacher as it is now, from the BatchNorm before each tap (found at
        construction); ``None`` for a tap without one."""
        return teacher_margins(self.task.tap_root(self.teacher), self._margin_bn_names)

    # ------------------------------------------------------------------ fit checks and checkpoint state
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._check_matching_callback()
        self._restore_resume_rng_states()

    def _check_matching_callback(self) -> None:
        """Raise ``RuntimeError`` when the matching is learnt but no callback in the Trainer updates it."""
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

    def _restore_resume_rng_states(self) -> None:
        """Apply (once) the random states of the checkpoint being resumed, in a single-process run."""
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
        if not self.save_teacher:
            strip_teacher(checkpoint, self.teacher)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random states kept for the resume; a lean checkpoint's teacher put back from the live teacher (after
        checking that its architecture is the run's: :func:`~mgd_lightning.distill.teacher.restore_teacher`)."""
        super().on_load_checkpoint(checkpoint)
        self._resume_rng_states = checkpoint.get("rng_states")
        if checkpoint.get("state_dict") is not None:
            self._take_estimated_margins(checkpoint["state_dict"])
            restore_teacher(checkpoint, self.teacher, self.state_dict(), self._teacher_margins)

    def _take_estimated_margins(self, state: dict[str, torch.Tensor]) -> None:
        """Size this module's margin buffers to a checkpoint's estimated margins (:meth:`estimate_margins`): a saved
        ``(C_T,)`` margin where this module has none (``(0,)``: a tap without a BatchNorm, whose margin is not
        recomputed from the teacher) makes the buffer ``(C_T,)``, so that the strict load that follows takes the
        saved values. Any other shape is left to :func:`~mgd_lightning.distill.teacher.restore_teacher`'s check."""
        for k in range(self.num_taps):
            if self._margin_bn_names[k] is not None:
                continue
            c_t = self.tap_shapes[k][1]
            for owner, prefix in self._margin_owners():
                saved, own = state.get(f"{prefix}margin_{k}"), getattr(owner, f"margin_{k}")
                if saved is not None and tuple(saved.shape) == (c_t,) and not own.numel():
                    setattr(owner, f"margin_{k}", torch.zeros(c_t, dtype=own.dtype, device=own.device))

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

    def _margin_owners(self) -> list[tuple[nn.Module, str]]:
        """The modules holding margin buffers ``margin_k`` and their state_dict prefixes: this module, and a feature
        distiller's copy (OFD's margin ReLU)."""
        owners: list[tuple[nn.Module, str]] = [(self, "")]
        if self.feature_distiller is not None and hasattr(self.feature_distiller, "margin_0"):
            owners.append((self.feature_distiller, "feature_distiller."))
        return owners

    def estimate_margins(self, batches: Iterable[Any], taps: Sequence[int] | None = None,
                         threshold: float = 1e-3) -> list[torch.Tensor]:
        """Estimate the margins (Eq. 4) of teacher taps without a BatchNorm (token taps: a LayerNorm network) from
        the teacher's features over ``batches``, and use them from now on (opt-in).

        By default such taps get no margin (the plain partial L2 on the reduced teacher). This measures, per teacher
        channel, the mean of its negative responses ``E[x | x < 0]`` (or ``-3 * std`` where at most ``threshold`` of
        them are negative; :mod:`mgd_lightning.margin_estimate`) on the tapped maps as the loss sees them (laid out
        over the grid and resampled to the student's), and stores it in the ``margin_k`` buffers (and a feature
        distiller's copies): checkpoints hold the estimates, and loading one restores them (a lean checkpoint's
        margins are recomputed only for BatchNorm taps). Call it before ``fit``, with the same batches on every
        process under DDP.

        Args:
            batches: an iterable of batches as the training loader gives them (``(x, y)``, ``x``, a dict), e.g. a
                DataLoader over (a subset of) the training images; the teacher runs on each in eval mode, without
                gradients. Statistics are summed over all of them (``5 * C_T`` numbers per tap).
            taps: the tap indices to estimate (default: every tap without a BatchNorm before it); a tap with a
                BatchNorm is an error (its margin comes from the BatchNorm, and a lean checkpoint's load would
                recompute it).
            threshold: see :func:`~mgd_lightning.margin_estimate.margin_from_statistics`.

        Returns:
            The estimated ``(C_T,)`` margins of the chosen taps, in order (``[]`` when no tap lacks a BatchNorm).

        Raises:
            ValueError: a tap index out of range or of a tap with a BatchNorm, no batches, or a detection task.
        """
        if self.task.name == "detection":
            raise ValueError("estimate_margins supports the classification and self-supervised tasks; a detection "
                             "batch is a list of raw images the detector transforms itself (train without it, or "
                             "estimate with a classification module over the same teacher)")
        no_bn = [k for k in range(self.num_taps) if self._margin_bn_names[k] is None]
        chosen = no_bn if taps is None else [int(k) for k in taps]
        bad = [k for k in chosen if not 0 <= k < self.num_taps]
        if bad:
            raise ValueError(f"taps {bad} out of range: this module has {self.num_taps} tap pairs (0 to "
                             f"{self.num_taps - 1})")
        with_bn = [k for k in chosen if self._margin_bn_names[k] is not None]
        if with_bn:
            raise ValueError(f"taps {with_bn} have a BatchNorm before them (their margins are its closed form, "
                             f"Eq. 4); estimate_margins is for taps without one: {no_bn}")
        if not chosen:
            return []
        root, stats, images = self.task.tap_root(self.teacher), None, 0
        self.teacher.eval()
        with torch.no_grad():
            for batch in batches:
                x = self.task.split(batch)[0]
                if isinstance(x, (list, tuple)):  # views (self-supervised): the teacher sees the first
                    x = x[0]
                root(x.to(self.device))
                images += x.shape[0]
                feats = self.teacher_taps.features
                batch_stats = [margin_statistics(feats[k]) for k in chosen]
                stats = batch_stats if stats is None else [a + b for a, b in zip(stats, batch_stats)]
        if stats is None:
            raise ValueError("estimate_margins: batches is empty (give it e.g. a DataLoader over training images)")
        out = []
        for k, s in zip(chosen, stats):
            margin = margin_from_statistics(s, threshold)
            for owner, _ in self._margin_owners():
                own = getattr(owner, f"margin_{k}")
                setattr(owner, f"margin_{k}", margin.to(device=own.device, dtype=own.dtype, copy=True))
            out.append(getattr(self, f"margin_{k}"))
        log.info("margins (Eq. 4) of teacher taps %s estimated from their features on %d images", chosen, images)
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
        terms = self.task.loss_terms(s_logits, y)  # empty: a student without an objective of its own
        task_loss = total_loss(terms) if terms else None
        loss = s_feats[0].new_zeros(()) if task_loss is None else (
            self.ce_weight * task_loss if self.ce_weight != 1.0 else task_loss)
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

    def trains_by_task_loss(self) -> bool:
        """No: distillation trains the student too (a student without a task loss of its own is checked against
        ``distill_weight`` instead)."""
        return False

    def trainable_modules(self) -> list[nn.Module]:
        """The student, its tap BatchNorms and a baseline's connectors / regressors; never the teacher."""
        modules = [self.student, self.student_bns]
        return modules + ([self.feature_distiller] if self.feature_distiller is not None else [])
