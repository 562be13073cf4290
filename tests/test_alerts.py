"""Restock alerts: depletion (raise once, restocked clears, persists) and occupancy hold/clear timelines."""

from __future__ import annotations

import numpy as np
import pytest

from edge.alerts import AlertEngine
from edge.config import AlertsConfig
from edge.counting import Crossing, Direction
from edge.detections import Detections
from edge.errors import CommandError, ConfigError
from edge.geometry import point_in_polygon
from edge.state import FrameCommit, StateStore

NAMES = ["milk", "bread", "eggs"]


def sale(cls: int = 0, line: str = "exit", direction: Direction = "in", t: float = 0.0) -> Crossing:
    return Crossing(line, 1, cls, direction, 0, t)


DEPLETION = AlertsConfig(
    depletion=[{"product": "milk", "stock": 5, "threshold": 2, "line": "exit", "direction": "in"}]
)


def test_depletion_raises_once_at_threshold(tmp_path):
    eng = AlertEngine(DEPLETION, NAMES)
    assert eng.on_crossings([sale(t=1), sale(t=2)]) == []
    assert eng.depletion_estimate("milk") == 3
    (alert,) = eng.on_crossings([sale(t=3)])
    assert (alert.kind, alert.product, alert.state, alert.value, alert.threshold) == (
        "depletion",
        "milk",
        "raised",
        2,
        2,
    )
    assert alert.timestamp == 3 and alert.retain
    assert alert.topic_kind == "alerts/restock/depletion/milk"
    assert eng.on_crossings([sale(t=4), sale(t=5), sale(t=6)]) == []  # once, not per sale
    assert eng.depletion_estimate("milk") == 0  # floored


@pytest.mark.parametrize(
    "crossing",
    [
        pytest.param(sale(cls=1), id="other-class"),
        pytest.param(sale(line="entry"), id="other-line"),
        pytest.param(sale(direction="out"), id="other-direction"),
    ],
)
def test_depletion_ignores_non_sales(crossing):
    eng = AlertEngine(DEPLETION, NAMES)
    eng.on_crossings([crossing])
    assert eng.depletion_estimate("milk") == 5


def test_depletion_without_line_counts_every_line():
    cfg = AlertsConfig(depletion=[{"product": "eggs", "stock": 3, "threshold": 0, "direction": "out"}])
    eng = AlertEngine(cfg, NAMES)
    eng.on_crossings([sale(2, "a", "out"), sale(2, "b", "out")])
    (alert,) = eng.on_crossings([sale(2, "c", "out")])
    assert alert.value == 0 and alert.to_payload()["estimate"] == 0


def persist(eng: AlertEngine, path) -> None:
    """Commit the engine's changes as the daemon does (with the frame, in the state database)."""
    with StateStore(path) as state:
        state.commit(FrameCommit(alert_state=eng.take_changes()))


def reopen(cfg: AlertsConfig, path) -> AlertEngine:
    with StateStore(path) as state:
        return AlertEngine(cfg, NAMES, state.alert_state())


def test_restocked_clears_and_state_survives_restart(tmp_path):
    path = tmp_path / "s.db"
    eng = AlertEngine(DEPLETION, NAMES)
    eng.on_crossings([sale(t=i) for i in range(3)])
    assert eng.active() == [("depletion", "milk")]
    persist(eng, path)
    assert eng.take_changes() == {}  # handed out once
    # restart: the raised alert is remembered and not raised again
    eng = reopen(DEPLETION, path)
    assert eng.active() == [("depletion", "milk")] and eng.depletion_estimate("milk") == 2
    assert eng.on_crossings([sale(t=9)]) == []
    (cleared,) = eng.restocked("milk", t=10.0)
    assert (cleared.state, cleared.value, cleared.timestamp) == ("cleared", 5, 10.0)
    assert eng.restocked("milk") == []  # already clear
    persist(eng, path)
    eng = reopen(DEPLETION, path)
    assert eng.active() == [] and eng.depletion_estimate("milk") == 5


def test_alert_timestamp_is_the_callers_clock_when_given():
    eng = AlertEngine(DEPLETION, NAMES)
    (alert,) = eng.on_crossings([sale(t=1.5)] * 3, timestamp=1_700_000_000.0)
    assert alert.timestamp == 1_700_000_000.0


def test_restocked_with_low_stock_stays_raised_and_explicit_stock():
    eng = AlertEngine(DEPLETION, NAMES)
    (raised,) = eng.restocked("milk", stock=1, t=1.0)  # restocked to below the threshold
    assert raised.state == "raised"
    (cleared,) = eng.restocked("milk", stock=8, t=2.0)
    assert cleared.state == "cleared" and eng.depletion_estimate("milk") == 8


