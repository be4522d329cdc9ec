"""A study: rows x seeds of training runs, resumable, then a report with the paper's claims checked.

:class:`Study` holds what differs between studies (rows, settings, claims, how to prepare the shared models and
how to run one row with one seed, the report's head, notes and extra plots); :func:`run_study` and
:func:`report` are the same for all of them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .claims import Claim, check_claims, claims_markdown
from .records import load_json, write_csv
from .reports import aggregate, check_same_setting, environment, errors_plot, jsonable, matching_plots, rows_table
from .runner import quiet_lightning, run_jobs

__all__ = ["RESULT_FILE", "PremiseError", "Study", "finished_results", "report", "report_finished", "run_study"]

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


class PremiseError(RuntimeError):
    """A study's premise does not hold in its setting (e.g. pre-training does not beat training from scratch): the
    study would not test what it claims to, so it stops before its rows run (raised by ``Study.prepare``)."""

ROWS_CSV = ["row", "label", "n_seeds", "seeds", "top1_err_mean", "top1_err_std", "top5_err_mean", "top5_err_std",
            "trainable_params", "matching_updates", "wall_s_mean"]
RUNS_CSV = ["row", "seed", "top1_err", "top5_err", "wall_s", "matching_updates", "matching_s", "threads"]


@dataclass(frozen=True)
class Study:
    """What one study is.

    Args:
        name: its name (``environment.json`` records it; a folder of another study is refused).
        rows: name -> row; a row has a ``label`` and is a frozen dataclass (its fields are recorded).
        settings: name -> setting (a frozen dataclass with at least ``seeds``, ``rows``, ``jobs``, ``threads``).
        claims: the paper's claims checked (:mod:`.claims`).
        prepare: ``prepare(setting, out, root)`` trains (or reuses) what the runs share (teachers, pre-trained
            students) under ``out``; called before the runs.
        prepared_info: ``prepared_info(setting, out)``: what the report says about them (a dict, e.g. the
            teacher's error), read from ``out``.
        prepared_files: ``prepared_files(setting, out)``: the files the runs depend on; finished runs without them
            are refused (a retrained teacher would be mixed with the old one's runs).
        run: ``run(name, seed, setting, out, root)`` trains one row with one seed, writes and returns
            ``out/runs/<name>/seed<seed>/result.json`` (a module-level function: the workers unpickle it).
        head: ``head(setting_name, setting, prepared)``: the report's title and description lines.
        notes: the report's closing notes (markdown).
        plot_rows / cost_plot_rows: rows of the matching-stability / matching-cost plots.
        references: ``references(prepared)``: labelled vertical lines of the error plot (e.g. the teacher).
        extra_report: ``extra_report(results, rows, setting, out)``: more plots or tables; returns markdown lines.
        folder: the default output folder under ``results/`` (``{setting}`` is the setting's name).
        top5: show the top-5 error in the report's table (not when there are 5 classes or fewer).
        claims_heading: the heading of the report's claims section (a study beyond the paper checks its own).
    """

    name: str
    rows: dict[str, Any]
    settings: dict[str, Any]
    claims: Sequence[Claim]
    prepare: Callable[[Any, Path, str | None], None]
    prepared_info: Callable[[Any, Path], dict[str, Any]]
    prepared_files: Callable[[Any, Path], list[Path]]
    run: Callable[..., dict[str, Any]]
    head: Callable[[str, Any, dict[str, Any]], list[str]]
    notes: str = ""
    plot_rows: Sequence[str] = ()
    cost_plot_rows: Sequence[str] | None = None
    references: Callable[[dict[str, Any]], dict[str, float]] = lambda prepared: {}
    extra_report: Callable[..., list[str]] | None = field(default=None)
    folder: str = "study-{setting}"
    top5: bool = True
    claims_heading: str = "The paper's claims, checked"

    def label(self, name: str) -> str:
        return self.rows[name].label

    def rows_config(self) -> dict[str, Any]:
        return jsonable({name: dataclasses.asdict(row) for name, row in self.rows.items()})


def finished_results(study: Study, setting: Any, out: Path) -> list[dict[str, Any]]:
    """Every finished run under ``out`` of the setting's rows and seeds."""
    return [r for n in setting.rows for p in sorted((out / "runs" / n).glob(f"seed*/{RESULT_FILE}"))
            if (r := load_json(p)) is not None and r["seed"] in setting.seeds]


def report(study: Study, out: Path, setting_name: str, setting: Any) -> tuple[list[dict[str, Any]], str]:
    """Read every finished run under ``out``; write results.csv, runs.csv, claims.json, results.md and plots."""
    results = finished_results(study, setting, out)
    prepared = study.prepared_info(setting, out)
    rows = aggregate(results, setting.rows, study.label)
    checked = check_claims(results, study.claims)
    write_csv(out / "results.csv", rows, ROWS_CSV)
    write_csv(out / "runs.csv", sorted(results, key=lambda r: (setting.rows.index(r["row"]), r["seed"])), RUNS_CSV)
    (out / "claims.json").write_text(json.dumps(checked, indent=2) + "\n")
    lines = [*study.head(setting_name, setting, prepared), "", *rows_table(rows, study.top5)]
    if study.extra_report is not None:
        lines += study.extra_report(results, rows, setting, out)
    lines += ["", *claims_markdown(checked, study.label, study.claims_heading), "", study.notes]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    errors_plot(results, rows, out / "errors.png", study.references(prepared))
    matching_plots(results, study.plot_rows, study.label, out, study.cost_plot_rows)
    return rows, text


def report_finished(study: Study, out: Path, setting_name: str, setting: Any) -> tuple[list[dict[str, Any]], str]:
    """:func:`report` of a folder a study wrote earlier (``--report-only``), after the checks a run makes:
    ``ValueError`` when ``out`` holds runs of another study or setting (its report would be overwritten by one
    that calls them this study's) or no finished run of this setting's rows and seeds."""
    check_same_setting(out, study.name, setting, study.rows_config())
    if not finished_results(study, setting, out):
        raise ValueError(
            f"{out} holds no finished run of the {study.name} study's setting {setting_name!r} (no "
            f"runs/<row>/seed<k>/{RESULT_FILE} of its rows and seeds): nothing to report; run the study "
            "first (drop --report-only), or pass the --out, --setting, --rows and --seeds it ran with"
        )
    return report(study, out, setting_name, setting)


def run_study(study: Study, setting_name: str, setting: Any, out: Path, root: str | None = None,
              command: str | None = None) -> str:
    """What the runs share first, then every missing (row, seed) run, then the report; returns the markdown.

    ``command`` (the command line) is appended to ``out/command.txt`` once the folder is known to fit.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows_config = study.rows_config()
    check_same_setting(out, study.name, setting, rows_config)
    if command is not None:
        with (out / "command.txt").open("a") as f:  # every call that ran (or resumed) the study
            f.write(command + "\n")
    (out / "environment.json").write_text(
        json.dumps(environment(study.name, setting_name, setting, rows_config), indent=2) + "\n")
    start = time.perf_counter()
    quiet_lightning()
    # Seed-major order: a partial study already has every row.
    jobs = [(n, s, setting, out, root) for s in setting.seeds for n in setting.rows
            if load_json(out / "runs" / n / f"seed{s}" / RESULT_FILE) is None]
    total = len(setting.rows) * len(setting.seeds)
    if jobs:
        missing = [p for p in study.prepared_files(setting, out) if not p.is_file()]
        if missing and any((out / "runs").glob(f"*/seed*/{RESULT_FILE}")):
            raise ValueError(
                f"{out / 'runs'} holds finished runs but what they were trained from ({', '.join(map(str, missing))}) "
                "is missing: new runs would use a retrained model. Restore the file(s), or delete the folder to "
                "start over."
            )
        threads = torch.get_num_threads()
        study.prepare(setting, out, root)
        torch.set_num_threads(threads)
    log.info("%d of %d runs to do, %d at a time", len(jobs), total, setting.jobs)
    done = total - len(jobs)

    def finished(result: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        log.info("[%d/%d] %s seed %d: %.2f %% top-1 error (%.0f s); %.0f min elapsed", done, total, result["row"],
                 result["seed"], result["top1_err"], result["wall_s"], (time.perf_counter() - start) / 60)

    failed = run_jobs(jobs, study.run, processes=setting.jobs, threads=setting.threads, on_done=finished,
                      describe=lambda job: f"{job[0]}/seed{job[1]}")
    _, text = report(study, out, setting_name, setting)
    log.info("study: %.1f min in this call; report in %s", (time.perf_counter() - start) / 60, out / "results.md")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)} (rerun the command to retry them)")
    return text
