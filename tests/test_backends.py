"""The Lightning backend (mgd_lightning/_lightning.py): ``pytorch_lightning`` or ``lightning.pytorch``.

Runs in every environment: ``make test`` (.venv: pytorch-lightning only), and ``make test-backends``
(.venv-lightning: ``lightning`` only; .venv-both: both, with ``MGD_LIGHTNING_BACKEND=lightning``).
``MGD_EXPECT_BACKEND`` names the backend the environment must select (default: the one installed, pytorch_lightning
where both are, or the one ``MGD_LIGHTNING_BACKEND`` names).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import BACKEND, NAMESPACE, map_class_path, pl
from mgd_lightning.commands.cli import run_cli
from tests.toys import ToyNet, digits_dataset

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits" / "mgd_amp.yaml"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _expected_backend() -> str:
    if os.environ.get("MGD_EXPECT_BACKEND"):
        return os.environ["MGD_EXPECT_BACKEND"]
    if os.environ.get("MGD_LIGHTNING_BACKEND"):
        return os.environ["MGD_LIGHTNING_BACKEND"]
    return "pytorch_lightning" if _installed("pytorch_lightning") else "lightning"


def test_selected_backend_is_the_expected_one():
    expected = _expected_backend()
    assert BACKEND == expected
    assert NAMESPACE == {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch"}[expected]
    assert pl.__name__ == NAMESPACE
    assert issubclass(DistillationModule, pl.LightningModule)
    assert issubclass(MGDMatchingCallback, pl.Callback)
    if os.environ.get("MGD_EXPECT_BACKEND") == "lightning" and not os.environ.get("MGD_LIGHTNING_BACKEND"):
        # the lightning-only environment really has no pytorch_lightning
        assert not _installed("pytorch_lightning")


def _select(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MGD_LIGHTNING_BACKEND"}
    if value is not None:
        env["MGD_LIGHTNING_BACKEND"] = value
    code = "from mgd_lightning._lightning import BACKEND; print(BACKEND)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)


def test_invalid_backend_is_a_clear_error():
    result = _select("tensorflow")
    assert result.returncode != 0
    assert "MGD_LIGHTNING_BACKEND='tensorflow' is not a Lightning backend" in result.stderr
    assert "'pytorch_lightning'" in result.stderr and "'lightning'" in result.stderr


@pytest.mark.parametrize("value", ["pytorch_lightning", "lightning"])
def test_selecting_a_backend(value):
    result = _select(value)
    if (_installed("pytorch_lightning") if value == "pytorch_lightning" else _installed("lightning")):
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == value
    else:
        assert result.returncode != 0
        assert f"MGD_LIGHTNING_BACKEND='{value}' selects" in result.stderr
        assert "not installed" in result.stderr and "pip install" in result.stderr


_NAMESPACES = {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch"}


@pytest.mark.parametrize("imported, expected", [
    (["lightning"], "lightning"), (["pytorch_lightning"], "pytorch_lightning"), ([], "pytorch_lightning"),
    (["lightning", "pytorch_lightning"], "pytorch_lightning"),
])
def test_without_the_variable_both_installed_the_namespace_already_imported_is_selected(monkeypatch, imported,
                                                                                        expected):
    """``import lightning as L`` before mgd_lightning, both installed, no MGD_LIGHTNING_BACKEND: lightning.pytorch,
    so that ``L.Trainer().fit(DistillationModule(...))`` accepts the module (the default stays pytorch_lightning)."""
    import types

    import mgd_lightning._lightning as backend

    monkeypatch.delenv("MGD_LIGHTNING_BACKEND", raising=False)
    monkeypatch.setattr(backend, "_installed", lambda name: True)
    for name, namespace in _NAMESPACES.items():
        if name in imported:
            monkeypatch.setitem(sys.modules, namespace, sys.modules.get(namespace) or types.ModuleType(namespace))
        else:
            monkeypatch.delitem(sys.modules, namespace, raising=False)
    assert backend.select_backend() == expected
    monkeypatch.setenv("MGD_LIGHTNING_BACKEND", "pytorch_lightning")  # the variable decides, whatever is imported
    assert backend.select_backend() == "pytorch_lightning"


def test_a_module_built_with_the_other_namespace_imported_warns_naming_the_variable(monkeypatch):
    import types

    import mgd_lightning._lightning as backend

    other = "lightning.pytorch" if NAMESPACE == "pytorch_lightning" else "pytorch_lightning"
    other_backend = "lightning" if BACKEND == "pytorch_lightning" else "pytorch_lightning"
    monkeypatch.delenv("MGD_LIGHTNING_BACKEND", raising=False)
    monkeypatch.setattr(backend, "_warned_mixed", False)
    monkeypatch.delitem(sys.modules, other, raising=False)
    assert not backend.warn_if_mixed_namespaces()  # nothing mixed: no warning
    monkeypatch.setitem(sys.modules, other, sys.modules.get(other) or types.ModuleType(other))
    with pytest.warns(UserWarning, match=rf"a {re.escape(other)} Trainer refuses it .*"
                                         rf"Set MGD_LIGHTNING_BACKEND={other_backend} before"):
        DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)))
    assert not backend.warn_if_mixed_namespaces()  # once per process
    monkeypatch.setattr(backend, "_warned_mixed", False)
    monkeypatch.setenv("MGD_LIGHTNING_BACKEND", BACKEND)  # chosen explicitly: no warning
    assert not backend.warn_if_mixed_namespaces()


@pytest.mark.skipif(not (_installed("lightning") and _installed("pytorch_lightning")), reason="needs both namespaces")
def test_both_installed_import_lightning_first_then_the_L_trainer_fits(tmp_path):
    """The issue's case in a fresh process: both installed, no MGD_LIGHTNING_BACKEND, ``import lightning as L``
    first."""
    code = (
        "import lightning as L, torch\n"
        "from torch.utils.data import DataLoader\n"
        "from mgd_lightning import DistillationModule, MGDMatchingCallback\n"
        "from mgd_lightning._lightning import BACKEND\n"
        "from tests.toys import ToyNet, digits_dataset\n"
        "m = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), lr=0.05)\n"
        "t = L.Trainer(accelerator='cpu', max_steps=1, logger=False, enable_checkpointing=False, "
        "enable_progress_bar=False, enable_model_summary=False, callbacks=[MGDMatchingCallback(num_samples=16)])\n"
        "t.fit(m, DataLoader(digits_dataset(limit=16), batch_size=16))\n"
        "print(BACKEND, t.global_step)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MGD_LIGHTNING_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["lightning", "1"]


def test_class_paths_map_to_the_selected_namespace():
    for other in ("pytorch_lightning", "lightning.pytorch"):
        assert map_class_path(f"{other}.callbacks.ModelCheckpoint") == f"{NAMESPACE}.callbacks.ModelCheckpoint"
    assert map_class_path({"callbacks": [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor"}]}) == {
        "callbacks": [{"class_path": f"{NAMESPACE}.callbacks.LearningRateMonitor"}]}
    for kept in ("mgd_lightning.DistillationModule", "pytorch_lightningx.Y", "lightning.fabric.Fabric", "lightning"):
        assert map_class_path(kept) == kept


@pytest.mark.skipif(BACKEND != "lightning", reason="`import lightning as L` needs the lightning.pytorch backend")
def test_import_lightning_as_L_trainer_fits_the_module(tmp_path):
    """The issue's example: ``L.Trainer().fit(DistillationModule(...))``, with the matching callback."""
    import lightning as L

    torch.manual_seed(0)
    module = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), lr=0.05)
    callback = MGDMatchingCallback(num_samples=32)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[callback])
    trainer.fit(module, DataLoader(digits_dataset(limit=64), batch_size=16))
    assert trainer.global_step == 2 and callback.history


