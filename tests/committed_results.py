"""One check for a study's committed results folder: the tables, claims and plots are what its runs give, made by
HEAD's rows and setting (used by the tests of each study)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest

from mgd_lightning.experiments import reports
from mgd_lightning.experiments.claims import check_claims


def check_committed_study(folder: Path, study, setting_name: str, plots: tuple[str, ...],
                          names_its_study: bool = True) -> list[dict]:
    """Assert ``folder`` holds every (row, seed) run of the setting, that results.csv (mean and std per row) and
    claims.json are their aggregate, that environment.json names the study with HEAD's rows and setting (less the
    scheduling fields), and that the plots were written. ``names_its_study=False``: an environment.json written
    before it recorded the study's name (results/study-cpu). Returns the runs."""
    setting = study.settings[setting_name]
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/seed*/result.json"))]
    assert len(runs) == len(setting.rows) * len(setting.seeds)
    with (folder / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    again = reports.aggregate(runs, setting.rows, study.label)
    assert [r["row"] for r in table] == list(setting.rows)
    for committed, row in zip(table, again):
        assert int(committed["n_seeds"]) == row["n_seeds"] == len(setting.seeds)
        assert float(committed["top1_err_mean"]) == pytest.approx(row["top1_err_mean"])
        assert float(committed["top1_err_std"]) == pytest.approx(row["top1_err_std"])
    assert json.loads((folder / "claims.json").read_text()) == json.loads(json.dumps(check_claims(runs,
                                                                                                  study.claims)))
    env = json.loads((folder / "environment.json").read_text())
    assert env["setting_name"] == setting_name and env["packages"]["torch"]
    if names_its_study:
        assert env["study"] == study.name
    # made by HEAD's rows and setting: a change to either needs the study re-run
    assert env["rows_config"] == study.rows_config()
    now = reports.jsonable(dataclasses.asdict(setting))
    assert {k: v for k, v in env["setting"].items() if k not in reports.SCHEDULING_FIELDS} == \
        {k: v for k, v in now.items() if k not in reports.SCHEDULING_FIELDS}
    for plot in plots:
        assert (folder / plot).stat().st_size > 10_000
    return runs


ROOT = Path(__file__).resolve().parents[1]
#: the mark before lines that the README quotes from a study's report: ``<!-- quoted from results/<folder>/results.md
#: -->``; the quoted lines follow it, up to the next blank line
QUOTE_MARK = re.compile(r"^<!-- quoted from results/(?P<folder>[^/]+)/results\.md -->$", re.M)


def readme_quotes(readme: Path) -> dict[str, list[str]]:
    """The README's quoted results lines, per results folder name."""
    text = readme.read_text()
    quotes: dict[str, list[str]] = {}
    for mark in QUOTE_MARK.finditer(text):
        block = text[mark.end():].lstrip("\n").split("\n\n", 1)[0]
        quotes.setdefault(mark.group("folder"), []).extend(line for line in block.splitlines() if line.strip())
    return quotes


def readme_quotes_not_in_report(folder: Path, readme: Path) -> list[str]:
    """The lines the README quotes from ``folder/results.md`` (its headline results) that the report does not hold
    as they are: every figure the README quotes is then one of the committed report, which the committed-study check
    ties to results.csv / claims.json and the runs."""
    report = set((folder / "results.md").read_text().splitlines())
    return [line for line in readme_quotes(readme).get(folder.name, []) if line not in report]


def docs_page_problems(folder: Path, page: Path) -> list[str]:
    """What keeps the study's docs page from showing ``folder``'s report in full: the page must include
    ``results.md`` itself (so every table and claim line is shown as the study wrote it, nothing copied by hand) and
    every plot of the folder."""
    text = page.read_text()
    rel = Path("../../results") / folder.name
    problems = [] if f"```{{include}} {rel.as_posix()}/results.md\n" in text else [f"no include of {rel}/results.md"]
    problems += [f"no plot {png.name}" for png in sorted(folder.glob("*.png")) if f"]({rel.as_posix()}/{png.name})"
                 not in text]
    return problems
