"""The teacher channels left over when C_S does not divide C_T: the reference code's dropping of the highest-index
ones (``unmatched="official"``, the default) or the exact assignment (``unmatched="optimal"``, opt-in)."""

from __future__ import annotations

import pytest
import torch

from mgd_lightning import DistillationModule
from mgd_lightning.matching import assignment_cost
from tests.toys import ToyNet


def _pair(**kwargs) -> DistillationModule:
    torch.manual_seed(0)
    # taps: 8 -> 3 and 16 -> 6 channels: alpha 2, with 2 and 4 teacher channels left over
    return DistillationModule(ToyNet((8, 16)), ToyNet((3, 6)), input_size=(3, 16, 16), **kwargs)


def test_the_default_is_the_official_dropping_and_optimal_is_opt_in():
    cost = torch.rand(3, 8, generator=torch.Generator().manual_seed(1))
    cost[:, 6:] -= 10.0  # the two highest-index teacher channels are the cheapest
    official = _pair().solve_matching(cost)
    assert _pair().unmatched == "official"
    assert not {6, 7} & set(official.flatten().tolist())
    optimal = _pair(unmatched="optimal").solve_matching(cost)
    assert {6, 7} <= set(optimal.flatten().tolist())
    assert assignment_cost(cost, optimal) < assignment_cost(cost, official)


def test_sparse_matching_ignores_it_and_bad_values_are_one_line_errors():
    cost = torch.rand(3, 8, generator=torch.Generator().manual_seed(2))
    cost[:, 7] -= 10.0
    for unmatched in ("official", "optimal"):  # SM assigns over every teacher channel, as the reference SMDistiller
        assert 7 in _pair(reducer="sm", unmatched=unmatched).solve_matching(cost).flatten().tolist()
    with pytest.raises(ValueError, match=r"unmatched must be one of \('optimal', 'official'\); got 'drop'"):
        _pair(unmatched="drop")
