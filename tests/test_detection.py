"""Detection as a task of the same distillation mechanism: torchvision detectors, backbone-body taps, the matching
pass on detection batches, the step schedule, checkpoints and 2-process DDP (random-init models, tiny images)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset
from torchvision.ops.misc import FrozenBatchNorm2d

from mgd_lightning import ClassificationModule, DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.data import COCODataModule, collate_detection
from mgd_lightning.distill.step_schedule import (
    REFERENCE_DETECTION_SCHEDULE,
    check_step_schedule,
    is_scheduled_step,
    scheduled_steps,
)
from mgd_lightning.distill.taps import preset_taps
from mgd_lightning.matching import channel_cost
from mgd_lightning.models import build_detector, weights_path
from mgd_lightning.models.detection import group_norm
from mgd_lightning.tasks import DetectionTask
from tests.coco_tree import write_coco_tree
from tests.toys import ToyNet, digits_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = {"min_size": 64, "max_size": 96}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_coco_tree(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return build_detector("retinanet", "resnet50", **SIZE), build_detector("retinanet", "resnet18", **SIZE)


def _module(nets, **kwargs) -> DistillationModule:
    teacher, student = nets
    student = build_detector("retinanet", "resnet18", **SIZE)
    student.load_state_dict(nets[1].state_dict())  # a fresh copy: tests train it
    return DistillationModule(teacher, student, **{"task": "detection", "input_size": (3, 64, 64), **kwargs})


def _trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    return pl.Trainer(callbacks=list(callbacks), **{**options, **kwargs})


# ---------------------------------------------------------------------------------------------- models and taps
@pytest.mark.parametrize("backbone, names, channels", [
    ("resnet18", [f"layer{k}.1.relu" for k in range(1, 5)], [64, 128, 256, 512]),
    ("mobilenet_v2", ["3.conv.1.1", "6.conv.1.1", "13.conv.1.1", "17.conv.1.1"], [144, 192, 576, 960]),
    ("mobilenet_v2_mgd", ["7.conv.1.1", "11.conv.1.1", "17.conv.1.1"], [192, 384, 960]),
])
def test_backbone_body_taps_are_pre_activation_stage_outputs(backbone, names, channels):
    """Taps in the backbone body (not the FPN): ResNet c2-c5 before the last ReLU, MobileNet-V2 depthwise-BN outputs;
    strides 4-32 (8-32 for the reference student), and values below zero (pre-activation)."""
    from mgd_lightning.distill.taps import FeatureTaps

    model = build_detector("retinanet", backbone, **SIZE).eval()
    body = model.backbone.body
    taps = preset_taps(body)
    assert [t.module for t in taps] == names
    hooks = FeatureTaps(body, taps)
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])
    feats = hooks.features
    assert [f.shape[1] for f in feats] == channels
    strides = [64 // f.shape[-1] for f in feats]
    assert strides == ([8, 16, 32] if backbone == "mobilenet_v2_mgd" else [4, 8, 16, 32])
    assert all(bool((f < 0).any()) for f in feats)


def test_build_detector_errors_name_the_argument():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_detector("yolo")
    with pytest.raises(ValueError, match="backbone must be one of.*'vgg16'"):
        build_detector("retinanet", "vgg16")
    with pytest.raises(ValueError, match="weights='COCO_V1'.*only on resnet50"):
        build_detector("retinanet", "resnet18", weights="COCO_V1")
    with pytest.raises(ValueError, match="weights_backbone='NOPE' is not a weight of torchvision's resnet18"):
        build_detector("retinanet", "resnet18", weights_backbone="NOPE")


def test_missing_weight_file_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"retinanet_resnet50_fpn/COCO_V1 are not available offline"):
        build_detector("retinanet", "resnet50", weights="COCO_V1")


# ---------------------------------------------------------------------------------------------- student norms
def _seed_resnet18_weights(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """A ResNet-18 'IMAGENET1K_V1' file in a temporary hub cache, whose BatchNorms have distinct affine values."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
    path = weights_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net.state_dict()


