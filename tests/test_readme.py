"""Every ```python block of the README runs as written; every command of its ```bash blocks parses
(tests/doc_blocks.py); its links into the repository lead somewhere; it stays a front page."""

from __future__ import annotations

import re

import pytest

from tests.committed_results import readme_quotes
from tests.doc_blocks import ROOT, blocks, check_command, shell_commands

README = ROOT / "README.md"
BLOCKS = blocks(README, "python")
COMMANDS = [c for b in blocks(README, "bash") for c in shell_commands(b.code)]


def test_readme_has_examples():
    assert BLOCKS and COMMANDS
    assert not [b.name for b in BLOCKS if b.skip], "the README's examples all run"


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 200, "move the details into docs/"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index].code, f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert check_command(command) is None


def test_readme_links_exist():
    """Relative links (the docs pages, CONTRIBUTING.md) name files of the repository, and anchors headings there."""
    for target in re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", README.read_text()):
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, target


def test_readme_quotes_only_committed_reports():
    """The headline results quote lines of results/<study>/results.md (the studies' tests check the lines)."""
    quotes = readme_quotes(README)
    assert quotes and all((ROOT / "results" / folder / "results.md").is_file() for folder in quotes)
