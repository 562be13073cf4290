"""A deterministic workload on the daemon's state, for the kill-at-every-fsync tests (test_state.py).

Each "frame" goes through the same calls the daemon makes: crossings and the depletion alert through
:class:`AlertEngine`, one :meth:`StateStore.commit` per frame, and before a frame stamped at or after
the period's boundary, :meth:`StateStore.roll`. Frame i is stamped 1000 + i (a synthetic clock), so
with 5 s periods a counts message is queued before frames 5, 10, 15...
Run as ``python tests/state_driver.py STATE_DB FRAMES``.
"""

from __future__ import annotations

import sys

from edge.alerts import AlertEngine
from edge.config import AlertsConfig
from edge.counting import Crossing
from edge.counts import Counts, class_name
from edge.messages import Clock, alert_message, crossing_message
from edge.state import FrameCommit, Progress, StateStore

NAMES = ["apple", "milk_carton"]
PERIOD_S = 5.0
ALERTS = AlertsConfig(depletion=[{"product": "milk_carton", "stock": 6, "threshold": 2}])


def frame_crossings(i: int) -> list[Crossing]:
    """Frame i has a crossing every other frame, alternating classes and sometimes two at once."""
    if i % 2:
        return []
    out = [Crossing("lane", 1000 + i, (i // 2) % 2, "in", i, i / 15)]
    if i % 6 == 0:
        out.append(Crossing("lane", 2000 + i, 0, "out", i, i / 15))
    return out


def run(path: str, frames: int) -> None:
    envelope = {"site": "s", "device": "d"}
    state = StateStore(path, topic_base="lc/s/d", envelope=envelope, max_messages=10_000, now=1000.0)
    alerts = AlertEngine(ALERTS, NAMES, state.alert_state())
    start = state.progress("driver")
    first = start.frames if start else 0
    boundary = state.roll(1000.0 + first, PERIOD_S, ["lane"])
    for i in range(first, frames):
        crossings = frame_crossings(i)
        raised = alerts.on_crossings(crossings)
        clock = Clock(1000.0 + i)
        if clock.wall >= boundary:
            boundary = state.roll(clock.wall, PERIOD_S, ["lane"])
        messages = [crossing_message(c, NAMES, clock) for c in crossings]
        messages += [alert_message(a, clock) for a in raised]
        counts = Counts.of((c.line, c.direction, class_name(NAMES, c.class_id)) for c in crossings)
        # The frame's progress commits with its crossings, as in the daemon: resuming never redoes a frame.
        state.commit(FrameCommit(counts, alerts.take_changes(), messages, Progress("driver", i + 1)))
    state.close()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
