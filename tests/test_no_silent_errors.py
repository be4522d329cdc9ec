"""Defects found by trying the package as a new user: each misuse or failure stops with a clear error instead of
silently doing something else (D1-D15 of the review; one test each, each failing on the code before its fix)."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from tests.toys import ToyNet, digits_dataset

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits" / "mgd_amp.yaml"
TINY_CLI = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",  # "1" would be the float 1.0 (every batch)
    "--trainer.limit_val_batches=2",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--mgd.num_samples=16",
]


def _module(**kwargs) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), **{"lr": 0.05, **kwargs})


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


def _loader(n: int = 32, shuffle: bool = False) -> DataLoader:
    return DataLoader(digits_dataset(limit=n), batch_size=16, shuffle=shuffle)


# ---------------------------------------------------------------------------------------------- D1
def test_d1_mgd_without_the_matching_callback_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"MGDMatchingCallback\(\).*matching=False"):
        _trainer(tmp_path).fit(_module(), _loader())
    # the ablation, and MGD with its callback, train
    _trainer(tmp_path, limit_train_batches=1).fit(_module(matching=False), _loader())
    _trainer(tmp_path, limit_train_batches=1, callbacks=[MGDMatchingCallback()]).fit(_module(), _loader())


# ---------------------------------------------------------------------------------------------- D2
def test_d2_a_second_fit_follows_the_new_runs_schedule(tmp_path):
    m = _module()
    first = MGDMatchingCallback(update_every_n_epochs=2)
    _trainer(tmp_path, max_epochs=3, limit_train_batches=1, callbacks=[first]).fit(m, _loader())
    assert [r["epoch"] for r in first.history] == [0, 2]
    second = MGDMatchingCallback(update_every_n_epochs=2)  # a notebook re-run / fine-tuning: a new Trainer
    _trainer(tmp_path, max_epochs=4, limit_train_batches=1, callbacks=[second]).fit(m, _loader())
    assert [r["epoch"] for r in second.history] == [0, 2]
    assert int(m.last_matching_epoch) == 2


# ---------------------------------------------------------------------------------------------- D3
def test_d3_compare_refuses_to_mix_runs_of_other_extra_args(tmp_path, monkeypatch):
    import mgd_lightning.commands.compare as compare

    run_dir = tmp_path / "out" / "mgd_amp" / "seed0"
    run_dir.mkdir(parents=True)
    old = {"method": "mgd_amp", "config": str(DIGITS_CONFIG), "seed": 0, "top1_err": 10.0, "topk": 5,
           "topk_err": 1.0, "trainable_params": 1, "extra_params": 0, "wall_s": 1.0, "evaluated": "val",
           "extra_args": ["--trainer.max_epochs=1"]}
    (run_dir / "result.json").write_text(json.dumps(old))
    monkeypatch.setattr(compare, "run_cli", lambda *a, **k: pytest.fail("no run may start"))
    argv = ["--configs", str(DIGITS_CONFIG), "--out", str(tmp_path / "out"), "--extra-args", "--trainer.max_epochs=2"]
    with pytest.raises(SystemExit, match=r"extra.args.*--trainer.max_epochs=1.*--trainer.max_epochs=2.*--out"):
        compare.main(argv)
    with pytest.raises(SystemExit, match=r"evaluated.*'val'.*'test'"):
        compare.main([*argv[:4], "--eval", "test", "--extra-args", "--trainer.max_epochs=1"])
    compare.main([*argv[:4], "--extra-args", "--trainer.max_epochs=1"])  # the same setting: skipped, reported
    assert "10.00" in (tmp_path / "out" / "results.md").read_text()


# ---------------------------------------------------------------------------------------------- D4
def test_d4_null_reaches_every_optional_argument_on_the_command_line(monkeypatch):
    from mgd_lightning.commands.cli import MGDCLI, run_cli

    monkeypatch.setattr(MGDCLI, "instantiate_classes", lambda self: None)
    cli = run_cli(["--config", str(DIGITS_CONFIG),
                   "--model.init_args.teacher.init_args.checkpoint", "null",
                   "--model.init_args.teacher.init_args.arch_args", "null",
                   "--model.init_args.student.init_args.weights=null",
                   "--model.student.checkpoint", "~",
                   "--model.init_args.input_size", "null"], run=False)
    model = cli.config.model.init_args
    assert model.teacher.init_args.checkpoint is None and model.teacher.init_args.arch_args is None
    assert model.student.init_args.weights is None and model.student.init_args.checkpoint is None
    assert model.input_size is None
    # the values the command line did not touch are the config's
    assert model.teacher.init_args.name == "cifar_resnet"
    assert model.student.init_args.arch_args == {"depth": 8, "width": 1}
    assert model.reducer == "amp"


# ---------------------------------------------------------------------------------------------- D5
def _cli_fit(*extra: str):
    from mgd_lightning.commands.cli import run_cli

    return run_cli(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI, *extra])


def test_d5_ckpt_path_last_resumes_after_a_kill_and_is_an_error_without_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _cli_fit()  # killed after its first epoch: its last.ckpt is what is left
    last = tmp_path / "runs" / "digits" / "mgd_amp" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    cli = _cli_fit("--trainer.max_epochs=2", "--ckpt_path", "last")
    assert Path(cli.trainer.ckpt_path).resolve() == last.resolve()
    assert cli.trainer.global_step == 4 and cli.trainer.current_epoch == 2

    monkeypatch.chdir(tmp_path / "runs")  # nothing to resume here
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last.*no last checkpoint.*save_last"):
        _cli_fit("--ckpt_path", "last")


# ---------------------------------------------------------------------------------------------- D6
def test_d6_a_non_finite_loss_stops_with_its_step_and_term_and_no_nan_checkpoint(tmp_path):
    m = _module(matching=False)
    distillation_losses = m.distillation_losses

    def poisoned(s_feats, t_feats):  # tap 1 goes NaN at step 3 (the second batch of epoch 1)
        losses = distillation_losses(s_feats, t_feats)
        if m.trainer.global_step == 3:
            losses[1] = losses[1] * float("nan")
        return losses

    m.distillation_losses = poisoned
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    trainer = _trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt])
    with pytest.raises(FloatingPointError, match=r"step 3.*distill tap 1 \(teacher 'tap1', student 'tap1'\)"):
        trainer.fit(m, _loader(), _loader())
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert saved == ["epoch=0-step=2.ckpt", "last.ckpt"]  # the finite one; epoch 1's was not written
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["state_dict"].values() if v.is_floating_point())

    # a learning rate that blows up: the step and the term are named, and the learning rate is suspected
    with pytest.raises(FloatingPointError, match=r"at step \d+ .*term is \W(ce|distill tap \d).*lr=100000000.0"):
        _trainer(tmp_path, max_epochs=2).fit(_module(matching=False, lr=1e8), _loader())


# ---------------------------------------------------------------------------------------------- D7
@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage"])
def test_d7_a_corrupt_teacher_checkpoint_is_a_one_line_error(kind, tmp_path, monkeypatch):
    from mgd_lightning.commands.main import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(ToyNet().state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(b"not a checkpoint at all\n" * 10)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI, "--model.init_args.teacher.init_args.checkpoint",
              str(path)])
    message = str(exit_info.value.code)
    assert message.startswith("mgd-lightning: error: ") and "\n" not in message
    assert str(path) in message
    expected = {"empty": "empty (0 bytes)", "truncated": "truncated or corrupt", "garbage": "not a PyTorch"}
    assert expected[kind] in message


# ---------------------------------------------------------------------------------------------- D8
class _Stream(IterableDataset):
    def __iter__(self):
        x, y = digits_dataset(limit=16).tensors
        return iter(zip(x, y))


def test_d8_an_iterable_dataset_gets_the_map_style_message(tmp_path):
    with pytest.raises(RuntimeError, match=r"map-style.*_Stream.*matching_dataset\(\)"):
        _trainer(tmp_path, callbacks=[MGDMatchingCallback()]).fit(_module(), DataLoader(_Stream(), batch_size=8))


# ---------------------------------------------------------------------------------------------- D10
def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_d10_an_explicit_fashion_mnist_root_must_hold_the_data(tmp_path, monkeypatch):
    from mgd_lightning.data import fashion_mnist

    system = tmp_path / "system"  # stands for the Debian package's copy
    system.mkdir()
    for prefix, n in (("train", 4), ("t10k", 2)):
        _write_idx(system / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        _write_idx(system / f"{prefix}-labels-idx1-ubyte", np.arange(n))
    monkeypatch.setattr(fashion_mnist, "DEFAULT_FASHION_MNIST_PATHS", (str(system),))
    assert fashion_mnist.FashionMNISTDataModule().data_dir == system  # no root: the system copy
    with pytest.raises(FileNotFoundError) as err:
        fashion_mnist.FashionMNISTDataModule(root=str(tmp_path / "nonexistent"))
    message = str(err.value)
    assert f"root={str(tmp_path / 'nonexistent')!r}" in message and "train-images-idx3-ubyte" in message
    assert str(system) not in message.split("\n")[0]
    mine = tmp_path / "mine" / "FashionMNIST" / "raw"
    shutil.copytree(system, mine)
    assert fashion_mnist.FashionMNISTDataModule(root=str(tmp_path / "mine")).data_dir == mine


# ---------------------------------------------------------------------------------------------- D13
def test_d13_a_wrong_input_size_names_input_size():
    with pytest.raises(ValueError, match=r"input_size=\(1, 16, 16\).*\(C, H, W\)"):
        DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), input_size=(1, 16, 16))
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\).*got \(16, 16\)"):
        DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), input_size=(16, 16))


# ---------------------------------------------------------------------------------------------- D14
def test_d14_cli_logs_to_tensorboard_and_csv_without_a_not_empty_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = _cli_fit()
    assert not [str(w.message) for w in caught if "exists and is not empty" in str(w.message)]
    tb, csv = cli.trainer.loggers
    assert Path(tb.log_dir) != Path(csv.log_dir)
    assert list(Path(tb.log_dir).glob("events.out.tfevents.*")) and (Path(tb.log_dir) / "hparams.yaml").is_file()
    assert (Path(csv.log_dir) / "metrics.csv").is_file() and (Path(csv.log_dir) / "hparams.yaml").is_file()
    assert Path(tb.log_dir) in Path(csv.log_dir).parents  # the run's two logs stay in one version folder


# ---------------------------------------------------------------------------------------------- D15
def test_d15_docs_distillers_snippet_runs_without_warnings(monkeypatch):
    import mgd_lightning.models as models

    page = ROOT / "docs" / "guide" / "distillers.md"
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S) if '"fitnets"' in b]
    sizes = {"wrn_28_4": (16, 32), "wrn_16_2": (8, 16)}  # small stand-ins for the snippet's networks (speed)
    monkeypatch.setattr(models, "build_model", lambda name, num_classes: ToyNet(sizes[name], num_classes=num_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(block, "docs/guide/distillers.md[distillers]", "exec"),
             {"__name__": "__readme__", "print": lambda *a: None})


# ---------------------------------------------------------------------------------------------- D11
class _Augmented(torch.utils.data.Dataset):
    """Digits with augmentation drawn from torch, numpy and Python's random (all three must be restored)."""

    def __init__(self, n: int = 48) -> None:
        self.x, self.y = digits_dataset(limit=n).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        import random

        x = self.x[i] + 0.1 * torch.randn_like(self.x[i])
        x = x * float(np.random.uniform(0.9, 1.1))  # noqa: NPY002 - the global generator on purpose
        return (x.flip(-1) if random.random() < 0.5 else x), self.y[i]


