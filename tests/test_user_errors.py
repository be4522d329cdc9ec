"""Round 3 of "no silent wrong results" (issue 21, items 10-13, 16 and the leftovers): what a new user hits gets one
clear line, the model and the data are checked against each other before training, every module stops on a
non-finite loss, checkpoints are written atomically, and small things (the progress bar's version, the taps
command's probe size)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning import ClassificationModule, DistillationModule
from mgd_lightning._lightning import NAMESPACE, pl
from mgd_lightning.checkpoints import TEMP_PREFIX, CheckpointMismatchError, atomic_save
from mgd_lightning.distill.checkpoint_io import AtomicCheckpointIO
from mgd_lightning.distill.classifier import ModelDataMismatchError, NonFiniteLossError
from mgd_lightning.models import build_model
from tests.test_fault_injection import _cli_error
from tests.test_no_silent_errors import TINY_CLI
from tests.toys import ToyNet, digits_dataset

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits" / "mgd_amp.yaml"


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------- 10. teacher checkpoint
@pytest.mark.parametrize("kind", ["class count", "architecture"])
def test_a_teacher_checkpoint_of_another_class_count_or_architecture_is_one_cli_line(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "teacher.pt"
    arch = {"depth": 20, "width": 2} if kind == "class count" else {"depth": 8, "width": 1}
    torch.save(build_model("cifar_resnet", num_classes=5 if kind == "class count" else 10, arch_args=arch).state_dict(),
               path)
    message = _cli_error(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI,
                          "--model.init_args.teacher.init_args.checkpoint", str(path)])
    assert f"checkpoint={str(path)!r} does not fit the model" in message
    assert "Union subtypes" not in message and "Given value" not in message
    if kind == "class count":
        assert "fc.weight (5, 128) in the checkpoint, (10, 128) in the model" in message
        assert "build it with num_classes=5" in message
    else:
        assert "missing in the checkpoint" in message and "another architecture" in message
    assert not (tmp_path / "runs").exists()


def test_build_model_names_the_size_mismatch_in_one_line(tmp_path):
    path = tmp_path / "head5.pt"
    torch.save(build_model("cifar_resnet", num_classes=5, arch_args={"depth": 8}).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as error:
        build_model("cifar_resnet", num_classes=10, arch_args={"depth": 8}, checkpoint=str(path))
    assert "\n" not in str(error.value) and "size mismatch for 2 tensor(s)" in str(error.value)
    assert isinstance(error.value, ValueError)


# ---------------------------------------------------------------------------------------------- 12. constructor errors
@pytest.mark.parametrize("option, expected", [
    (["--model.init_args.reducer", "xyz"], "DistillationModule: reducer must be one of ('sm', 'rd', 'amp', 'mp', "
                                          "'avg'); got 'xyz'"),
    (["--mgd.update_every_n_epochs", "0"], "update_every_n_epochs must be >= 1; got 0"),
    (["--model.init_args.input_size", "[32, 32]"], "input_size must be (C, H, W), e.g. (3, 32, 32); got (32, 32)"),
])
def test_a_constructor_value_error_is_one_cli_line(tmp_path, monkeypatch, option, expected):
    monkeypatch.chdir(tmp_path)
    message = _cli_error(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI, *option])
    assert expected in message, message
    assert "Union subtypes" not in message and "Traceback" not in message
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- 11. model vs data
def test_a_student_with_fewer_classes_than_the_data_is_a_cli_error_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _cli_error(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI,
                          "--model.init_args.student.init_args.num_classes=5"])
    assert "the data has 10 classes (DigitsDataModule.num_classes=10) but the student CifarResNet outputs 5" in message
    assert "--model.init_args.student.init_args.num_classes=10" in message
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


def test_one_channel_data_with_three_channel_networks_is_a_cli_error_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _cli_error(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI, "--data.init_args.channels=1"])
    assert "the data gives 1-channel images (DigitsDataModule.input_size=(1, 16, 16))" in message
    assert "takes 3 (its first convolution)" in message
    assert not list(tmp_path.rglob("*.ckpt"))


def test_plain_loaders_are_checked_on_the_first_batch(tmp_path):
    x, y = digits_dataset(limit=32).tensors
    module = ClassificationModule(ToyNet(num_classes=5), lr=0.05)
    with pytest.raises(ModelDataMismatchError, match=r"the data has \d+ classes \(its first batch has label \d\) "
                                                     r"but the model ToyNet outputs 5"):
        _trainer(tmp_path).fit(module, DataLoader(TensorDataset(x, torch.full_like(y, 9)), batch_size=16))
    assert module.global_step == 0
    gray = TensorDataset(x[:, :1], y)
    with pytest.raises(ModelDataMismatchError, match=r"1-channel images \(its first batch has shape \(16, 1, 16, 16\)\)"
                                                     r" but the student ToyNet takes 3"):
        _trainer(tmp_path).fit(DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), matching=False),
                               DataLoader(gray, batch_size=16))


# ---------------------------------------------------------------------------------------------- non-finite stop
def test_a_classification_module_stops_on_a_non_finite_loss_without_a_nan_checkpoint(tmp_path):
    """Teachers and baselines train with ClassificationModule: the same stop as DistillationModule's."""
    torch.manual_seed(0)
    module = ClassificationModule(ToyNet(), lr=1e8)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    loader = DataLoader(digits_dataset(limit=64), batch_size=16)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step \d+ .*term is 'ce'.*lr=100000000"):
        _trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt]).fit(module, loader)
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())
    from mgd_lightning.commands.cli import USER_ERRORS

    assert issubclass(NonFiniteLossError, USER_ERRORS) and issubclass(ModelDataMismatchError, USER_ERRORS)


