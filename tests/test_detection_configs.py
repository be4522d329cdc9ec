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

from mgd_lightning.commands.cli import MGDCLI, run_cli
from mgd_lightning.distill.callback import MGDMatchingCallback
from mgd_lightning.distill.module import DistillationModule
from mgd_lightning.distill.step_schedule import check_step_schedule, scheduled_steps
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
            steps = scheduled_steps(check_step_schedule(cfg["mgd"]["step_schedule"]), cfg["trainer"]["max_steps"])
            assert steps == [0, 5000, 10000, 15000, 31000, 62000]  # the reference d2/train_net.py's updates
    # the reference normalises as torchvision (RGB, ImageNet mean / std) and clips no gradients: not differences
    differs = header.split("What differs from it:")[1]
    assert "BGR" not in header and "clipping" not in differs and "aspect ratio" in header.split("What differs")[0]


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


def test_predict_and_export_of_a_coco_run(tmp_path, monkeypatch, capsys):
    """``mgd-lightning predict`` of a detection run writes COCO results JSON (the classification CSV writer crashed
    on box dicts); ``export`` builds the detector without its pre-trained weights (the checkpoint's replace them:
    nothing read from the hub cache, nothing downloaded): state_dict works, TorchScript / ONNX are refused in one
    line."""
    import json

    from mgd_lightning.commands.main import main
    from mgd_lightning.distill.prediction_writer import DetectionWriter
    from mgd_lightning.models import build_detector
    from tests.coco_tree import VAL_IMAGES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = write_coco_tree(tmp_path / "coco")
    name = "retinanet_r18_baseline.yaml"
    config = str(CONFIG_DIR / name)
    _seed_weights(_detectors(_load(name))["model"])
    common = ["--config", config, "--data.init_args.root", str(root), "--data.init_args.batch_size=2",
              "--data.init_args.num_workers=0", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false", "--model.init_args.model.init_args.min_size=64",
              "--model.init_args.model.init_args.max_size=96"]
    run_cli(["fit", *common, "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    ckpt = Path(_load(name)["trainer"]["default_root_dir"]) / "last.ckpt"
    assert ckpt.is_file()
    capsys.readouterr()

    cli = run_cli(["predict", *common, "--ckpt_path", str(ckpt),
                   '--model.init_args.model.init_args.detector_args={"score_thresh": 0.0, "detections_per_img": 4}'])
    writers = [cb for cb in cli.trainer.callbacks if isinstance(cb, DetectionWriter)]
    assert len(writers) == 1 and writers[0].path.name == "detections.json"
    detections = json.loads(writers[0].path.read_text())
    assert f"detections: {len(detections)} on 3 images written to {writers[0].path}" in capsys.readouterr().out
    sizes = {image_id: (width, height) for image_id, width, height, _ in VAL_IMAGES}
    per_image = {i: sum(d["image_id"] == i for d in detections) for i in sizes}
    assert all(1 <= n <= 4 for n in per_image.values()) and len(detections) == sum(per_image.values())
    for d in detections:
        assert set(d) == {"image_id", "category_id", "bbox", "score"} and isinstance(d["category_id"], int)
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert 0 <= d["category_id"] <= 90 and 0.0 <= d["score"] <= 1.0

    main(["export", "--ckpt_path", str(ckpt), "--config", config, "--output", "detector.pt"])
    exported = torch.load("detector.pt", weights_only=True)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert exported.keys() == {k[len("model."):] for k in saved if k.startswith("model.")}
    assert all(torch.equal(v, saved["model." + k]) for k, v in exported.items())
    network = build_detector("retinanet", "resnet18", weights_backbone="IMAGENET1K_V1", trainable_backbone_layers=4,
                             download=False)  # the config's student
    network.load_state_dict(exported)
    for fmt in ("torchscript", "onnx"):
        with pytest.raises(SystemExit, match=rf"^mgd-lightning export: error: --format {fmt}: detectors \(task: "
                                             r"detection\) are exported as --format state_dict only") as info:
            main(["export", "--ckpt_path", str(ckpt), "--config", config, "--format", fmt, "--output", "d.out"])
        assert "\n" not in str(info.value) and not Path("d.out").exists()
    # the backbone's weight file gone: a one-line error, not a download (the hub cache stays as it is)
    cache = sorted(p for p in (tmp_path / "torch").rglob("*") if p.is_file())
    for path in cache:
        path.unlink()
    with pytest.raises(SystemExit, match=r"^mgd-lightning export: error: building the network of --config as the "
                                         r"run did needs a weight file .*downloads are off: download=False.*export "
                                         r"does not download it") as info:
        main(["export", "--ckpt_path", str(ckpt), "--config", config, "--output", "again.pt"])
    assert "\n" not in str(info.value) and not [p for p in (tmp_path / "torch").rglob("*") if p.is_file()]
    assert cache and not Path("again.pt").exists()
