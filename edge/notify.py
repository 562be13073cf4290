"""systemd integration: readiness, watchdog and status through sd_notify (the raw datagram protocol).

Under systemd (``Type=notify``) ``$NOTIFY_SOCKET`` names a unix datagram socket; outside it the
calls are no-ops. Messages are sent without blocking: a notify socket nobody reads (a full receive
buffer) drops the message instead of stalling the frame loop.

The watchdog is fed by the *loop's progress*, not by frames: the loop turns at least once a second
with or without frames, so a camera that is down is reported (status, metric, alert) instead of
getting the daemon killed and restarted in a loop, while a hung inference or a stuck loop stops the
pings and systemd restarts the service. A detector that fails on every frame makes the daemon exit
non-zero on its own (see ``backend.max_failure_s``).
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

__all__ = ["Notifier"]


def _address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    return "\0" + address[1:] if address.startswith("@") else address  # "@": abstract namespace


class Notifier:
    """Sends READY, WATCHDOG, STATUS and STOPPING to systemd when it is listening."""

    def __init__(self) -> None:
        """Read the watchdog interval systemd gave us (``$WATCHDOG_USEC``), if any."""
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._last_ping = 0.0
        self._sock: socket.socket | None = None
        self.dropped = 0

    def _notify(self, message: str) -> None:
        address = _address() if self.enabled else None
        if address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), address)
        except BlockingIOError:
            self.dropped += 1  # nobody reads the socket: drop rather than stall the frame loop
        except OSError as exc:  # systemd gone (shutdown) must not kill the pipeline
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        """Model and source are up."""
        self._notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self._notify(f"STATUS={text}")

    def alive(self, now: float | None = None) -> None:
        """Call on every turn of the loop; pings the watchdog at most twice per interval."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._notify("WATCHDOG=1")

    def reloading(self) -> None:
        """A SIGHUP reload started (``READY=1`` follows when done)."""
        self._notify("RELOADING=1")

    def stopping(self) -> None:
        """A clean shutdown started."""
        self._notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