def _trainable_norms(body: torch.nn.Module) -> dict[str, torch.nn.Module]:
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, FrozenBatchNorm2d)
    return {n: m for n, m in body.named_modules()
            if isinstance(m, norm_types) and any(p.requires_grad for p in m.parameters(recurse=False))}


def test_resnet_student_has_the_reference_stage_last_groupnorms(tmp_path, monkeypatch):
    """The reference d2 student (ENABLE_STAGE_LAST_NORM, FREEZE_AT = 1): the last block of each of the 4 stages has
    GroupNorm(32) norms, trainable, holding the ImageNet BN's weight and bias; every other norm is frozen BN; the
    stem is frozen: 4 stages x 2 norms x (weight, bias) = 16 trainable norm tensors for ResNet-18."""
    imagenet = _seed_resnet18_weights(tmp_path, monkeypatch)
    student = build_detector("retinanet", "resnet18", weights_backbone="IMAGENET1K_V1", trainable_backbone_layers=4,
                             **SIZE)
    body = student.backbone.body
    names = [f"layer{k}.1.bn{j}" for k in range(1, 5) for j in (1, 2)]
    trainable = _trainable_norms(body)
    assert sorted(trainable) == names
    assert sum(1 for m in trainable.values() for _ in m.parameters()) == 16
    for name, gn in trainable.items():
        assert type(gn) is torch.nn.GroupNorm and gn.num_groups == 32 and gn.num_channels == gn.weight.numel()
        assert torch.equal(gn.weight.detach(), imagenet[f"{name}.weight"])
        assert torch.equal(gn.bias.detach(), imagenet[f"{name}.bias"])
    others = [m for n, m in body.named_modules() if n not in names and "bn" in n.rsplit(".", 1)[-1]
              or n.endswith("downsample.1")]
    assert others and all(type(m) is FrozenBatchNorm2d for m in others)
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert all(p.requires_grad for k in range(1, 5) for p in getattr(body, f"layer{k}")[0].conv1.parameters())

    # 3 trainable stages (torchvision's default, Detectron2's FREEZE_AT = 2): layer1 keeps its frozen norms
    three = build_detector("retinanet", "resnet18", weights_backbone="IMAGENET1K_V1", **SIZE).backbone.body
    assert sorted(_trainable_norms(three)) == names[2:]
    # opt-out: torchvision's frozen BN everywhere, no norm trains
    frozen = build_detector("retinanet", "resnet18", weights_backbone="IMAGENET1K_V1", trainable_backbone_layers=4,
                            stage_last_norm="none", **SIZE).backbone.body
    assert _trainable_norms(frozen) == {} and not any(isinstance(m, torch.nn.GroupNorm) for m in frozen.modules())


def test_stage_last_norm_defaults_and_errors():
    # random init (the demo, the tests' students): trainable BatchNorm2d everywhere, no GroupNorm
    body = build_detector("retinanet", "resnet18", **SIZE).backbone.body
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in body.modules())
    grouped = build_detector("retinanet", "resnet18", stage_last_norm="groupnorm", **SIZE).backbone.body
    assert sorted(n for n, m in grouped.named_modules() if isinstance(m, torch.nn.GroupNorm)) == [
        f"layer{k}.1.bn{j}" for k in range(1, 5) for j in (1, 2)]
    with pytest.raises(ValueError, match="stage_last_norm must be one of.*'gn'"):
        build_detector("retinanet", "resnet18", stage_last_norm="gn", **SIZE)
    with pytest.raises(ValueError, match="stage_last_norm='groupnorm' is for ResNet.*'mobilenet_v2'"):
        build_detector("retinanet", "mobilenet_v2", stage_last_norm="groupnorm", **SIZE)
    assert group_norm(512).num_groups == 32 and group_norm(144).num_groups == 24 and group_norm(20).num_groups == 20


