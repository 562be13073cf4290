"""A new epoch at every start, and what its first message says about the state it started from.

Subscribers de-duplicate by ``(site, device, epoch, seq)``, so a pair must never come back with
another payload. ``seq`` comes from the database, and a database can come back from the past: a
restored backup, a VM or SD-card snapshot, a write-ahead log that lost its tail or was replaced by an
empty one. None of these can be told apart from a clean restart by looking at the database, so
continuity is not inferred at all: every start of the daemon begins a new random epoch. ``seq``
keeps counting along the database; the pair is new because the epoch is.

The first message of each epoch (topic ``epoch``, ``edge/schemas/epoch.json``) chains it to the one
before: ``previous`` is the epoch the database carried and the highest ``seq`` it had handed out.
After a restore that ``last_seq`` is lower than what the previous epoch really published, which is
how a subscriber sees the fork. ``state`` says how the start found the state:

* ``continued``: the database opened intact;
* ``new``: a first start, nothing here before;
* ``recovered``: earlier state was damaged or lost (moved aside, empty or missing although the
  marker outside the database shows the daemon ran here, or a write-ahead log deleted after an
  unclean stop); ``recovered`` says what, in one line.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge.db import one_line

__all__ = ["EpochStart", "begin_epoch", "epoch_payload"]

log = logging.getLogger(__name__)

StartState = Literal["new", "continued", "recovered"]


@dataclass(frozen=True)
class EpochStart:
    """How one start of the daemon begins its epoch.

    Attributes:
        epoch: the new epoch (16 hex digits).
        state: ``new``, ``continued`` or ``recovered``.
        recovered: one line saying what was damaged or lost (``recovered`` only).
        previous: ``{"epoch", "last_seq"}`` of the state this one continues from, or ``None``.
    """

    epoch: str
    state: StartState
    recovered: str | None
    previous: dict[str, Any] | None


@dataclass(frozen=True)
class Found:
    """What a start found, before deciding.

    Attributes:
        db: the database file (for messages).
        meta: the database's ``meta`` table (``epoch``, ``clean``...); empty for a new database.
        last_seq: the highest ``seq`` the database has handed out.
        marker: the epoch marker outside the database (:func:`edge.statedir.read_marker`), if any.
        damaged: the line :func:`edge.db.open_database` wrote when it moved a damaged file aside.
        file_state: ``"present"``, ``"empty"`` (0 bytes) or ``"missing"`` before the open.
        aside: names of damaged databases moved aside earlier.
        wal_missing: there was no ``-wal`` file before the open.
    """

    db: str
    meta: Mapping[str, Any]
    last_seq: int
    marker: Mapping[str, Any] | None
    damaged: str | None
    file_state: str
    aside: tuple[str, ...]
    wal_missing: bool


def begin_epoch(found: Found) -> EpochStart:
    """Decide the new epoch's ``state``, ``recovered`` line and ``previous``."""
    epoch = secrets.token_hex(8)
    marker = found.marker
    lost_chain = {"epoch": marker["epoch"], "last_seq": None} if marker else None
    if found.damaged is not None:
        return EpochStart(epoch, "recovered", f"{found.damaged}; new epoch {epoch}", lost_chain)
    db_epoch = found.meta.get("epoch")
    if db_epoch is None:
        evidence = _ran_before(found)
        if evidence is None:
            return EpochStart(epoch, "new", None, None)
        what = "is empty (0 bytes)" if found.file_state == "empty" else f"was {found.file_state}"
        line = (
            f"{found.db}: the state database {what} although the daemon ran here before ({evidence}); "
            f"its counts and unsent messages are lost; new epoch {epoch}"
        )
        return EpochStart(epoch, "recovered", line, lost_chain)
    chain = {"epoch": str(db_epoch), "last_seq": found.last_seq}
    if marker and db_epoch not in (marker.get("epoch"), marker.get("previous")):
        log.warning(
            "%s carries epoch %s but the last run here was epoch %s: restored from a backup or "
            "snapshot? Continuing from it in a new epoch %s (seq continues after %d)",
            found.db,
            db_epoch,
            marker.get("epoch"),
            epoch,
            found.last_seq,
        )
    if not found.meta.get("clean", False) and found.wal_missing:
        # SQLite deletes state.db-wal on a clean close only: after a crash it is still there and
        # replays on open. Not closed cleanly and no WAL: somebody removed it, and with it everything
        # since the last checkpoint.
        line = (
            f"{found.db}: the write-ahead log is missing after an unclean stop; what was recorded since "
            f"the last checkpoint is lost; new epoch {epoch}"
        )
        return EpochStart(epoch, "recovered", line, chain)
    return EpochStart(epoch, "continued", None, chain)


def _ran_before(found: Found) -> str | None:
    if found.marker is not None:
        return f"marker {found.marker.get('epoch')}"
    if found.aside:
        return f"{found.aside[-1]} was moved aside"
    return None


def epoch_payload(
    start: EpochStart, counted: Mapping[str, Any], interval_start: float, now: float
) -> dict[str, Any]:
    """The ``epoch`` message (``edge/schemas/epoch.json``) without the envelope (seq, epoch, site...)."""
    body: dict[str, Any] = {
        "timestamp": now,
        "state": start.state,
        "previous": start.previous,
        "counted": dict(counted),
        "interval_start": interval_start,
    }
    if start.recovered is not None:
        body["recovered"] = one_line(start.recovered)
    return body
