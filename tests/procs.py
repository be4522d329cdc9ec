"""The process tree from /proc (Linux), for the tests that kill a parent and look for what it leaves behind."""

from __future__ import annotations

import signal
from pathlib import Path


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def default_sigint() -> None:
    """``preexec_fn`` of a child the test Ctrl-Cs: SIGINT back to its default, so that Python turns it into
    KeyboardInterrupt. A shell starts background jobs (``make test &``, a CI runner's) with SIGINT ignored, and
    an ignored signal stays ignored across exec: the child would never see the test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
