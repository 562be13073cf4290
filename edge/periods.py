"""Counting periods aligned to the clock: where a period ends, and what to report after a pause.

A period ends on a *boundary*: the next multiple (in Unix time) of ``publish_period_s`` or of 900 s
(a quarter hour), whichever comes first. So no period spans a quarter hour, and therefore no hour in
any time zone, and the periods of every device in a store line up::

    publish_period_s = 400           |         |         |
    multiples of 400    0       400       800  |  1200      1600      2000
    quarter hours       0                      900                     1800
    boundaries          0       400       800  900  1200      1600  1800  2000

Pure arithmetic on floats. Each boundary is the float ``k * step`` for an integer ``k``, so the end
of one period and the start of the next are the same number, byte for byte in JSON.
"""

from __future__ import annotations

import math

__all__ = ["QUARTER_HOUR_S", "last_boundary", "next_boundary", "periods_due"]

QUARTER_HOUR_S = 900.0


def _next_multiple(t: float, step: float) -> float:
    """The smallest ``k * step`` (integer ``k``) strictly greater than ``t``."""
    k = math.floor(t / step) + 1
    while k * step <= t:  # t / step rounded up to an integer
        k += 1
    while (k - 1) * step > t:  # t / step rounded down past one
        k -= 1
    return k * step


def _last_multiple(t: float, step: float) -> float:
    """The largest ``k * step`` (integer ``k``) at or before ``t``."""
    k = math.floor(t / step)
    while k * step > t:
        k -= 1
    while (k + 1) * step <= t:
        k += 1
    return k * step


def next_boundary(t: float, period_s: float) -> float:
    """The first boundary strictly after ``t``.

    Example:
        >>> next_boundary(1000.0, 60.0), next_boundary(1020.0, 60.0), next_boundary(850.0, 400.0)
        (1020.0, 1080.0, 900.0)
    """
    if not period_s > 0:
        raise ValueError(f"period_s must be > 0, got {period_s}")
    return min(_next_multiple(t, period_s), _next_multiple(t, QUARTER_HOUR_S))


def last_boundary(t: float, period_s: float) -> float:
    """The last boundary at or before ``t``.

    Example:
        >>> last_boundary(1079.9, 60.0), last_boundary(1080.0, 60.0), last_boundary(950.0, 400.0)
        (1020.0, 1080.0, 900.0)
    """
    if not period_s > 0:
        raise ValueError(f"period_s must be > 0, got {period_s}")
    return max(_last_multiple(t, period_s), _last_multiple(t, QUARTER_HOUR_S))


def periods_due(start: float, end: float, now: float, period_s: float) -> list[tuple[float, float]]:
    """The periods to report at ``now`` for the interval ``[start, end)``.

    None before ``end``. At or after it: the interval itself (it holds everything counted since
    ``start``) and, after a pause longer than a period, at most ONE empty catch-up period up to the
    last boundary at or before ``now``. The next interval starts where the last returned period ends.

    Example:
        >>> periods_due(1000.0, 1020.0, 1019.0, 60.0)
        []
        >>> periods_due(1000.0, 1020.0, 1020.0, 60.0)
        [(1000.0, 1020.0)]
        >>> periods_due(1000.0, 1020.0, 1500.0, 60.0)  # a pause: the held period, then one empty catch-up
        [(1000.0, 1020.0), (1020.0, 1500.0)]
    """
    if now < end:
        return []
    due = [(start, end)]
    last = last_boundary(now, period_s)
    if last > end:
        due.append((end, last))
    return due