# ---------------------------------------------------------------------------------------------- atomic checkpoints
def test_atomic_save_writes_beside_the_target_and_renames_it_in_place(tmp_path, monkeypatch):
    import mgd_lightning.checkpoints as checkpoints

    target = tmp_path / "ckpt" / "last.ckpt"
    replaced = []
    real_replace = os.replace

    def replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    atomic_save({"x": torch.arange(3)}, target)
    ((src, dst),) = replaced
    assert dst == target and src.parent == target.parent and src.name.startswith(TEMP_PREFIX)
    assert "last" not in src.name and not src.name.endswith(".ckpt")  # never taken for a (last) checkpoint
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))

    def fail(f, data):  # a full disk in the middle of the write
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "_write_bytes", fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"x": torch.zeros(1000)}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file, old one whole
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))


def test_a_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    import mgd_lightning.checkpoints as checkpoints

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f"{TEMP_PREFIX}{checkpoints._host()}-{pid}-{'ab' * 16}.tmp"
    running = tmp_path / f"{TEMP_PREFIX}{checkpoints._host()}-{os.getpid()}-{'cd' * 16}.tmp"  # a write in progress
    other_host = tmp_path / f"{TEMP_PREFIX}00000000-{pid}-{'ef' * 16}.tmp"
    for path in (stale, running, other_host):
        path.write_bytes(b"half")
    atomic_save({"step": 1}, tmp_path / "epoch=1.ckpt")
    assert not stale.exists() and running.exists() and other_host.exists()


def test_fit_writes_checkpoints_through_the_atomic_writer(tmp_path, monkeypatch):
    """The temporary directory (where Lightning's fsspec write goes) is never touched by a checkpoint write."""
    import tempfile

    def no_system_temp(*args, **kwargs):
        raise AssertionError("a checkpoint write went through the system temporary directory")

    module = ClassificationModule(ToyNet(), lr=0.05)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, enable_checkpointing=True, callbacks=[ckpt], max_steps=2)
    monkeypatch.setattr(tempfile, "mkstemp", no_system_temp)
    trainer.fit(module, DataLoader(digits_dataset(limit=32), batch_size=16))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2


# ---------------------------------------------------------------------------------------------- 16. minor
def test_the_progress_bar_shows_the_run_version_not_csv(tmp_path, monkeypatch):
    from mgd_lightning.commands.cli import run_cli

    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--config", str(DIGITS_CONFIG), "--trainer.enable_progress_bar=false"], run=False)
    metrics = importlib.import_module(f"{NAMESPACE}.callbacks.progress.progress_bar").get_standard_metrics
    tb, csv = cli.trainer.loggers
    assert str(metrics(cli.trainer)["v_num"]) == str(tb.version) == "0"  # was "_csv" (the CSV logger's version)
    assert Path(csv.log_dir) == Path(tb.log_dir) / "csv"


def test_taps_probes_at_the_models_default_input_size():
    from mgd_lightning.commands.taps import describe_taps

    text = describe_taps("wrn_28_4", student="wrn_16_2")
    assert "at input (3, 32, 32)" in text and "224" not in text
    assert "at input (3, 64, 64)" in describe_taps("wrn_16_2", (3, 64, 64))


def test_a_cli_resume_does_not_warn_that_the_checkpoint_directory_is_not_empty(tmp_path, monkeypatch):
    """The configs' resume (a fixed ModelCheckpoint dirpath, ``--ckpt_path last``) finds its own checkpoints there;
    a new run into that folder (no --ckpt_path) is still warned."""
    import warnings

    from mgd_lightning.commands.cli import run_cli

    monkeypatch.chdir(tmp_path)
    run_cli(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI])

    def not_empty_warnings(*extra: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_cli(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI, *extra])
        return [str(w.message) for w in caught if "exists and is not empty" in str(w.message)]

    assert not_empty_warnings("--trainer.max_epochs=2", "--ckpt_path", "last") == []
    assert len(not_empty_warnings()) == 1  # a fresh run over an earlier run's checkpoints
