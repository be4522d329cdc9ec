"""MGDMatchingCallback: the matching step of MGD's coordinate descent (paper section 3.4).

At the start of a training epoch that is due (the first one, then every ``update_every_n_epochs``, or those listed
in ``update_epochs``),
the student goes to eval mode, teacher and student run without gradients over a random subset of
the training data, the per-tap channel costs (Eq. 6) are accumulated on the device, combined
across ranks, the assignments (Eq. 8-12) are solved on rank 0 and broadcast to every rank.

Data for the pass. When the data module has a ``matching_dataset()`` method, it is used: the
training images with *evaluation* transforms (the reference code uses Resize + CenterCrop), so the
matching does not depend on one random crop per image. Otherwise the training loader's dataset is
used as it is (with its augmentation). Either way the subset is drawn with a generator seeded by
``seed + epoch``, identically on every rank, and rank ``r`` of ``W`` runs the ``r``-th of ``W``
disjoint contiguous slices of it: no image is processed twice, each rank does ``1/W`` of the work.

Student features of the cost. As in the reference code (``mgd/builder.py``, ``extract_feature``), the
cost compares the student's *raw* tap features: the student-side BatchNorm that the loss applies is not
part of it, so the matching does not depend on that BN's statistics or affine parameters.
``student_bn_in_cost=True`` (opt-in, this package's earlier behaviour) computes it after that BN.

Online mode (beyond the paper). ``mode="online"`` skips the extra pass: the costs are accumulated from
the training steps' own features of the epochs since the last update (augmented inputs, student in
train mode), and the next update solves on them. The first update of a ``fit`` (a resume included: the
accumulated costs are not checkpointed) still runs the pass.

Step-based schedule (detection). ``update_every_n_steps=N`` or ``step_schedule=[[start_step, every], ...]``
(:mod:`mgd_lightning.distill.step_schedule`: at steps ``s % every == 0`` of each segment, as the reference detection
code; its ``[[0, 5000], [20000, 31000]]`` updates at 0, 5k, 10k, 15k, 31k, 62k of 90k steps) update
the matching before the training batches of those global steps instead of at epoch starts (the epoch schedule,
``update_every_n_epochs``, is then not used). The first update of a run is at its first step. The step of the last
update is in the callback's ``state_dict``, so ``fit(ckpt_path=...)`` goes on with the schedule (a checkpoint
written right after an update does not repeat it). Each update draws its subset with ``seed + step``.

Epoch-list schedule (the official unsupervised code). ``update_epochs=[1, 2, 3, 6, ...]`` updates at the start
of those epochs (0-based; the first epoch of a run always), instead of every ``update_every_n_epochs``;
``update_epochs="official_unsup"`` is the official MoCo-v2 + MGD schedule (:mod:`mgd_lightning.distill.epoch_schedule`:
before training, then after epochs 1, 2, 3, 6, 9, 15, 26, 43, 74, 126). The list is in the callback's ``state_dict``;
a resume with another list warns and follows the callback's.

Detection batches. The pass reads inputs and counts images through the module's task
(:mod:`mgd_lightning.tasks`): lists of images of different sizes with their targets work as classification
batches do, with the training loader's ``collate_fn``, the same sharding and the same one gather per update.

Schedule across ``fit`` calls. A ``fit`` without ``ckpt_path`` (the first one, a notebook re-run with a new
Trainer, fine-tuning after ``load_from_checkpoint``) is a new run: the matching is updated at its first epoch,
then every ``update_every_n_epochs`` of its own epochs (the module's ``last_matching_epoch`` is reset at fit
start; the matching itself is kept). ``fit(ckpt_path=...)`` resumes the checkpoint's schedule.

Randomness. The pass draws its subset with its own generator and runs under
:func:`~lightning_fabric.utilities.seed.isolate_rng`: it leaves the global torch / numpy / Python random states
as it found them, so the training data order and augmentation do not depend on whether (or where) a pass ran;
inside it the states are seeded with ``seed`` + epoch (or step) + rank, so an augmenting dataset gives the pass the
same images in a resumed run as in the uninterrupted one. Both are what a bit-exact resume needs
(:class:`~mgd_lightning.distill.module.DistillationModule` checkpoints the random states).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset

from mgd_lightning._lightning import isolate_rng, pl, rank_zero_warn
from mgd_lightning.matching import METRICS, assignment_cost, channel_cost

from .epoch_schedule import check_update_epochs
from .module import DistillationModule
from .step_schedule import check_step_schedule, is_scheduled_step

__all__ = ["MGDMatchingCallback", "MODES"]

MODES = ("pass", "online")

log = logging.getLogger(__name__)


class MGDMatchingCallback(pl.Callback):
    """Recompute the channel matching of a :class:`DistillationModule` during training.

    Args:
        update_every_n_epochs: epochs between matching updates (reference default 2; the paper's
            Fig. 4 finds 2 best on CUB-200, 1 on ImageNet). The first update runs before epoch 0.
        num_samples: size of the random training subset for the pass (``None``: all of it; the
            paper uses 20k images on ImageNet).
        metric: channel distance, ``"cosine"`` (reference code) or ``"euclidean"`` (Eq. 6).
        seed: base seed of the subset draw (the epoch is added).
        batch_size, num_workers: of the pass's loader; default: those of the training loader.
        progress_bar: show a progress bar for the pass on rank 0 (when the trainer has one).
        mode: ``"pass"`` (the paper: a no-grad pass over the subset at each update) or ``"online"``
            (costs accumulated from the training forwards between updates; no extra pass).
        student_bn_in_cost: ``False`` (default, reference code): the cost uses the raw student taps;
            ``True``: the taps after the student-side BatchNorm (in eval mode for the pass).
        update_every_n_steps: update every N training steps (from step 0) instead of by epochs; the shorthand
            of ``step_schedule=[[0, N]]``.
        step_schedule: ``[[start_step, every], ...]``: from each ``start_step`` on (until the next), update at
            the steps that are multiples of ``every`` (:mod:`~mgd_lightning.distill.step_schedule`; the reference
            detection schedule is ``[[0, 5000], [20000, 31000]]``: 0, 5k, 10k, 15k, 31k, 62k of 90k). ``None``
            (default) with ``update_every_n_steps=None``: by epochs.
        update_epochs: the epochs (0-based) at whose start the matching is updated, besides a run's first
            (:mod:`~mgd_lightning.distill.epoch_schedule`), instead of every ``update_every_n_epochs``; or
            ``"official_unsup"``: the official MoCo-v2 + MGD code's log-spaced 1, 2, 3, 6, 9, 15, 26, 43, 74, 126.

    Attributes:
        history: one dict per update (epoch, step, images, pass and solve seconds, and per tap the
            mean matching cost and the fraction of student channels whose group changed), for plots.
        last_costs: the combined (C_S, C_T) float64 cost per tap of the latest update.
        last_num_images: images in the latest pass, summed over ranks.
    """

    #: :class:`~mgd_lightning.distill.module.DistillationModule` looks for this attribute among the Trainer's
    #: callbacks (it cannot import this module): ``matching=True`` without such a callback is an error.
    updates_mgd_matching = True

    def __init__(
        self,
        update_every_n_epochs: int = 2,
        num_samples: int | None = None,
        metric: str = "cosine",
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int | None = None,
        progress_bar: bool = True,
        mode: str = "pass",
        student_bn_in_cost: bool = False,
        update_every_n_steps: int | None = None,
        step_schedule: list[list[int]] | None = None,
        update_epochs: list[int] | str | None = None,
    ) -> None:
        if update_every_n_epochs < 1:
            raise ValueError(f"update_every_n_epochs must be >= 1; got {update_every_n_epochs}")
        if update_epochs is not None and (update_every_n_steps is not None or step_schedule is not None):
            raise ValueError(f"give update_epochs (got {update_epochs!r}) or a step schedule (update_every_n_steps / "
                             "step_schedule), not both")
        if update_epochs is not None and update_every_n_epochs != 2:
            raise ValueError(f"give update_epochs (got {update_epochs!r}) or update_every_n_epochs (got "
                             f"{update_every_n_epochs}), not both: update_epochs lists the epochs itself")
        #: the epochs (0-based) at whose start the matching is updated, besides a run's first; ``None``: every
        #: ``update_every_n_epochs`` (:mod:`~mgd_lightning.distill.epoch_schedule`)
        self.update_epochs = check_update_epochs(update_epochs) if update_epochs is not None else None
        if update_every_n_steps is not None and step_schedule is not None:
            raise ValueError(
                f"give update_every_n_steps (got {update_every_n_steps}) or step_schedule (got {step_schedule}), "
                "not both: update_every_n_steps=N is step_schedule=[[0, N]]"
            )
        if update_every_n_steps is not None:
            if isinstance(update_every_n_steps, bool) or int(update_every_n_steps) != update_every_n_steps \
                    or update_every_n_steps < 1:
                raise ValueError(f"update_every_n_steps must be an integer >= 1 or None; got {update_every_n_steps!r}")
            step_schedule = [[0, int(update_every_n_steps)]]
        #: the checked ``(start_step, every)`` segments, or ``None``: updates by epochs
        self.step_schedule = check_step_schedule(step_schedule) if step_schedule is not None else None
        self.update_every_n_steps = update_every_n_steps
        #: global step of the latest update of this run (step schedule; -1: none yet); in the state_dict
        self.last_update_step = -1
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 or None (whole training set); got {num_samples}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.mode = mode
        self.student_bn_in_cost = bool(student_bn_in_cost)
        self._online_costs: list[torch.Tensor] = []
        self._online_count: torch.Tensor | None = None
        self.update_every_n_epochs = update_every_n_epochs
        self.num_samples = num_samples
        self.metric = metric
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress_bar = progress_bar
        self.history: list[dict[str, Any]] = []
        self.last_costs: list[torch.Tensor] = []
        self.last_num_images = 0
        self.last_indices: list[int] = []

    # ------------------------------------------------------------------ schedule
    def is_due(self, epoch: int, pl_module: DistillationModule) -> bool:
        """Epoch schedules: whether the matching is updated at the start of ``epoch``."""
        last = int(pl_module.last_matching_epoch)
        if last < 0:
            return True  # a run's first epoch
        if self.update_epochs is not None:
            return epoch in self.update_epochs and epoch != last
        return epoch - last >= self.update_every_n_epochs

    def is_due_at_step(self, step: int) -> bool:
        """Step schedule: whether the matching is updated before the training batch of global step ``step``."""
        if step == self.last_update_step:  # already done at this step (gradient accumulation, a resume)
            return False
        return self.last_update_step < 0 or is_scheduled_step(step, self.step_schedule)

    @staticmethod
    def _matches(pl_module: pl.LightningModule) -> bool:
        # plain training, or matching=False (the fixed grouping ablation): nothing to match
        return isinstance(pl_module, DistillationModule) and pl_module.assignment is not None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.step_schedule is None and self._matches(pl_module) and self.is_due(trainer.current_epoch, pl_module):
            self.update_matching(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.step_schedule is not None and self._matches(pl_module) and self.is_due_at_step(trainer.global_step):
            self.update_matching(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, DistillationModule):
            return
        # Costs accumulated by an earlier fit belong to another run (and are not in checkpoints).
        self._online_costs, self._online_count = [], None
        if self.mode == "online":
            pl_module.keep_train_features = "bn" if self.student_bn_in_cost else "raw"
        # The module's checkpoint (and so last_matching_epoch) is restored before this hook; the loop's epoch
        # only after it. Without ckpt_path this fit is a new run whose epochs count from 0: an absolute
        # last_matching_epoch of an earlier run would delay or skip its updates (a 4-epoch re-fit after an
        # 8-epoch one got none), so the schedule restarts. With ckpt_path the checkpoint's schedule goes on.
        if trainer.ckpt_path is None:
            pl_module.last_matching_epoch.fill_(-1)
            self.last_update_step = -1

    # ------------------------------------------------------------------ online accumulation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.mode != "online" or not isinstance(pl_module, DistillationModule):
            return
        feats = pl_module.last_train_features
        pl_module.last_train_features = None
        if feats is None or pl_module.assignment is None:
            return
        s_feats, t_feats = feats
        if not self._online_costs:
            self._online_costs = [torch.zeros(c_s, c_t, dtype=torch.float64, device=s.device)
                                  for (c_s, c_t, _, _), s in zip(pl_module.tap_shapes, s_feats)]
            self._online_count = torch.zeros((), dtype=torch.float64, device=s_feats[0].device)
        with torch.no_grad(), torch.autocast(device_type=s_feats[0].device.type, enabled=False):
            for cost, s, t in zip(self._online_costs, s_feats, t_feats):
                cost += channel_cost(s, t, self.metric, dtype=torch.float64)
        self._online_count += s_feats[0].shape[0]

    # ------------------------------------------------------------------ the pass
    def _dataset_and_loader_args(self, trainer: pl.Trainer):
        datamodule = getattr(trainer, "datamodule", None)
        loader = trainer.train_dataloader
        if datamodule is not None and hasattr(datamodule, "matching_dataset"):
            dataset, source = datamodule.matching_dataset(), f"{type(datamodule).__name__}.matching_dataset()"
        elif isinstance(loader, DataLoader):
            dataset, source = loader.dataset, "the training DataLoader"
        else:
            raise RuntimeError(
                "MGDMatchingCallback needs a map-style training dataset: give the trainer a DataLoader "
                f"over a Dataset (got a {type(loader).__name__}), or a data module with a matching_dataset() method"
            )
        map_style = hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
        if isinstance(dataset, IterableDataset) or not map_style:
            raise RuntimeError(
                f"MGDMatchingCallback needs a map-style dataset (with __len__ and __getitem__) to draw its random "
                f"subset, but {source} is a {type(dataset).__name__}"
                f"{' (an IterableDataset)' if isinstance(dataset, IterableDataset) else ''}. Train on a map-style "
                "Dataset, or give the data module a matching_dataset() method returning one (e.g. the training "
                "images with evaluation transforms)"
            )
        # a loader with a batch sampler (COCO's aspect-ratio groups) has batch_size None: its sampler's
        batch_size = self.batch_size or (
            (loader.batch_size or getattr(loader.batch_sampler, "batch_size", None))
            if isinstance(loader, DataLoader) else None
        ) or 64
        num_workers = self.num_workers
        if num_workers is None:
            num_workers = loader.num_workers if isinstance(loader, DataLoader) else 0
        collate = loader.collate_fn if isinstance(loader, DataLoader) else None
        return dataset, batch_size, num_workers, collate

    def subset_indices(self, dataset_size: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
        """This rank's disjoint slice of the subset drawn identically on every rank (seed + epoch)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(dataset_size, generator=generator)
        n = dataset_size if self.num_samples is None else min(self.num_samples, dataset_size)
        return torch.tensor_split(order[:n], world_size)[rank]

    def _draw(self, trainer: pl.Trainer) -> int:
        """What the subset seed adds to ``seed``: the epoch, or the global step under a step schedule."""
        return trainer.current_epoch if self.step_schedule is None else trainer.global_step

    def compute_costs(self, trainer: pl.Trainer, pl_module: DistillationModule) -> tuple[list[torch.Tensor], int]:
        """This rank's share of the pass: per-tap float64 cost sums and the image count."""
        dataset, batch_size, num_workers, collate = self._dataset_and_loader_args(trainer)
        draw = self._draw(trainer)
        indices = self.subset_indices(len(dataset), draw, trainer.global_rank, trainer.world_size)
        self.last_indices = indices.tolist()
        loader = DataLoader(
            Subset(dataset, self.last_indices), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, collate_fn=collate,
            # its own generator: the loader's worker base seed is not drawn from the global torch RNG
            generator=torch.Generator().manual_seed(self.seed + draw),
        )
        task = pl_module.task
        device = pl_module.device
        costs = [torch.zeros(c_s, c_t, dtype=torch.float64, device=device) for c_s, c_t, _, _ in pl_module.tap_shapes]
        count = torch.zeros((), dtype=torch.float64, device=device)
        students = [pl_module.student, pl_module.student_bns]
        modes = [m.training for m in students]
        bar = self._progress(trainer, len(loader))
        try:
            for m in students:
                m.eval()
            with torch.no_grad():
                for batch in loader:
                    batch = trainer.precision_plugin.convert_input(batch)
                    batch = trainer.strategy.batch_to_device(batch)
                    x, _ = task.split(batch)
                    with trainer.precision_plugin.forward_context():
                        _, _, s_feats, t_feats = pl_module.forward_features(x, student_bn=self.student_bn_in_cost)
                    with torch.autocast(device_type=device.type, enabled=False):
                        for cost, s, t in zip(costs, s_feats, t_feats):
                            cost += channel_cost(s, t, self.metric, dtype=torch.float64)
                    count += task.batch_size(x)
                    if bar is not None:
                        bar.update(1)
        finally:
            for m, mode in zip(students, modes):
                m.train(mode)
            if bar is not None:
                bar.close()
        return costs, count

    @staticmethod
    def _seed_pass(seed: int) -> None:
        """Seed torch, numpy and Python ``random`` for the pass (inside ``isolate_rng``, which restores them)."""
        import random

        import numpy as np

        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator a dataset's augmentation may use
        random.seed(seed)

    def _progress(self, trainer: pl.Trainer, total: int):
        if not (self.progress_bar and trainer.is_global_zero and trainer.progress_bar_callback is not None):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="MGD matching pass", leave=False, dynamic_ncols=True)

    def _gather_sum(self, trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return tensor
        return trainer.strategy.all_gather(tensor).sum(dim=0)

    # ------------------------------------------------------------------ the update
    def update_matching(self, trainer: pl.Trainer, pl_module: DistillationModule) -> None:
        """Run the pass, combine costs across ranks, solve on rank 0, broadcast, install."""
        start = time.perf_counter()
        if self.mode == "online" and self._online_costs:
            local_costs, local_count, source = self._online_costs, self._online_count, "online"
        else:
            with isolate_rng():  # augmentation in the pass's dataset must not shift the training's random draws
                # ... nor depend on them: the pass draws from its own seed, so a resumed run (whose global random
                # states are the checkpoint's) sees the same images as the uninterrupted one
                self._seed_pass(self.seed + self._draw(trainer) + trainer.global_rank)
                (local_costs, local_count), source = self.compute_costs(trainer, pl_module), "pass"
        self._online_costs, self._online_count = [], None
        costs = [self._gather_sum(trainer, c) for c in local_costs]
        num_images = int(self._gather_sum(trainer, local_count))
        pass_s = time.perf_counter() - start

        solved: list[torch.Tensor | None] = []
        solve_s = 0.0
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            for k, cost in enumerate(costs):
                if not bool(torch.isfinite(cost).all()):
                    rank_zero_warn(
                        f"MGD matching: the cost of tap {k} (teacher {pl_module.teacher_taps.taps[k].module!r}, "
                        f"student {pl_module.student_taps.taps[k].module!r}) has NaN or infinite values; "
                        "keeping the previous matching for this tap"
                    )
                    solved.append(None)
                else:
                    solved.append(pl_module.solve_matching(cost))
            solve_s = time.perf_counter() - t0
        solved, solve_s = trainer.strategy.broadcast((solved, solve_s), src=0)

        record: dict[str, Any] = {
            "epoch": trainer.current_epoch, "step": trainer.global_step, "images": num_images, "source": source,
            "pass_s": pass_s, "solve_s": solve_s,
        }
        for k, (cost, groups) in enumerate(zip(costs, solved)):
            old = pl_module.matchings[k].detach().cpu().clone()
            if groups is not None:
                pl_module.set_matching(k, groups)
            new = pl_module.matchings[k].cpu()
            record[f"changed_tap{k}"] = float((new != old).any(dim=1).float().mean())
            finite = bool(torch.isfinite(cost).all())
            pairs = new.numel() * max(num_images, 1)
            record[f"cost_tap{k}"] = assignment_cost(cost, new) / pairs if finite else float("nan")
        pl_module.last_matching_epoch.fill_(trainer.current_epoch)
        self.last_update_step = trainer.global_step
        self.last_costs = costs
        self.last_num_images = num_images
        self.history.append(record)
        log.info("MGD matching at epoch %d: %s", trainer.current_epoch, record)
        if trainer.is_global_zero:
            metrics = {f"mgd/{k}": float(v) for k, v in record.items() if k not in ("epoch", "step", "source")}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history], "last_update_step": self.last_update_step,
                "update_epochs": None if self.update_epochs is None else list(self.update_epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.last_update_step = int(state_dict.get("last_update_step", -1))
        saved = state_dict.get("update_epochs")
        if saved is not None and tuple(saved) != self.update_epochs:
            rank_zero_warn(f"MGDMatchingCallback: the checkpoint was trained with update_epochs={list(saved)}, this "
                           f"callback has update_epochs={self.update_epochs}: the resumed run follows this callback's")
