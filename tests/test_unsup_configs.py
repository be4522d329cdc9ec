"""The configs under ``configs/unsup/`` (the official unsupervised extension, MoCo-v2 + MGD): each parses, follows the
official recipe, and runs a few CPU steps.

The runs go through :func:`mgd_lightning.commands.cli.run_cli` on tiny ImageNet class folders; the teacher is a file
written in MoCo's own layout (``module.encoder_q.*`` with the MLP projection head, ``module.encoder_k.*``,
``module.queue``), and the evaluation configs (linear probe, few-label fine-tuning) load the checkpoint that running
the MoCo-v2 + MGD config writes. The command line changes only what a CPU test needs (as tests/test_configs.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml

pytest.importorskip("lightly")

from mgd_lightning.commands.cli import MGDCLI, run_cli  # noqa: E402
from mgd_lightning.distill.callback import MGDMatchingCallback  # noqa: E402
from mgd_lightning.distill.epoch_schedule import OFFICIAL_UNSUP_EPOCHS  # noqa: E402
from mgd_lightning.models import LinearProbe, MoCoV2  # noqa: E402
from tests.test_data import _make_folders  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "unsup"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
PRETRAIN = [c for c in CONFIGS if not c.startswith(("lincls", "finetune"))]
EVALUATE = [c for c in CONFIGS if c.startswith(("lincls", "finetune"))]
TINY = 32
TRAINER_ARGS = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu", "--trainer.devices=1",
                "--trainer.strategy=auto", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", "--mgd.num_samples=8"]


def _load(config: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / config).read_text())


def _header(config: str) -> str:
    lines = (CONFIG_DIR / config).read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def test_there_are_pretraining_and_evaluation_configs():
    assert {"mgd_amp_moco_v2_resnet18.yaml", "mgd_amp_moco_v2_resnet34.yaml", "moco_v2_resnet18.yaml",
            "mgd_amp_only_resnet18.yaml"} <= set(PRETRAIN)
    assert {"lincls_resnet18.yaml", "finetune_1pct_resnet18.yaml"} <= set(EVALUATE)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses_and_documents_its_command(config, monkeypatch):
    monkeypatch.setattr(MGDCLI, "instantiate_classes", lambda self: None)
    run_cli(["--config", str(CONFIG_DIR / config), "--data.init_args.root", "/nonexistent"], run=False)
    header = _header(config)
    assert f"mgd-lightning fit --config configs/unsup/{config}" in header and "--data.init_args.root" in header
    assert "kaiyuyue/mgd" in header and "unsup/" in header


@pytest.mark.parametrize("config", PRETRAIN)
def test_pretraining_config_follows_the_official_recipe(config):
    """unsup/main_moco_mgd.py with its README's command (--lr 0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus
    --cos, 200 epochs, weight decay 1e-4, warm-up 3 epochs from 0.001) and MoCo-v2's main_moco.py for MoCo alone."""
    cfg = _load(config)
    init = cfg["model"]["init_args"]
    assert init["task"] == "self_supervised"
    assert cfg["trainer"]["max_epochs"] == 200 and init["lr"] == 0.03 and init["momentum"] == 0.9
    assert init["nesterov"] is False and init["weight_decay"] == pytest.approx(1e-4)
    assert init["lr_schedule"] == "cosine"
    data = cfg["data"]["init_args"]
    assert data["two_views"] is True and data["batch_size"] * 8 == 256 and data["image_size"] == 224
    student = init.get("student", init.get("model"))
    if student["class_path"] == "mgd_lightning.models.MoCoV2":
        moco = student["init_args"]
        assert (moco["dim"], moco["queue_size"], moco["temperature"], moco["momentum"]) == (128, 65536, 0.2, 0.999)
    if cfg["model"]["class_path"] == "mgd_lightning.DistillationModule":
        assert init["warmup_epochs"] == 3 and init["warmup_factor"] == pytest.approx(0.001)
        assert init["reducer"] == "amp" and init["loss_factor"] == 1e4 and init["distill_weight"] == 1.0
        assert init["student_bn"] is True and "teacher_taps" not in init and "student_taps" not in init
        teacher = init["teacher"]["init_args"]
        assert teacher["name"] == "resnet50" and teacher["checkpoint_prefix"] == "moco"
        assert cfg["mgd"] == {"update_epochs": "official_unsup", "num_samples": 20000}
    else:
        assert "warmup_epochs" not in init and "mgd" not in cfg  # MoCo-v2's --cos: no warm-up


def test_linear_probe_config_is_mocos_main_lincls():
    cfg = _load("lincls_resnet18.yaml")
    init = cfg["model"]["init_args"]
    assert init["model"]["class_path"] == "mgd_lightning.models.LinearProbe"
    assert (init["lr"], init["momentum"], init["nesterov"], init["weight_decay"]) == (30.0, 0.9, False, 0.0)
    assert cfg["trainer"]["max_epochs"] == 100 and init["lr_milestones"] == [60, 80]
    assert "val/best_err1" in _header("lincls_resnet18.yaml")  # MoCo reports its best epoch


