"""The code blocks of the README and the documentation pages, and the checks that make them tested:

* every ```python block runs as written (tests/test_readme.py, tests/test_docs.py), unless the line before it is a
  ``<!-- skip: reason -->`` comment (counted and reported, so skipping stays visible);
* every ```bash block's command lines are checked without running them (a study is 100 minutes): an
  ``mgd-lightning <subcommand> ...`` or ``python -m mgd_lightning.<module> ...`` line must parse (the LightningCLI's
  subcommands with ``--print_config``, which validates the config and the arguments without building anything; the
  other subcommands with their own argument parser, stopped right after parsing), a ``make <target>`` must be a target
  of the Makefile, a ``pip install 'mgd-lightning[<extras>]'`` must name extras of setup.cfg.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"<!--\s*skip:\s*(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[^\s`]*)[^\n]*\n(?P<code>.*?)^```\s*$", re.S | re.M)
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason given in a ``<!-- skip: reason -->`` comment right before the block

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path, lang: str) -> list[Block]:
    """The fenced ``lang`` blocks of a Markdown file (fences at the start of a line), in order."""
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        if match.group("lang") != lang:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append(Block(path, text.count("\n", 0, match.start()) + 1, lang, match.group("code"),
                         skip.group("reason") if skip else None))
    return out


def shell_commands(code: str) -> list[str]:
    """The command lines of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: let the caller see the line as is
            words = [line]
        if words:
            out.append(shlex.join(words))
    return out


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M)}


def setup_extras() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return set(config["options.extras_require"])


class _Parsed(Exception):
    """Raised by the patched argument parser once the arguments parsed: the command is not run."""


@contextlib.contextmanager
def _stop_after_parsing():
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _entry_point():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="mgd-lightning")
    return script.load()


def check_command(command: str) -> str | None:
    """Check one shell command line without running it: ``None`` when it is fine (or not one this module checks),
    else what is wrong."""
    words = shlex.split(command)
    if words[0] in ("make",):
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        missing = [t for t in targets if t not in makefile_targets()]
        return f"make targets not in the Makefile: {missing}" if missing else None
    if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"] or words[0].endswith("/pip"):
        wanted = {e.strip() for w in words for m in re.finditer(r"mgd-lightning\[([^\]]*)\]", w)
                  for e in m.group(1).split(",")}
        missing = sorted(wanted - setup_extras())
        return f"extras not in setup.cfg: {missing}" if missing else None
    if Path(words[0]).name == "mgd-lightning":
        main, argv = _entry_point(), words[1:]
    elif Path(words[0]).name.startswith("python") and words[1:2] == ["-m"] and words[2].startswith("mgd_lightning"):
        main, argv = importlib.import_module(words[2]).main, words[3:]
    else:
        return None
    lightning = not argv or argv[0] in LIGHTNING_SUBCOMMANDS or argv[0].startswith("-")
    if lightning and "--help" not in argv and "-h" not in argv:
        argv = [*argv, "--print_config"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), _stop_after_parsing():
            main(argv)
    except _Parsed:
        return None
    except SystemExit as stop:
        return None if stop.code in (0, None) else f"exit status {stop.code}: {out.getvalue()[-2000:]}"
    return f"ran instead of stopping after parsing: {out.getvalue()[-2000:]}"
