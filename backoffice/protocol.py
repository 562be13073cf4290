"""What arrives: topics, JSON Schemas (edge/schemas), and one :class:`Message` per valid message.

:func:`parse` turns a topic and raw bytes into a :class:`Message` or a :class:`Rejection` with a one-line
reason. A message is rejected when it is over the size limit, not UTF-8, not JSON, fails its JSON Schema
in ``edge/schemas/``, names another site or device than its topic, or holds a value the database could
not store faithfully (a NUL character, an integer beyond 2**53, a non-finite number, a time outside
years 1970..5000, a name longer than :data:`MAX_NAME`). Validation uses ``jsonschema-rs`` (about 1 µs per
message; the pure-Python ``jsonschema`` takes 60-220 µs, a third of the collector's budget).

Topics below ``{prefix}/{site}/{device}/`` (protocol 2, edge/schemas): ``counts``, ``events/crossing``,
``epoch``, ``cmd/result``, ``alerts/source``, ``alerts/restock/<kind>/<product>``, ``status`` (the only
one without ``seq``).

Protocol 1 (devices from before the epoch message) differs on the wire in one place: its counts messages
have no ``counted``, and it sends no ``epoch`` message (its epoch names a state database, not a start).
Such counts messages are accepted (:func:`schema_for` with ``protocol=1``); what they cannot prove (the
totals of lost counts messages, how a period that spans an hour splits) is marked unprovable by
:mod:`backoffice.figures`, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

import edge

__all__ = ["KINDS", "MAX_NAME", "Message", "Rejection", "parse", "schema_for", "subscriptions"]

EDGE_SCHEMAS = Path(edge.__file__).resolve().parent / "schemas"
MAX_NAME = 200  # site, device, line, class and product names (database columns are this wide)
_MAX_INT = 2**53
_MAX_TIME = 95_617_584_000.0  # year 5000
_TIMES = ("timestamp", "period_start", "period_end", "interval_start")
# What a NUL, a lone surrogate or an integer beyond 2**53 looks like in JSON text.
_SUSPECT = re.compile(r"\\u0000|\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\d{16}")

# kind -> (schema file, topic below the device)
KINDS: dict[str, tuple[str, str]] = {
    "counts": ("counts.json", "counts"),
    "crossing": ("crossing.json", "events/crossing"),
    "epoch": ("epoch.json", "epoch"),
    "cmd_result": ("command_result.json", "cmd/result"),
    "source_alert": ("source_alert.json", "alerts/source"),
    "alert": ("alert.json", "alerts/restock/+/+"),
    "status": ("status.json", "status"),
}
_BY_TOPIC = {topic: kind for kind, (_, topic) in KINDS.items() if "+" not in topic}


@dataclass(frozen=True, slots=True)
class Message:
    """One valid message.

    Attributes:
        topic: the full topic.
        site: store id (topic level, equal to the payload's).
        device: lane id (topic level, equal to the payload's).
        kind: a key of :data:`KINDS`.
        sub: the topic below the device (``alerts/restock/depletion/milk``).
        body: the decoded payload.
        text: the payload as received (UTF-8 text), stored byte-exact.
        received: Unix time the collector received it.
    """

    topic: str
    site: str
    device: str
    kind: str
    sub: str
    body: dict[str, Any]
    text: str
    received: float

    @property
    def keyed(self) -> bool:
        """True for messages with (epoch, seq): every kind but ``status``."""
        return self.kind != "status"

    @property
    def epoch(self) -> str:
        """The stream epoch (keyed messages only)."""
        return str(self.body["epoch"])

    @property
    def seq(self) -> int:
        """The sequence number (keyed messages only)."""
        return int(self.body["seq"])

    @property
    def ts(self) -> float:
        """The payload's timestamp, or the receive time (a status Will has none)."""
        return float(self.body.get("timestamp", self.received))


@dataclass(frozen=True, slots=True)
class Rejection:
    """A malformed message: stored in ``rejected`` with its raw bytes (truncated) and acknowledged."""

    topic: str
    raw: bytes
    reason: str
    received: float


@cache
def schema_for(kind: str, protocol: int = 2) -> dict[str, Any]:
    """The JSON Schema of ``kind``: ``edge/schemas/<file>``, the devices' own (protocol 2).

    ``protocol=1`` gives the older devices' counts schema: the same without the required ``counted``.
    """
    schema: dict[str, Any] = json.loads((EDGE_SCHEMAS / KINDS[kind][0]).read_text(encoding="utf-8"))
    if protocol == 1 and kind == "counts":
        schema["required"] = [f for f in schema["required"] if f != "counted"]
        schema["description"] = "protocol 1: " + schema["description"]
    return schema


@cache
def _validator(kind: str, protocol: int = 2) -> Any:
    return jsonschema_rs.validator_for(schema_for(kind, protocol))


def subscriptions(prefix: str, group: str) -> tuple[list[str], list[str]]:
    """The collector's topic filters: (shared, plain); an empty ``group`` shares nothing.

    Counts, crossings, epoch messages and command results go to ONE collector of the group
    (``$share/<group>/...``). Status and alerts are retained and low-rate: every collector subscribes
    to them plainly, so that it also receives the retained state when it subscribes (shared
    subscriptions never get retained messages); duplicates are free (idempotent by key or by time).
    """
    share = f"$share/{group}/" if group else ""  # no group: one collector, plain subscriptions
    shared = [f"{share}{prefix}/+/+/{KINDS[k][1]}" for k in ("counts", "crossing", "epoch", "cmd_result")]
    plain = [f"{prefix}/+/+/status", f"{prefix}/+/+/alerts/#"]
    return shared, plain


def _kind_of(sub: str) -> str | None:
    if sub in _BY_TOPIC:
        return _BY_TOPIC[sub]
    parts = sub.split("/")
    if len(parts) == 4 and parts[:2] == ["alerts", "restock"] and all(parts[2:]):
        return "alert"
    return None


def parse(
    topic: str, raw: bytes, received: float, prefix: str, max_bytes: int = 65536
) -> Message | Rejection:
    """Validate one message; never raises.

    Example:
        >>> raw = b'{"state":"offline","site":"s1","device":"d1","reason":"x"}'
        >>> m = parse("lc/s1/d1/status", raw, 0.0, "lc")
        >>> (m.kind, m.site, m.keyed)
        ('status', 's1', False)
    """

    def no(reason: str) -> Rejection:
        return Rejection(topic, raw, reason, received)

    if len(raw) > max_bytes:
        return no(f"payload of {len(raw)} bytes is over the limit of {max_bytes}")
    levels = topic.split("/")
    head = prefix.split("/")
    if levels[: len(head)] != head or len(levels) < len(head) + 3:
        return no(f"topic is not {prefix}/<site>/<device>/<kind>")
    site, device = levels[len(head)], levels[len(head) + 1]
    sub = "/".join(levels[len(head) + 2 :])
    kind = _kind_of(sub)
    if kind is None:
        return no(f"unknown message kind {sub!r}")
    if not site or not device or len(site) > MAX_NAME or len(device) > MAX_NAME:
        return no(f"site and device must be 1..{MAX_NAME} characters")
    try:
        text = raw.decode("utf-8")
        # orjson (C): a third of json's time; it refuses NaN/Infinity, lone surrogates and depth > 1024.
        body = orjson.loads(raw)
    except UnicodeDecodeError as exc:
        return no(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})")
    except orjson.JSONDecodeError as exc:
        return no(f"payload is not JSON: {exc}")
    if not isinstance(body, dict):
        return no(f"payload is a JSON {type(body).__name__}, not an object")
    problem = _schema_problem(kind, body) or _value_problem(body, text) or _names_problem(body)
    if problem:
        return no(f"{KINDS[kind][0]}: {problem}")
    if body["site"] != site or body["device"] != device:
        return no(f"payload names {body['site']}/{body['device']}, the topic {site}/{device}")
    if kind == "counts" and body["period_end"] < body["period_start"]:
        return no("counts.json: period_end is before period_start")
    return Message(topic, site, device, kind, sub, body, text, received)


def _schema_problem(kind: str, body: dict[str, Any]) -> str | None:
    # A counts message without `counted` is protocol 1 (see the module docstring).
    validator = _validator(kind, 1 if kind == "counts" and "counted" not in body else 2)
    if validator.is_valid(body):
        return None
    for err in validator.iter_errors(body):
        where = "/".join(str(p) for p in err.instance_path) or "(root)"
        return f"{where}: {err.message}"[:300]
    return "invalid"  # pragma: no cover - is_valid and iter_errors agree


def _value_problem(body: dict[str, Any], text: str) -> str | None:
    """Values a database column could not hold: times outside 1970..5000, NUL, lone surrogates, huge ints.

    The last three can only come from an escape or a long digit run in the text: one regex search
    decides whether the (slower) walk through every value is needed.
    """
    for key in _TIMES:
        v = body.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 <= v < _MAX_TIME:
            return f"{key}: {v} is not a Unix time in years 1970..5000"
    return _walk(body) if _SUSPECT.search(text) else None


def _walk(body: Any, path: str = "", depth: int = 0) -> str | None:
    if depth > 8:
        return f"{path or '(root)'}: nested deeper than 8 levels"
    items = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else ()
    for key, value in items:
        where = f"{path}/{key}" if path else str(key)
        if isinstance(key, str) and (problem := _text_problem(key)):
            return f"{where}: key {problem}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and abs(value) > _MAX_INT:
            return f"{where}: integer beyond 2**53"
        if isinstance(value, float) and abs(value) > _MAX_INT:  # orjson: an integer beyond 64 bits
            return f"{where}: number beyond 2**53"
        if isinstance(value, str) and (problem := _text_problem(value)):
            return f"{where}: {problem}"
        if isinstance(value, (dict, list)) and (problem := _walk(value, where, depth + 1)):
            return problem
    return None


def _text_problem(s: str) -> str | None:
    if "\x00" in s:
        return "contains a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate"
    return None


def _names_problem(body: dict[str, Any]) -> str | None:
    """Names that become database keys (epoch, line, class, product) must fit their columns."""
    if len(str(body.get("epoch", ""))) > 64:
        return "epoch: longer than 64 characters"
    names = [str(body.get(f, "")) for f in ("line", "class_name", "product", "command")]
    for doc in ("interval", "counted"):
        for line, by_dir in (body.get(doc) or {}).items():
            names.append(line)
            names.extend(c for d in by_dir.values() for c in d)
    if any(len(n) > MAX_NAME for n in names):
        return f"a line, class, product or command name is longer than {MAX_NAME} characters"
    return None
