"""ClassificationModule: plain supervised training of one network (teacher fine-tuning, FT / FS baselines).

It is also the base of :class:`~mgd_lightning.distill.module.DistillationModule`: the evaluation steps,
metrics, the best-epoch error and the optimiser and schedule (the paper's SGD recipe) live here once.

Schedules, as the reference code (``cls/main_mgd.py``, ``cls/main_base.py``, ``cls/solver/lr_scheduler.py``):
the learning rate is multiplied by ``lr_gamma`` at each of ``lr_milestones`` (0-based epoch indices: with
milestone 30, epochs 0-29 train at ``lr`` and epoch 30 at ``lr * lr_gamma``), stepped once per epoch after
validation (Lightning's ``interval: "epoch"``, as the reference calls ``lr_scheduler.step()`` after each
epoch). ``warmup_epochs = W > 0`` adds the reference ``--warmup 1`` ramp (:class:`WarmupMultiStepLR`): epoch
``e < W`` trains at ``lr * (0.1 + 0.9 e / W)`` (0.1 x lr at epoch 0, 1 x lr from epoch W on). As in the
reference, the milestones count from the start of training, warm-up included: the reference adds W to both
its epoch count and its milestones (ImageNet MobileNet-V1: 120 + 10 epochs, drops at 31 + 10, 61 + 10, 81 + 10).
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from mgd_lightning._lightning import PossibleUserWarning, pl, warn_if_mixed_namespaces
from mgd_lightning.tasks import Task, resolve_task
from mgd_lightning.tasks.base import total_loss
from mgd_lightning.tasks.classification import infer_num_classes, split_batch

from .checkpoint_io import use_atomic_checkpoint_io

__all__ = [
    "ClassificationModule", "LR_INTERVALS", "LR_SCHEDULES", "NORM_TYPES", "ModelDataMismatchError",
    "NonFiniteLossError",
    "WarmupMultiStepLR", "decay_param_groups", "infer_num_classes", "split_batch",
]

#: units of ``lr_milestones`` and the warm-up: epochs (classification recipes) or optimizer steps (detection)
LR_INTERVALS = ("epoch", "step")
#: ``lr_schedule`` values: step decay at ``lr_milestones`` (the reference code), or MoCo's cosine (``--cos``)
LR_SCHEDULES = ("step", "cosine")

#: learning-rate factor at the first warm-up epoch (reference ``cls/main_mgd.py``: ``warmup_factor=0.1``).
WARMUP_START_FACTOR = 0.1

#: normalisation layers whose own parameters ``weight_decay_norm`` applies to (Detectron2's
#: ``get_default_optimizer_params``: batch, sync-batch, group, instance and layer norms)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def decay_param_groups(
    modules: Sequence[nn.Module], weight_decay: float, weight_decay_norm: float | None = None
) -> list[dict[str, Any]]:
    """SGD parameter groups over the trainable parameters of ``modules``, in their ``parameters()`` order.

    ``weight_decay_norm`` ``None`` or equal to ``weight_decay``: one group, every parameter decayed by
    ``weight_decay``. Otherwise two groups: ``{"params": others, "weight_decay": weight_decay}`` and ``{"params":
    the own parameters of the norm layers (:data:`NORM_TYPES`), "weight_decay": weight_decay_norm}`` (Detectron2's
    ``SOLVER.WEIGHT_DECAY_NORM``, 0 by default); a group left empty is omitted.
    """
    if weight_decay_norm is not None and weight_decay_norm < 0:
        raise ValueError(f"weight_decay_norm must be >= 0 or None; got {weight_decay_norm}")
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if weight_decay_norm is None or weight_decay_norm == weight_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    norm_ids = {id(p) for m in modules for sub in m.modules() if isinstance(sub, NORM_TYPES)
                for p in sub.parameters(recurse=False)}
    groups = [
        {"params": [p for p in params if id(p) not in norm_ids], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in norm_ids], "weight_decay": weight_decay_norm},
    ]
    return [g for g in groups if g["params"]]


def _linear_warmup(t: int, warmup: int, factor: float) -> float:
    """The linear warm-up factor at epoch (or step) ``t``: ``factor * (1 - t / warmup) + t / warmup`` while
    ``t < warmup``, then 1 (the reference ``WarmupMultiStepLR``'s, and the official unsupervised code's)."""
    if t >= warmup:
        return 1.0
    alpha = t / warmup
    return factor * (1 - alpha) + alpha


class _WarmupMultiStepFactor:
    """``lr_lambda`` of :class:`WarmupMultiStepLR` (a class, so the scheduler's state_dict can hold it)."""

    def __init__(self, milestones: Sequence[int], gamma: float, warmup_epochs: int, warmup_factor: float) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, epoch: int) -> float:
        warmup = _linear_warmup(epoch, self.warmup_epochs, self.warmup_factor)
        return warmup * self.gamma ** bisect_right(self.milestones, epoch)


