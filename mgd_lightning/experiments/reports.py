"""What a multi-run experiment writes: aggregates, tables, plots, the environment, and the setting check."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .records import load_json, plus_minus

__all__ = ["SCHEDULING_FIELDS", "aggregate", "check_same_setting", "environment", "errors_plot", "jsonable",
           "matching_plots", "mean_std", "pyplot", "rows_table"]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std of ``values``; the std is ``None`` for one value; NaN and ``None`` for values with a NaN
    (a metric a study does not measure, e.g. top-5 error with 10 classes)."""
    if any(math.isnan(v) for v in values):
        return float("nan"), None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(results: Sequence[dict[str, Any]], names: Sequence[str], label: Callable[[str], str],
              key: str = "row") -> list[dict[str, Any]]:
    """One row per name (in ``names`` order) over its finished seeds: mean ± std of top-1 / top-5 error.

    ``results``: dicts with ``key`` (the row's name), ``seed``, ``top1_err``, ``top5_err``, ``wall_s``,
    ``trainable_params`` and ``matching_updates``. Names without results are left out.
    """
    rows = []
    for name in names:
        runs = sorted((r for r in results if r[key] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        top1, top1_std = mean_std([r["top1_err"] for r in runs])
        top5, top5_std = mean_std([r["top5_err"] for r in runs])
        rows.append({
            key: name, "label": label(name), "n_seeds": len(runs), "seeds": " ".join(str(r["seed"]) for r in runs),
            "top1_err_mean": top1, "top1_err_std": top1_std, "top5_err_mean": top5, "top5_err_std": top5_std,
            "trainable_params": runs[0]["trainable_params"], "matching_updates": runs[0]["matching_updates"],
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        })
    return rows


def rows_table(rows: Sequence[dict[str, Any]], top5: bool = True) -> list[str]:
    """Markdown lines of :func:`aggregate`'s rows (``top5``: with the top-5 error column)."""
    cols = ["row", "seeds", "top-1 err (%)", *(["top-5 err (%)"] if top5 else []), "trained params",
            "matching updates", "wall time / run (s)"]
    lines = ["| " + " | ".join(cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]
    for r in rows:
        cells = [r["label"], str(r["n_seeds"]), plus_minus(r["top1_err_mean"], r["top1_err_std"]),
                 *([plus_minus(r["top5_err_mean"], r["top5_err_std"])] if top5 else []),
                 f"{r['trainable_params']:,}", str(r["matching_updates"]), f"{r['wall_s_mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def errors_plot(results: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], path: Path,
                references: Mapping[str, float] = {}) -> Path | None:
    """Every seed's top-1 error and each row's mean ± std, one line per row; ``references``: labelled lines."""
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = {r["row"]: i for i, r in enumerate(reversed(rows))}
    seeds = [(r["top1_err"], y[r["row"]]) for r in results if r["row"] in y]
    ax.scatter([e for e, _ in seeds], [i for _, i in seeds], s=12, color="0.6", zorder=2, label="one seed")
    ax.errorbar([r["top1_err_mean"] for r in rows], [y[r["row"]] for r in rows],
                xerr=[r["top1_err_std"] or 0.0 for r in rows],
                fmt="o", color="tab:red", capsize=3, zorder=3, label="mean ± std")
    ax.set_yticks([y[r["row"]] for r in rows], [r["label"] for r in rows])
    for (name, value), style in zip(references.items(), ("--", ":", "-.")):
        ax.axvline(value, color="k", ls=style, lw=1, label=name)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_xlabel("top-1 error (%) on the test set")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _history_by_epoch(results: Sequence[dict[str, Any]], name: str, key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``key`` at each matching update of row ``name``."""
    per_epoch: dict[int, list[float]] = {}
    for r in results:
        if r["row"] == name:
            for h in r["history"]:
                if key in h and not math.isnan(h[key]):
                    per_epoch.setdefault(h["epoch"], []).append(h[key])
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def matching_plots(results: Sequence[dict[str, Any]], names: Sequence[str], label: Callable[[str], str], out: Path,
                   cost_names: Sequence[str] | None = None) -> list[Path]:
    """``matching_cost.png`` (paper Fig. 5) and ``match_stability.png`` (Fig. 6) under ``out``.

    One panel per tap, one line per row of ``names`` that has a matching history (the mean over seeds at each
    update); ``cost_names``: the rows of the cost plot (default: ``names``).
    """
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    paths = []
    taps = sorted({int(k.removeprefix("cost_tap")) for r in results for h in r["history"] for k in h
                   if k.startswith("cost_tap")})
    present = [n for n in names if any(r["row"] == n and r["history"] for r in results)]
    cost_rows = [n for n in present if cost_names is None or n in cost_names]
    for key, fname, ylabel, title, rows in (
        ("cost_tap", "matching_cost.png", "mean cost per matched pair",
         "Matching cost at each update (cf. paper Fig. 5)", cost_rows),
        ("changed_tap", "match_stability.png", "fraction of student channels re-matched",
         "Match stability: channels whose group changed (cf. paper Fig. 6)", present),
    ):
        if not taps or not rows:
            continue
        fig, axes = plt.subplots(1, len(taps), figsize=(3.6 * len(taps), 3.4), squeeze=False)
        for ax, t in zip(axes[0], taps):
            for n in rows:
                epochs, values = _history_by_epoch(results, n, f"{key}{t}")
                if key == "changed_tap" and epochs and epochs[0] == 0:
                    epochs, values = epochs[1:], values[1:]  # the first update changes the initial grouping
                ax.plot(epochs, values, marker="o", label=label(n).replace("MGD-AMP", "AMP"))
            ax.set_title(f"tap {t}")
            ax.set_xlabel("epoch of the update")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(title + "; mean over seeds")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        paths.append(out / fname)
    return paths


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def environment(study: str, setting_name: str, setting: Any, rows_config: dict[str, Any]) -> dict[str, Any]:
    """Software versions, the machine, the study, its setting (a dataclass) and rows, for environment.json."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for pkg in ("mgd-lightning", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "scipy", "numpy",
                "matplotlib"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions, "study": study, "setting_name": setting_name,
        "setting": jsonable(dataclasses.asdict(setting)), "rows_config": rows_config,
    }


#: Setting fields that do not change what a run computes (how many at a time, threads, which rows / seeds to do).
SCHEDULING_FIELDS = ("jobs", "threads", "teacher_threads", "num_workers", "rows", "seeds")


def check_same_setting(out: Path, study: str, setting: Any, rows_config: dict[str, Any]) -> None:
    """``ValueError`` when ``out`` holds runs of another study, another setting or other row definitions.

    Compares with the ``environment.json`` an earlier call wrote; fields missing there are not compared, nor
    the :data:`SCHEDULING_FIELDS`.
    """
    old = load_json(out / "environment.json")
    if old is None or not (out / "runs").is_dir():
        return
    new, prev = jsonable(dataclasses.asdict(setting)), old.get("setting", {})
    diffs = [f"study: {old['study']!r} -> {study!r}"] if old.get("study", study) != study else []
    diffs += [f"{k}: {prev[k]!r} -> {new[k]!r}" for k in new
             if k not in SCHEDULING_FIELDS and k in prev and prev[k] != new[k]]
    old_rows = old.get("rows_config") or {}
    diffs += [f"row {n}: {old_rows[n]} -> {cfg}" for n, cfg in rows_config.items()
              if n in old_rows and old_rows[n] != cfg]
    if diffs:
        raise ValueError(
            f"{out} holds runs of another setting ({'; '.join(diffs)}): finished runs would be mixed with "
            "different ones. Pass another --out, or delete that folder to start over."
        )
