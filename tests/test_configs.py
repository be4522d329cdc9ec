"""The configs under ``configs/``: each parses, follows the paper's recipe, and runs a few CPU steps.

The runs go through :func:`mgd_lightning.commands.cli.run_cli` (in process) on tiny data written in the real on-disk
formats (the CUB_200_2011 archive, torchvision's cifar-100-python pickles, ImageNet class folders), with
torchvision weight files pre-seeded in a temporary torch hub cache (random weights of the right architecture)
and the teachers' checkpoints produced by running the teacher configs themselves. The command line changes only
what a CPU test needs: the data root, tiny images, batch size, loader workers, the length of the run, the
device, ``input_size`` of the distillation probe and ``mgd.num_samples``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml

from mgd_lightning.commands.cli import MGDCLI, run_cli
from mgd_lightning.distill.callback import MGDMatchingCallback
from mgd_lightning.distill.classifier import ClassificationModule, infer_num_classes
from mgd_lightning.distill.module import DistillationModule
from mgd_lightning.models import PACKAGE_MODELS, weights_path
from tests.test_data import _make_cifar, _make_cub, _make_folders
from tests.test_schedules import official_schedule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# configs/coco/ (detection, paper Table 4): tests/test_detection_configs.py; configs/unsup/ (the official unsupervised
# extension, MoCo-v2 + MGD): tests/test_unsup_configs.py
CONFIGS = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")
                 if p.parent.name not in ("coco", "unsup"))
IDS = [c.removesuffix(".yaml") for c in CONFIGS]

CUB = "mgd_lightning.data.CUB200DataModule"
CIFAR = "mgd_lightning.data.CIFAR100DataModule"
IMAGENET = "mgd_lightning.data.ImageNetDataModule"
DIGITS = "mgd_lightning.data.DigitsDataModule"
DISTILL = "mgd_lightning.DistillationModule"
CLASSIFY = "mgd_lightning.ClassificationModule"
CHECKPOINT = "pytorch_lightning.callbacks.ModelCheckpoint"

TINY = 32  # image side of the CUB-200 / ImageNet runs here (224 in the configs)
STEPS = 2
FILE_BATCHES = 1000  # BatchNorm num_batches_tracked in the seeded weight files
TRAINER_ARGS = [
    "--trainer.max_epochs", "1",
    f"--trainer.limit_train_batches={STEPS}",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--mgd.num_samples=8",
]

# The paper's recipes (section 4, "Experimental Setting"; reference code for CUB-200 / ImageNet weight decay).
# The schedules (epochs, milestones, warm-up, Nesterov) are checked against the official code in test_schedules.py.
RECIPES = {
    CUB: dict(classes=200, weight_decay=1e-4, update=2, num_samples=None),
    CIFAR: dict(classes=100, weight_decay=5e-4, update=2, num_samples=None),
    IMAGENET: dict(classes=1000, weight_decay=1e-4, update=1, num_samples=20000),
}


# ---------------------------------------------------------------------------------------------- config access
def _load(config: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / config).read_text())


def _networks(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``build_model`` arguments by role: ``model`` (ClassificationModule) or ``teacher`` / ``student``."""
    init = cfg["model"]["init_args"]
    return {role: init[role]["init_args"] for role in ("model", "teacher", "student") if role in init}


def _trained(cfg: dict[str, Any]) -> dict[str, Any]:
    nets = _networks(cfg)
    return nets.get("student", nets.get("model"))


def _checkpoint_callback(cfg: dict[str, Any]) -> dict[str, Any]:
    (init,) = [cb["init_args"] for cb in cfg["trainer"].get("callbacks", []) if cb["class_path"] == CHECKPOINT]
    return init


def _produces(cfg: dict[str, Any]) -> str:
    init = _checkpoint_callback(cfg)
    return f"{init['dirpath']}/{init['filename']}.ckpt"


