"""Rows → table, CSV or JSON text (the query commands' ``--format``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from backoffice.figures import nest

__all__ = ["counts_columns", "render", "when"]

_TIME_FIELDS = {
    "start",
    "end",
    "since",
    "until",
    "status_at",
    "first_seen",
    "last_counts_end",
    "last_counts_received",
    "ts",
    "updated",
    "started",
    "received",
}


def counts_columns(device: str | None, per_device: bool = False) -> list[str]:
    """The columns ``lanecount-backoffice counts`` prints; the API's CSV and the lane page use them too."""
    return [
        "site",
        *(["device"] if per_device or device else []),
        "start",
        "line",
        "direction",
        "class_name",
        "n",
        "exact",
    ]


def when(ts: float | None, tz: str = "UTC") -> str:
    """Unix seconds → ``2025-12-06 14:00`` in ``tz`` (seconds only when not zero)."""
    if ts is None:
        return ""
    dt = datetime.fromtimestamp(ts, ZoneInfo(tz))
    return dt.strftime("%Y-%m-%d %H:%M:%S" if dt.second or dt.microsecond else "%Y-%m-%d %H:%M")


def _plain(row: Any) -> dict[str, Any]:
    if hasattr(row, "_asdict"):
        d = row._asdict()
    elif is_dataclass(row) and not isinstance(row, type):
        d = asdict(row)
    else:
        d = dict(row)
    for k, v in list(d.items()):
        if isinstance(v, Mapping) and v and isinstance(next(iter(v)), tuple):
            d[k] = nest(v)
        elif isinstance(v, bytes):
            d[k] = v.decode("utf-8", "replace")
    return d


def render(rows: Sequence[Any], fmt: str, columns: Sequence[str] | None = None, tz: str = "UTC") -> str:
    """Format dataclass rows; ``columns`` picks and orders the table/CSV columns (JSON keeps all)."""
    plain = [_plain(r) for r in rows]
    if fmt == "json":
        return json.dumps(plain, indent=1, sort_keys=False, default=str)
    if columns is None:
        columns = list(plain[0]) if plain else []
    table = [[_cell(r.get(c), c, tz, fmt) for c in columns] for r in plain]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(table)
        return buf.getvalue().rstrip("\n")
    if not table:
        return "(none)"
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for r in table:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(v: Any, column: str, tz: str, fmt: str) -> str:
    if v is None:
        return ""
    if column in _TIME_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool):
        if fmt == "csv":
            return datetime.fromtimestamp(float(v), ZoneInfo(tz)).isoformat()
        return when(float(v), tz)
    if isinstance(v, bool):
        return ("yes" if v else "NO") if fmt == "table" else str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}" if fmt == "table" else repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)
