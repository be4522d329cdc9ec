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

__all__ = ["TIE_MARGIN", "Claim", "check_claims", "claims_markdown", "holm", "identical_runs", "p_value", "paired",
           "rematched", "t_interval", "verdict"]

#: Half-width (points of top-1 error) within which two rows count as equal, for the claims that are ties.
TIE_MARGIN = 0.5

#: ``(text, kind, pairs)``, or ``(text, kind, pairs, row)`` where ``row``'s option acts only through a matching
#: re-solved to a different result (e.g. another matching cost): not testable where the matching never moved.
Claim = tuple


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


def identical_runs(results: Sequence[dict[str, Any]], a: str, b: str, key: str = "top1_err") -> bool:
    """Whether rows ``a`` and ``b`` trained the same thing in every seed run by both: equal ``weights_digest``
    where both runs record one, else equal ``key`` (an older record without digests)."""
    runs = {(r["row"], r["seed"]): r for r in results}
    seeds = sorted({s for (n, s) in runs if n == a} & {s for (n, s) in runs if n == b})
    if not seeds:
        return False
    for s in seeds:
        ra, rb = runs[(a, s)], runs[(b, s)]
        if ra.get("weights_digest") and rb.get("weights_digest"):
            if ra["weights_digest"] != rb["weights_digest"]:
                return False
        elif ra[key] != rb[key]:
            return False
    return True


def rematched(results: Sequence[dict[str, Any]], row: str) -> bool:
    """Whether any run of ``row`` changed its matching at an update after its first (``changed_tap*`` of its
    matching history): an option of the matching cost can only act then."""
    for r in results:
        if r["row"] != row:
            continue
        for update in r.get("history", [])[1:]:
            if any(v for k, v in update.items() if k.startswith("changed_tap") and v):
                return True
    return False


