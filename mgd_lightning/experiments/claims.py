"""The paper's claims checked on paired per-seed differences of an error, with 95 % Student-t intervals.

A claim is ``(text, kind, [(first row, second row), ...])``. ``better``: the first row has the lower error;
``tie``: the two are equal within :data:`TIE_MARGIN` points.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from .records import plus_minus

__all__ = ["TIE_MARGIN", "Claim", "check_claims", "claims_markdown", "paired", "t_interval", "verdict"]

#: Half-width (points of top-1 error) within which two rows count as equal, for the claims that are ties.
TIE_MARGIN = 0.5

Claim = tuple[str, str, list[tuple[str, str]]]


def paired(results: Sequence[dict[str, Any]], a: str, b: str, key: str = "top1_err") -> list[float]:
    """Per seed run by both: ``key`` of row ``a`` minus that of row ``b`` (negative: ``a`` is better)."""
    err = {(r["row"], r["seed"]): r[key] for r in results}
    seeds = sorted({s for (n, s) in err if n == a} & {s for (n, s) in err if n == b})
    return [err[(a, s)] - err[(b, s)] for s in seeds]


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided ``level`` confidence interval of the mean of ``diffs`` (Student t, n - 1 dof); NaNs for n < 2."""
    if len(diffs) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    mean = statistics.fmean(diffs)
    half = float(t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half


def verdict(kind: str, low: float, high: float, tie_margin: float = TIE_MARGIN) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` from the 95 % interval of (first - second)."""
    if kind not in ("better", "tie"):
        raise ValueError(f"kind must be 'better' or 'tie', got {kind!r}")
    if math.isnan(low):
        return "inconclusive"
    if kind == "tie":
        if -tie_margin <= low and high <= tie_margin:
            return "supported"
        return "contradicted" if high < -tie_margin or low > tie_margin else "inconclusive"
    if high < 0:
        return "supported"
    return "contradicted" if low > 0 else "inconclusive"


def check_claims(results: Sequence[dict[str, Any]], claims: Sequence[Claim],
                 key: str = "top1_err") -> list[dict[str, Any]]:
    """Each claim checked on the paired per-seed differences of ``key`` (results: dicts with row, seed, key).

    For each comparison, the differences (first row minus second row, per seed run by both) give a mean, a
    sample std and a 95 % Student-t interval of the mean. A ``better`` comparison is *supported* when the whole
    interval is below 0, *contradicted* when it is above 0, *inconclusive* otherwise (the sign of the mean and
    the seeds won still say which way it leans). A ``tie`` is supported when the interval lies within
    ±:data:`TIE_MARGIN`, contradicted when it lies entirely outside it. With one seed everything is
    inconclusive. A claim *held* when all its comparisons are supported, *did not hold* when any is
    contradicted, and is *not shown* otherwise. No correction for the number of comparisons is made.
    Comparisons without a common seed are left out, and claims without a comparison.
    """
    out = []
    for claim, kind, pairs in claims:
        comps = []
        for a, b in pairs:
            diffs = paired(results, a, b, key)
            if not diffs:
                continue
            low, high = t_interval(diffs)
            comps.append({
                "first": a, "second": b, "kind": kind, "n": len(diffs), "diff_mean": statistics.fmean(diffs),
                "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else float("nan"),
                "ci95_low": low, "ci95_high": high, "first_better_seeds": sum(d < 0 for d in diffs),
                "verdict": verdict(kind, low, high),
            })
        if comps:
            verdicts = {c["verdict"] for c in comps}
            status = ("held" if verdicts == {"supported"} else "did not hold" if "contradicted" in verdicts
                      else "not shown")
            out.append({"claim": claim, "kind": kind, "status": status, "comparisons": comps})
    return out


def claims_markdown(checked: Sequence[dict[str, Any]], label: Callable[[str], str]) -> list[str]:
    """The checked claims as markdown lines (a heading, how to read them, one bullet per claim and comparison)."""
    lines = ["## The paper's claims, checked", "",
             "Differences are paired by seed: top-1 error of the first row minus the second, in points, "
             "mean ± sample std, then the 95 % Student-t interval of the mean and the seeds in which the first "
             "row was better. Negative: the first row is better. *supported* / *contradicted*: the whole "
             f"interval is below / above 0 (for a tie: inside / outside ±{TIE_MARGIN}); *inconclusive*: "
             "otherwise. A claim *held* when all its comparisons are supported, *did not hold* when one is "
             "contradicted, and is *not shown* otherwise. No correction for the number of comparisons.", ""]
    for c in checked:
        lines.append(f"- **{c['claim']}: {c['status']}.**")
        for d in c["comparisons"]:
            ci = ("" if math.isnan(d["ci95_low"]) else f", 95 % CI [{d['ci95_low']:.2f}, {d['ci95_high']:.2f}]")
            lines.append(f"  - {label(d['first'])} vs {label(d['second'])}: "
                         f"{plus_minus(d['diff_mean'], d['diff_std'])}{ci}, first better in {d['first_better_seeds']}/"
                         f"{d['n']} seeds: {d['verdict']}")
    return lines
