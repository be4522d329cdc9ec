"""Two-process DDP on CPU (gloo): sharded matching pass, identical matchings on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.matching import assignment_cost
from tests.toys import ToyNet, digits_dataset

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(pl.Callback):
    """Saves what the matching callback did on this rank (runs after it at epoch start)."""

    def __init__(self, cb, out):
        self.cb, self.out = cb, out

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            torch.save(
                {"indices": self.cb.last_indices, "costs": self.cb.last_costs, "images": self.cb.last_num_images,
                 "matchings": [g.clone() for g in pl_module.matchings], "world": trainer.world_size},
                self.out / f"rank{trainer.global_rank}.pt",
            )


def _fit(tmp_path, out, **kwargs):
    out.mkdir()
    torch.manual_seed(0)
    module = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)))
    cb = MGDMatchingCallback(num_samples=90, seed=7)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[cb, _Recorder(cb, out)], **kwargs,
    )
    trainer.fit(module, DataLoader(digits_dataset(limit=200), batch_size=16))


def test_two_ranks_share_the_pass_and_agree(tmp_path):
    _fit(tmp_path, tmp_path / "ddp", devices=2, strategy="ddp_fork")
    _fit(tmp_path, tmp_path / "single")
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    one = torch.load(tmp_path / "single" / "rank0.pt")
    assert r0["world"] == r1["world"] == 2
    # each rank ran half of the subset, disjoint, together exactly the one-process subset
    assert len(r0["indices"]) == len(r1["indices"]) == 45
    assert not set(r0["indices"]) & set(r1["indices"])
    assert sorted(r0["indices"] + r1["indices"]) == sorted(one["indices"])
    assert r0["images"] == r1["images"] == one["images"] == 90
    # combined cost equals the one-process cost; identical matchings everywhere
    for k in range(2):
        # float32 per batch, float64 across batches and ranks: equal up to float32 rounding
        torch.testing.assert_close(r0["costs"][k], one["costs"][k], rtol=1e-5, atol=1e-4)
        assert torch.equal(r0["costs"][k], r1["costs"][k])  # the same gathered sum on both ranks
        assert torch.equal(r0["matchings"][k], r1["matchings"][k])
        optimum = assignment_cost(one["costs"][k], one["matchings"][k])
        assert assignment_cost(one["costs"][k], r0["matchings"][k]) == pytest.approx(optimum, rel=1e-6)


def test_must_show_example_with_ddp(tmp_path):
    """resnet50 -> mobilenet_v2 with a plain Trainer, devices=2, strategy="ddp"."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "must_show.py"), str(tmp_path), "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["epochs"] == r1["epochs"] == [0]
    assert len(r0["matchings"]) == 4
    for a, b in zip(r0["matchings"], r1["matchings"]):
        assert torch.equal(a, b)
    assert not set(r0["indices"]) & set(r1["indices"]) and r0["images"] == 24
    assert (tmp_path / "lightning_logs").is_dir()


class _QueueRecorder(pl.Callback):
    """Saves the MoCo student's queue and the matchings on this rank at the end of training."""

    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        bank = pl_module.student.criterion.memory_bank
        torch.save({"queue": bank.bank.clone(), "ptr": int(bank.bank_ptr), "world": trainer.world_size,
                    "matchings": [g.clone() for g in pl_module.matchings],
                    "encoder": pl_module.student.encoder.conv1.weight.detach().clone()},
                   self.out / f"rank{trainer.global_rank}.pt")


def test_moco_student_under_ddp_gathers_its_keys_and_the_ranks_agree(tmp_path):
    """task="self_supervised" with a MoCoV2 student on two ranks: each step's keys of both ranks join the queue
    (lightly's gather), so the queues, the matchings and the weights are the same on every rank."""
    pytest.importorskip("lightly")
    from torch.utils.data import TensorDataset

    from mgd_lightning.models import MoCoV2, build_model

    torch.manual_seed(0)
    teacher = build_model("cifar_resnet", num_classes=10, arch_args={"depth": 8, "width": 2})
    student = MoCoV2(build_model("cifar_resnet", num_classes=10, arch_args={"depth": 8, "width": 1}), queue_size=64)
    module = DistillationModule(teacher, student, task="self_supervised", input_size=(3, 16, 16), loss_factor=1e3)
    views = TensorDataset(torch.randn(64, 3, 16, 16), torch.randn(64, 3, 16, 16))
    out = tmp_path / "ddp"
    out.mkdir()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, limit_train_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[MGDMatchingCallback(update_epochs="official_unsup", num_samples=32), _QueueRecorder(out)],
    )
    trainer.fit(module, DataLoader(views, batch_size=4))
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["ptr"] == r1["ptr"] == 2 * 2 * 4  # 2 steps x 2 ranks x 4 keys
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["encoder"], r1["encoder"])
    for a, b in zip(r0["matchings"], r1["matchings"]):
        assert torch.equal(a, b)