def p_value(kind: str, diffs: Sequence[float], tie_margin: float = TIE_MARGIN) -> float:
    """The p-value behind :func:`verdict`'s decision at level 0.05 (``p < 0.05`` exactly when the 95 % interval
    decides), from the paired differences ``diffs`` (Student t, n - 1 dof).

    ``better``: two-sided test of mean 0. ``tie``: twice the larger of the two one-sided p-values against
    ``-tie_margin`` and ``+tie_margin`` (TOST: small when the interval lies inside the margin), or, when the mean lies
    outside the margin, twice the one-sided p-value of lying beyond it (small when the interval lies outside).
    NaN for fewer than 2 differences; 1 for all-equal differences that decide nothing.
    """
    n = len(diffs)
    if n < 2:
        return float("nan")
    from scipy.stats import t

    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        if kind == "better":
            return 0.0 if mean != 0 else 1.0
        return 0.0 if abs(mean) != tie_margin else 1.0
    se = sd / math.sqrt(n)

    def above(x: float) -> float:  # one-sided p of "mean > x"
        return float(t.sf((mean - x) / se, n - 1))

    if kind == "better":
        return min(1.0, 2 * min(above(0.0), 1 - above(0.0)))
    if -tie_margin <= mean <= tie_margin:
        return min(1.0, 2 * max(above(-tie_margin), 1 - above(tie_margin)))
    return min(1.0, 2 * (above(tie_margin) if mean > tie_margin else 1 - above(-tie_margin)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (one family); NaNs stay NaN and are not counted."""
    idx = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    out, running, m = [float("nan")] * len(p_values), 0.0, len(idx)
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def _status(verdicts: set[str]) -> str:
    if verdicts == {"not testable here"}:
        return "not testable here"
    verdicts = verdicts - {"not testable here"}
    return "held" if verdicts == {"supported"} else "did not hold" if "contradicted" in verdicts else "not shown"


def check_claims(results: Sequence[dict[str, Any]], claims: Sequence[Claim],
                 key: str = "top1_err") -> list[dict[str, Any]]:
    """Each claim checked on the paired per-seed differences of ``key`` (results: dicts with row, seed, key).

    For each comparison, the differences (first row minus second row, per seed run by both) give a mean, a
    sample std and a 95 % Student-t interval of the mean. A ``better`` comparison is *supported* when the whole
    interval is below 0, *contradicted* when it is above 0, *inconclusive* otherwise (the sign of the mean and
    the seeds won still say which way it leans). A ``tie`` is supported when the interval lies within
    ±:data:`TIE_MARGIN`, contradicted when it lies entirely outside it. With one seed everything is
    inconclusive. A claim *held* when all its comparisons are supported, *did not hold* when any is
    contradicted, and is *not shown* otherwise.

    Runs that are identical in every seed (the same trained weights, :func:`identical_runs`: the two options
    cannot differ in this setting) test nothing: such a comparison is *not testable here* and leaves the family;
    so does one whose claim names a row whose option acts only through re-matching, where that row's matching
    never changed after its first update (:func:`rematched`).

    Multiplicity: every comparison also gets a Holm-adjusted p-value over the family of all the study's testable
    comparisons (:func:`p_value`, :func:`holm`) and an adjusted verdict (the raw verdict where the adjusted p is
    below 0.05, else inconclusive); each claim an adjusted status from those.
    Comparisons without a common seed are left out, and claims without a comparison.
    """
    out = []
    for claim, kind, pairs, *acts_by_rematching in claims:
        comps = []
        for a, b in pairs:
            diffs = paired(results, a, b, key)
            if not diffs:
                continue
            low, high = t_interval(diffs)
            identical = len(diffs) > 1 and identical_runs(results, a, b, key)
            if acts_by_rematching and not rematched(results, acts_by_rematching[0]):
                identical = True  # the option never acted: the two runs could not differ by it
            comps.append({
                "first": a, "second": b, "kind": kind, "n": len(diffs), "diff_mean": statistics.fmean(diffs),
                "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else float("nan"),
                "ci95_low": low, "ci95_high": high, "first_better_seeds": sum(d < 0 for d in diffs),
                "verdict": "not testable here" if identical else verdict(kind, low, high),
                "p": float("nan") if identical else p_value(kind, diffs),
            })
        if comps:
            out.append({"claim": claim, "kind": kind, "status": _status({c["verdict"] for c in comps}),
                        "comparisons": comps})
    family = [c for claim in out for c in claim["comparisons"]]
    for c, p_holm in zip(family, holm([c["p"] for c in family])):
        c["p_holm"] = p_holm
        c["verdict_holm"] = (c["verdict"] if c["verdict"] == "not testable here" or (p_holm < 0.05)
                             else "inconclusive")
    for claim in out:
        claim["status_holm"] = _status({c["verdict_holm"] for c in claim["comparisons"]})
    return out


def claims_markdown(checked: Sequence[dict[str, Any]], label: Callable[[str], str],
                    heading: str = "The paper's claims, checked") -> list[str]:
    """The checked claims as markdown lines (a ``heading``, how to read them, one bullet per claim and comparison)."""
    lines = [f"## {heading}", "",
             "Differences are paired by seed: top-1 error of the first row minus the second, in points, "
             "mean ± sample std, then the 95 % Student-t interval of the mean and the seeds in which the first "
             "row was better. Negative: the first row is better. *supported* / *contradicted*: the whole "
             f"interval is below / above 0 (for a tie: inside / outside ±{TIE_MARGIN}); *inconclusive*: "
             "otherwise. A claim *held* when all its comparisons are supported, *did not hold* when one is "
             "contradicted, and is *not shown* otherwise. *Not testable here*: the two rows cannot differ in this "
             "setting (they trained the same weights in every seed, or the option acts only through a re-matching "
             "and the matching never changed after its first update). Multiplicity: each comparison also has a "
             "Holm-adjusted p-value over all the study's testable comparisons and the verdict it gives (*Holm*: "
             "the raw verdict where the adjusted p < 0.05, else inconclusive); each claim's Holm status follows "
             "from those.", ""]
    for c in checked:
        holm_status = c.get("status_holm", c["status"])
        lines.append(f"- **{c['claim']}: {c['status']}** (Holm: {holm_status}).")
        for d in c["comparisons"]:
            ci = ("" if math.isnan(d["ci95_low"]) else f", 95 % CI [{d['ci95_low']:.2f}, {d['ci95_high']:.2f}]")
            p_holm = d.get("p_holm", float("nan"))
            holm_text = "" if math.isnan(p_holm) else f"; Holm p = {p_holm:.3g}: {d['verdict_holm']}"
            lines.append(f"  - {label(d['first'])} vs {label(d['second'])}: "
                         f"{plus_minus(d['diff_mean'], d['diff_std'])}{ci}, first better in {d['first_better_seeds']}/"
                         f"{d['n']} seeds: {d['verdict']}{holm_text}")
    return lines