def test_tap_norms_follow_the_task(nets):
    """The student-side norm on each distilled tap: GroupNorm(32, C) for detection (reference mgd/builder.py,
    det=True), BatchNorm2d for classification; DetectionTask(tap_norm="batchnorm") opts into BatchNorm."""
    m = _module(nets)
    assert [type(n) for n in m.student_bns] == [torch.nn.GroupNorm] * 4
    assert [(n.num_groups, n.num_channels) for n in m.student_bns] == [(32, 64), (32, 128), (32, 256), (32, 512)]
    bn = _module(nets, task=DetectionTask(tap_norm="batchnorm"))
    assert [type(n) for n in bn.student_bns] == [torch.nn.BatchNorm2d] * 4
    classification = DistillationModule(ToyNet((12, 24)), ToyNet((6, 8)))
    assert classification.student_bns and all(type(n) is torch.nn.BatchNorm2d for n in classification.student_bns)
    with pytest.raises(ValueError, match="tap_norm must be one of.*'layernorm'"):
        DetectionTask(tap_norm="layernorm")


def test_detection_norms_have_no_weight_decay(nets):
    """Detectron2's WEIGHT_DECAY_NORM = 0: the norms' own parameters (the student's and the tap norms) in a group
    without weight decay, every other trainable parameter decayed; classification decays all, in one group."""
    m = _module(nets, weight_decay=1e-4)
    groups = m.configure_optimizers()["optimizer"].param_groups
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    norm_ids = {id(p) for mod in (m.student, m.student_bns) for sub in mod.modules()
                if isinstance(sub, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for p in sub.parameters(recurse=False)}
    trainable = [p for mod in m.trainable_modules() for p in mod.parameters() if p.requires_grad]
    assert {id(p) for p in groups[1]["params"]} == norm_ids and len(norm_ids) == 2 * (4 + 20)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(trainable)
    decayed = _module(nets, weight_decay_norm=1e-4).configure_optimizers()["optimizer"].param_groups
    assert [g["weight_decay"] for g in decayed] == [1e-4] and len(decayed[0]["params"]) == len(trainable)
    cls = DistillationModule(ToyNet((12, 24)), ToyNet((6, 8))).configure_optimizers()["optimizer"].param_groups
    assert len(cls) == 1 and cls[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="weight_decay_norm must be >= 0.*-1"):
        _module(nets, weight_decay_norm=-1)


def test_tap_pairs_need_equal_strides(nets):
    with pytest.raises(ValueError, match=r"tap pair 0.*spatial sizes must be equal"):
        _module(nets, teacher_taps=["layer1.2.relu:input"], student_taps=["layer2.1.relu:input"])


def test_teacher_and_student_must_normalise_alike(nets):
    other = build_detector("retinanet", "resnet18", detector_args={"image_mean": [0.5, 0.5, 0.5]}, **SIZE)
    with pytest.raises(ValueError, match=r"normalise images alike.*image_mean=\[0.5, 0.5, 0.5\]"):
        DistillationModule(nets[0], other, task="detection", input_size=(3, 64, 64))


def test_estimate_margins_is_a_clear_error_for_detection(nets):
    module = _module(nets)
    before = [None if m is None else m.clone() for m in module.margins]
    with pytest.raises(ValueError, match=r"estimate_margins supports the classification and self-supervised tasks"):
        module.estimate_margins([[torch.rand(3, 64, 64)]])
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(module.margins, before))


def test_detection_has_no_logits_for_kd(nets):
    with pytest.raises(ValueError, match=r"task='detection' has no class logits.*kd_weight=1.0"):
        DistillationModule(nets[0], nets[1], task="detection", kd_weight=1.0, input_size=(3, 64, 64))
    with pytest.raises(ValueError, match="task must be one of"):
        DistillationModule(nets[0], nets[1], task="segmentation", input_size=(3, 64, 64))


