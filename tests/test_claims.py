"""Claims checked on paired differences: Holm-adjusted verdicts beside the raw ones, and comparisons that cannot be
tested in a setting (identical runs; an option that acts only through a matching that never moved)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgd_lightning.experiments.claims import (
    check_claims,
    claims_markdown,
    holm,
    identical_runs,
    p_value,
    t_interval,
    verdict,
)


def _runs(row: str, errors, digests=None, history=None):
    return [{"row": row, "seed": s, "top1_err": e, **({"weights_digest": digests[s]} if digests else {}),
             **({"history": history} if history is not None else {})} for s, e in enumerate(errors)]


def test_holm_step_down_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([float("nan"), 0.02])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.02)  # a NaN is not counted in the family


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=8), st.sampled_from(["better", "tie"]))
def test_the_p_value_decides_exactly_when_the_95_interval_does(diffs, kind):
    low, high = t_interval(diffs)
    if math.isnan(low) or high - low < 1e-9 or any(abs(abs(x) - 0.5) < 1e-6 for x in (low, high)):
        return  # degenerate intervals and intervals ending on the margin: no strict decision to compare
    decided = verdict(kind, low, high) != "inconclusive"
    assert (p_value(kind, diffs) < 0.05) == decided


def test_holm_can_turn_a_raw_support_into_inconclusive_and_the_report_says_both():
    results = (_runs("a", [10.0, 11.0, 12.0]) + _runs("b", [10.4, 11.6, 12.5]) + _runs("c", [20.0, 21.0, 22.0])
               + _runs("d", [25.0, 26.5, 27.0]))
    claims = [("a beats b", "better", [("a", "b")]), ("c beats d", "better", [("c", "d")])]
    checked = check_claims(results, claims)
    first = checked[0]["comparisons"][0]
    assert first["verdict"] == "supported" and first["p"] < 0.05
    assert first["p_holm"] == pytest.approx(min(1.0, 2 * first["p"])) or first["p_holm"] >= first["p"]
    assert all(c["comparisons"][0]["p_holm"] >= c["comparisons"][0]["p"] for c in checked)
    raw_held = [c for c in checked if c["status"] == "held"]
    assert raw_held and any(c["status_holm"] != "held" for c in checked) or all(
        c["status_holm"] == "held" for c in raw_held)
    text = "\n".join(claims_markdown(checked, str))
    assert "(Holm: " in text and "Holm p = " in text
    assert text.startswith("## The paper's claims, checked\n")  # the default heading; a study of its own names one
    assert claims_markdown(checked, str, "The claims, checked (beyond the paper)")[0] == \
        "## The claims, checked (beyond the paper)"


def test_identical_runs_are_not_testable_and_leave_the_family():
    same = ["x1", "x2", "x3"]
    results = (_runs("a", [10.0, 11.0, 12.0], same) + _runs("b", [10.0, 11.0, 12.0], same)
               + _runs("c", [10.0, 11.0, 12.0], ["y1", "y2", "y3"]) + _runs("d", [13.0, 14.5, 15.0]))
    assert identical_runs(results, "a", "b") and not identical_runs(results, "a", "c")
    assert identical_runs(results, "d", "d")  # no digests: equal errors in every seed
    checked = check_claims(results, [("a as good as b", "tie", [("a", "b")]), ("a as good as c", "tie", [("a", "c")]),
                                     ("a beats d", "better", [("a", "d")])])
    assert checked[0]["status"] == checked[0]["status_holm"] == "not testable here"
    assert math.isnan(checked[0]["comparisons"][0]["p"])
    # a and c: same errors, different weights: a real (zero) difference, testable
    assert checked[1]["comparisons"][0]["verdict"] == "supported"
    # the family is the two testable comparisons: Holm multiplies the smallest p by 2, not 3
    ps = [checked[1]["comparisons"][0]["p"], checked[2]["comparisons"][0]["p"]]
    assert sorted(c["comparisons"][0]["p_holm"] for c in checked[1:]) == pytest.approx(sorted(holm(ps)))


def test_an_option_acting_only_by_rematching_is_not_testable_where_the_matching_never_moved():
    frozen = [{"changed_tap0": 1.0}, {"changed_tap0": 0.0}, {"changed_tap0": 0.0}]
    moved = [{"changed_tap0": 1.0}, {"changed_tap0": 0.25}, {"changed_tap0": 0.0}]
    claim = ("cost option as good", "tie", [("opt", "base")], "opt")
    still = _runs("opt", [10.0, 11.0, 12.1], history=frozen) + _runs("base", [10.1, 11.0, 12.0], history=frozen)
    assert check_claims(still, [claim])[0]["status"] == "not testable here"
    moving = _runs("opt", [10.0, 11.0, 12.1], history=moved) + _runs("base", [10.1, 11.0, 12.0], history=moved)
    assert check_claims(moving, [claim])[0]["status"] in ("held", "not shown")
