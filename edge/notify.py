"""systemd integration: readiness, watchdog and status through sd_notify (systemd-python).

Under systemd (``Type=notify``) ``$NOTIFY_SOCKET`` names a unix datagram socket; outside it the
calls are no-ops. The watchdog is fed only while frames flow: a daemon whose camera is stuck is
restarted by systemd, one that is merely slow is not.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

__all__ = ["Notifier"]


def _send_raw(message: str) -> bool:
    """sd_notify without libsystemd (e.g. a Jetson image without python3-systemd)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), address)
    return True


try:
    from systemd import daemon as _sd

    def _send(message: str) -> bool:
        return bool(_sd.notify(message))

except ImportError:  # pragma: no cover - exercised on machines without systemd-python
    _send = _send_raw


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

    def _notify(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            _send(message)
        except OSError as exc:  # systemd gone (shutdown) must not kill the pipeline
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        """Model and source are up."""
        self._notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self._notify(f"STATUS={text}")

    def frame_flowed(self, now: float | None = None) -> None:
        """Call after each processed frame; pings the watchdog at most twice per interval."""
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
