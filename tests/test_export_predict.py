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
from mgd_lightning.losses import margin_from_bn
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
    # a teacher of the same architecture but other BatchNorm weights than the run's: a warning (it is used),
    # and its margins (Eq. 4) are recomputed from it, never the checkpoint's mixed with its features
    other = _teacher()
    with torch.no_grad():
        other.bns[1].weight.mul_(2.0)
        other.bns[1].bias.add_(0.5)
    with pytest.warns(UserWarning, match=r"not the one this checkpoint was trained with.*margin_1.*recomputed"):
        mixed = DistillationModule.load_from_checkpoint(path, teacher=other, student=ToyNet((5, 7)))
    assert not torch.equal(mixed.margin_1, trained.margin_1)
    torch.testing.assert_close(mixed.margin_1, margin_from_bn(other.bns[1]).float())
    torch.testing.assert_close(mixed.margin_0, trained.margin_0)  # that BN is the run's
    assert torch.equal(mixed.matching_1, trained.matching_1)  # the run's own state is the checkpoint's


def test_resume_and_ofd_with_another_teacher_use_its_margins(tmp_path):
    """fit(ckpt_path=...) of a lean checkpoint, and a feature distiller's own copies of the margins (OFD)."""
    _fit(tmp_path, "ofd", max_epochs=1, seed=0, distiller="ofd")
    path = tmp_path / "ofd" / "epoch=0-step=3.ckpt"
    other = _teacher()
    with torch.no_grad():
        other.bns[0].weight.mul_(3.0)
    m = DistillationModule(other, _student(), lr=0.05, distiller="ofd")
    expected = margin_from_bn(other.bns[0]).float()
    with pytest.warns(UserWarning, match=r"margin_0.*feature_distiller\.margin_0.*recomputed from it"):
        _trainer(tmp_path, max_epochs=1).fit(m, DataLoader(digits_dataset(limit=16), batch_size=16),
                                             ckpt_path=path)
    torch.testing.assert_close(m.margin_0, expected)
    torch.testing.assert_close(m.feature_distiller.margin_0, expected)


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
    from mgd_lightning.commands.cli import run_cli

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
    from mgd_lightning.commands.main import main

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
    from mgd_lightning.commands.main import main

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
    with pytest.raises(SystemExit, match=r"needs the onnx and onnxscript packages.*not installed: onnx\b.*"
                                         r"pip install onnx onnxscript"):
        main(["export", "--ckpt_path", last, "--config", str(DIGITS_CONFIG), "--format", "onnx",
              "--output", str(tmp_path / "student.onnx")])


def test_onnx_export_is_one_self_contained_file_without_warnings(digits_run, tmp_path, capsys):
    """Not ``student.onnx`` plus a ``student.onnx.data`` the message did not name (copied alone, it failed to
    load); no dynamic_axes warning; the batch size stays dynamic."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    import warnings

    from mgd_lightning.commands.main import main

    folder, module = digits_run
    last = str(folder / "runs" / "digits" / "mgd_amp" / "checkpoints" / "last.ckpt")
    out = tmp_path / "export" / "student.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["export", "--ckpt_path", last, "--config", str(DIGITS_CONFIG), "--format", "onnx", "--output", str(out)])
    assert [str(w.message) for w in caught if "dynamic_axes" in str(w.message) or "onnx" in w.filename] == []
    assert f"exported onnx to {out} ({out.stat().st_size} bytes)" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.onnx"]
    alone = tmp_path / "elsewhere" / "copy.onnx"
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())
    session = onnxruntime.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 16, 16)
    module.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), module.student(x),
                                   rtol=1e-4, atol=1e-5)


def test_export_argument_errors_are_accurate_one_liners(digits_run, tmp_path):
    from mgd_lightning.commands.main import main

    folder, _ = digits_run
    checkpoints = folder / "runs" / "digits" / "mgd_amp" / "checkpoints"
    last = str(checkpoints / "last.ckpt")
    config = ["--config", str(DIGITS_CONFIG)]

    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as info:
            main(["export", *argv])
        message = str(info.value)
        assert message.startswith("mgd-lightning export: error: ") and "\n" not in message, message
        return message

    (tmp_path / "folder").mkdir()
    for fmt, suffix in (("state_dict", "pt"), ("torchscript", "ts"), ("onnx", "onnx")):
        if fmt == "onnx" and not all(map(_importable, ("onnx", "onnxscript"))):
            continue
        message = error("--ckpt_path", last, *config, "--format", fmt, "--output", str(tmp_path / "folder"))
        assert f"--output '{tmp_path / 'folder'}' is a directory: give the file to write, e.g. " \
               f"{tmp_path / 'folder' / ('student.' + suffix)}" in message
    assert list((tmp_path / "folder").iterdir()) == [] and not list(tmp_path.glob("*.data"))
    message = error("--ckpt_path", last, *config, "--format", "torchscript", "--output", str(tmp_path / "s.ts"),
                    "--input_size", "1", "16", "16")
    assert "--input_size 1 16 16: the network cannot run a (2, 1, 16, 16) input" in message
    assert "expected input[2, 1, 16, 16] to have 3 channels" in message and not (tmp_path / "s.ts").exists()
    main(["export", "--ckpt_path", last, *config, "--format", "torchscript", "--output", str(tmp_path / "s.ts")])
    message = error("--ckpt_path", str(tmp_path / "s.ts"), "--output", str(tmp_path / "again.pt"))
    assert f"--ckpt_path '{tmp_path / 's.ts'}' is a TorchScript file" in message and "torch.jit.load" in message
    message = error("--ckpt_path", str(checkpoints), "--output", str(tmp_path / "again.pt"))
    assert f"--ckpt_path '{checkpoints}' is a directory, not a checkpoint file: pass a file in it (best.ckpt, " \
           "last.ckpt)" in message


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def test_predict_writes_one_row_per_image(digits_run, capsys, monkeypatch):
    from mgd_lightning.commands.cli import run_cli

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
    rows = list(csv.DictReader((folder / path).read_text().splitlines()))
    assert len(rows) == len(cli.datamodule.predict_dataloader().dataset)
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    assert all(0 <= int(r["class_id"]) < 10 and 0.0 < float(r["probability"]) <= 1.0 for r in rows)


def test_prediction_writer_top_k_matches_the_model(tmp_path):
    torch.manual_seed(0)
    model = ClassificationModule(ToyNet((8, 16)), num_classes=10)
    data = digits_dataset(limit=37)
    writer = PredictionWriter(output=tmp_path / "p.csv", top_k=3, verbose=False)
    _trainer(tmp_path, callbacks=[writer]).predict(model, DataLoader(data, batch_size=16))
    rows = list(csv.reader((tmp_path / "p.csv").read_text().splitlines()))
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
