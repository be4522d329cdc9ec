"""Lean checkpoints (no frozen teacher), ``mgd-lightning export`` and the prediction writer."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mgd_lightning import ClassificationModule, DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.distill.module import TeacherMismatchError
from mgd_lightning.distill.prediction_writer import PredictionWriter
from mgd_lightning.models import build_model
from tests.toys import ToyNet, digits_dataset

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits" / "mgd_amp.yaml"
TINY_CLI = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--mgd.num_samples=16",
]


def _teacher(seed: int = 0) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet((12, 24))


def _student(seed: int = 1) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet((5, 7))


def _module(**kwargs) -> DistillationModule:
    return DistillationModule(_teacher(), _student(), **{"lr": 0.05, **kwargs})


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


def _fit(tmp_path, name: str, max_epochs: int, seed: int, ckpt_path=None, **module_kwargs):
    """A tiny MGD run writing a checkpoint at the end of every epoch into ``tmp_path / name``."""
    m = _module(**module_kwargs)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1, every_n_epochs=1)
    trainer = _trainer(tmp_path, max_epochs=max_epochs, enable_checkpointing=True,
                       callbacks=[MGDMatchingCallback(update_every_n_epochs=1, num_samples=24), ckpt])
    pl.seed_everything(seed, verbose=False)  # another process: other random states until the resume
    train = DataLoader(digits_dataset(limit=48), batch_size=16, shuffle=True)
    trainer.fit(m, train, DataLoader(digits_dataset(limit=16), batch_size=16), ckpt_path=ckpt_path)
    return m


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- lean checkpoints
def test_lean_checkpoint_has_no_teacher_and_is_smaller(tmp_path):
    lean = _fit(tmp_path, "lean", max_epochs=1, seed=0)
    full = _fit(tmp_path, "full", max_epochs=1, seed=0, save_teacher=True)
    lean_path, full_path = tmp_path / "lean" / "epoch=0-step=3.ckpt", tmp_path / "full" / "epoch=0-step=3.ckpt"
    assert lean_path.stat().st_size < full_path.stat().st_size
    lean_ckpt, full_ckpt = _load(lean_path), _load(full_path)
    assert not [k for k in lean_ckpt["state_dict"] if k.startswith("teacher.")]
    assert lean_ckpt["teacher_omitted"] is True
    assert lean_ckpt["teacher_shapes"] == {k: list(v.shape) for k, v in lean.teacher.state_dict().items()}
    # everything else is still there: student, tap BNs, matchings, margins, optimiser, schedule, random states
    teacher_keys = {"teacher." + k for k in full.teacher.state_dict()}
    assert set(lean_ckpt["state_dict"]) == set(full_ckpt["state_dict"]) - teacher_keys
    assert {"matching_0", "margin_0", "student_bns.0.weight", "model.fc.weight"} <= set(lean_ckpt["state_dict"])
    for key in ("optimizer_states", "lr_schedulers", "rng_states", "loops", "callbacks"):
        assert key in lean_ckpt
    assert "teacher_omitted" not in full_ckpt and teacher_keys <= set(full_ckpt["state_dict"])


def test_resume_from_a_lean_checkpoint_equals_the_uninterrupted_run(tmp_path):
    whole = _fit(tmp_path, "whole", max_epochs=2, seed=1)
    teacher = _teacher()
    m = DistillationModule(teacher, _student(), lr=0.05)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "resumed", save_top_k=-1, every_n_epochs=1)
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True,
                       callbacks=[MGDMatchingCallback(update_every_n_epochs=1, num_samples=24), ckpt])
    pl.seed_everything(2, verbose=False)
    train = DataLoader(digits_dataset(limit=48), batch_size=16, shuffle=True)
    trainer.fit(m, train, DataLoader(digits_dataset(limit=16), batch_size=16),
                ckpt_path=tmp_path / "whole" / "epoch=0-step=3.ckpt")
    assert m.teacher is teacher  # the teacher given stays the module's
    for (name, a), b in zip(whole.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_from_checkpoint_with_the_teacher_given(tmp_path):
    trained = _fit(tmp_path, "run", max_epochs=1, seed=0)
    path = tmp_path / "run" / "epoch=0-step=3.ckpt"
    teacher = _teacher()
    loaded = DistillationModule.load_from_checkpoint(path, teacher=teacher, student=ToyNet((5, 7)))
    assert loaded.teacher is teacher
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # a teacher of the same architecture but other BatchNorm weights than the run's: a warning (it is used)
    other = _teacher()
    with torch.no_grad():
        other.bns[1].weight.mul_(2.0)
    with pytest.warns(UserWarning, match=r"not the one this checkpoint was trained with.*margin_1"):
        DistillationModule.load_from_checkpoint(path, teacher=other, student=ToyNet((5, 7)))


def test_save_teacher_keeps_it_and_checkpoints_with_a_teacher_load_as_before(tmp_path):
    trained = _fit(tmp_path, "run", max_epochs=1, seed=0, save_teacher=True)
    path = tmp_path / "run" / "epoch=0-step=3.ckpt"
    assert {"teacher." + k for k in trained.teacher.state_dict()} <= set(_load(path)["state_dict"])
    other = _teacher(seed=5)  # other weights: the checkpoint's teacher replaces them, as before
    loaded = DistillationModule.load_from_checkpoint(path, teacher=other, student=ToyNet((5, 7)))
    assert loaded.hparams.save_teacher is True
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_teacher_of_another_architecture_is_a_clear_error(tmp_path):
    _fit(tmp_path, "run", max_epochs=1, seed=0)
    path = tmp_path / "run" / "epoch=0-step=3.ckpt"
    wide = ToyNet((16, 32))
    with pytest.raises(TeacherMismatchError, match=r"saved without its teacher.*teacher\.convs\.0\.weight: "
                                                   r"\(12, 3, 3, 3\) in the checkpoint's teacher, \(16, 3, 3, 3\)"):
        DistillationModule.load_from_checkpoint(path, teacher=wide, student=ToyNet((5, 7)))
    m = DistillationModule(ToyNet((16, 32)), ToyNet((5, 7)), lr=0.05)
    with pytest.raises(TeacherMismatchError, match=r"does not fit the teacher.*teacher\.convs\.0\.weight"):
        _trainer(tmp_path, max_epochs=2, callbacks=[MGDMatchingCallback()]).fit(
            m, DataLoader(digits_dataset(limit=16), batch_size=16), ckpt_path=path)


# ------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One tiny CLI run of configs/digits/mgd_amp.yaml: (its folder, its trained module)."""
    from mgd_lightning.cli import run_cli

    folder = tmp_path_factory.mktemp("digits")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = run_cli(["fit", "--config", str(DIGITS_CONFIG), *TINY_CLI])
    finally:
        os.chdir(cwd)
    return folder, cli.model


