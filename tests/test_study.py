"""The from-scratch study: claim checks on known numbers, and the command end to end on tiny real-format data."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mgd_lightning.commands.study as study_cli
from mgd_lightning.experiments import reports, scratch
from mgd_lightning.experiments.claims import check_claims, claims_markdown
from mgd_lightning.experiments.study import run_study
from tests.committed_results import check_committed_study, docs_page_problems, readme_quotes_not_in_report
from tests.procs import alive, children, default_sigint
from tests.test_data import _make_fashion


def _result(row: str, seed: int, err: float, history=()) -> dict:
    return {"row": row, "label": scratch.ROWS[row].label, "seed": seed, "top1_err": err, "top5_err": err / 10,
            "wall_s": 1.0, "trainable_params": 10, "matching_updates": len(history), "history": list(history)}


def _by_claim(checked):
    return {c["claim"].split(" (")[0]: c for c in checked}


def test_claims_paired_by_seed_with_t_intervals():
    results = [
        # AMP better than SM in every seed by 1 to 1.2 points: supported.
        *(_result("mgd_amp", s, 10.0 + s) for s in range(3)),
        _result("mgd_sm", 0, 11.0), _result("mgd_sm", 1, 12.2), _result("mgd_sm", 2, 13.1),
        # better than RD on average, but not in every seed: inconclusive, so the claim is "not shown".
        _result("mgd_rd", 0, 9.5), _result("mgd_rd", 1, 12.5), _result("mgd_rd", 2, 13.0),
        # the baseline better than MGD in every seed: contradicted, the claim "did not hold".
        _result("baseline", 0, 8.0), _result("baseline", 1, 9.2), _result("baseline", 2, 10.1),
        # online equal to the pass up to +-0.1: a supported tie.
        _result("mgd_amp_online", 0, 10.1), _result("mgd_amp_online", 1, 10.9), _result("mgd_amp_online", 2, 12.0),
    ]
    checked = _by_claim(check_claims(results, scratch.CLAIMS))
    amp = checked["AMP is the best of the three reductions"]
    sm, rd = amp["comparisons"]
    assert (sm["second"], sm["n"], sm["first_better_seeds"], sm["verdict"]) == ("mgd_sm", 3, 3, "supported")
    assert sm["diff_mean"] == pytest.approx(-1.1) and sm["diff_std"] == pytest.approx(0.1)
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) * s / sqrt(n)
    assert (sm["ci95_low"], sm["ci95_high"]) == pytest.approx((-1.1 - half, -1.1 + half), abs=1e-5)
    assert rd["diff_mean"] == pytest.approx((0.5 - 1.5 - 1.0) / 3) and rd["first_better_seeds"] == 2
    assert rd["verdict"] == "inconclusive" and amp["status"] == "not shown"
    baseline = checked["MGD beats the student trained alone"]
    assert baseline["status"] == "did not hold" and baseline["comparisons"][0]["verdict"] == "contradicted"
    online = checked["online matching"]
    assert online["kind"] == "tie" and online["status"] == "held"
    assert "matching beats no matching" not in checked  # rows without runs are left out, not counted
    text = "\n".join(claims_markdown(check_claims(results, scratch.CLAIMS), scratch.STUDY.label))
    assert "MGD-AMP vs MGD-SM: -1.10 ± 0.10, 95 % CI [-1.35, -0.85], first better in 3/3 seeds: supported; Holm" in text
    assert "**MGD beats the student trained alone (paper Tables 1-3): did not hold** (Holm: " in text
    assert "**AMP is the best of the three reductions (paper Tables 1, 3): not shown** (Holm: not shown)." in text


def test_claims_verdicts_need_two_seeds_and_a_tie_outside_the_margin_is_contradicted():
    checked = _by_claim(check_claims([_result("mgd_amp", 0, 10.0), _result("mgd_mp", 0, 12.0)], scratch.CLAIMS))
    (mp,) = checked["AMP beats max pooling and average pooling"]["comparisons"]
    assert mp["verdict"] == "inconclusive" and math.isnan(mp["ci95_low"]) and mp["first_better_seeds"] == 1
    online = [_result("mgd_amp_online", s, 12.0 + 0.05 * s) for s in range(3)]
    checked = _by_claim(check_claims(online + [_result("mgd_amp", s, 10.0) for s in range(3)], scratch.CLAIMS))
    assert checked["online matching"]["status"] == "did not hold"


def test_aggregate_mean_and_sample_std():
    results = [_result("kd", s, e) for s, e in enumerate((10.0, 12.0, 14.0))] + [_result("at", 0, 5.0)]
    rows = reports.aggregate(results, ["baseline", "kd", "at"], scratch.STUDY.label)
    assert [r["row"] for r in rows] == ["kd", "at"]
    assert rows[0]["top1_err_mean"] == 12.0 and rows[0]["top1_err_std"] == 2.0 and rows[0]["seeds"] == "0 1 2"
    assert rows[1]["n_seeds"] == 1 and rows[1]["top1_err_std"] is None


def test_every_row_is_buildable_and_the_paper_rows_are_there():
    assert set(scratch.ROWS) >= {"baseline", "kd", "fitnets", "at", "ofd", "mgd_sm", "mgd_rd", "mgd_amp", "mgd_mp",
                               "mgd_avgp", "amp_no_matching", "mgd_amp_kd", "mgd_amp_online", "mgd_amp_every1",
                               "mgd_amp_every4"}
    every = {n: r.callback["update_every_n_epochs"] for n, r in scratch.ROWS.items() if r.callback}
    assert every["mgd_amp_every1"] == 1 and every["mgd_amp"] == 2 and every["mgd_amp_every4"] == 4
    assert scratch.ROWS["mgd_amp_online"].callback["mode"] == "online"
    no_matching = scratch.ROWS["amp_no_matching"]
    assert no_matching.module["matching"] is False and no_matching.callback is None
    for setting in scratch.SETTINGS.values():
        assert set(setting.rows) <= set(scratch.ROWS) and len(setting.seeds) >= 1
        assert all(0 < m <= setting.epochs for m in setting.lr_milestones)
    cpu = scratch.SETTINGS["cpu"]
    assert len(cpu.seeds) >= 3 and cpu.rows == tuple(scratch.ROWS)


def test_overrides_scale_the_milestones():
    args = study_cli._parser().parse_args(["--setting", "cpu", "--epochs", "14", "--seeds", "4", "5", "--jobs", "1"])
    setting = study_cli._setting(args)
    assert setting.epochs == 14 and setting.lr_milestones == (10, 12) and setting.seeds == (4, 5)
    assert setting.jobs == 1 and setting.train_images == scratch.SETTINGS["cpu"].train_images


def test_missing_fashion_mnist_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="Fashion-MNIST not found"):
        study_cli.main(["--setting", "smoke", "--out", str(tmp_path / "out"), "--root", str(tmp_path / "nothing")])


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return _make_fashion(tmp_path_factory.mktemp("fashion"), n_train=96, n_test=40)


def test_study_end_to_end_then_resumes(tmp_path, fashion, capsys):
    out = tmp_path / "study"
    rows = ["baseline", "ofd", "mgd_amp", "amp_no_matching", "mgd_amp_online", "mgd_amp_every1"]
    args = ["--setting", "smoke", "--out", str(out), "--root", str(fashion), "--rows", *rows, "--seeds", "0", "1"]
    study_cli.main(args)
    printed = capsys.readouterr().out
    assert "| MGD-AMP | 2 |" in printed and "## The paper's claims, checked" in printed
    assert (out / "results.md").read_text() in printed + "\n"
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == rows and all(r["n_seeds"] == "2" for r in table)
    with (out / "runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 12
    every1 = json.loads((out / "runs" / "mgd_amp_every1" / "seed0" / "result.json").read_text())
    assert every1["matching_updates"] == 2 and [h["epoch"] for h in every1["history"]] == [0, 1]
    assert {"cost_tap0", "changed_tap2"} <= set(every1["history"][0])
    online = json.loads((out / "runs" / "mgd_amp_online" / "seed1" / "result.json").read_text())
    assert online["history"][0]["source"] == "pass"
    assert json.loads((out / "runs" / "baseline" / "seed0" / "result.json").read_text())["history"] == []
    for plot in ("errors.png", "matching_cost.png", "match_stability.png"):
        assert (out / plot).stat().st_size > 5000
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["torch"] and env["setting"]["epochs"] == 2
    assert (out / "command.txt").read_text().startswith("mgd-lightning study --setting smoke")
    claims = json.loads((out / "claims.json").read_text())
    assert any(c["claim"].startswith("matching beats no matching") for c in claims)

    # Resume: finished runs and the teacher are kept; a deleted run is the only one redone.
    kept = (out / "runs" / "ofd" / "seed1" / "result.json").read_text()
    (out / "runs" / "baseline" / "seed1" / "result.json").unlink()
    teacher_mtime = (out / "teacher" / "teacher.pt").stat().st_mtime_ns
    study_cli.main(args)
    assert (out / "runs" / "ofd" / "seed1" / "result.json").read_text() == kept
    assert (out / "teacher" / "teacher.pt").stat().st_mtime_ns == teacher_mtime
    assert (out / "runs" / "baseline" / "seed1" / "result.json").is_file()


def test_study_in_two_processes(tmp_path, fashion):
    out = tmp_path / "study"
    study_cli.main(["--setting", "smoke", "--out", str(out), "--root", str(fashion), "--rows", "kd", "mgd_sm",
                "--jobs", "2"])
    runs = sorted(p.parent.parent.name for p in (out / "runs").glob("*/seed0/result.json"))
    assert runs == ["kd", "mgd_sm"]
    assert json.loads((out / "runs" / "mgd_sm" / "seed0" / "result.json").read_text())["threads"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux-only")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killing_the_study_stops_its_workers(tmp_path, fashion, how):
    """SIGKILL: the parent cannot clean up, the workers die with it (PR_SET_PDEATHSIG). SIGINT to the parent
    alone (Ctrl-C reaches the whole process group; this is the harder case): it stops its workers and exits."""
    out = tmp_path / "study"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgd_lightning.commands.study", "--setting", "smoke", "--out", str(out),
         "--root", str(fashion), "--rows", "mgd_amp", "mgd_rd", "--seeds", "0", "1", "2", "--jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 600  # generous: a busy 2-core machine starts spawned workers slowly
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            # the two run workers (the resource tracker is a third child)
            workers = [k for k in children(proc.pid) if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, "the study did not start its two workers"
        if how == "SIGKILL":  # inside the workers' fit, where Lightning's signal connector catches SIGTERM
            time.sleep(8)
        proc.send_signal(getattr(signal, how))
        assert proc.wait(timeout=300) != 0
        deadline = time.monotonic() + 300  # returns as soon as they are gone
        while time.monotonic() < deadline and any(alive(w) for w in workers):
            time.sleep(0.2)
        assert [w for w in workers if alive(w)] == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_gpu_setting_code_path_at_smoke_sizes(tmp_path, fashion):
    """What only the gpu setting uses (accelerator "auto", loader workers, runs in this process) works; the
    sizes are the smoke setting's, so that it runs anywhere in seconds."""
    gpu, smoke = scratch.SETTINGS["gpu"], scratch.SETTINGS["smoke"]
    assert gpu.accelerator == "auto" and gpu.num_workers > 0 and gpu.jobs == 1 and len(gpu.seeds) >= 5
    assert gpu.train_images is None and gpu.epochs > scratch.SETTINGS["cpu"].epochs
    sizes = {f.name: getattr(smoke, f.name) for f in dataclasses.fields(scratch.Setting)
             if f.name not in ("accelerator", "num_workers", "jobs")}
    setting = dataclasses.replace(gpu, **{**sizes, "num_workers": 2, "rows": ("mgd_amp",)})
    text = run_study(scratch.STUDY, "gpu", setting, tmp_path / "out", root=str(fashion))
    assert "setting `gpu`" in text and "| MGD-AMP | 1 |" in text
    assert json.loads((tmp_path / "out" / "environment.json").read_text())["setting"]["num_workers"] == 2


