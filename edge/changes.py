"""What one frame (or one command) changes in the durable state, as :class:`FrameCommit` describes it.

:meth:`edge.state.StateStore.commit` writes a :class:`FrameCommit` in ONE transaction: its crossings,
alert-state changes, outbound messages, recording progress, a ``reset`` and a command's record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.counts import Counts

__all__ = ["CommandRecord", "FrameCommit", "OutMessage", "Progress", "Reset"]


@dataclass(frozen=True)
class OutMessage:
    """A message to queue: ``kind`` is the topic below ``{prefix}/{site}/{device}/``.

    ``keep`` messages (alerts, epoch messages, command results) are never dropped by the outbox bound.
    """

    kind: str
    payload: Mapping[str, Any]
    retain: bool = False
    keep: bool = False


@dataclass(frozen=True)
class Progress:
    """How far a recording has been counted: ``frames`` done, and whether it ``finished``."""

    source: str
    frames: int
    finished: bool = False


@dataclass(frozen=True)
class Reset:
    """Zero the cumulative counts of ``line`` (every line for ``None``); ``counted`` is never reset."""

    line: str | None = None


@dataclass(frozen=True)
class CommandRecord:
    """A command answered, kept by its ``id`` so a repeat is answered from here, not applied twice."""

    id: str
    command: str
    ok: bool
    message: str


@dataclass(frozen=True)
class FrameCommit:
    """Everything one frame (or one command) changed, committed in one transaction."""

    counts: Counts = field(default_factory=Counts)
    alert_state: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[OutMessage] = ()
    progress: Progress | None = None
    reset: Reset | None = None
    record: CommandRecord | None = None

    def changes_state(self) -> bool:
        """True when anything other than progress would be written."""
        return bool(self.counts.total() or self.alert_state or self.messages or self.reset or self.record)