def _student_of_the_digits_config():
    return build_model("cifar_resnet", num_classes=10, arch_args={"depth": 8, "width": 1}).eval()


def test_export_state_dict_loads_into_the_bare_model(digits_run, tmp_path, capsys):
    from mgd_lightning.cli import main

    folder, module = digits_run
    last = folder / "runs" / "digits" / "mgd_amp" / "checkpoints" / "last.ckpt"
    assert "teacher_omitted" in _load(last)
    main(["export", "--ckpt_path", str(last), "--output", str(tmp_path / "student.pt")])
    assert f"exported state_dict to {tmp_path / 'student.pt'}" in capsys.readouterr().out
    bare = _student_of_the_digits_config()
    bare.load_state_dict(torch.load(tmp_path / "student.pt", weights_only=True))
    x = torch.randn(4, 3, 16, 16)
    module.student.eval()
    with torch.no_grad():
        assert torch.equal(bare(x), module.student(x))


def test_export_torchscript_matches_and_onnx_without_onnx_says_how(digits_run, tmp_path, capsys, monkeypatch):
    from mgd_lightning.cli import main

    folder, module = digits_run
    last = str(folder / "runs" / "digits" / "mgd_amp" / "checkpoints" / "last.ckpt")
    out = tmp_path / "student.ts"
    main(["export", "--ckpt_path", last, "--config", str(DIGITS_CONFIG), "--format", "torchscript",
          "--output", str(out)])
    printed = capsys.readouterr().out
    assert "TorchScript check on a random (2, 3, 16, 16) input: max abs difference" in printed and "allclose" in printed
    scripted = torch.jit.load(str(out))
    x = torch.randn(3, 3, 16, 16)
    module.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), module.student(x), rtol=1e-4, atol=1e-5)
    # torchscript needs the architecture
    with pytest.raises(SystemExit, match=r"--format torchscript builds the network: pass --config"):
        main(["export", "--ckpt_path", last, "--format", "torchscript", "--output", str(out)])
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"needs the onnx package.*pip install onnx"):
        main(["export", "--ckpt_path", last, "--config", str(DIGITS_CONFIG), "--format", "onnx",
              "--output", str(tmp_path / "student.onnx")])


def test_predict_writes_one_row_per_image(digits_run, capsys, monkeypatch):
    from mgd_lightning.cli import run_cli

    folder, _ = digits_run
    monkeypatch.chdir(folder)
    last = folder / "runs" / "digits" / "mgd_amp" / "checkpoints" / "last.ckpt"
    cli = run_cli(["predict", "--config", str(DIGITS_CONFIG), "--ckpt_path", str(last),
                   "--trainer.enable_progress_bar=false"])
    writers = [cb for cb in cli.trainer.callbacks if isinstance(cb, PredictionWriter)]
    assert len(writers) == 1
    path = Path(writers[0].path)
    assert path.parent == Path(cli.trainer.log_dir) and path.name == "predictions.csv"
    assert f"rows written to {path}" in capsys.readouterr().out
    rows = list(csv.DictReader((folder / path).open()))
    assert len(rows) == len(cli.datamodule.predict_dataloader().dataset)
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    assert all(0 <= int(r["class_id"]) < 10 and 0.0 < float(r["probability"]) <= 1.0 for r in rows)


def test_prediction_writer_top_k_matches_the_model(tmp_path):
    torch.manual_seed(0)
    model = ClassificationModule(ToyNet((8, 16)), num_classes=10)
    data = digits_dataset(limit=37)
    writer = PredictionWriter(output=tmp_path / "p.csv", top_k=3, verbose=False)
    _trainer(tmp_path, callbacks=[writer]).predict(model, DataLoader(data, batch_size=16))
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["index", "class_id", "probability", "top1_class_id", "top1_probability", "top2_class_id",
                       "top2_probability", "top3_class_id", "top3_probability"]
    assert len(rows) == 1 + 37
    model.eval()
    with torch.no_grad():
        probs = model(data.tensors[0]).softmax(dim=-1)
    top = probs.topk(3, dim=-1)
    for i, row in enumerate(rows[1:]):
        assert int(row[0]) == i and int(row[1]) == int(top.indices[i, 0]) == int(row[3])
        assert [int(v) for v in row[3::2]] == top.indices[i].tolist()
        assert [float(v) for v in row[4::2]] == pytest.approx(top.values[i].tolist(), rel=1e-5)