def test_d11_resume_from_an_epoch_end_checkpoint_is_bit_exact(tmp_path):
    def fit(max_epochs: int, seed: int, ckpt_path: Path | None = None):
        m = _module()
        matching = MGDMatchingCallback(update_every_n_epochs=1, num_samples=24)
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / f"ckpt{seed}", save_top_k=-1, every_n_epochs=1)
        trainer = _trainer(tmp_path, max_epochs=max_epochs, enable_checkpointing=True, callbacks=[matching, ckpt],
                           num_sanity_val_steps=1)
        pl.seed_everything(seed, verbose=False)  # another process: other random states until the resume
        train = DataLoader(_Augmented(), batch_size=16, shuffle=True)
        trainer.fit(m, train, _loader(16), ckpt_path=ckpt_path)
        return m, matching

    whole, whole_matching = fit(3, seed=1)
    checkpoint = tmp_path / "ckpt1" / "epoch=0-step=3.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors only
    assert isinstance(state["rng_states"]["torch"], torch.Tensor)
    resumed, resumed_matching = fit(3, seed=2, ckpt_path=checkpoint)
    assert [r["epoch"] for r in resumed_matching.history] == [r["epoch"] for r in whole_matching.history] == [0, 1, 2]
    for a, b in zip(whole.matchings, resumed.matchings):
        assert torch.equal(a, b)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