# ---------------------------------------------------------------------------------------------- runs
def _moco_teacher_file(path: Path) -> Path:
    """A MoCo-v2 pre-training file of a random ResNet-50, in MoCo's own layout (DDP-wrapped, MLP head)."""
    encoder_q = torchvision.models.resnet50(num_classes=128)
    encoder_q.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), encoder_q.fc)
    state = {f"module.encoder_q.{k}": v for k, v in encoder_q.state_dict().items()}
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in encoder_q.state_dict().items()})
    state.update({"module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("unsup-configs")
    return {"data": _make_folders(root / "imagenet", {"train": 3, "val": 1}),
            "teacher": _moco_teacher_file(root / "moco_v2_200ep_pretrain.pth.tar"), "root": root}


def _fit(config: str, ws: dict[str, Path], extra: tuple[str, ...] = ()):
    cfg = _load(config)
    args = ["fit", "--config", str(CONFIG_DIR / config), *TRAINER_ARGS, *extra, "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0", "--data.init_args.root", str(ws["data"]),
            f"--data.init_args.image_size={TINY}", f"--data.init_args.resize_size={TINY + 4}"]
    if cfg["model"]["class_path"] == "mgd_lightning.DistillationModule":
        args += [f"--model.init_args.input_size=[3, {TINY}, {TINY}]",
                 f"--model.init_args.teacher.init_args.checkpoint={ws['teacher']}"]
    return run_cli(args)


@pytest.mark.parametrize("config", PRETRAIN)
def test_pretraining_config_runs_without_labels(config, workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _fit(config, workspace)
    trainer, module = cli.trainer, cli.model
    assert trainer.state.finished and trainer.global_step == 2
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    is_moco = isinstance(module.model, MoCoV2)
    assert is_moco == (not config.startswith("mgd_amp_only"))
    matcher = next(cb for cb in trainer.callbacks if isinstance(cb, MGDMatchingCallback))
    if config.startswith("mgd_amp"):
        assert "train/distill" in metrics and ("train/infonce" in metrics) == is_moco
        assert tuple(matcher.update_epochs) == tuple(OFFICIAL_UNSUP_EPOCHS) and len(matcher.history) == 1
        # the teacher is MoCo's query encoder, read from MoCo's layout, its own classifier head kept
        assert module.teacher.conv1.weight.shape == (64, 3, 7, 7)
    else:
        assert matcher.history == []
    name = config.removesuffix(".yaml")
    assert (Path(f"runs/unsup/{name}") / "last.ckpt").is_file()


@pytest.fixture(scope="module")
def pretrained(workspace, tmp_path_factory):
    """The checkpoint the MoCo-v2 + MGD ResNet-18 config writes, where the evaluation configs read it."""
    run_dir = tmp_path_factory.mktemp("pretrained")
    cwd = Path.cwd()
    import os

    os.chdir(run_dir)
    try:
        _fit("mgd_amp_moco_v2_resnet18.yaml", workspace)
    finally:
        os.chdir(cwd)
    path = run_dir / "runs" / "unsup" / "mgd_amp_moco_v2_resnet18" / "last.ckpt"
    assert path.is_file()
    return path


@pytest.mark.parametrize("config", EVALUATE)
def test_evaluation_config_runs_on_the_pretrained_encoder(config, workspace, pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = Path(_load(config)["model"]["init_args"]["model"]["init_args"].get("network", {}).get(
        "init_args", _load(config)["model"]["init_args"]["model"]["init_args"])["checkpoint"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(pretrained)
    cli = _fit(config, workspace, ("--model.init_args.lr=0.01",))
    trainer, module = cli.trainer, cli.model
    assert trainer.state.finished and 0 <= float(trainer.callback_metrics["val/acc1"]) <= 1
    encoder_state = torch.load(pretrained, map_location="cpu", weights_only=False)["state_dict"]
    net = module.model.encoder if isinstance(module.model, LinearProbe) else module.model
    if isinstance(module.model, LinearProbe):  # frozen: exactly the pre-trained encoder after training
        assert not any(p.requires_grad for p in net.parameters())
        assert torch.equal(net.conv1.weight, encoder_state["model.encoder.conv1.weight"])
        assert torch.equal(net.bn1.running_mean, encoder_state["model.encoder.bn1.running_mean"])
    else:  # fine-tuned from it: the whole network trains, from the encoder
        assert all(p.requires_grad for p in net.parameters())
        assert not torch.equal(net.conv1.weight, encoder_state["model.encoder.conv1.weight"])
        assert int(net.bn1.num_batches_tracked) == int(encoder_state["model.encoder.bn1.num_batches_tracked"]) + 2
