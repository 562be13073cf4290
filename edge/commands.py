"""Inbound MQTT commands (``{prefix}/{site}/{device}/cmd/<name>``), validated before anything acts on them.

The command name comes from the topic; the payload is a JSON object, ``{}`` when there are no fields.
An empty payload is refused: it is how MQTT clears a retained message, not a request to act.

=============  ======================================  ==========================================
name           payload                                 effect (carried out by the daemon)
=============  ======================================  ==========================================
``reset``      ``{"line"?: str}``                      zero the counts of one line, or all
``restocked``  ``{"product": str, "stock"?: int}``     reset a depletion estimate, clear its alert
``reload``     ``{}``                                  reload the configuration
=============  ======================================  ==========================================

Every payload may carry an ``id`` (string) that is echoed in the reply on ``cmd/result``
(:func:`result_payload`). Anything else is refused with a one-line :class:`CommandError`.

The daemon commits a command's effect, its record (by ``id``) and its reply in one transaction, and
answers an ``id`` it has seen before from that record instead of applying the command again (the
reply then says ``"duplicate": true``). Its handler returns :class:`Answered` to say the reply is
already queued; a command refused before it ran (malformed, the daemon busy or stopping) is
answered by the publisher, and nothing of it is recorded: the sender may send it again.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import CommandError, FatalError, LanecountError

log = logging.getLogger(__name__)

__all__ = [
    "COMMANDS",
    "Answered",
    "Command",
    "CommandBridge",
    "ReloadCommand",
    "ResetCommand",
    "RestockedCommand",
    "command_id",
    "parse_command",
    "result_payload",
]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str | None = Field(None, max_length=128, description="echoed in the reply")


class ResetCommand(_Command):
    """Zero the counts of ``line``, or of every line."""

    command: Literal["reset"] = "reset"
    line: str | None = Field(None, min_length=1)


class RestockedCommand(_Command):
    """The shelf of ``product`` was refilled (to ``stock`` units, default: the configured stock)."""

    command: Literal["restocked"] = "restocked"
    product: str = Field(min_length=1)
    stock: int | None = Field(None, ge=0)


class ReloadCommand(_Command):
    """Reload the configuration."""

    command: Literal["reload"] = "reload"


Command = ResetCommand | RestockedCommand | ReloadCommand
COMMANDS: dict[str, type[_Command]] = {
    "reset": ResetCommand,
    "restocked": RestockedCommand,
    "reload": ReloadCommand,
}


def _decode(name: str, payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise CommandError(
            f"command {name!r}: payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit"
        )
    if not payload.strip():
        raise CommandError(f"command {name!r}: empty payload; send {{}} for a command without fields")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"command {name!r}: payload is not JSON: {exc}") from None
    except RecursionError:  # deeply nested arrays: json recurses once per level
        raise CommandError(f"command {name!r}: payload is nested too deeply") from None
    if not isinstance(data, dict):
        raise CommandError(f"command {name!r}: payload must be a JSON object, got {type(data).__name__}")
    return data


def parse_command(name: str, payload: bytes, max_bytes: int = 4096) -> Command:
    """Validate one inbound command.

    Args:
        name: the last topic level (``reset``, ``restocked``, ``reload``).
        payload: the raw MQTT payload; checked against ``max_bytes`` before it is parsed.
        max_bytes: largest payload accepted.

    Returns:
        The typed command.

    Raises:
        CommandError: one line naming the command and the problem.

    Example:
        >>> parse_command("restocked", b'{"product": "milk", "id": "a1"}').product
        'milk'
    """
    model = COMMANDS.get(name)
    if model is None:
        raise CommandError(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}")
    data = _decode(name, payload, max_bytes)
    if "command" in data:
        raise CommandError(f"command {name!r}: command: the name comes from the topic, not the payload")
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(payload)"
            problems.append(f"{field}: {err['msg']}")
        raise CommandError(f"command {name!r}: {'; '.join(problems)}") from None


def command_id(payload: bytes, max_bytes: int = 4096) -> str | None:
    """Best-effort ``id`` of a payload that failed validation, so its error reply can still echo it."""
    if len(payload) > max_bytes:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None


def result_payload(
    command: str,
    ok: bool,
    message: str,
    id: str | None = None,
    timestamp: float | None = None,
    duplicate: bool = False,
) -> dict[str, Any]:
    """The reply published on ``cmd/result`` (see ``edge/schemas/command_result.json``)."""
    body: dict[str, Any] = {
        "id": id,
        "command": command,
        "ok": ok,
        "message": message,
        "timestamp": time.time() if timestamp is None else timestamp,
    }
    if duplicate:
        body["duplicate"] = True
    return body


@dataclass(frozen=True)
class Answered:
    """A handler's result when it queued the reply itself, in the command's own transaction."""

    ok: bool
    message: str


Result = str | Answered  # a plain message: the publisher queues an ``ok`` reply with it


class CommandBridge:
    """Hands commands from the MQTT network thread to the frame loop, which alone touches the state.

    :meth:`submit` (network thread) queues a command and waits for its result; :meth:`run_pending`
    (frame loop, between frames and at least once a second) executes what is queued. A command not
    started within ``wait_s``, or one arriving while the daemon stops, is cancelled and never runs
    later: its sender gets an ``ok: false`` reply and may send it again.

    Args:
        wait_s: the longest a command waits for the frame loop.
    """

    def __init__(self, wait_s: float = 10.0) -> None:
        self.wait_s = wait_s
        self.stopping = False
        self._queue: queue.Queue[tuple[Command, Future[Result]]] = queue.Queue()

    def submit(self, cmd: Command) -> Result:
        """Queue ``cmd`` for the frame loop and return its result message.

        Raises:
            CommandError: refused or not run; a LanecountError the command raised is passed on.
        """
        if self.stopping:
            raise _stopping(cmd)
        done: Future[Result] = Future()
        self._queue.put((cmd, done))
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return done.result(timeout=0.2)
            except FutureTimeout:  # not the builtin TimeoutError on Python 3.10
                if not (self.stopping or time.monotonic() >= deadline):
                    continue
                if done.cancel():
                    why = "the daemon is stopping" if self.stopping else "the frame loop is busy"
                    raise CommandError(f"command {cmd.command!r}: {why}; not executed") from None

    def run_pending(self, execute: Callable[[Command], Result]) -> None:
        """Execute every queued command (frame loop); a failing command never stops the loop.

        Raises:
            FatalError: a command's state could not be committed. Its sender and every command still
                queued are answered "not applied" first; the daemon then stops (exit 1).
        """
        items = self._drain()
        for i, (cmd, done) in enumerate(items):
            try:
                done.set_result(execute(cmd))
            except FatalError as exc:
                done.set_exception(exc)
                self.stopping = True
                for later, waiting in items[i + 1 :]:
                    waiting.set_exception(_stopping(later))
                raise
            except LanecountError as exc:
                done.set_exception(exc)
            except Exception as exc:
                log.exception("command %r failed", cmd.command)
                done.set_exception(exc)

    def refuse_pending(self) -> None:
        """Answer every queued command with "not executed" (the daemon is stopping)."""
        self.stopping = True
        for cmd, done in self._drain():
            done.set_exception(_stopping(cmd))

    def _drain(self) -> list[tuple[Command, Future[Result]]]:
        items: list[tuple[Command, Future[Result]]] = []
        while True:
            try:
                cmd, done = self._queue.get_nowait()
            except queue.Empty:
                return items
            if done.set_running_or_notify_cancel():  # else its sender already got "not executed"
                items.append((cmd, done))


def _stopping(cmd: Command) -> CommandError:
    return CommandError(f"command {cmd.command!r}: the daemon is stopping; not executed")