def _producer_of(checkpoint: str) -> str:
    """The config whose ModelCheckpoint writes ``checkpoint``."""
    found = [c for c in CONFIGS if "callbacks" in _load(c)["trainer"] and _produces(_load(c)) == checkpoint]
    assert len(found) == 1, f"{checkpoint}: written by {found or 'no config'}"
    return found[0]


def _header(config: str) -> str:
    lines = (CONFIG_DIR / config).read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))])


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_config_parses_and_documents_its_command(config, monkeypatch):
    """jsonargparse checks every key and type against the signatures (no class is instantiated here)."""
    monkeypatch.setattr(MGDCLI, "instantiate_classes", lambda self: None)
    args = ["--config", str(CONFIG_DIR / config)]
    if _load(config)["data"]["class_path"] != DIGITS:
        args += ["--data.init_args.root", "/nonexistent"]
    cli = run_cli(args, run=False)
    assert cli.config.model.class_path in (DISTILL, CLASSIFY)
    header = _header(config)
    assert f"mgd-lightning fit --config configs/{config}" in header
    if not config.startswith("digits/"):
        assert "paper Table" in header and "--data.init_args.root" in header
    for net in _networks(_load(config)).values():  # where a teacher of an earlier run is expected, and who writes it
        if net.get("checkpoint"):
            assert net["checkpoint"] in header and f"configs/{_producer_of(net['checkpoint'])}" in header


@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.startswith("digits/")],
                         ids=[i for i in IDS if not i.startswith("digits/")])
def test_config_follows_the_paper_recipe(config):
    cfg = _load(config)
    recipe = RECIPES[cfg["data"]["class_path"]]
    init = cfg["model"]["init_args"]
    trained = _trained(cfg)
    expected = official_schedule(config)  # the official code's schedule (tests/test_schedules.py)
    assert cfg["trainer"]["max_epochs"] == expected["epochs"] and init.get("warmup_epochs", 0) == expected["warmup"]
    assert init["lr_milestones"] == expected["milestones"] and init["lr_gamma"] == 0.1
    assert init["momentum"] == 0.9 and init["nesterov"] is expected["nesterov"]
    assert init["weight_decay"] == pytest.approx(recipe["weight_decay"])
    assert "margin_reduction" not in init  # the default ("official") everywhere
    assert init["lr"] == (0.01 if trained.get("weights") else 0.1)  # pre-trained: 0.01, from scratch: 0.1
    assert all(net["num_classes"] == recipe["classes"] for net in _networks(cfg).values())
    name = Path(config).stem
    run_dir = f"runs/{Path(config).parent}/{name}"
    assert cfg["trainer"]["default_root_dir"] == _checkpoint_callback(cfg)["dirpath"] == run_dir
    assert _checkpoint_callback(cfg)["monitor"] == "val/acc1" and _checkpoint_callback(cfg)["mode"] == "max"
    if cfg["model"]["class_path"] == DISTILL:
        if init.get("distiller", "mgd") == "mgd":
            assert cfg["mgd"]["update_every_n_epochs"] == recipe["update"]
            assert cfg["mgd"]["num_samples"] == recipe["num_samples"]
            assert init["reducer"] == name.split("_")[1]  # mgd_<reducer>_...
        else:  # a competing baseline: <distiller>_<student>, no matching to configure
            assert init["distiller"] == name.split("_")[0] and "mgd" not in cfg and "reducer" not in init
        teacher = _networks(cfg)["teacher"]
        if "checkpoint" in teacher:  # the teacher of an earlier run: a teacher config of the same folder writes it
            producer = _load(_producer_of(teacher["checkpoint"]))
            assert producer["model"]["class_path"] == CLASSIFY
            assert _networks(producer)["model"]["name"] == teacher["name"]
            assert teacher.get("checkpoint_prefix", "model.") == "model."
        else:
            assert teacher["weights"] == "IMAGENET1K_V1"


def _torchvision_name(name: str) -> str:
    """The torchvision model whose weight file a package model loads: the reference code's students
    (``mobilenet_v2_mgd``, ``shufflenet_v2_x1_0_mgd``) load torchvision's ImageNet weights unchanged."""
    return name.removesuffix("_mgd")


