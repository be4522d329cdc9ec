"""The unsupervised study (the official unsup/ question, MGD without labels): its rows, claims and premise, the command
end to end on tiny real-format data with a resume, a failed premise, and the committed results."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

pytest.importorskip("lightly")

import mgd_lightning.commands.study as study_cli  # noqa: E402
from mgd_lightning.experiments import unsupervised as un  # noqa: E402
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


def test_rows_are_every_method_by_every_evaluation_and_the_claims_pair_within_one_evaluation():
    assert set(un.METHODS) == {"random", "moco", "moco_mgd", "mgd"}
    assert len(un.ROWS) == len(un.METHODS) * len(un.EVALS)
    for setting in un.SETTINGS.values():
        assert set(setting.rows) == set(un.ROWS)
    assert len(un.SETTINGS["unsup-cpu"].seeds) >= 5  # the issue: at least 5 seeds
    for _, kind, pairs in un.CLAIMS:
        assert kind == "better"
        for a, b in pairs:
            assert un.ROWS[a].evaluation == un.ROWS[b].evaluation and un.ROWS[a].method != un.ROWS[b].method
    # the official recipe: the distillation on the student's query view, updated on the log-spaced epochs
    assert un.SETTINGS["unsup-cpu"].update_epochs == "official_unsup"


def test_rows_without_a_top5_error_aggregate_over_seeds():
    """The runs record top-5 as NaN (not measured): the table of several seeds still aggregates (a NaN made
    statistics.stdev raise at the end of the first full run, after every run had finished)."""
    from mgd_lightning.experiments.reports import aggregate

    runs = [{"row": "moco_probe", "seed": s, "top1_err": e, "top5_err": float("nan"), "wall_s": 1.0,
             "trainable_params": 1, "matching_updates": 0} for s, e in ((0, 20.0), (1, 22.0))]
    (row,) = aggregate(runs, ["moco_probe"], un.STUDY.label)
    assert row["top1_err_mean"] == pytest.approx(21.0) and row["top1_err_std"] == pytest.approx(2 ** 0.5)
    assert row["top5_err_mean"] != row["top5_err_mean"] and row["top5_err_std"] is None


def test_premise_needs_both_leads():
    teacher = {"probe_top1_err": 10.0}
    assert un.check_premise(teacher, random_err=20.0, moco_err=15.0, gap=1.0)["met"]
    assert not un.check_premise(teacher, random_err=15.5, moco_err=15.0, gap=1.0)["met"]  # pre-training does nothing
    assert not un.check_premise(teacher, random_err=20.0, moco_err=10.5, gap=1.0)["met"]  # teacher barely better
    premise = un.check_premise(teacher, 20.0, 15.0, 1.0)
    assert premise["pretraining_gain"] == pytest.approx(5.0) and premise["teacher_lead"] == pytest.approx(5.0)


def test_study_end_to_end_resumes_and_a_failed_premise_stops_it(tmp_path, fashion, capsys):
    out = tmp_path / "unsup"
    args = ["--setting", "unsup-smoke", "--out", str(out), "--root", str(fashion)]
    study_cli.main(args)
    printed = capsys.readouterr().out
    assert "# MGD without labels on Fashion-MNIST" in printed and "Premise (seed 0" in printed and "Holm" in printed
    with (out / "results.csv").open() as f:
        assert [r["row"] for r in csv.DictReader(f)] == list(un.SETTINGS["unsup-smoke"].rows)
    assert (out / "by_evaluation.png").stat().st_size > 10_000
    premise = json.loads((out / "premise.json").read_text())
    assert set(premise) >= {"untrained_probe_err", "moco_probe_err", "teacher_probe_err", "gap", "met"}
    # every method's student was pre-trained once per seed, without labels, and the evaluations read it
    for method in ("moco", "moco_mgd", "mgd"):
        record = json.loads((out / "pretrained" / f"{method}_seed0.json").read_text())
        assert record["method"] == method and len(record["weights_digest"]) == 16
        metrics = record["final_metrics"]
        assert ("train/infonce" in metrics or "train/loss" in metrics) and all(v == v for v in metrics.values())
        assert ("train/distill" in metrics) == (method != "moco")
        assert ("train/infonce" in metrics) == (method == "moco_mgd")  # MoCo alone logs its loss as train/loss
        assert record["matching_updates"] == (0 if method == "moco" else 1)
    mgd_probe = json.loads((out / "runs" / "moco_mgd_probe" / "seed0" / "result.json").read_text())
    assert mgd_probe["matching_updates"] == 1 and mgd_probe["history"]
    untrained = json.loads((out / "runs" / "random_ft10" / "seed0" / "result.json").read_text())
    assert untrained["weights_digest"] == "untrained" and untrained["pretrain_s"] == 0.0
    assert json.loads((out / "environment.json").read_text())["study"] == "unsupervised"

    # resumable: a finished run is kept, a deleted one is redone, nothing is pre-trained again
    kept = (out / "runs" / "mgd_ft100" / "seed0" / "result.json").read_text()
    pretrained = (out / "pretrained" / "moco_mgd_seed0.pt").stat().st_mtime_ns
    (out / "runs" / "moco_probe" / "seed0" / "result.json").unlink()
    study_cli.main(args)
    assert (out / "runs" / "mgd_ft100" / "seed0" / "result.json").read_text() == kept
    assert (out / "runs" / "moco_probe" / "seed0" / "result.json").is_file()
    assert (out / "pretrained" / "moco_mgd_seed0.pt").stat().st_mtime_ns == pretrained

    # a premise that does not hold: the study stops before any student is pre-trained by MGD, saying why
    setting = dataclasses.replace(un.SETTINGS["unsup-smoke"], premise_gap=100.0)
    fresh = tmp_path / "fails"
    with pytest.raises(PremiseError, match=r"the premise does not hold .* both must be >= 100.0"):
        un.prepare(setting, fresh, str(fashion))
    assert json.loads((fresh / "premise.json").read_text())["met"] is False
    assert not (fresh / "pretrained" / "moco_mgd_seed0.pt").exists() and not (fresh / "runs").exists()


RESULTS = Path(__file__).resolve().parents[1] / "results" / "unsup-cpu"
README = Path(__file__).resolve().parents[1] / "README.md"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "studies" / "unsupervised.md"


@pytest.mark.skipif(not (RESULTS / "results.md").is_file(), reason="the unsupervised study is not committed yet")
def test_committed_report_is_what_its_runs_give():
    setting = un.SETTINGS["unsup-cpu"]
    check_committed_study(RESULTS, un.STUDY, "unsup-cpu", ("errors.png", "by_evaluation.png"))
    premise = json.loads((RESULTS / "premise.json").read_text())
    assert premise["met"] and premise["gap"] >= setting.premise_gap
    assert docs_page_problems(RESULTS, DOCS_PAGE) == []
    assert readme_quotes(README).get(RESULTS.name), "the README's headline results quote results/unsup-cpu"
    assert readme_quotes_not_in_report(RESULTS, README) == []