def test_a_folder_of_another_setting_is_refused_and_a_lost_teacher_is_not_silently_retrained(tmp_path, fashion):
    out = tmp_path / "study"
    base = ["--setting", "smoke", "--out", str(out), "--root", str(fashion), "--rows", "baseline", "mgd_amp"]
    study_cli.main(base)
    with pytest.raises(SystemExit, match=r"holds runs of another setting \(epochs: 2 -> 3"):
        study_cli.main([*base, "--epochs", "3"])
    study_cli.main([*base, "--jobs", "1", "--threads", "1"])  # scheduling fields may change
    assert (out / "command.txt").read_text().count("mgd-lightning study") == 2  # the refused call ran nothing
    (out / "teacher" / "teacher.pt").unlink()
    study_cli.main(base)  # nothing to do: no teacher needed
    with pytest.raises(SystemExit, match=r"what they were trained from \(.*teacher.pt\) is missing"):
        study_cli.main([*base, "--seeds", "1"])
    study_cli.main([*base, "--rows", "baseline", "--seeds", "1"])  # the baseline needs no teacher
    assert (out / "runs" / "baseline" / "seed1" / "result.json").is_file()


STUDY = Path(__file__).resolve().parents[1] / "results" / "study-cpu"
README = Path(__file__).resolve().parents[1] / "README.md"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "studies" / "reproduction.md"


