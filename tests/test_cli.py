"""The console entry point: a missing file is a one-line error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgd_lightning.commands.main import main
from tests.test_data import _make_cub

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "cub200" / "ft_mobilenet_v2.yaml")


def test_missing_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub-home"))
    monkeypatch.chdir(tmp_path)
    root = _make_cub(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--data.root", str(root)])
    message = str(exit_info.value.code)
    assert message.startswith("mgd-lightning: error: weights mobilenet_v2/IMAGENET1K_V1 are not available offline")
    assert str(tmp_path / "hub-home" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in message


def test_missing_dataset_names_the_expected_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--data.root", str(tmp_path / "nowhere"), "--model.model.weights", "null"])
    message = str(exit_info.value.code)
    assert message.startswith("mgd-lightning: error:") and "images.txt" in message
    assert "\n" not in message  # one line, also offline (download: true in the config)
