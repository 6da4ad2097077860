"""A RoutingTable built in a notebook (routers.base.RoutingTable, no loader in between) with a
score outside [0, 1] was refused with 'scores must lie in [0, 1]', naming neither the cell nor
its value among thousands. The error now gives the count and the first cell (prompt id,
model, value)."""

from __future__ import annotations

import numpy as np
import pytest

from routers.base import RouterError, RoutingTable


def test_the_first_bad_cell_is_named() -> None:
    S = np.full((4, 2), 0.5)
    S[2, 1], S[3, 0] = 7.0, -1.0
    with pytest.raises(RouterError) as e:
        RoutingTable(["a", "b", "c", "d"], ["p"] * 4, ["small", "big"], S, np.ones((4, 2)))
    msg = str(e.value)
    assert "scores must lie in [0, 1]" in msg and "2 cell(s)" in msg
    assert "prompt 'c', model 'big': 7" in msg


def test_missing_scores_are_not_out_of_range() -> None:
    S = np.array([[0.0, np.nan], [1.0, 0.25]])
    assert len(RoutingTable(["a", "b"], ["p", "q"], ["m1", "m2"], S, np.ones((2, 2)))) == 2