# ---------------------------------------------------------------------------------------------- training
def test_detection_module_trains_and_evaluates(nets, tree, tmp_path):
    m = _module(nets)
    assert m.tap_shapes == [(64, 256, 16, 16), (128, 512, 8, 8), (256, 1024, 4, 4), (512, 2048, 2, 2)]
    assert all(mg is not None for mg in m.margins)
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in m.student.state_dict().items()}
    cb = MGDMatchingCallback(update_every_n_steps=1, num_samples=3)
    trainer = _trainer(tmp_path, [cb], limit_val_batches=1)
    trainer.fit(m, COCODataModule(str(tree), batch_size=2))
    metrics = trainer.callback_metrics
    for key in ("train/classification", "train/bbox_regression", "train/distill", "train/loss"):
        assert torch.isfinite(metrics[key]) and float(metrics[key]) > 0, key
    for key in ("val/map", "val/map_50", "val/map_75", "val/map_small", "val/map_medium", "val/map_large"):
        assert key in metrics
    assert [(h["step"], h["images"]) for h in cb.history] == [(0, 3), (1, 3)]
    assert all(torch.equal(v, teacher_before[k]) for k, v in m.teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in m.student.state_dict().items())
    assert not m.teacher.training


def test_plain_detection_training_with_classification_module(nets, tree, tmp_path):
    model = build_detector("retinanet", "resnet18", **SIZE)
    module = ClassificationModule(model, task="detection", lr_interval="step", lr_milestones=[1], warmup_steps=1,
                                  warmup_factor=0.001)
    trainer = _trainer(tmp_path, limit_val_batches=1)
    trainer.fit(module, COCODataModule(str(tree), batch_size=2))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/map" in trainer.callback_metrics
    # warm-up then the step milestone: 0.001 x lr at step 0, lr x 0.1 from step 1 on
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.1)
    with pytest.raises(ValueError, match="warmup_steps=5 needs lr_interval='step'"):
        ClassificationModule(model, task="detection", warmup_steps=5)


def test_matching_pass_on_detection_batches_is_the_sum_over_its_images(nets, tree, tmp_path):
    """The pass's cost equals the per-image channel costs of the subset it drew (raw student taps, eval mode), its
    loader uses the training loader's list collate, and the images count is the subset size."""
    m = _module(nets)
    cb = MGDMatchingCallback(num_samples=3, seed=3)
    dm = COCODataModule(str(tree), batch_size=2)
    trainer = _trainer(tmp_path, [cb], max_steps=1, limit_val_batches=0)
    trainer.fit(m, dm)
    assert cb.history[0]["images"] == 3 and len(cb.last_indices) == 3
    m.eval()
    dataset = dm.matching_dataset()
    expected = [torch.zeros_like(c) for c in cb.last_costs]
    with torch.no_grad():
        cb.update_matching(trainer, m)  # a pass with the trained student's weights, then the same subset by hand
        for batch in DataLoader(Subset(dataset, cb.last_indices), batch_size=2, collate_fn=collate_detection):
            _, _, s, t = m.forward_features(batch[0], student_bn=False)
            for e, si, ti in zip(expected, s, t):
                e += channel_cost(si, ti, "cosine", dtype=torch.float64)
    for got, want in zip(cb.last_costs, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for groups, (c_s, c_t, _, _) in zip(m.matchings, m.tap_shapes):
        assert groups.shape == (c_s, c_t // c_s) and groups.unique().numel() == groups.numel()


def test_detection_checkpoint_round_trip(nets, tree, tmp_path):
    m = _module(nets)
    trainer = _trainer(tmp_path, [MGDMatchingCallback(update_every_n_steps=1, num_samples=2)], limit_val_batches=0)
    trainer.fit(m, COCODataModule(str(tree), batch_size=2))
    path = tmp_path / "det.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors only
    assert saved["teacher_omitted"] and not any(k.startswith("teacher.") for k in saved["state_dict"])
    fresh = build_detector("retinanet", "resnet18", **SIZE)
    loaded = DistillationModule.load_from_checkpoint(path, teacher=nets[0], student=fresh)
    assert loaded.task.name == "detection"
    own, other = m.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)


# ---------------------------------------------------------------------------------------------- step schedule
def test_step_schedule_functions():
    ref = check_step_schedule(REFERENCE_DETECTION_SCHEDULE)
    # the reference d2/train_net.py: update when iter % freq == 0, freq 5000 below iteration 20000, 31000 from then on
    reference = [i for i in range(90000) if i % (5000 if i < 20000 else 31000) == 0]
    assert reference == [0, 5000, 10000, 15000, 31000, 62000]
    assert scheduled_steps(ref, 90000) == reference
    assert [i for i in range(90000) if is_scheduled_step(i, ref)] == reference
    assert scheduled_steps(ref, 31000) == [0, 5000, 10000, 15000] and scheduled_steps(ref, 31001)[-1] == 31000
    assert not is_scheduled_step(20000, ref) and not is_scheduled_step(51000, ref) and not is_scheduled_step(-1, ref)
    # a segment whose start is no multiple of its period starts at its first multiple
    assert scheduled_steps(check_step_schedule([[0, 4], [6, 5]]), 21) == [0, 4, 10, 15, 20]
    for bad, match in (([], "at least one"), ([[5, 10]], "start at step 0"), ([[0, 5], [0, 3]], "increase"),
                       ([[0, 0]], "every must be >= 1"), ([3], "pairs")):
        with pytest.raises(ValueError, match=f"step_schedule.*{match}"):
            check_step_schedule(bad)
    with pytest.raises(ValueError, match="not both"):
        MGDMatchingCallback(update_every_n_steps=5, step_schedule=[[0, 5]])
    with pytest.raises(ValueError, match="update_every_n_steps must be an integer >= 1"):
        MGDMatchingCallback(update_every_n_steps=0)
    assert MGDMatchingCallback(update_every_n_steps=7).step_schedule == ((0, 7),)


def _toy_fit(tmp_path, cb, max_steps, ckpt_path=None, callbacks=()):
    torch.manual_seed(0)
    module = DistillationModule(ToyNet((12, 24)), ToyNet((6, 8)))
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[cb, *callbacks],
                         enable_checkpointing=bool(callbacks))
    trainer.fit(module, DataLoader(digits_dataset(limit=64), batch_size=8), ckpt_path=ckpt_path)
    return module


