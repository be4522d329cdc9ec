"""The transfer study (paper Table 3's setting): its data split, the pre-trained backbones, the command end to end
on tiny real-format data, and the committed results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import mgd_lightning.commands.study as study_cli
from mgd_lightning.data import FashionMNISTDataModule
from mgd_lightning.data.fashion_mnist import per_class_indices
from mgd_lightning.experiments import transfer
from mgd_lightning.models.heads import head_name
from tests.committed_results import (
    check_committed_study,
    docs_page_problems,
    readme_quotes,
    readme_quotes_not_in_report,
)
from tests.test_data import _make_fashion


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return _make_fashion(tmp_path_factory.mktemp("fashion"), n_train=200, n_test=60)


def test_per_class_choice_is_nested_and_balanced():
    labels = torch.arange(100) % 4
    small, large = per_class_indices(labels, 3, seed=5), per_class_indices(labels, 10, seed=5)
    assert torch.bincount(labels[small]).tolist() == [3, 3, 3, 3]
    assert torch.bincount(labels[large]).tolist() == [10, 10, 10, 10]
    assert set(small.tolist()) < set(large.tolist())  # a size curve varies the size only
    assert per_class_indices(labels, 50).numel() == 100  # fewer than asked: all of the class
    assert not torch.equal(per_class_indices(labels, 3, seed=6), small)


def test_fashion_mnist_class_subsets_are_relabelled_and_disjoint(fashion):
    source = FashionMNISTDataModule(root=str(fashion), classes=list(transfer.SOURCE_CLASSES), channels=3)
    target = FashionMNISTDataModule(root=str(fashion), classes=list(transfer.TARGET_CLASSES), train_per_class=4)
    assert source.num_classes == target.num_classes == 5
    assert target.classes == ["Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"]
    assert not set(transfer.SOURCE_CLASSES) & set(transfer.TARGET_CLASSES)
    for dm, n_train in ((source, 100), (target, 20)):
        dm.setup("fit")
        assert len(dm.train_dataset) == n_train and len(dm.val_dataset) == 30 and len(dm.matching_dataset()) == n_train
        labels = torch.tensor([int(dm.train_dataset[i][1]) for i in range(len(dm.train_dataset))])
        assert sorted(labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert torch.bincount(labels).tolist() == [4] * 5
    # the raw labels kept are the target's: image i of the fake set has label i % 10
    first = target.train_dataset[0][0]
    assert first.shape == (1, 28, 28)
    with pytest.raises(ValueError, match=r"classes must be distinct indices in 0\.\.9 .*got \[3, 3\]"):
        FashionMNISTDataModule(root=str(fashion), classes=[3, 3])
    with pytest.raises(ValueError, match="train_per_class must be >= 1 or None, got 0"):
        FashionMNISTDataModule(root=str(fashion), train_per_class=0)


def test_load_backbone_keeps_a_new_head():
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 5))
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 5))
    head = target[2].weight.detach().clone()
    transfer.load_backbone(target, source.state_dict())
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[2].weight, head)
    assert head_name(target) == "2"
    with pytest.raises(ValueError, match="pre-trained weights do not fit"):
        transfer.load_backbone(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(4, 5)), source.state_dict())


def test_rows_and_settings():
    rows = transfer.ROWS
    assert {"fs", "ft", "kd", "fitnets", "at", "ofd", "mgd_sm", "mgd_rd", "mgd_amp", "mgd_amp_kd",
            "amp_no_matching"} <= set(rows)
    assert not rows["fs"].pretrained and all(r.pretrained for n, r in rows.items() if n != "fs")
    assert rows["amp_no_matching"].callback is None and rows["mgd_amp"].callback == {"update_every_n_epochs": 2}
    sizes = sorted({r.per_class or 30 for r in rows.values() if r.label.startswith(("FT", "MGD-AMP,"))})
    assert len(sizes) >= 3  # the size curve has at least three points
    cpu = transfer.SETTINGS["transfer-cpu"]
    assert len(cpu.seeds) >= 5 and cpu.per_class == 30 and cpu.rows == tuple(rows) and cpu.val_images is None
    for setting in transfer.SETTINGS.values():
        assert set(setting.rows) <= set(rows) and all(0 < m <= setting.epochs for m in setting.lr_milestones)
    with pytest.raises(SystemExit, match=r"--rows: \['baseline'\] not rows of the transfer study"):
        study_cli._setting(study_cli._parser().parse_args(["--setting", "transfer-smoke", "--rows", "baseline"]))


def test_transfer_study_end_to_end_then_resumes(tmp_path, fashion, capsys):
    out = tmp_path / "transfer"
    args = ["--setting", "transfer-smoke", "--out", str(out), "--root", str(fashion)]
    study_cli.main(args)
    printed = capsys.readouterr().out
    assert "# MGD transfer study on Fashion-MNIST (setting `transfer-smoke`)" in printed
    assert "| FT (pre-trained student fine-tuned) | 2 |" in printed and "| top-5" not in printed
    assert "## Error vs target images per class" in printed and "| 4 |" in printed and "| 10 |" in printed
    with (out / "results.csv").open() as f:
        assert [r["row"] for r in csv.DictReader(f)] == list(transfer.SETTINGS["transfer-smoke"].rows)
    for name in ("student_source", "teacher_source", "teacher_target_4", "teacher_target_10"):
        assert (out / "pretrained" / f"{name}.pt").is_file() and (out / "pretrained" / f"{name}.json").is_file()
    ft10 = json.loads((out / "runs" / "ft_10" / "seed1" / "result.json").read_text())
    amp = json.loads((out / "runs" / "mgd_amp" / "seed0" / "result.json").read_text())
    assert ft10["per_class"] == 10 and amp["per_class"] == 4 and amp["matching_updates"] == 1
    for plot in ("errors.png", "size_curve.png", "matching_cost.png", "match_stability.png"):
        assert (out / plot).stat().st_size > 5000
    env = json.loads((out / "environment.json").read_text())
    assert env["study"] == "transfer" and env["rows_config"]["fs"]["pretrained"] is False

    # Resume: finished runs and the pre-trained models are kept; a deleted run is the only one redone.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "pretrained").glob("*.pt")}
    kept = (out / "runs" / "mgd_amp" / "seed1" / "result.json").read_text()
    (out / "runs" / "fs" / "seed0" / "result.json").unlink()
    study_cli.main(args)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "pretrained").glob("*.pt")} == mtimes
    assert (out / "runs" / "mgd_amp" / "seed1" / "result.json").read_text() == kept
    assert (out / "runs" / "fs" / "seed0" / "result.json").is_file()

    # the from-scratch study's folder is not mixed with this one, nor a lost teacher silently retrained
    with pytest.raises(SystemExit, match=r"holds runs of another setting \(study: 'transfer' -> 'scratch'"):
        study_cli.main(["--setting", "smoke", "--out", str(out), "--root", str(fashion)])
    (out / "pretrained" / "teacher_target_4.pt").unlink()
    with pytest.raises(SystemExit, match=r"teacher_target_4.pt\) is missing"):
        study_cli.main([*args, "--seeds", "2"])


RESULTS = Path(__file__).resolve().parents[1] / "results" / "transfer-cpu"
README = Path(__file__).resolve().parents[1] / "README.md"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "studies" / "transfer.md"


@pytest.mark.skipif(not (RESULTS / "results.md").is_file(), reason="the transfer study is not committed yet")
def test_committed_transfer_report_is_what_its_runs_give():
    check_committed_study(RESULTS, transfer.STUDY, "transfer-cpu",
                          ("errors.png", "size_curve.png", "matching_cost.png", "match_stability.png"))
    # the docs page shows the whole report (it includes results.md and the plots); the README's headline lines quote it
    assert docs_page_problems(RESULTS, DOCS_PAGE) == []
    assert readme_quotes(README).get(RESULTS.name), "the README's headline results quote results/transfer-cpu"
    missing = readme_quotes_not_in_report(RESULTS, README)
    assert missing == [], "README quotes lines that results/transfer-cpu/results.md does not hold"
