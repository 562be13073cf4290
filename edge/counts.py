"""``Counts``: crossing counts per line, direction and class name, the one shape every stage shares.

The store persists it, the ``counts`` message carries it, ``--counts-out`` and replay's ``counts.json``
write it, and the overlay draws it::

    {"lane": {"in": {"apple": 3, "milk_carton": 1}, "out": {"apple": 1}}}

Every line always has both directions, so readers never need ``.get("out", {})``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["Counts", "class_name"]

Key = tuple[str, str, str]  # (line, direction, class name)


def class_name(names: Sequence[str] | Mapping[int, str], class_id: int) -> str:
    """Name of ``class_id``; ``class_<id>`` when the model's names do not cover it."""
    try:
        return str(names[class_id])
    except (IndexError, KeyError):
        return f"class_{class_id}"


class Counts:
    """An immutable multiset of ``(line, direction, class)`` keys.

    Example:
        >>> c = Counts.of([("lane", "in", "apple"), ("lane", "in", "apple")])
        >>> c.to_json(), c.total()
        ({'lane': {'in': {'apple': 2}, 'out': {}}}, 2)
        >>> (c + Counts.of([("lane", "out", "pear")])).to_json()["lane"]["out"]
        {'pear': 1}
    """

    __slots__ = ("_n",)

    def __init__(self, n: Mapping[Key, int] | None = None) -> None:
        self._n: dict[Key, int] = {k: int(v) for k, v in (n or {}).items() if v}

    @classmethod
    def of(cls, keys: Iterable[Key]) -> Counts:
        """Count each ``(line, direction, class)`` key once per occurrence."""
        n: dict[Key, int] = {}
        for key in keys:
            n[key] = n.get(key, 0) + 1
        return cls(n)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]]) -> Counts:
        """From ``(line, direction, class, n)`` rows (the store's table)."""
        return cls({(str(ln), str(d), str(c)): int(n) for ln, d, c, n in rows})

    @classmethod
    def from_json(cls, doc: Mapping[str, Mapping[str, Mapping[str, int]]]) -> Counts:
        """From ``{line: {direction: {class: n}}}``."""
        return cls({(ln, d, c): n for ln, by in doc.items() for d, per in by.items() for c, n in per.items()})

    def items(self) -> Iterator[tuple[Key, int]]:
        """``((line, direction, class), n)`` pairs."""
        return iter(self._n.items())

    def lines(self) -> set[str]:
        """Names of the lines with a non-zero count."""
        return {k[0] for k in self._n}

    def total(self, line: str | None = None) -> int:
        """Sum of all counts (of one line if given)."""
        return sum(n for k, n in self._n.items() if line is None or k[0] == line)

    def without(self, line: str | None) -> Counts:
        """These counts with one line (or, for ``None``, every line) zeroed."""
        return Counts({k: n for k, n in self._n.items() if line is not None and k[0] != line})

    def to_json(self, lines: Iterable[str] = ()) -> dict[str, dict[str, dict[str, int]]]:
        """``{line: {"in": {class: n}, "out": {class: n}}}``, sorted; ``lines`` appear even when zero."""
        doc: dict[str, dict[str, dict[str, int]]] = {ln: {"in": {}, "out": {}} for ln in lines}
        for (ln, d, c), n in sorted(self._n.items()):
            doc.setdefault(ln, {"in": {}, "out": {}}).setdefault(d, {})[c] = n
        return doc

    def __add__(self, other: Counts) -> Counts:
        n = dict(self._n)
        for k, v in other._n.items():
            n[k] = n.get(k, 0) + v
        return Counts(n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counts) and self._n == other._n

    def __hash__(self) -> int:
        return hash(frozenset(self._n.items()))

    def __repr__(self) -> str:
        return f"Counts({self.to_json()!r})"
