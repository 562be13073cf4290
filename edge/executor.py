"""Commands carried out on the frame loop: effect, record and reply in ONE transaction.

:func:`execute` plans a command without changing anything, then commits its effect (zeroed counts,
a restock's alert state and alert messages), its record (by ``id``) and its ``cmd/result`` reply
together. Only then does the caller change its in-memory state (:class:`Outcome`), so a failed
commit changes nothing anywhere: the daemon stops (exit 1) and the sender, who got no ``ok``, sends
the command again. A command ``id`` answered before is answered again from its record, with
``"duplicate": true``, and not applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edge.alerts import Alert, AlertEngine
from edge.commands import Answered, Command, ResetCommand, RestockedCommand, result_payload
from edge.errors import CommandError
from edge.messages import Clock, alert_message
from edge.state import CommandRecord, FrameCommit, OutMessage, Reset, StateStore

__all__ = ["Outcome", "execute"]


@dataclass(frozen=True)
class Outcome:
    """What the daemon applies in memory once the command has committed.

    Attributes:
        answered: the reply that was queued (ok, message).
        reset: the counts that were zeroed, for the run's own totals.
        alert_state: committed alert state, for :meth:`AlertEngine.load`.
        alerts: alert changes the command made (to log).
        reload: the configuration is to be reloaded.
    """

    answered: Answered
    reset: Reset | None = None
    alert_state: Mapping[str, Any] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    reload: bool = False


def execute(cmd: Command, state: StateStore, alerts: AlertEngine, lines: Collection[str]) -> Outcome:
    """Carry out ``cmd``: effect, record and reply in one transaction.

    Args:
        cmd: a validated command.
        state: the durable state.
        alerts: the alert engine (read only here; the caller loads :attr:`Outcome.alert_state`).
        lines: the line names a ``reset`` may name.

    Raises:
        sqlite3.Error: the transaction failed; nothing was applied, recorded or queued.
    """
    if cmd.id is not None:
        record = state.command_record(cmd.id)
        if record is not None:
            reply = result_payload(record.command, record.ok, record.message, record.id, duplicate=True)
            state.commit(FrameCommit(messages=[_reply(reply)]))
            return Outcome(Answered(record.ok, record.message))
    try:
        change, outcome = _plan(cmd, alerts, lines, state)
    except CommandError as exc:
        change, outcome = FrameCommit(), Outcome(Answered(False, str(exc)))
    ok, message = outcome.answered.ok, outcome.answered.message
    record = None if cmd.id is None else CommandRecord(cmd.id, cmd.command, ok, message)
    answer = _reply(result_payload(cmd.command, ok, message, cmd.id))
    state.commit(replace(change, messages=[*change.messages, answer], record=record))
    return outcome


def _reply(payload: Mapping[str, Any]) -> OutMessage:
    return OutMessage("cmd/result", payload, keep=True)


def _plan(
    cmd: Command, alerts: AlertEngine, lines: Collection[str], state: StateStore
) -> tuple[FrameCommit, Outcome]:
    if isinstance(cmd, ResetCommand):
        if cmd.line is not None and cmd.line not in lines:
            raise CommandError(f"reset: unknown line {cmd.line!r}; lines: {', '.join(sorted(lines))}")
        n = sum(1 for (line, _, _), _ in state.totals().items() if cmd.line in (None, line))
        message = f"counts reset ({cmd.line or 'all lines'}, {n} counters)"
        return FrameCommit(reset=Reset(cmd.line)), Outcome(Answered(True, message), reset=Reset(cmd.line))
    if isinstance(cmd, RestockedCommand):
        changed, alert_state = alerts.plan_restocked(cmd.product, cmd.stock)
        messages = [alert_message(a, Clock(time.time())) for a in changed]
        outcome = Outcome(Answered(True, f"{cmd.product} restocked"), alert_state=alert_state, alerts=changed)
        return FrameCommit(alert_state=alert_state, messages=messages), outcome
    return FrameCommit(), Outcome(Answered(True, "reload scheduled"), reload=True)