def test_step_schedule_fires_at_its_steps_and_survives_a_resume(tmp_path):
    schedule = [[0, 2], [5, 3]]  # multiples of 2 below step 5, of 3 from then on: updates at 0, 2, 4, 6, 9
    full = MGDMatchingCallback(step_schedule=schedule, num_samples=16)
    _toy_fit(tmp_path / "full", full, 11)  # 8 batches per epoch: the schedule crosses an epoch boundary
    assert [h["step"] for h in full.history] == [0, 2, 4, 6, 9]

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first = MGDMatchingCallback(step_schedule=schedule, num_samples=16)
    _toy_fit(tmp_path / "first", first, 5, callbacks=[ckpt])
    assert [h["step"] for h in first.history] == [0, 2, 4]
    (path,) = (tmp_path / "ckpt").glob("*step=5*.ckpt")
    assert torch.load(path, weights_only=True)["callbacks"]  # the callback's state is in the checkpoint
    resumed = MGDMatchingCallback(step_schedule=schedule, num_samples=16)
    module = _toy_fit(tmp_path / "resumed", resumed, 11, ckpt_path=path)
    assert resumed.last_update_step == 9
    assert [h["step"] for h in resumed.history] == [0, 2, 4, 6, 9]  # history restored, then 6 and 9 only
    assert int(module.last_matching_epoch) == 1


def test_epoch_schedule_stays_the_default(tmp_path):
    cb = MGDMatchingCallback(update_every_n_epochs=1, num_samples=16)
    assert cb.step_schedule is None
    _toy_fit(tmp_path, cb, 12)  # epochs of 8 steps: updates at the starts of epochs 0 and 1
    assert [(h["epoch"], h["step"]) for h in cb.history] == [(0, 0), (1, 8)]


# ---------------------------------------------------------------------------------------------- DDP
class _Recorder(pl.Callback):
    """Saves what the matching callback did on this rank at step 0 (runs after it)."""

    def __init__(self, cb, out):
        self.cb, self.out = cb, out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            torch.save({"indices": self.cb.last_indices, "costs": self.cb.last_costs, "images": self.cb.last_num_images,
                        "matchings": [g.clone() for g in pl_module.matchings]},
                       self.out / f"rank{trainer.global_rank}.pt")


