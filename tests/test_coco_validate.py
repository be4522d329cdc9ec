"""``mgd-lightning validate`` with a COCO config prints COCO AP (``val/map``, ``val/map_50``, ...): tiny COCO tree."""

from __future__ import annotations

import pytest

from mgd_lightning.commands.main import main
from tests.coco_tree import write_coco_tree
from tests.test_detection_configs import CONFIG_DIR, _detectors, _load, _seed_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_validate_prints_coco_ap(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = write_coco_tree(tmp_path / "coco")
    config = "retinanet_r18_baseline.yaml"
    for net in _detectors(_load(config)).values():
        _seed_weights(net)  # random weights where build_detector looks for the ImageNet file
    main(["validate", "--config", str(CONFIG_DIR / config), "--data.init_args.root", str(root),
          "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", "--model.init_args.model.init_args.min_size=64",
          "--model.init_args.model.init_args.max_size=96"])
    out = capsys.readouterr().out
    for key in ("val/map ", "val/map_50", "val/map_75", "val/map_small", "val/map_medium", "val/map_large"):
        assert key in out, key
