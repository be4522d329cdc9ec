"""The vision-transformer study (issue 24: MGD between CNNs and ViTs with no learned projector) and the estimated margin
it uses: ``DistillationModule.estimate_margins`` (kept in checkpoints, restored at load), the study's rows, settings,
claims and premise, the command end to end on tiny real-format data with a resume and a failed premise, and the
committed results."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

timm = pytest.importorskip("timm")

import mgd_lightning.commands.study as study_cli  # noqa: E402
from mgd_lightning import DistillationModule, MGDMatchingCallback  # noqa: E402
from mgd_lightning._lightning import pl  # noqa: E402
from mgd_lightning.experiments import transformers as tr  # noqa: E402
from mgd_lightning.experiments.claims import TIE_MARGIN  # noqa: E402
from mgd_lightning.experiments.study import PremiseError  # noqa: E402
from mgd_lightning.margin_estimate import estimate_margin  # noqa: E402
from tests.committed_results import (  # noqa: E402
    check_committed_study,
    docs_page_problems,
    readme_quotes,
    readme_quotes_not_in_report,
)
from tests.test_data import _make_fashion  # noqa: E402
from tests.toys import ToyNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (3, 32, 32)


def _vit(embed_dim=32, depth=4) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=depth,
                             embed_dim=embed_dim, num_heads=2, num_classes=10)


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *SIZE, generator=g), torch.randint(0, 10, (n,), generator=g))


def _vit_to_cnn(**kwargs) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(_vit(), ToyNet((8, 16)), input_size=SIZE, lr_milestones=(), loss_factor=1.0, **kwargs)


# ---------------------------------------------------------------------------------------------- estimate_margins
def test_estimate_margins_measures_the_teachers_tapped_maps_and_is_used_from_then_on():
    module = _vit_to_cnn()
    assert module.margins == [None, None]  # token taps: no margin by default
    loader = DataLoader(_data(), batch_size=4)
    estimated = module.estimate_margins(loader)  # (x, y) batches
    assert [tuple(m.shape) for m in estimated] == [(32,), (32,)]
    # the same numbers as estimate_margin over the maps the loss sees (laid out, resampled to the student's grid)
    feats = [[], []]
    with torch.no_grad():
        for x, _ in loader:
            module.teacher(x)
            for k, f in enumerate(module.teacher_taps.features):
                feats[k].append(f.clone())
    for k, m in enumerate(estimated):
        torch.testing.assert_close(m, estimate_margin(feats[k]))
        assert (m <= 0).all() and (m < 0).any()
        assert module.margins[k] is m and torch.equal(module.state_dict()[f"margin_{k}"], m)
        assert dict(module.named_buffers())[f"margin_{k}"] is m  # a buffer: moves with the module, saved
    # only some taps; tensors as batches
    again = module.estimate_margins([x for x, _ in loader], taps=[1])
    torch.testing.assert_close(again[0], estimated[1])
    # the loss now applies the margin ReLU: it differs from the same module's without margins
    x = next(iter(loader))[0]
    fresh = _vit_to_cnn()
    fresh.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("margin_")},
                          strict=False)
    _, _, s_m, t_m = module.forward_features(x)
    _, _, s_f, t_f = fresh.forward_features(x)
    with_margin = torch.stack(module.distillation_losses(s_m, t_m)).sum()
    without = torch.stack(fresh.distillation_losses(s_f, t_f)).sum()
    assert torch.isfinite(with_margin) and not torch.allclose(with_margin, without)


def test_estimate_margins_errors_and_batchnorm_taps():
    module = _vit_to_cnn()
    with pytest.raises(ValueError, match=r"taps \[2\] out of range"):
        module.estimate_margins([torch.randn(2, *SIZE)], taps=[2])
    with pytest.raises(ValueError, match="batches is empty"):
        module.estimate_margins([])
    assert module.margins == [None, None]
    # a feature distiller's copies follow (OFD's margin ReLU)
    ofd = _vit_to_cnn(distiller="ofd")
    estimated = ofd.estimate_margins([torch.randn(4, *SIZE)])
    assert all(torch.equal(ofd.feature_distiller.margin(k), m) for k, m in enumerate(estimated))
    torch.manual_seed(0)
    cnn = DistillationModule(ToyNet((16, 32)), ToyNet((8, 16)), input_size=SIZE, loss_factor=1.0)
    before = [m.clone() for m in cnn.margins]
    assert cnn.estimate_margins([torch.randn(2, *SIZE)]) == []  # every tap has its BatchNorm margin
    with pytest.raises(ValueError, match=r"taps \[0\] have a BatchNorm before them"):
        cnn.estimate_margins([torch.randn(2, *SIZE)], taps=[0])
    assert all(torch.equal(a, b) for a, b in zip(cnn.margins, before))


def _fit(module, tmp_path, epochs=1):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[MGDMatchingCallback(update_every_n_epochs=1, progress_bar=False)])
    trainer.fit(module, DataLoader(_data(8), batch_size=4))
    return trainer


def test_a_checkpoint_keeps_the_estimated_margins(tmp_path):
    module = _vit_to_cnn()
    estimated = [m.clone() for m in module.estimate_margins(DataLoader(_data(), batch_size=8))]
    trainer = _fit(module, tmp_path)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["teacher_omitted"] and torch.equal(saved["state_dict"]["margin_0"], estimated[0])
    # a lean checkpoint loads into a module built as the run's (no margins yet): the estimates come back
    torch.manual_seed(1)
    loaded = DistillationModule.load_from_checkpoint(path, teacher=module.teacher, student=ToyNet((8, 16)))
    for a, b in zip(loaded.margins, estimated):
        assert a is not None and torch.equal(a, b)
    # a resumed fit takes them too
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[MGDMatchingCallback(update_every_n_epochs=1, progress_bar=False)])
    again = _vit_to_cnn()
    assert again.margins == [None, None]
    trainer.fit(again, DataLoader(_data(8), batch_size=4), ckpt_path=path)
    for a, b in zip(again.margins, estimated):
        assert a is not None and torch.equal(a, b)
    # a checkpoint without estimates loads as before (no margins)
    plain = _vit_to_cnn()
    trainer = _fit(plain, tmp_path)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    loaded = DistillationModule.load_from_checkpoint(tmp_path / "plain.ckpt", teacher=plain.teacher,
                                                     student=ToyNet((8, 16)))
    assert loaded.margins == [None, None]


# ---------------------------------------------------------------------------------------------- the study
def test_rows_settings_and_claims_are_the_issues():
    rows = tr.ROWS
    assert {n for n, r in rows.items() if r.pair == "cnn_vit"} == {"vit_alone", "vit_kd", "vit_fitnets", "vit_mgd",
                                                                   "vit_mgd_kd"}
    assert {n for n, r in rows.items() if r.pair == "vit_cnn"} >= {"cnn_alone", "cnn_mgd", "cnn_mgd_margin"}
    assert rows["vit_fitnets"].module == {"distiller": "fitnets"}  # the learned projector
    assert rows["cnn_mgd_margin"].estimate_margin and not rows["cnn_mgd"].estimate_margin
    assert rows["cnn_mgd_margin"].module == rows["cnn_mgd"].module  # one change: the margin
    kd = {k: v for k, v in rows["vit_mgd_kd"].module.items() if k not in ("distiller", "reducer")}
    assert kd == {k: v for k, v in rows["vit_kd"].module.items() if k != "distiller"}  # one change: MGD's loss
    assert all(r.module is None for n, r in rows.items() if n.endswith("_alone"))
    assert tr.MODELS["vit_student"]["name"].startswith("timm/") and tr.MODELS["cnn_student"]["name"] == "cifar_resnet"
    cpu = tr.SETTINGS["vit-cpu"]
    assert len(cpu.seeds) >= 5 and cpu.jobs == 2 and cpu.threads == 1 and set(cpu.rows) == set(rows)
    assert cpu.premise_gap > 0 and tr.SETTINGS["vit-gpu"].accelerator == "auto"
    claimed = {pair for _, _, pairs in tr.CLAIMS for pair in pairs}
    assert claimed == {("vit_mgd", "vit_alone"), ("vit_mgd", "vit_fitnets"), ("vit_mgd_kd", "vit_kd"),
                       ("cnn_mgd", "cnn_alone"), ("cnn_mgd_margin", "cnn_mgd")}
    for _, _, pairs in tr.CLAIMS:
        assert all(rows[a].pair == rows[b].pair for a, b in pairs)  # paired within one teacher / student pair
    assert [kind for *_, kind, pairs in tr.CLAIMS if ("cnn_mgd_margin", "cnn_mgd") in pairs] == ["tie"]
    assert f"within {TIE_MARGIN} points" in tr.CLAIMS[-1][0]
    assert tr.STUDY in study_cli.STUDIES and study_cli.study_of("vit-cpu") is tr.STUDY


def test_the_student_and_teachers_tap_shapes_need_no_projector():
    # CNN -> ViT: the ResNet-14 x2's three stages pooled to the ViT's 7 x 7 grid, 1-, 2- and 4-to-1 matchings
    models = {n: tr._model(n, 10) for n in tr.MODELS}
    size = (3, 28, 28)
    m = DistillationModule(models["cnn_teacher"], models["vit_student"], input_size=size, loss_factor=1e3)
    assert m.tap_shapes == [(32, 32, 7, 7), (32, 64, 7, 7), (32, 128, 7, 7)]
    assert all(x is not None for x in m.margins)  # the CNN teacher keeps its BatchNorm margins
    m = DistillationModule(models["vit_teacher"], models["cnn_student"], input_size=size, loss_factor=1e3)
    assert m.tap_shapes == [(16, 64, 28, 28), (32, 64, 14, 14), (64, 64, 7, 7)]
    assert m.margins == [None, None, None]
    # FitNets works on token taps: its regressor maps the ViT's middle tap to the teacher's channels
    f = DistillationModule(models["cnn_teacher"], models["vit_student"], input_size=size, distiller="fitnets")
    s_logits, _, s_feats, t_feats = f.forward_features(torch.randn(2, *size))
    losses = f.distillation_losses(s_feats, t_feats)
    assert [float(x.detach()) == 0 for x in losses] == [True, False, True] and torch.isfinite(torch.stack(losses)).all()


def test_premise_is_each_teachers_lead_over_its_student_alone():
    teachers = {"cnn_teacher": {"top1_err": 12.0}, "vit_teacher": {"top1_err": 15.0}}
    alone = {"cnn_vit": {"top1_err": 20.0}, "vit_cnn": {"top1_err": 16.0}}
    premise = tr.check_premise(teachers, alone, 2.0)
    assert premise["pairs"]["cnn_vit"]["lead"] == pytest.approx(8.0)
    assert premise["pairs"]["vit_cnn"]["lead"] == pytest.approx(1.0) and premise["met"] is False
    assert tr.check_premise(teachers, alone, 1.0)["met"] is True
    assert tr.check_premise(teachers, {"cnn_vit": alone["cnn_vit"]}, 2.0)["met"] is True
    with pytest.raises(ValueError, match="needs its teacher 'vit_teacher'"):
        tr.check_premise({"cnn_teacher": teachers["cnn_teacher"]}, alone, 2.0)
    with pytest.raises(ValueError, match="at least one pair"):
        tr.check_premise(teachers, {}, 2.0)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return _make_fashion(tmp_path_factory.mktemp("fashion"), n_train=120, n_test=48)


def test_study_end_to_end_resumes_and_a_failed_premise_stops_it(tmp_path, fashion, capsys):
    out = tmp_path / "vit"
    args = ["--setting", "vit-smoke", "--out", str(out), "--root", str(fashion)]
    study_cli.main(args)
    printed = capsys.readouterr().out
    assert "**Premise** (seed 0, checked before the other runs)" in printed and "Holm" in printed
    with (out / "results.csv").open() as f:
        assert [r["row"] for r in csv.DictReader(f)] == list(tr.SETTINGS["vit-smoke"].rows)
    premise = json.loads((out / "premise.json").read_text())
    assert set(premise["pairs"]) == {"cnn_vit", "vit_cnn"} and premise["met"]
    # the premise's runs are the students alone of seed 0
    assert json.loads((out / "runs" / "vit_alone" / "seed0" / "result.json").read_text()) == \
        json.loads((out / "premise" / "vit_alone_seed0.json").read_text())
    margin = json.loads((out / "runs" / "cnn_mgd_margin" / "seed0" / "result.json").read_text())
    assert len(margin["estimated_margin_means"]) == 3 and all(m < 0 for m in margin["estimated_margin_means"])
    assert margin["matching_updates"] == 1 and margin["pair"] == "vit_cnn" and margin["teacher"] == "vit_teacher"
    assert margin["optimizer"].startswith("SGD")  # the CNN student: SGD; the ViTs: AdamW
    assert json.loads((out / "runs" / "vit_mgd" / "seed0" / "result.json").read_text())["optimizer"].startswith("AdamW")
    vit_teacher = json.loads((out / "teachers" / "vit_teacher.json").read_text())
    assert vit_teacher["optimizer"].startswith("AdamW")
    smoke = tr.SETTINGS["vit-smoke"]  # each teacher sized by its own fields
    assert vit_teacher["train_images"] == smoke.vit_teacher_train_images != smoke.teacher_train_images
    assert json.loads((out / "teachers" / "cnn_teacher.json").read_text())["train_images"] == smoke.teacher_train_images
    plain = json.loads((out / "runs" / "cnn_mgd" / "seed0" / "result.json").read_text())
    assert plain["estimated_margin_means"] is None and plain["weights_digest"] != margin["weights_digest"]
    assert json.loads((out / "environment.json").read_text())["study"] == "transformers"
    assert json.loads((out / "claims.json").read_text())
    kept = (out / "runs" / "vit_mgd" / "seed1" / "result.json").read_text()
    (out / "runs" / "cnn_mgd_margin" / "seed1" / "result.json").unlink()
    study_cli.main(args)
    assert (out / "runs" / "vit_mgd" / "seed1" / "result.json").read_text() == kept
    assert (out / "runs" / "cnn_mgd_margin" / "seed1" / "result.json").is_file()

    # a premise that does not hold: the study stops before the other runs, with one line saying why
    setting = dataclasses.replace(tr.SETTINGS["vit-smoke"], premise_gap=100.0, rows=("vit_alone", "vit_mgd"))
    fresh = tmp_path / "fails"
    with pytest.raises(PremiseError, match=r"premise not met: a teacher leads its student alone by less than 100"):
        tr.prepare(setting, fresh, str(fashion))
    assert json.loads((fresh / "premise.json").read_text())["met"] is False
    assert not (fresh / "runs").exists() and not (fresh / "teachers" / "vit_teacher.pt").exists()


RESULTS = Path(__file__).resolve().parents[1] / "results" / "vit-cpu"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "studies" / "transformers.md"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not (RESULTS / "results.md").is_file(), reason="the vision-transformer study is not committed yet")
def test_committed_report_is_what_its_runs_give():
    setting = tr.SETTINGS["vit-cpu"]
    check_committed_study(RESULTS, tr.STUDY, "vit-cpu", ("errors.png", "matching_cost.png", "match_stability.png"))
    premise = json.loads((RESULTS / "premise.json").read_text())
    assert premise["met"] and all(p["lead"] >= setting.premise_gap for p in premise["pairs"].values())
    assert docs_page_problems(RESULTS, DOCS_PAGE) == []
    assert readme_quotes(README).get(RESULTS.name), "the README's headline results quote results/vit-cpu"
    assert readme_quotes_not_in_report(RESULTS, README) == []
