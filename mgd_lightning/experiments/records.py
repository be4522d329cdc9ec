"""Result records of multi-run experiments (studies, ``compare``): atomic JSON files and CSV / markdown cells."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_json", "plus_minus", "write_csv", "write_json_atomic"]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: the file is always complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def load_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plus_minus(mean: float | None, std: float | None) -> str:
    """``"12.34 ± 0.56"``; the mean alone without a std (``None`` or NaN); ``"-"`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.2f}" if _missing(std) else f"{mean:.2f} ± {std:.2f}"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """``rows`` as CSV with the columns ``fields`` (other keys ignored); ``None`` and NaN as empty cells."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if _missing(row.get(k)) else row.get(k) for k in fields})