CUB_STUDENTS = {"mobilenet_v2": "mobilenet_v2_mgd", "shufflenet_v2": "shufflenet_v2_x1_0_mgd"}


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("cub200/") and "resnet50" not in c],
                         ids=[i for i in IDS if i.startswith("cub200/") and "resnet50" not in i])
def test_cub_students_are_the_reference_architectures(config):
    """Every CUB-200 MobileNet-V2 / ShuffleNet-V2 run (MGD, FT, FS and the competing baselines) trains the reference
    code's student: ``mobilenet_v2_mgd`` (strides of the 64 / 96-channel stages switched, 3 taps paired with
    ResNet-50) and ``shufflenet_v2_x1_0_mgd`` (pre-ReLU unit outputs)."""
    (student,) = [v for k, v in CUB_STUDENTS.items() if Path(config).stem.endswith(k)]
    assert _trained(_load(config))["name"] == student


def test_cub_shufflenet_mgd_config_states_and_runs_the_official_stage4_tap():
    """The paper's ShuffleNet-V2 CUB numbers come from the official code, whose inplace ReLU makes the stage-4 tap
    post-ReLU: the MGD config runs that tap (arch_args) and says so, and why, in its own header."""
    from mgd_lightning.models import build_model

    config = "cub200/mgd_amp_shufflenet_v2.yaml"
    student = _trained(_load(config))
    assert student["arch_args"] == {"post_relu_stage4_tap": True}
    header = " ".join(line for line in (CONFIG_DIR / config).read_text().splitlines() if line.startswith("#"))
    assert "Stage-4 tap: POST-ReLU" in header and "25.95" in header and "post_relu_stage4_tap: false" in header
    model = build_model(student["name"], num_classes=10, arch_args=student["arch_args"])
    assert model.distillation_taps[-1] == "conv5_relu"


def test_cifar_resnet56_student_is_overhauls():
    """Paper Table 1's "ResNet s:56-2" is Overhaul's setting (d) student, ``ResNet(depth=56)`` of its
    CIFAR-100/models/ResNet.py: 16/32/64 channels, 9 basic blocks per stage, 0.86 M parameters (861,620 with
    100 classes, counted here layer by layer from that architecture), with the WRN-28-4 teacher."""
    from mgd_lightning.models import CifarBasicBlock, build_model

    cfg = _load("cifar100/mgd_amp_resnet56.yaml")
    assert _networks(cfg)["teacher"]["name"] == "wrn_28_4"
    model = build_model(**_networks(cfg)["student"])

    def overhaul_resnet56_parameters(n: int = 9, classes: int = 100) -> int:
        total, c_in = 3 * 16 * 9 + 2 * 16, 16  # stem conv 3x3 + BN
        for c in (16, 32, 64):
            for _ in range(n):  # conv3x3 + BN + conv3x3 + BN (+ 1x1 conv + BN downsample where the shape changes)
                total += c_in * c * 9 + 2 * c + c * c * 9 + 2 * c + (c_in * c + 2 * c if c_in != c else 0)
                c_in = c
        return total + 64 * classes + classes  # fc

    assert overhaul_resnet56_parameters() == 861_620
    assert sum(p.numel() for p in model.parameters()) == 861_620
    for i, channels in enumerate((16, 32, 64), start=1):
        blocks = list(getattr(model, f"layer{i}"))
        assert len(blocks) == 9 and all(type(b) is CifarBasicBlock for b in blocks)
        assert all(b.conv1.out_channels == b.conv2.out_channels == channels for b in blocks)
    assert model.conv1.out_channels == 16 and model.fc.in_features == 64