class _CosineFactor:
    """MoCo's ``--cos`` factor at epoch (or step) ``t`` of ``total``: ``0.5 * (1 + cos(pi * t / total))``, after an
    optional linear warm-up over the first ``warmup`` epochs (or steps) from ``warmup_factor`` (the official
    unsupervised MGD code, ``unsup/main_moco_mgd.py``: 3 epochs from 0.001, then the cosine of the epoch). A class,
    so that the scheduler pickles."""

    def __init__(self, total: int, warmup: int = 0, warmup_factor: float = WARMUP_START_FACTOR) -> None:
        self.total, self.warmup, self.warmup_factor = int(total), int(warmup), float(warmup_factor)

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return _linear_warmup(t, self.warmup, self.warmup_factor)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, self.total) / self.total))


class WarmupMultiStepLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up, then step decay: the reference code's ``WarmupMultiStepLR`` (``cls/solver/lr_scheduler.py``,
    itself Detectron2's), stepped per epoch.

    At epoch ``e`` (the scheduler's ``last_epoch``) the learning rate is ``base_lr * w(e) * gamma ** n(e)``, with
    ``n(e)`` the number of milestones ``<= e`` and ``w(e) = warmup_factor * (1 - e / W) + e / W`` for
    ``e < W = warmup_epochs``, else 1.

    Args:
        optimizer: the optimiser.
        milestones: epochs at which the rate is multiplied by ``gamma`` (warm-up included in the count).
        gamma: the decay factor.
        warmup_epochs: length ``W`` of the linear ramp (0: none, a plain ``MultiStepLR``).
        warmup_factor: factor at epoch 0 (reference: 0.1).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_epochs: int = 0,
        warmup_factor: float = WARMUP_START_FACTOR,
        last_epoch: int = -1,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing; got {list(milestones)}")
        super().__init__(
            optimizer, _WarmupMultiStepFactor(milestones, gamma, warmup_epochs, warmup_factor), last_epoch=last_epoch
        )


def _runs_on(net: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether ``net`` runs on one zero image of ``shape`` (C, H, W) (eval mode, no gradients; its mode restored)."""
    param = next(net.parameters(), None)
    example = torch.zeros(1, *shape, device=param.device if param is not None else None,
                          dtype=param.dtype if param is not None and param.is_floating_point() else None)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(example)
    except Exception:  # noqa: BLE001 - any failure on such input is the mismatch being confirmed
        return False
    finally:
        net.train(was_training)
    return True


class NonFiniteLossError(FloatingPointError):
    """A training loss term became NaN or infinite (raised by :class:`ClassificationModule` and
    :class:`~mgd_lightning.distill.module.DistillationModule`)."""


class ModelDataMismatchError(ValueError):
    """The data does not fit the networks (class count, image channels): raised at fit start, before training."""


class ClassificationModule(pl.LightningModule):
    """Train ``model`` with cross-entropy; top-1 / top-k accuracy on validation and test.

    Logged per validation epoch: ``val/loss``, ``val/acc1``, ``val/acc{k}`` (k = 5, or the number of classes
    when smaller) of that epoch, and ``val/best_err1``, the lowest top-1 error in percent so far,
    ``min over epochs of 100 * (1 - val/acc1)``, with ``val/best_err{k}``, the top-k error in percent of that
    same epoch (the reference ``cls/main_mgd.py`` keeps top-5 of the best top-1 epoch). The sanity-check
    pass does not count. So after ``fit`` the logs hold both numbers a paper table may mean: the final
    epoch's error ``100 * (1 - val/acc1)`` and the best epoch's ``val/best_err1``. The reference code reports
    the best epoch ("best top1 err.", CUB-200 and ImageNet); Overhaul's CIFAR-100 code, which the paper's
    CIFAR-100 table follows, reports the final epoch. Each config says which one it compares.
    The best errors are kept in checkpoints (``best_val_errors``), so a resumed run continues them.

    Safety nets. At fit start the data is checked against the networks (:meth:`check_data`: its class count
    against the network's outputs, its image channels against the first convolution; a
    :class:`ModelDataMismatchError` before any step). A non-finite loss stops training with
    :class:`NonFiniteLossError` before any checkpoint with non-finite weights is written (:meth:`check_finite_loss`).
    Checkpoints are written atomically, also when the temporary directory is on another file system
    (:class:`~mgd_lightning.distill.checkpoint_io.AtomicCheckpointIO`, installed at fit start).

    Args:
        model: the network (e.g. ``mgd_lightning.models.build_model("resnet50", num_classes=200,
            weights="IMAGENET1K_V1")`` for the fine-tuned teacher or the FT baseline).
        lr, momentum, nesterov, weight_decay: SGD (paper: lr 0.01 pre-trained, 0.1 from scratch;
            momentum 0.9; reference code: weight decay 1e-4, Nesterov in ``main_mgd.py``, plain momentum
            in ``main_base.py``).
        lr_milestones, lr_gamma: step decay at these (0-based) epochs, stepped per epoch (reference
            ``main_mgd.py`` on CUB-200: 31, 61, 81 of 120; ``main_base.py``: every 30 epochs).
        warmup_epochs: linear warm-up from 0.1 x ``lr`` over this many epochs (:class:`WarmupMultiStepLR`,
            the reference ``--warmup 1``, 10 epochs, on ImageNet); 0 (default): none. ``lr_milestones``
            count from epoch 0, warm-up included.
        num_classes: for the metrics; default: the width of the model's last linear layer (classification only).
        task: ``"classification"`` (default) or ``"detection"`` (a torchvision detector, ``(images, targets)``
            batches, its own losses, COCO AP as ``val/map``, ...), or a :class:`~mgd_lightning.tasks.Task`
            (:mod:`mgd_lightning.tasks`).
        lr_interval: ``"epoch"`` (default): ``lr_milestones`` and ``warmup_epochs`` count epochs, the rate changes
            once per epoch; ``"step"``: ``lr_milestones`` count optimizer steps and the warm-up lasts
            ``warmup_steps`` steps (Detectron2's iteration schedules: milestones 60k / 80k of 90k, 1,000 warm-up
            steps from ``warmup_factor = 0.001``).
        warmup_steps: linear warm-up length in steps (``lr_interval="step"`` only).
        warmup_factor: learning-rate factor at the start of the warm-up (0.1: the reference classification code;
            Detectron2: 0.001).
        lr_schedule: ``"step"`` (default): step decay at ``lr_milestones``; ``"cosine"``: MoCo's ``--cos``,
            ``lr * 0.5 * (1 + cos(pi * t / T))`` with ``t`` the epoch (or step, ``lr_interval="step"``) and ``T`` the
            Trainer's ``max_epochs`` (or its estimated total steps), after the warm-up when one is given (the
            official unsupervised MGD recipe: ``warmup_epochs=3, warmup_factor=0.001``); ``lr_milestones`` are then
            unused.
        weight_decay_norm: weight decay of the norm layers' own parameters (:func:`decay_param_groups`); ``None``
            (default): the task's (:attr:`Task.weight_decay_norm <mgd_lightning.tasks.Task.weight_decay_norm>`:
            classification ``weight_decay``, as the reference ``cls/`` code decays every parameter; detection 0, as
            Detectron2's ``SOLVER.WEIGHT_DECAY_NORM``, which the reference ``d2/`` code keeps).

    Example YAML (``mgd-lightning fit --config ...``)::

        model:
          class_path: mgd_lightning.ClassificationModule
          init_args:
            model: {class_path: mgd_lightning.models.build_model, init_args: {name: resnet18, num_classes: 10}}
            lr: 0.1
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 1e-4,
        lr_milestones: Sequence[int] = (30, 60, 90),
        lr_gamma: float = 0.1,
        num_classes: int | None = None,
        warmup_epochs: int = 0,
        task: str | Task = "classification",
        lr_interval: str = "epoch",
        warmup_steps: int = 0,
        warmup_factor: float = WARMUP_START_FACTOR,
        weight_decay_norm: float | None = None,
        lr_schedule: str = "step",
    ) -> None:
        super().__init__()
        warn_if_mixed_namespaces(type(self).__name__)  # the other namespace's Trainer would refuse this module
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0; got {warmup_epochs!r}")
        if lr_interval not in LR_INTERVALS:
            raise ValueError(f"lr_interval must be one of {LR_INTERVALS}; got {lr_interval!r}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0; got {warmup_steps!r}")
        if lr_interval == "epoch" and warmup_steps:
            raise ValueError(f"warmup_steps={warmup_steps} needs lr_interval='step' (use warmup_epochs with 'epoch')")
        if lr_interval == "step" and warmup_epochs:
            raise ValueError(f"warmup_epochs={warmup_epochs} needs lr_interval='epoch' (use warmup_steps with 'step')")
        if not 0 < warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1]; got {warmup_factor}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; got {lr_schedule!r}")
        if weight_decay_norm is not None and weight_decay_norm < 0:
            raise ValueError(f"weight_decay_norm must be >= 0 or None (the task's default); got {weight_decay_norm}")
        self.warmup_epochs = int(warmup_epochs)
        # a Task instance is not a hyperparameter a checkpoint can hold (LightningCLI stores its class_path instead)
        self.save_hyperparameters(ignore=["model", "teacher", "student"] + ([] if isinstance(task, str) else ["task"]))
        self.model = model
        self.task = resolve_task(task)
        if self.trains_by_task_loss() and not self.task.has_objective(model):
            raise ValueError(
                f"task={self.task.name!r}: a {type(model).__name__} has no objective of its own under this task (a "
                "self-supervised model is an mgd_lightning.models.MoCoV2): wrap it in MoCoV2, or distil it with "
                "DistillationModule(distill_weight > 0)"
            )
        #: lowest top-1 error (%) over the validation epochs so far, and the top-k error (%) of that epoch
        #: (classification).
        self.best_err1: float | None = None
        self.best_errk: float | None = None
        self.task.setup_metrics(self, model, num_classes)
        # Non-finite loss tracking (check_finite_loss): device tensors, read by the host only at the checks.
        self._first_bad_step: torch.Tensor | None = None
        self._first_bad_term: torch.Tensor | None = None
        self._loss_terms: list[str] = []
        self._steps_since_check = 0
        self._batch_checked = False

    def trains_by_task_loss(self) -> bool:
        """Whether the task loss is all that trains the model (here: yes; a DistillationModule has distillation too)."""
        return True

    def on_fit_start(self) -> None:
        # A frozen teacher is in eval mode by design; Lightning's generic warning about modules in eval
        # mode at the start of training would only point at it.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        self._first_bad_step = self._first_bad_term = None
        self._steps_since_check = 0
        self._batch_checked = False
        self.check_data(getattr(self.trainer, "datamodule", None))
        use_atomic_checkpoint_io(self.trainer)  # checkpoints written beside their target, fsync'd, renamed in place

    # ------------------------------------------------------------------ model and data checked against each other
    def _networks(self) -> list[tuple[str, nn.Module]]:
        """The networks that see the training images, by role (a DistillationModule: student and teacher)."""
        teacher = getattr(self, "teacher", None)
        if isinstance(teacher, nn.Module):
            return [("student", self.model), ("teacher", teacher)]
        return [("model", self.model)]

    def check_data(self, datamodule: Any = None, inputs: Any = None, targets: Any = None) -> None:
        """Raise :class:`ModelDataMismatchError` when the data does not fit the networks (classification): more
        classes than the network's outputs (an ``IndexError: Target 8 is out of bounds`` mid-training otherwise),
        or images of another channel count than the networks' first convolution (confirmed by running the network
        on one zero image of the data's shape: no false alarm for a network whose first registered convolution is
        not its input's). Checked at fit start against the
        datamodule's ``num_classes`` and ``input_size``, and on the first training batch (``inputs``, ``targets``)
        when the data comes as plain DataLoaders."""
        if self.task.name != "classification":
            return
        data = type(datamodule).__name__ if datamodule is not None else "the training data"
        classes = getattr(datamodule, "num_classes", None)
        size = getattr(datamodule, "input_size", None)
        channels = int(size[0]) if isinstance(size, (tuple, list)) and len(size) == 3 else None
        where = f"{data}.input_size={tuple(size)}" if channels is not None else ""
        label = f"{data}.num_classes={classes}"
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            channels, where = int(inputs.shape[1]), f"its first batch has shape {tuple(inputs.shape)}"
        if isinstance(targets, torch.Tensor) and targets.dim() == 1 and not targets.is_floating_point() \
                and targets.numel():
            classes, label = int(targets.max()) + 1, f"its first batch has label {int(targets.max())}"
        shape = None
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            shape = tuple(inputs.shape[1:])
        elif channels is not None:
            shape = tuple(int(v) for v in size)
        for role, net in self._networks():
            conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
            if channels is not None and conv is not None and conv.in_channels != channels \
                    and not _runs_on(net, shape):  # the first Conv2d registered may not be the input's: confirm
                raise ModelDataMismatchError(
                    f"the data gives {channels}-channel images ({where}) but the {role} {type(net).__name__} takes "
                    f"{conv.in_channels} (its first convolution): give the data {conv.in_channels} channels (e.g. "
                    f"the data module's channels={conv.in_channels}) or build the networks for {channels}"
                )
            if role == "teacher" or classes is None:
                continue  # a teacher may have been trained on other classes (features only)
            try:
                outputs = infer_num_classes(net)
            except ValueError:
                continue
            if classes > outputs:
                raise ModelDataMismatchError(
                    f"the data has {classes} classes ({label}) but the {role} {type(net).__name__} outputs "
                    f"{outputs}: labels {outputs}..{classes - 1} are out of its range. Build the {role} with "
                    f"num_classes={classes} (--model.init_args.{'student' if role == 'student' else 'model'}"
                    f".init_args.num_classes={classes}), or use data with {outputs} classes"
                )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._batch_checked:
            return
        self._batch_checked = True
        if self.task.name == "classification":
            inputs, targets = self.task.split(batch)
            self.check_data(inputs=inputs, targets=targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.task.split(batch)
        terms = self.task.loss_terms(self.task.forward(self.model, inputs, targets), targets)
        loss = total_loss(terms)
        size = self.task.batch_size(inputs)
        if len(terms) > 1:  # detection: each of the detector's losses too
            self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False,
                          batch_size=size)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=size)
        self._track_finite(dict(terms))
        return loss

    # ------------------------------------------------------------------ non-finite loss stop
    #: host reads of the non-finite flag: every this many training batches, at epoch end, before every
    #: checkpoint is written and at the end of training (one read each, never one per step).
    nonfinite_check_every_n_steps: int = 100

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._steps_since_check += 1
        if self._steps_since_check >= self.nonfinite_check_every_n_steps:
            self.check_finite_loss()

    def on_train_epoch_end(self) -> None:
        self.check_finite_loss("at the end of the epoch")

    def on_train_end(self) -> None:
        self.check_finite_loss("at the end of training")

    def _track_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Record, on the device and without a host synchronisation, the first step whose loss terms are not
        all finite, and its first non-finite term."""
        names = list(terms)
        finite = torch.stack([torch.isfinite(t.detach()).all() for t in terms.values()])
        if self._first_bad_step is None or self._first_bad_step.device != finite.device:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=finite.device)
            self._first_bad_term = torch.zeros((), dtype=torch.long, device=finite.device)
        if names != self._loss_terms:
            self._loss_terms = names
        first = (~finite.all()) & (self._first_bad_step < 0)
        step = torch.full_like(self._first_bad_step, self.global_step)
        self._first_bad_step = torch.where(first, step, self._first_bad_step)
        self._first_bad_term = torch.where(first, torch.argmin(finite.long()), self._first_bad_term)

    def check_finite_loss(self, when: str = "") -> None:
        """Raise :class:`NonFiniteLossError` if a training loss term was NaN or infinite since fit start.

        ``training_step`` only updates a device-side record (first bad step, first bad term); this reads it
        (one host synchronisation) and is called every :attr:`nonfinite_check_every_n_steps` batches, at the end
        of each epoch, before every checkpoint is written (so none holds the resulting non-finite weights: the
        last one written is the last finite one) and at the end of training. Under DDP the ranks agree
        (any rank's non-finite loss stops all).
        """
        self._steps_since_check = 0
        if self._first_bad_step is None:
            return
        bad_step, bad_term = (int(v) for v in torch.stack([self._first_bad_step, self._first_bad_term]).tolist())
        trainer = self._trainer
        stop = bad_step >= 0
        if trainer is not None and trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        where = f" {when}" if when else ""
        if bad_step < 0:
            detail = "on another process (this rank's terms were finite)"
        else:
            detail = f"at step {bad_step} (global_step): its first non-finite term is {self._loss_terms[bad_term]!r}"
        factor = getattr(self, "loss_factor", None)
        causes = f"a learning rate too high (lr={self.hparams.lr}), " + (
            f"a loss_factor too small (loss_factor={factor}), " if factor is not None else "")
        raise NonFiniteLossError(
            f"non-finite training loss {detail}; loss terms: {', '.join(self._loss_terms)}. Training stopped"
            f"{where} at step {self.global_step}, and no checkpoint was written after that step: those written "
            f"before it (if any) hold finite weights. Usual causes: {causes}NaN or infinite inputs, or fp16 "
            "overflow. Lower the learning rate and resume from that checkpoint, or fix the inputs."
        )

    def _eval_step(self, batch, stage: str) -> None:
        self.task.eval_step(self, batch, stage)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Classification: track and log ``val/best_err1`` and ``val/best_err{k}`` (see the class docstring);
        detection: compute and log the COCO AP of the epoch."""
        self.task.on_eval_epoch_end(self, "val")

    def on_test_epoch_end(self) -> None:
        self.task.on_eval_epoch_end(self, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite_loss("before writing a checkpoint")  # no checkpoint with non-finite weights
        checkpoint["best_val_errors"] = {"err1": self.best_err1, "errk": self.best_errk}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("best_val_errors") or {}
        self.best_err1, self.best_errk = best.get("err1"), best.get("errk")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Any:
        """Classification: the predicted class of each image and its probability: ``{"class_id": (B,) int64,
        "probability": (B,), "probabilities": (B, num_classes)}`` (softmax of the logits); written to a CSV file by
        :class:`~mgd_lightning.distill.prediction_writer.PredictionWriter` (``mgd-lightning predict``). Detection:
        the detector's list of ``{"boxes", "scores", "labels"}`` per image."""
        return self.task.predict(self.model, batch)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimiser updates."""
        return [self.model]

    def configure_optimizers(self):
        """SGD (momentum, Nesterov, weight decay; norms by ``weight_decay_norm``) over :meth:`trainable_modules`;
        step decay per epoch, after an
        optional linear warm-up (the reference ``build_lr_scheduler``: ``MultiStepLR`` without warm-up,
        ``WarmupMultiStepLR`` with it)."""
        hp = self.hparams
        norm_decay = hp.get("weight_decay_norm")
        norm_decay = self.task.weight_decay_norm if norm_decay is None else norm_decay
        groups = decay_param_groups(self.trainable_modules(), hp.weight_decay, norm_decay)
        optimizer = torch.optim.SGD(
            groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        interval = hp.get("lr_interval", "epoch")
        warmup = self.warmup_epochs if interval == "epoch" else int(hp.get("warmup_steps", 0))
        warmup_factor = hp.get("warmup_factor", WARMUP_START_FACTOR)
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if hp.get("lr_schedule", "step") == "cosine":
            total = self.trainer.max_epochs if interval == "epoch" else self.trainer.estimated_stepping_batches
            if total is None or total < 1 or total == float("inf"):
                raise ValueError(f"lr_schedule='cosine' needs a finite length: give the Trainer max_epochs "
                                 f"(lr_interval={interval!r}); got {total}")
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _CosineFactor(int(total), warmup, warmup_factor))
        elif warmup:
            scheduler = WarmupMultiStepLR(optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma, warmup_epochs=warmup,
                                          warmup_factor=warmup_factor)
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones), gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