def test_cli_fits_the_digits_config_with_its_checkpoint_class_path(tmp_path, monkeypatch):
    """configs/digits/mgd_amp.yaml says ``class_path: pytorch_lightning.callbacks.ModelCheckpoint``: it resolves
    to the selected namespace's ModelCheckpoint, and the run fits 2 steps."""
    assert "class_path: pytorch_lightning.callbacks.ModelCheckpoint" in DIGITS_CONFIG.read_text()
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(DIGITS_CONFIG), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                   "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
                   "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                   "--mgd.num_samples=8", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    (checkpoint,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ModelCheckpoint"]
    assert isinstance(checkpoint, pl.callbacks.ModelCheckpoint)
    assert type(checkpoint).__module__.startswith(NAMESPACE + ".")
    assert (tmp_path / "runs" / "digits" / "mgd_amp" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("written", ["pytorch_lightning", "lightning.pytorch"])
def test_yaml_class_path_of_either_namespace_resolves(tmp_path, monkeypatch, written):
    config = tmp_path / "callbacks.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        f"    - class_path: {written}.callbacks.ModelCheckpoint\n"
        "      init_args: {dirpath: ckpt, save_last: true}\n"
        f"    - class_path: {written}.callbacks.LearningRateMonitor\n"
    )
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--config", str(DIGITS_CONFIG), "--config", str(config), "--trainer.logger=false"], run=False)
    kinds = {type(cb).__name__: cb for cb in cli.trainer.callbacks}
    assert isinstance(kinds["ModelCheckpoint"], pl.callbacks.ModelCheckpoint)
    assert isinstance(kinds["LearningRateMonitor"], pl.callbacks.LearningRateMonitor)
    assert kinds["ModelCheckpoint"].save_last