def test_two_ranks_share_the_detection_pass_and_agree(nets, tree, tmp_path):
    """ddp_fork, 2 CPU processes: disjoint halves of the subset, one gathered cost, identical matchings."""
    m = _module(nets)
    cb = MGDMatchingCallback(update_every_n_steps=5, num_samples=4, seed=1)
    trainer = _trainer(tmp_path, [cb, _Recorder(cb, tmp_path)], max_steps=1, limit_val_batches=0, devices=2,
                       strategy="ddp_fork")
    trainer.fit(m, COCODataModule(str(tree), batch_size=1))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["indices"]) == len(r1["indices"]) == 2 and not set(r0["indices"]) & set(r1["indices"])
    assert r0["images"] == r1["images"] == 4
    for k in range(len(r0["matchings"])):
        assert torch.equal(r0["costs"][k], r1["costs"][k])
        assert torch.equal(r0["matchings"][k], r1["matchings"][k])


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_narrow_fpn_keeps_the_body_and_narrows_levels_and_heads(backbone):
    """fpn_channels (the CPU demo's cheap detectors): the same body and taps, FPN levels and heads of that width."""
    model = build_detector("retinanet", backbone, fpn_channels=32, **SIZE).eval()
    assert model.backbone.out_channels == 32
    with torch.no_grad():
        levels = model.backbone(torch.rand(1, 3, 64, 64))
    assert len(levels) == 5 and all(f.shape[1] == 32 for f in levels.values())
    assert model.head.classification_head.conv[0][0].in_channels == 32
    wide = build_detector("retinanet", backbone, **SIZE)
    assert [n for n, _ in model.backbone.body.named_modules()] == [n for n, _ in wide.backbone.body.named_modules()]
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 80)])) == 1
    with pytest.raises(ValueError, match="fpn_channels must be >= 1"):
        build_detector("retinanet", backbone, fpn_channels=0)


def test_anchor_sizes_set_each_fpn_levels_anchors():
    """anchor_sizes (the CPU demo's small objects): base size per level, RetinaNet's 3 scales x 3 ratios per location,
    Mask R-CNN's RPN 1 scale x 3 ratios; the default stays torchvision's 32 ... 512."""
    model = build_detector("retinanet", "resnet18", fpn_channels=16, anchor_sizes=(8, 16, 32, 64, 128), **SIZE)
    gen = model.anchor_generator
    assert gen.sizes[0] == pytest.approx((8.0, 8 * 2 ** (1 / 3), 8 * 2 ** (2 / 3)))
    assert [s[0] for s in gen.sizes] == [8.0, 16.0, 32.0, 64.0, 128.0]
    assert gen.num_anchors_per_location() == [9] * 5
    assert model.head.classification_head.num_anchors == 9
    with torch.no_grad():
        images = model.transform([torch.rand(3, 64, 64)])[0]
        levels = list(model.backbone(images.tensors).values())
        anchors = gen(images, levels)[0]
    assert anchors.shape == (9 * sum(f.shape[-2] * f.shape[-1] for f in levels), 4)
    side = anchors[: 9, 2:] - anchors[: 9, :2]  # the first location of P3: sqrt(w * h) = the size
    assert (side[:, 0] * side[:, 1]).sqrt().min() == pytest.approx(8.0, abs=0.6)
    assert build_detector("retinanet", "resnet18", fpn_channels=16, **SIZE).anchor_generator.sizes[0][0] == 32
    rpn = build_detector("maskrcnn", "resnet18", fpn_channels=16, anchor_sizes=(4, 8, 16, 32, 64), **SIZE)
    assert rpn.rpn.anchor_generator.sizes == ((4.0,), (8.0,), (16.0,), (32.0,), (64.0,))
    with pytest.raises(ValueError, match="anchor_sizes must be 5 positive sizes"):
        build_detector("retinanet", "resnet18", anchor_sizes=(8, 16, 32))
    with pytest.raises(ValueError, match="anchor_sizes: weights='COCO_V1'"):
        build_detector("retinanet", "resnet50", weights="COCO_V1", anchor_sizes=(8, 16, 32, 64, 128))