def test_restocked_unknown_product_is_a_command_error():
    with pytest.raises(CommandError, match="no depletion rule for product 'tea'"):
        AlertEngine(DEPLETION, NAMES).restocked("tea")


def test_duplicate_rules_are_a_config_error():
    cfg = AlertsConfig(depletion=[{"product": "milk", "stock": 1, "threshold": 0}] * 2)
    with pytest.raises(ConfigError, match=r"alerts\.depletion: more than one rule for product 'milk'"):
        AlertEngine(cfg, NAMES)


# --- occupancy ----------------------------------------------------------------------------------

ZONE = [(0, 0), (100, 0), (100, 100), (0, 100)]
OCCUPANCY = AlertsConfig(occupancy=[{"product": "bread", "zone": ZONE, "min_count": 2, "hold_s": 3.0}])


def frame(n_inside: int, n_outside: int = 1, other_class_inside: int = 2) -> Detections:
    """Boxes whose bottom-centre anchor is inside (bottom y 50) or outside (bottom y 150) the zone."""
    boxes, classes = [], []
    for i in range(n_inside):
        boxes.append([10 + i, 20, 30 + i, 50])
        classes.append(1)
    for i in range(n_outside):
        boxes.append([10 + i, 60, 30 + i, 150])  # top inside, bottom-centre outside
        classes.append(1)
    for _ in range(other_class_inside):
        boxes.append([40, 40, 60, 60])
        classes.append(0)
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(n), np.array(classes))


def run_timeline(eng: AlertEngine, counts: list[int], dt: float = 1.0) -> list[tuple[float, str, int]]:
    events = []
    for i, n in enumerate(counts):
        for a in eng.on_frame(frame(n), i * dt):
            events.append((i * dt, a.state, a.value))
    return events


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        pytest.param([2] * 8, [], id="always-enough"),
        pytest.param([2, 1, 1, 2, 1, 1, 2, 1, 1, 2], [], id="dips-shorter-than-hold-never-raise"),
        pytest.param([2, 1, 1, 1, 1, 1], [(4.0, "raised", 1)], id="raise-after-hold"),
        pytest.param(
            [1, 1, 1, 1, 2, 2, 1, 2, 2, 2, 2, 2],
            [(3.0, "raised", 1), (10.0, "cleared", 2)],
            id="clear-only-after-hold-above-no-flap",
        ),
        pytest.param(
            [0, 0, 0, 0, 3, 3, 3, 3, 0, 0, 0, 0],
            [(3.0, "raised", 0), (7.0, "cleared", 3), (11.0, "raised", 0)],
            id="raise-clear-raise",
        ),
    ],
)
def test_occupancy_timeline(counts, expected):
    eng = AlertEngine(OCCUPANCY, NAMES)
    assert run_timeline(eng, counts) == expected


def test_occupancy_counts_bottom_centre_anchor_and_class():
    eng = AlertEngine(OCCUPANCY, NAMES)
    rule = OCCUPANCY.occupancy[0]
    assert eng.zone_count(rule, frame(3, n_outside=4)) == 3
    assert eng.zone_count(rule, Detections.empty()) == 0


def test_occupancy_hold_zero_is_immediate_and_raised_state_persists(tmp_path):
    cfg = AlertsConfig(occupancy=[{"product": "bread", "zone": ZONE, "min_count": 1, "hold_s": 0}])
    path = tmp_path / "s.db"
    eng = AlertEngine(cfg, NAMES)
    (a,) = eng.on_frame(frame(0), 0.0)
    assert a.state == "raised" and a.to_payload()["count"] == 0
    persist(eng, path)
    eng = reopen(cfg, path)
    assert eng.active() == [("occupancy", "bread")]
    assert eng.on_frame(frame(0), 1.0) == []  # not raised twice after the restart
    (c,) = eng.on_frame(frame(1), 2.0)
    assert c.state == "cleared"


def test_points_in_polygon_concave():
    # an L shape: the notch (15, 15) is outside
    poly = [(0, 0), (20, 0), (20, 10), (10, 10), (10, 20), (0, 20)]
    pts = [(5, 5), (15, 5), (5, 15), (15, 15), (-1, 5), (25, 5), (1e9, 1e9)]
    assert point_in_polygon(pts, poly).tolist() == [True, True, True, False, False, False, False]
    assert point_in_polygon(np.zeros((0, 2)), poly).shape == (0,)
    with pytest.raises(ValueError, match="at least 3 vertices"):
        point_in_polygon(pts, [(0, 0), (1, 1)])
