"""Print the requirements of installed distributions, less some: a Lightning-only environment's dependencies.

    python requirements/requires.py mgd-lightning lightning --without pytorch-lightning

``make test-backends`` installs ``mgd-lightning`` and ``lightning`` with ``--no-deps`` (``lightning`` 2.6 requires
``pytorch-lightning``), then their other requirements from this list (requirements of extras are left out).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]).lower()


def main(argv: list[str]) -> None:
    dists, without = argv, []
    if "--without" in argv:
        i = argv.index("--without")
        dists, without = argv[:i], [_name(n) for n in argv[i + 1:]]
    out = []
    for dist in dists:
        for requirement in requires(dist) or []:
            if "extra ==" in requirement or _name(requirement) in without:
                continue
            out.append(requirement)
    sys.stdout.write("".join(f"{r}\n" for r in dict.fromkeys(out)))


if __name__ == "__main__":
    main(sys.argv[1:])
