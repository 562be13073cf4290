"""Event-level counting accuracy: counted crossings matched to true ones within ±k frames.

A counted crossing matches a true one on the same line and in the same direction whose frame is at
most ``tolerance`` frames away. Matching is greedy over all candidate pairs, same class first, then
nearest in time (then earliest), and each event is used once, so one counted crossing never explains
two true ones. From the matching:

* ``matched``: pairs; ``wrong_class``: pairs whose classes differ;
* ``missed``: true crossings left unmatched; ``extra``: counted crossings left unmatched;
* ``precision = matched / counted``, ``recall = matched / true`` (class ignored);
* ``count_diff``: the sum over line × direction × class of ``|counted − true|``, the error a reader of
  the totals sees; ``count_error = count_diff / true``. A wrong class costs 2 there (one too many of a
  class, one too few of another), a missed or extra crossing costs 1.

Scores add up (``a + b``), so a bank's score is the sum of its scenes' scores, each scene's totals
compared on their own (errors in two scenes never cancel).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, TypeVar

__all__ = ["CountEvent", "Score", "match_events", "score_events"]


class _EventLike(Protocol):
    @property
    def frame(self) -> int: ...

    @property
    def line(self) -> str: ...

    @property
    def direction(self) -> str: ...

    @property
    def class_id(self) -> int: ...


E = TypeVar("E", bound=_EventLike)


@dataclass(frozen=True)
class CountEvent:
    """One crossing: true or counted (:class:`edge.counting.Crossing` has the same fields)."""

    frame: int
    line: str
    direction: str
    class_id: int


@dataclass(frozen=True)
class Score:
    """Event-level and count-level accuracy of counted crossings against the truth."""

    true: int = 0
    counted: int = 0
    matched: int = 0
    wrong_class: int = 0
    missed: int = 0
    extra: int = 0
    count_diff: int = 0

    def __add__(self, other: Score) -> Score:
        """Sum two scores field by field (scenes of a bank)."""
        return Score(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def precision(self) -> float:
        """Matched / counted (1.0 when nothing was counted)."""
        return self.matched / self.counted if self.counted else 1.0

    @property
    def recall(self) -> float:
        """Matched / true (1.0 when nothing happened)."""
        return self.matched / self.true if self.true else 1.0

    @property
    def count_error(self) -> float:
        """Sum over line × direction × class of ``|counted − true|``, over the number of true crossings."""
        return self.count_diff / self.true if self.true else float(self.count_diff > 0)

    @property
    def event_errors(self) -> int:
        """Missed + extra + wrong-class crossings."""
        return self.missed + self.extra + self.wrong_class

    def summary(self) -> str:
        """One line: count error, P/R and the breakdown."""
        return (
            f"count error {100 * self.count_error:5.2f}% ({self.count_diff}/{self.true}), "
            f"precision {self.precision:.3f}, recall {self.recall:.3f}, "
            f"missed {self.missed}, extra {self.extra}, wrong class {self.wrong_class}"
        )


def score_events(counted: Iterable[_EventLike], truth: Iterable[_EventLike], tolerance: int = 5) -> Score:
    """Score counted crossings against true ones.

    Args:
        counted: the crossings a counter reported.
        truth: the true crossings.
        tolerance: the largest frame difference of a match (``k``).

    Returns:
        The :class:`Score`.

    Example:
        >>> truth = [CountEvent(10, "lane", "in", 0), CountEvent(50, "lane", "in", 1)]
        >>> counted = [CountEvent(12, "lane", "in", 0), CountEvent(51, "lane", "in", 0)]
        >>> s = score_events(counted, truth, tolerance=3)
        >>> s.matched, s.wrong_class, s.count_diff
        (2, 1, 2)
    """
    got, want = list(counted), list(truth)
    pairs, missed, extra = match_events(got, want, tolerance)
    return Score(
        true=len(want),
        counted=len(got),
        matched=len(pairs),
        wrong_class=sum(c.class_id != t.class_id for c, t in pairs),
        missed=len(missed),
        extra=len(extra),
        count_diff=_count_diff(got, want),
    )


def match_events(
    counted: Sequence[E], truth: Sequence[E], tolerance: int
) -> tuple[list[tuple[E, E]], list[E], list[E]]:
    """Match counted to true crossings (see the module docstring).

    Returns:
        ``(pairs, missed, extra)``: ``(counted, true)`` pairs, unmatched true and unmatched counted
        crossings.
    """
    candidates = sorted(
        (c.class_id != t.class_id, abs(c.frame - t.frame), t.frame, i, j)
        for i, c in enumerate(counted)
        for j, t in enumerate(truth)
        if c.line == t.line and c.direction == t.direction and abs(c.frame - t.frame) <= tolerance
    )
    used_c: dict[int, int] = {}
    used_t: set[int] = set()
    for _, _, _, i, j in candidates:
        if i not in used_c and j not in used_t:
            used_c[i] = j
            used_t.add(j)
    pairs = [(counted[i], truth[j]) for i, j in sorted(used_c.items())]
    missed = [t for j, t in enumerate(truth) if j not in used_t]
    extra = [c for i, c in enumerate(counted) if i not in used_c]
    return pairs, missed, extra


def _count_diff(got: Sequence[_EventLike], want: Sequence[_EventLike]) -> int:
    a = Counter((e.line, e.direction, e.class_id) for e in got)
    b = Counter((e.line, e.direction, e.class_id) for e in want)
    return sum(abs(a[key] - b[key]) for key in a.keys() | b.keys())