def test_competing_baselines_use_their_authors_recipes():
    """KD at mdistiller's recipe (T = 4, CE 0.1, KD 0.9; the CUB-200 run too, see its header); FitNets and AT at
    their distillers' own defaults (no tap_weights / loss_factor); OFD and MGD keep their explicit divisors."""
    for config in CONFIGS:
        init = _load(config)["model"]["init_args"]
        distiller = init.get("distiller", "mgd" if "teacher" in init else None)
        if distiller == "kd":
            assert (init["kd_temperature"], init["ce_weight"], init["kd_weight"]) == (4.0, 0.1, 0.9), config
        elif distiller in ("fitnets", "at"):
            assert "loss_factor" not in init and "tap_weights" not in init, config
        elif distiller in ("ofd", "mgd") and not config.startswith("digits/"):
            expected = 1e3 if config.startswith("cifar100/") else 1e4
            assert init["loss_factor"] == expected and "tap_weights" not in init, config


# ---------------------------------------------------------------------------------------------- runs
class Workspace:
    """Tiny data sets, the torch hub cache and the teachers' runs of one test module, made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.teachers = root / "teachers"  # cwd of the teacher runs whose best.ckpt the distillation runs load
        self._roots: dict[str, str] = {}

    def data_root(self, data_class: str) -> str | None:
        if data_class == DIGITS:
            return None
        if data_class not in self._roots:
            parent = self.root / "data"
            if data_class == CUB:
                path = _make_cub(parent, num_classes=4, per_class=4)  # 8 training, 8 test images
            elif data_class == CIFAR:
                path = _make_cifar(parent / "cifar", n_train=20, n_test=8)
            else:
                path = _make_folders(parent / "imagenet", {"train": 3, "val": 1})  # 9 training, 3 val images
            self._roots[data_class] = str(path)
        return self._roots[data_class]

    @staticmethod
    def seed_weights(net: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Random torchvision weights of ``net``'s architecture where ``weights=...`` looks for the file.

        Every BatchNorm's ``num_batches_tracked`` is set to ``FILE_BATCHES`` in the file (a fresh model has 0), so
        a run shows that it started from the file however far two steps on random weights move the parameters.
        """
        name = _torchvision_name(net["name"])
        weight = torchvision.models.get_model_weights(name)[net["weights"]]
        path = weights_path(weight.url)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            state = torchvision.models.get_model(name).state_dict()
            for key in state:
                if key.endswith("num_batches_tracked"):
                    state[key] = torch.tensor(FILE_BATCHES)
            torch.save(state, path)
        return torch.load(path, weights_only=True)

    def teacher_checkpoint(self, checkpoint: str) -> Path:
        """``checkpoint`` (a path relative to the run folder) as written by the config that produces it.

        That config runs once, in :attr:`teachers`, with a tiny learning rate: two steps at the recipe's rate
        on random weights and 32 px images blow the network up (BatchNorm over a few values), and a
        non-finite teacher would make every distillation run non-finite.
        """
        path = self.teachers / checkpoint
        if not path.is_file():
            cwd = Path.cwd()
            self.teachers.mkdir(exist_ok=True)
            os.chdir(self.teachers)
            try:
                _fit(_producer_of(checkpoint), self, ["--model.init_args.lr=1e-4"])
            finally:
                os.chdir(cwd)
            assert path.is_file()
        return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("configs"))


