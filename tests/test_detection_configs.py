"""The COCO configs (``configs/coco/``): each parses, follows the Table 4a recipe, and runs 2 CPU steps on a tiny
COCO tree, with torchvision weight files pre-seeded in a temporary torch hub cache (random weights of the right
architecture). The command line changes only what a CPU test needs: the data root, tiny images (the detectors'
``min_size`` / ``max_size``), batch size, workers, the length of the run and ``mgd.num_samples``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml

from mgd_lightning.cli import MGDCLI, run_cli
from mgd_lightning.distill.callback import MGDMatchingCallback
from mgd_lightning.distill.module import DistillationModule
from mgd_lightning.models import weights_path
from tests.coco_tree import write_coco_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "coco"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
DISTILL, CLASSIFY = "mgd_lightning.DistillationModule", "mgd_lightning.ClassificationModule"
STEPS = 2
#: build_detector(arch=..., weights=...) -> the torchvision detector whose COCO weight file it reads
COCO_DETECTORS = {"retinanet": "retinanet_resnet50_fpn", "maskrcnn": "maskrcnn_resnet50_fpn"}


def _load(config: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / config).read_text())


def _detectors(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    init = cfg["model"]["init_args"]
    return {role: init[role]["init_args"] for role in ("model", "teacher", "student") if role in init}


def _seed_weights(net: dict[str, Any]) -> None:
    """Random weights where ``build_detector`` looks for the file (hub cache under TORCH_HOME)."""
    if net.get("weights"):
        name = COCO_DETECTORS[net["arch"]]
        weight = torchvision.models.get_model_weights(name)[net["weights"]]
        make = lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None)  # noqa: E731
    else:
        name = "mobilenet_v2" if net["backbone"].startswith("mobilenet_v2") else net["backbone"]
        weight = torchvision.models.get_model_weights(name)[net["weights_backbone"]]
        make = lambda: torchvision.models.get_model(name)  # noqa: E731
    path = weights_path(weight.url)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(make().state_dict(), path)


@pytest.mark.parametrize("config", CONFIGS)
def test_coco_config_follows_table_4a_recipe(config, monkeypatch):
    monkeypatch.setattr(MGDCLI, "instantiate_classes", lambda self: None)
    run_cli(["--config", str(CONFIG_DIR / config), "--data.init_args.root", "/nonexistent"], run=False)
    cfg = _load(config)
    header = "\n".join(line for line in (CONFIG_DIR / config).read_text().splitlines() if line.startswith("#"))
    assert f"configs/coco/{config}" in header and "--data.init_args.root" in header and "Detectron2" in header
    init = cfg["model"]["init_args"]
    assert init["task"] == "detection" and cfg["model"]["class_path"] in (DISTILL, CLASSIFY)
    assert cfg["trainer"]["max_steps"] == 90000 and cfg["data"]["init_args"]["batch_size"] == 16
    assert (init["lr"], init["momentum"], init["weight_decay"]) == (0.01, 0.9, 1e-4)
    assert init["lr_interval"] == "step" and init["lr_milestones"] == [60000, 80000] and init["warmup_steps"] == 1000
    nets = _detectors(cfg)
    assert all(n["arch"] == ("maskrcnn" if "maskrcnn" in config else "retinanet") for n in nets.values())
    assert cfg["data"]["init_args"].get("masks", False) == ("maskrcnn" in config)
    if "teacher" in nets:
        assert nets["teacher"]["backbone"] == "resnet50" and nets["teacher"]["weights"] == "COCO_V1"
        assert nets["student"]["weights_backbone"] == "IMAGENET1K_V1"
        if init.get("distiller", "mgd") == "mgd":
            assert cfg["mgd"]["step_schedule"] == [[0, 5000], [20000, 31000]]


@pytest.mark.parametrize("config", CONFIGS)
def test_coco_config_runs(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = write_coco_tree(tmp_path / "coco")
    cfg = _load(config)
    args = ["fit", "--config", str(CONFIG_DIR / config), "--data.init_args.root", str(root),
            "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", f"--trainer.max_steps={STEPS}",
            "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--mgd.num_samples=2",
            "--model.init_args.lr=1e-4"]
    for role, net in _detectors(cfg).items():
        _seed_weights(net)
        args += [f"--model.init_args.{role}.init_args.min_size=64", f"--model.init_args.{role}.init_args.max_size=96"]
    if cfg["model"]["class_path"] == DISTILL:
        args += ["--model.init_args.input_size=[3, 64, 64]"]
    cli = run_cli(args)
    trainer, module = cli.trainer, cli.model
    assert trainer.state.finished and trainer.global_step == STEPS
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/map" in trainer.callback_metrics
    assert module.task.name == "detection"
    assert (Path(cfg["trainer"]["default_root_dir"]) / "last.ckpt").is_file()
    matcher = next(cb for cb in trainer.callbacks if isinstance(cb, MGDMatchingCallback))
    if isinstance(module, DistillationModule) and module.assignment is not None:
        assert [h["step"] for h in matcher.history] == [0]  # the step schedule's first update only
        assert float(trainer.callback_metrics["train/distill"]) > 0
    else:
        assert matcher.history == []
