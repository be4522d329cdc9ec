"""The notebooks run end to end with papermill on tiny data: the CUB-200 transfer experiment on a small tree in the
official archive layout (random-weight files seeded in a temporary torch hub cache), the quickstart on the digits.

The kernel is the ``python3`` spec of the interpreter running the tests (ipykernel installed in the same
environment), so the notebooks import this checkout's package."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import torch
import torchvision
from jupyter_client.kernelspec import KernelSpecManager

from mgd_lightning.models import weights_path
from tests.test_data import _make_cub

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CUB_METHODS = ("Teacher ResNet-50", "FT MobileNet-V2", "FS MobileNet-V2",
               "MGD-SM MobileNet-V2", "MGD-RD MobileNet-V2", "MGD-AMP MobileNet-V2")


@pytest.fixture
def kernel_env(monkeypatch):
    """The ``python3`` kernel spec of this environment, launched with this interpreter; one torch thread (the
    kernel shares 2 cores with the other test worker: more threads than free cores make torch several times slower)."""
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                            sys.executable), f"the python3 kernel spec runs {spec.argv[0]}, not {sys.executable}"


def _run(name: str, tmp_path: Path, parameters: dict) -> nbformat.NotebookNode:
    output = tmp_path / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(output, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    return nb


def _text(nb: nbformat.NotebookNode, tag: str) -> str:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected"
    return "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream")


def _seed_weights(name: str) -> None:
    """A random-weight file where ``build_model(name, weights="IMAGENET1K_V1")`` reads it (TORCH_HOME set)."""
    path = weights_path(torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.get_model(name).state_dict(), path)


def test_notebooks_have_one_parameters_cell_first():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert tagged == code[:1], f"{path.name}: the first code cell, and only it, must be tagged 'parameters'"
        assert all(not c.outputs for c in code), f"{path.name}: stored with outputs"


def test_cub200_transfer_notebook(tmp_path, kernel_env, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("resnet50", "mobilenet_v2"):
        _seed_weights(name)
    root = _make_cub(tmp_path / "data", num_classes=4, per_class=4)  # 8 training, 8 test images: batches of 4
    out = tmp_path / "out"
    nb = _run("cub200_transfer.ipynb", tmp_path, dict(
        data_root=str(root), epochs=1, teacher_epochs=1, batch_size=4, image_size=32, resize_size=36,
        devices=1, accelerator="cpu", num_workers=0, weights="IMAGENET1K_V1", num_samples=4,
        lr=1e-4, scratch_lr=1e-4, out_dir=str(out),
    ))
    table = _text(nb, "results")
    for method in CUB_METHODS:
        assert f"| {method} |" in table
    assert "nan" not in table
    assert (out / "results.md").read_text().strip() == table.strip()
    for plot in ("matching_cost.png", "match_changes.png", "matched_channels.png"):
        assert (out / plot).stat().st_size > 1000, plot


def test_quickstart_notebook(tmp_path, kernel_env):
    out = tmp_path / "out"
    nb = _run("quickstart.ipynb", tmp_path, dict(
        data="digits", teacher_epochs=1, epochs=2, batch_size=256, matching_images=64, accelerator="cpu",
        out_dir=str(out),
    ))
    assert "scikit-learn's digits" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "MGD-AMP student: top-1 accuracy" in _text(nb, "results")
    assert (out / "matching_history.png").stat().st_size > 1000
