"""A deterministic run of crossings and commands through the daemon's own calls, for the kill tests.

Steps: 5 crossings, ``reset`` with id ``r1``, 2 crossings, the same ``reset`` again (a sender that
retried), 1 crossing. Each step's progress is committed, so a restarted run resumes at the first
step not done; a command step done but not marked is executed again, and must be answered from its
record. Run as ``python tests/command_driver.py STATE_DB``.
"""

from __future__ import annotations

import sys

from edge.alerts import AlertEngine
from edge.commands import ResetCommand
from edge.config import AlertsConfig
from edge.counts import Counts
from edge.executor import execute
from edge.state import FrameCommit, Progress, StateStore

STEPS: list[tuple[str, int | str]] = [
    ("count", 5),
    ("reset", "r1"),
    ("count", 2),
    ("reset", "r1"),
    ("count", 1),
]


def run(path: str) -> None:
    state = StateStore(path, topic_base="lc/s/d", envelope={"site": "s", "device": "d"})
    alerts = AlertEngine(AlertsConfig(), [])
    done = state.progress("steps")
    for i in range(done.frames if done else 0, len(STEPS)):
        kind, arg = STEPS[i]
        if kind == "count":
            crossings = Counts.of([("lane", "in", "apple")] * int(arg))
            state.commit(FrameCommit(crossings, progress=Progress("steps", i + 1)))
        else:
            execute(ResetCommand(id=str(arg)), state, alerts, {"lane"})
            state.commit(FrameCommit(progress=Progress("steps", i + 1)))
    state.close()


if __name__ == "__main__":
    run(sys.argv[1])