@pytest.fixture
def in_run_dir(workspace, tmp_path, monkeypatch) -> Workspace:
    """cwd = a fresh folder (the configs' relative ``runs/...`` paths land there); torch hub cache in the workspace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(workspace.root / "torch"))
    return workspace


def _fit(config: str, ws: Workspace, extra: Sequence[str] = ()) -> MGDCLI:
    """Run ``mgd-lightning fit --config configs/<config>`` for ``STEPS`` steps in the current folder, after
    seeding the weight files it names and linking the teacher checkpoints it loads."""
    cfg = _load(config)
    for net in _networks(cfg).values():
        if net.get("weights"):
            ws.seed_weights(net)
        if net.get("checkpoint") and not Path(net["checkpoint"]).exists():
            Path(net["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
            Path(net["checkpoint"]).symlink_to(ws.teacher_checkpoint(net["checkpoint"]))
    data_class = cfg["data"]["class_path"]
    args = ["fit", "--config", str(CONFIG_DIR / config), *TRAINER_ARGS, *extra,
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0"]
    root = ws.data_root(data_class)
    if root is not None:
        args += ["--data.init_args.root", root]
    if data_class in (CUB, IMAGENET):
        args += [f"--data.init_args.image_size={TINY}", f"--data.init_args.resize_size={TINY + 4}"]
        if cfg["model"]["class_path"] == DISTILL:
            args += [f"--model.init_args.input_size=[3, {TINY}, {TINY}]"]
    return run_cli(args)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_config_runs(config, in_run_dir):
    ws = in_run_dir
    cfg = _load(config)
    cli = _fit(config, ws)
    trainer, module = cli.trainer, cli.model
    assert trainer.state.finished and trainer.global_step == STEPS and trainer.current_epoch == 1
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and 0 <= float(metrics["val/acc1"]) <= 1
    assert infer_num_classes(module.model) == _trained(cfg)["num_classes"]

    if "callbacks" in cfg["trainer"]:  # the checkpoint a later config loads, where the config says
        best, last = Path(_produces(cfg)), Path(_produces(cfg)).with_name("last.ckpt")
        assert best.is_file() and last.is_file()
        assert Path(trainer.checkpoint_callback.best_model_path).resolve() == best.resolve()
        saved = torch.load(best, map_location="cpu", weights_only=False)
        assert saved["global_step"] == STEPS and any(k.startswith("model.") for k in saved["state_dict"])

    trained = _trained(cfg)
    tracked = [v for k, v in module.model.state_dict().items() if k.endswith("num_batches_tracked")]
    if tracked:  # BatchNorm statistics: from the hub-cache file or fresh, then STEPS training batches
        start = FILE_BATCHES if trained.get("weights") else 0
        assert all(int(v) == start + STEPS for v in tracked)

    matcher = next(cb for cb in trainer.callbacks if isinstance(cb, MGDMatchingCallback))
    if cfg["model"]["class_path"] == CLASSIFY:
        assert type(module) is ClassificationModule and matcher.history == []
        return

    assert isinstance(module, DistillationModule)
    init = cfg["model"]["init_args"]
    distiller = init.get("distiller", "mgd")
    assert module.distiller_name == distiller
    if distiller != "mgd":  # a competing baseline: no matching pass, its own term in the loss
        assert module.assignment is None and matcher.history == []
        assert float(metrics["train/kd" if distiller == "kd" else "train/distill"]) > 0
    else:
        assert module.reducer == init["reducer"]
        assert module.assignment == ("sparse" if init["reducer"] == "sm" else "balanced")
        # the matching ran once, before the first epoch, on min(num_samples, training set) images
        assert len(matcher.history) == 1 and matcher.history[0]["epoch"] == 0
        assert matcher.history[0]["images"] == min(8, len(trainer.datamodule.train_dataset))
        assert int(module.last_matching_epoch) == 0
        assert all(torch.isfinite(torch.tensor(v)) for k, v in matcher.history[0].items() if k.startswith("cost_tap"))
        assert float(metrics["train/distill"]) > 0  # the MGD term is in the loss
        for groups, (c_s, c_t, _, _) in zip(module.matchings, module.tap_shapes):
            assert groups.shape == (c_s, 1 if init["reducer"] == "sm" else c_t // c_s)
            assert groups.unique().numel() == groups.numel() and 0 <= int(groups.min()) and int(groups.max()) < c_t
    # the frozen teacher is exactly what the config points at: a run's checkpoint or the hub-cache file
    teacher = _networks(cfg)["teacher"]
    if teacher.get("checkpoint"):
        state = torch.load(teacher["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
        expected = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    elif teacher.get("weights"):
        expected = ws.seed_weights(teacher)
    else:
        assert teacher["name"] in PACKAGE_MODELS  # digits: a fresh package model
        return
    actual = module.teacher.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
