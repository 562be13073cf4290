"""Aligned counting periods (edge/periods.py): pure arithmetic, checked exhaustively on small grids."""

from __future__ import annotations

import doctest
import json
import random

import pytest

import edge.periods
from edge.periods import QUARTER_HOUR_S, last_boundary, next_boundary, periods_due


def is_boundary(t: float, period_s: float) -> bool:
    return any(abs(t / step - round(t / step)) < 1e-9 for step in (period_s, QUARTER_HOUR_S))


def test_doctests():
    assert doctest.testmod(edge.periods).failed == 0


@pytest.mark.parametrize("period_s", [0.3, 0.5, 1.0, 7.0, 10.0, 60.0, 400.0, 900.0, 3600.0, 86400.0])
def test_boundaries_are_the_nearest_multiples_of_the_period_or_the_quarter_hour(period_s):
    rng = random.Random(period_s)
    for _ in range(2000):
        t = rng.uniform(1.7e9, 1.8e9)
        nxt, last = next_boundary(t, period_s), last_boundary(t, period_s)
        assert last <= t < nxt
        assert is_boundary(nxt, period_s) and is_boundary(last, period_s)
        # Nothing in between: the next boundary after `last` is `nxt` (or `t` sits on `last`).
        assert next_boundary(last, period_s) == nxt or last == t
        # A period never spans a quarter hour.
        assert (last // QUARTER_HOUR_S + 1) * QUARTER_HOUR_S >= nxt


@pytest.mark.parametrize("period_s", [0.3, 0.1, 10.0, 60.0])
def test_chained_periods_are_contiguous_and_survive_json_exactly(period_s):
    # Each period's end is the next one's start, as the identical float, also after a JSON round trip.
    start = 1765000000.123
    for _ in range(500):
        end = next_boundary(start, period_s)
        assert end > start
        assert json.loads(json.dumps(end)) == end
        assert next_boundary(end, period_s) > end  # a boundary is never "after itself"
        assert last_boundary(end, period_s) == end
        start = end


def test_a_quarter_hour_cuts_a_long_period():
    assert next_boundary(850.0, 3600.0) == 900.0
    assert next_boundary(900.0, 3600.0) == 1800.0
    assert next_boundary(1000.0, 400.0) == 1200.0 and next_boundary(1700.0, 400.0) == 1800.0


def test_periods_due_after_a_pause_reports_the_held_period_then_one_empty_catch_up():
    end = next_boundary(1000.0, 60.0)
    assert periods_due(1000.0, end, 1019.99, 60.0) == []
    assert periods_due(1000.0, end, 1020.0, 60.0) == [(1000.0, 1020.0)]
    assert periods_due(1000.0, end, 1079.0, 60.0) == [(1000.0, 1020.0)]
    assert periods_due(1000.0, end, 1080.0, 60.0) == [(1000.0, 1020.0), (1020.0, 1080.0)]
    # Hours later: still only two periods, the second ending at the last boundary before now.
    assert periods_due(1000.0, end, 9999.0, 60.0) == [(1000.0, 1020.0), (1020.0, 9960.0)]


def test_bad_period_is_refused():
    with pytest.raises(ValueError, match="period_s must be > 0"):
        next_boundary(1.0, 0.0)