def test_committed_study_report_is_what_its_runs_give():
    """results.csv and claims.json are the aggregate of the committed runs (nothing edited by hand)."""
    check_committed_study(STUDY, scratch.STUDY, "cpu", ("errors.png", "matching_cost.png", "match_stability.png"),
                          names_its_study=False)  # its environment.json predates the study's name in it


def test_docs_and_readme_show_the_committed_study():
    report = (STUDY / "results.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(scratch.SETTINGS["cpu"].rows)
    claims = [line for line in report.splitlines() if line.startswith(("- **", "  - "))]
    assert len(claims) >= len(scratch.CLAIMS)
    # the docs page shows the whole report (it includes results.md and the plots); whatever the README quotes of it
    # is a line of it
    assert docs_page_problems(STUDY, DOCS_PAGE) == []
    missing = readme_quotes_not_in_report(STUDY, README)
    assert missing == [], "README quotes lines that results/study-cpu/results.md does not hold"


def _fake_folder(out: Path, study, setting_name: str, row: str) -> None:
    """A study folder as a run leaves it (environment.json, one finished run, a report), without training."""
    setting = study.settings[setting_name]
    (out / "runs" / row / "seed0").mkdir(parents=True)
    env = reports.environment(study.name, setting_name, setting, study.rows_config())
    (out / "environment.json").write_text(json.dumps(env))
    result = {**_result("baseline", 0, 12.5), "row": row, "label": study.label(row)}
    (out / "runs" / row / "seed0" / "result.json").write_text(json.dumps(result))
    (out / "results.md").write_text(f"the {study.name} report\n")


def test_report_only_refuses_a_folder_of_another_study_or_setting(tmp_path):
    from mgd_lightning.experiments import transfer

    out = tmp_path / "transfer"
    _fake_folder(out, transfer.STUDY, "transfer-smoke", "kd")
    with pytest.raises(SystemExit, match=r"holds runs of another setting \(study: 'transfer' -> 'scratch'") as info:
        study_cli.main(["--setting", "smoke", "--report-only", "--out", str(out)])
    assert "\n" not in str(info.value)
    assert (out / "results.md").read_text() == "the transfer report\n"  # not overwritten
    assert not (out / "claims.json").exists() and not (out / "results.csv").exists()
    scratch_out = tmp_path / "scratch"
    _fake_folder(scratch_out, scratch.STUDY, "smoke", "baseline")
    with pytest.raises(SystemExit, match=r"holds runs of another setting \(epochs: 2 -> 3"):
        study_cli.main(["--setting", "smoke", "--report-only", "--out", str(scratch_out), "--epochs", "3"])
    assert (scratch_out / "results.md").read_text() == "the scratch report\n"


def test_report_only_rewrites_the_report_of_its_own_folder(tmp_path, capsys):
    out = tmp_path / "scratch"
    _fake_folder(out, scratch.STUDY, "smoke", "baseline")
    study_cli.main(["--setting", "smoke", "--report-only", "--out", str(out), "--rows", "baseline"])
    assert "| student baseline | 1 |" in capsys.readouterr().out
    with (out / "results.csv").open() as f:
        assert [(r["row"], r["n_seeds"]) for r in csv.DictReader(f)] == [("baseline", "1")]


def test_report_only_without_finished_runs_is_a_one_line_error(tmp_path):
    for out in (tmp_path / "never-made", tmp_path / "empty"):
        if out.name == "empty":
            (out / "runs").mkdir(parents=True)
        with pytest.raises(SystemExit, match=r"holds no finished run of the scratch study's setting 'smoke'.*"
                                             r"nothing to report") as info:
            study_cli.main(["--setting", "smoke", "--report-only", "--out", str(out)])
        assert "\n" not in str(info.value)
        assert not (out / "results.md").exists() and not (out / "results.csv").exists()


@pytest.mark.parametrize("option", ["--epochs", "--jobs", "--threads"])
def test_zero_epochs_jobs_or_threads_are_errors_not_the_default(option, tmp_path):
    with pytest.raises(SystemExit, match=rf"mgd-lightning study: error: {option} must be >= 1, got 0") as info:
        study_cli.main(["--setting", "smoke", "--out", str(tmp_path / "out"), option, "0"])
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
