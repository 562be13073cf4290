"""Payloads of the outbound messages, built from pipeline results (pure functions, no I/O).

Clocks: ``timestamp`` is always wall time (Unix seconds) when the event happened on the device.
Recordings add ``media_time_s``, the position in the file, so an event found two hours into a
replayed recording still says when it was *counted* and where in the video it *is*.
See ``edge/schemas/`` for each payload's JSON Schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.alerts import Alert
from edge.counting import Crossing
from edge.counts import class_name
from edge.state import OutMessage

__all__ = ["Clock", "alert_message", "crossing_message", "source_alert_message"]


@dataclass(frozen=True)
class Clock:
    """When a frame was processed: ``wall`` (Unix time) and, for recordings, ``media`` (position, s)."""

    wall: float
    media: float | None = None

    def stamp(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Set ``timestamp`` (and ``media_time_s`` for recordings) on ``payload``."""
        payload["timestamp"] = self.wall
        if self.media is not None:
            payload["media_time_s"] = self.media
        return payload


def crossing_message(c: Crossing, names: Sequence[str] | Mapping[int, str], clock: Clock) -> OutMessage:
    """The ``events/crossing`` message of one crossing (``crossing.json``)."""
    payload: dict[str, Any] = {
        "line": c.line,
        "track_id": int(c.track_id),
        "class_id": int(c.class_id),
        "class_name": class_name(names, int(c.class_id)),
        "direction": str(c.direction),
        "frame": int(c.frame),
    }
    return OutMessage("events/crossing", clock.stamp(payload))


def alert_message(alert: Alert, clock: Clock) -> OutMessage:
    """A restock alert's retained message (``alert.json``); never dropped by the outbox bound."""
    return OutMessage(alert.topic_kind, clock.stamp(alert.to_payload()), retain=True, keep=True)


def source_alert_message(
    raised: bool, source_state: str, down_s: float, error: str | None, wall: float
) -> OutMessage:
    """The retained ``alerts/source`` message (``source_alert.json``): frames stopped, or came back."""
    payload = {
        "state": "raised" if raised else "cleared",
        "source": source_state,
        "down_s": round(down_s, 1),
        "error": error,
        "timestamp": wall,
    }
    return OutMessage("alerts/source", payload, retain=True, keep=True)
