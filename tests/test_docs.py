"""The documentation site (docs/, `make docs`): every ```python block of every page runs as written, every command
of its ```bash blocks parses (tests/doc_blocks.py), the studies' pages are generated from results/, and the API
reference covers every public module."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.doc_blocks import ROOT, blocks, check_command, shell_commands

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if not {"_build", "_generated"} & set(p.relative_to(DOCS).parts))
#: the pages' code blocks, and those of CONTRIBUTING.md (included by docs/contributing.md)
CODE_PAGES = [*PAGES, ROOT / "CONTRIBUTING.md"]
PYTHON = [b for page in CODE_PAGES for b in blocks(page, "python")]
COMMANDS = [(b, c) for page in CODE_PAGES for b in blocks(page, "bash") for c in shell_commands(b.code)]

#: the python blocks that do not run, with the reason the page gives (``<!-- skip: reason -->`` before the block);
#: a new skip must be added here too, so that the set stays small and visible
SKIPPED: dict[str, str] = {}

STUDIES = {  # docs page -> results folder
    "studies/reproduction.md": "study-cpu",
    "studies/transfer.md": "transfer-cpu",
    "studies/imagenet-transfer.md": "imagenet-transfer-cpu",
}


def test_the_pages_have_examples():
    assert len(PAGES) >= 15 and len(PYTHON) >= 5 and len(COMMANDS) >= 10


def test_skipped_blocks_are_the_listed_ones():
    skipped = {b.name: b.skip for b in PYTHON if b.skip}
    print(f"{len(PYTHON)} python blocks in {len(PAGES)} pages, {len(skipped)} skipped: {skipped}")
    assert skipped == SKIPPED


@pytest.mark.parametrize("block", PYTHON, ids=[b.name for b in PYTHON])
def test_python_block_runs(block, tmp_path, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.name, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize(("block", "command"), COMMANDS, ids=[f"{b.name}:{c[:60]}" for b, c in COMMANDS])
def test_shell_command_parses(block, command, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands are written for the repository root (configs/...)
    problem = check_command(command)
    assert problem is None, f"{block.name}: {command}: {problem}"


@pytest.mark.parametrize("page", sorted(STUDIES))
def test_study_pages_are_generated_from_results(page):
    """Each study page includes its results.md (the table and the checked claims, as `mgd-lightning study
    --report-only` wrote them) and shows every plot of the folder, instead of copies of their numbers."""
    text = (DOCS / page).read_text()
    folder = f"../../results/{STUDIES[page]}"
    assert re.search(rf"```{{include}} {re.escape(folder)}/results\.md\n", text)
    plots = sorted(p.name for p in (ROOT / "results" / STUDIES[page]).glob("*.png"))
    assert plots and all(f"]({folder}/{name})" in text for name in plots)


def test_study_cpu_hand_written_text_is_in_one_place():
    """The reproduction study's figures (its table's mean ± std cells) appear in no page but its notes file, and not
    in the README: a re-run of results/study-cpu only needs docs/studies/reproduction-notes.md rewritten."""
    report = (ROOT / "results" / "study-cpu" / "results.md").read_text().splitlines()
    figures = {cell.strip() for line in report if line.startswith("|") for cell in line.split("|") if " ± " in cell}
    assert figures
    for page in [*CODE_PAGES, ROOT / "README.md"]:
        if page.name != "reproduction-notes.md":
            text = page.read_text()
            assert not [f for f in figures if f in text], page


def _conf():
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_api_reference_covers_every_public_module():
    conf = _conf()
    documented = {"mgd_lightning"} | {m for _, _, _, modules in conf.API_PAGES for module in modules
                                      for m in conf._expand(module)}
    public = set()
    for path in (ROOT / "mgd_lightning").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or (conf._module_doc(path) or "").startswith("Deprecated"):
            continue
        public.add(".".join(parts))
    assert public - documented == set(), "add these modules to API_PAGES in docs/conf.py"


def test_every_page_is_in_the_toctree_or_included():
    """Sphinx checks it too (a page outside every toctree is a warning of the strict build); this names the page."""
    text = "\n".join(p.read_text() for p in PAGES)
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix("").as_posix()
        if rel in ("index", "studies/reproduction-notes"):
            continue
        assert re.search(rf"^(\.\./)?{re.escape(rel.split('/')[-1])}$", text, flags=re.M) or rel in text, rel
