"""What the daemon's loop watches about itself: stop/reload signals, failures over time, frame rate.

Kept apart from :mod:`edge.daemon` so the loop reads as what it does, not how it measures.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from types import FrameType
from typing import Any

__all__ = ["FailureClock", "FpsMeter", "Signals"]

log = logging.getLogger("lanecount")

_FPS_WINDOW_S = 2.0


class Signals:
    """Signal handlers that only set flags (the loop acts on them between frames)."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere the owner sets ``stop`` itself)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_hup),
        ):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        """Put back the handlers found by :meth:`install` (a daemon run in-process, e.g. by tests)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True


class FailureClock:
    """How long something has been failing: ``since`` is when the current run of failures began."""

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self, now: float) -> float:
        """Record a failure; return for how long it has been failing."""
        self.since = now if self.since is None else self.since
        return now - self.since

    def ok(self) -> float | None:
        """Record a success; return how long the failure lasted, or ``None`` if there was none."""
        since, self.since = self.since, None
        return None if since is None else time.monotonic() - since


class FpsMeter:
    """Frames per second over the last two seconds; 0 once frames stop (a stalled camera)."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        """A frame was processed at ``now`` (monotonic seconds)."""
        self._times.append(now)

    def rate(self, now: float) -> float:
        """The recent rate at ``now``."""
        times = self._times
        while times and now - times[0] > _FPS_WINDOW_S:
            times.popleft()
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)
