"""Line counting: tables of per-frame anchor positions → the crossings counted, plus geometry.

Scenes are fed as tracked detections (track id, anchor x, anchor y[, class]); the box of each row is
built so that its bottom-centre (the default anchor) is that point. After every frame the counter is
pruned with the ids "the tracker would still hold": those seen in the last 15 frames (Norfair's default
``hit_counter_max``), so the ID hand-off is exercised with realistic lifetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from edge.config import CountingConfig, LineConfig, TrackingConfig
from edge.counting import Crossing, LineCounter
from edge.detections import Detections
from edge.errors import ConfigError
from edge.geometry import point_in_polygon, segment_distance, side_of_line, within_segment
from edge.tracking import ProductTracker

VERTICAL = ((320.0, 480.0), (320.0, 0.0))  # left → right (x increasing) is "in"
HOLD = 15  # frames a lost track stays alive in the simulated tracker

Row = tuple[Any, ...]  # (track_id, x, y) or (track_id, x, y, class_id)


def make_tracked(rows: Sequence[Row]) -> Detections:
    """Tracked detections whose bottom-centre anchors are the given points (boxes 20 x 30 px)."""
    if not rows:
        return Detections.empty().with_tracker_id(np.zeros(0, np.int64))
    ids = [r[0] for r in rows]
    xs = np.array([r[1] for r in rows], np.float64)
    ys = np.array([r[2] for r in rows], np.float64)
    cls = [r[3] if len(r) > 3 else 0 for r in rows]
    xyxy = np.stack([xs - 10, ys - 30, xs + 10, ys], axis=1)
    return Detections(xyxy, np.full(len(rows), 0.9), np.array(cls), np.array(ids))


def run(frames: Sequence[Sequence[Row]], counter: LineCounter, fps: float = 30.0) -> list[Crossing]:
    events: list[Crossing] = []
    last_seen: dict[int, int] = {}
    for f, rows in enumerate(frames):
        events += counter.update(make_tracked(rows), f, f / fps)
        last_seen.update({r[0]: f for r in rows})
        counter.prune({t for t, seen in last_seen.items() if f - seen <= HOLD})
    return events


def counter_for(line: tuple[tuple[float, float], tuple[float, float]] = VERTICAL, **kw: Any) -> LineCounter:
    classes = kw.pop("classes", None)
    names = kw.pop("names", ())
    cfg = CountingConfig(lines=[LineConfig(name="lane", start=line[0], end=line[1], classes=classes)], **kw)
    return LineCounter(cfg, names)


def path(tid: int, xs: Sequence[float], y: float = 240.0, cls: int = 0) -> list[list[Row]]:
    """One track, one frame per x."""
    return [[(tid, float(x), y, cls)] for x in xs]


def gap(n: int) -> list[list[Row]]:
    return [[] for _ in range(n)]


def together(*tracks: list[list[Row]]) -> list[list[Row]]:
    """Overlay per-frame rows of several tracks (shorter ones simply end)."""
    n = max(len(t) for t in tracks)
    return [[r for t in tracks if i < len(t) for r in t[i]] for i in range(n)]


_rng = np.random.default_rng(3)
JITTER = (320 + _rng.choice([-3.0, 3.0], size=30)).tolist()  # ±3 px around the line for 30 frames

CASES = [
    pytest.param({}, path(1, range(250, 401, 10)), [(1, "in")], id="clean-pass-in"),
    pytest.param({}, path(1, range(400, 249, -10)), [(1, "out")], id="reverse-pass-out"),
    pytest.param(
        {},
        path(1, [*range(250, 320, 10), *JITTER, *range(330, 401, 10)]),
        [(1, "in")],
        id="stop-on-line-jitter",
    ),
    pytest.param(
        {},
        path(1, [*range(250, 381, 10), *range(370, 259, -10), *range(270, 401, 10)]),
        [(1, "in"), (1, "out"), (1, "in")],
        id="pull-back",
    ),
    pytest.param(
        {},
        together(path(1, range(250, 401, 10), y=200), path(2, range(252, 403, 10), y=232)),
        [(1, "in"), (2, "in")],
        id="pair-side-by-side",
    ),
    pytest.param(
        {},
        [*path(1, range(250, 311, 10)), *gap(8), *path(1, range(390, 451, 10))],
        [(1, "in")],
        id="occlusion-gap",
    ),
    pytest.param(
        {},
        [*path(1, range(255, 319, 7)), *gap(2), *path(2, range(324, 401, 7))],
        [(2, "in")],
        id="id-switch-at-line",
    ),
    pytest.param(
        {},
        [*path(1, range(100, 319, 7)), *gap(2), *path(2, range(324, 401, 7))],
        [(2, "in")],
        id="id-switch-at-line-of-a-track-born-far-away",
    ),
    pytest.param(
        {"handoff_frames": 0},
        [*path(1, range(255, 319, 7)), *gap(2), *path(2, range(324, 401, 7))],
        [],
        id="id-switch-without-handoff-is-lost",
    ),
    pytest.param(
        {},
        [*path(1, range(250, 341, 10)), *gap(2), *path(2, range(346, 401, 10))],
        [(1, "in")],
        id="id-switch-after-crossing-no-double",
    ),
    pytest.param(
        {},
        [*path(1, range(250, 311, 10)), *gap(2), *path(2, range(335, 401, 10))],
        [(2, "in")],
        id="id-switch-born-on-far-side",
    ),
    pytest.param(
        {},
        [*path(1, range(250, 311, 10)), *gap(40), *path(2, range(335, 401, 10))],
        [],
        id="handoff-expires",
    ),
    pytest.param(
        {},
        [*path(1, range(250, 311, 10)), *gap(2), *path(2, range(335, 401, 10), y=400)],
        [],
        id="handoff-too-far-away",
    ),
    pytest.param(
        {},
        [
            *together(path(1, [290, 300, 310], cls=0), path(2, [350, 340, 330], y=250, cls=1)),
            *gap(2),
            *path(3, [322, 330, 340], y=245, cls=0),
        ],
        [(3, "in")],
        id="handoff-prefers-same-class-over-nearer",
    ),
    pytest.param(
        {},
        [
            *together(path(1, [290, 300, 310], cls=0), path(2, [350, 340, 330], y=250, cls=1)),
            *gap(2),
            *path(3, [322, 330, 340], y=245, cls=1),
        ],
        [],
        id="handoff-same-class-other-side",
    ),
    pytest.param({"hysteresis_px": 0}, path(1, [310, 319, 321, 330]), [(1, "in")], id="hysteresis-0-pass"),
    pytest.param(
        {"hysteresis_px": 0},
        path(1, [310, 319, 321, 319, 321]),
        [(1, "in"), (1, "out"), (1, "in")],
        id="hysteresis-0-counts-jitter",
    ),
    pytest.param({}, path(1, [300, 316, 324, 316, 324, 316]), [], id="jitter-inside-band-never-counts"),
    pytest.param({}, path(1, [318, 322, 330, 340]), [], id="born-inside-band-side-unknown"),
]


@pytest.mark.parametrize(("overrides", "frames", "expected"), CASES)
def test_vertical_line_table(
    overrides: dict[str, Any], frames: list[list[Row]], expected: list[tuple[int, str]]
) -> None:
    events = run(frames, counter_for(**overrides))
    assert [(e.track_id, e.direction) for e in events] == expected


SEGMENT_CASES = [
    pytest.param(
        ((320, 480), (320, 200)), path(1, range(250, 401, 10), y=300), [(1, "in")], id="inside-segment"
    ),
    pytest.param(((320, 480), (320, 200)), path(1, range(250, 401, 10), y=100), [], id="beyond-segment-end"),
    pytest.param(
        ((320, 480), (320, 200)),
        [*path(1, range(250, 401, 10), y=100), *path(1, [400, 390, 380], y=300)],
        [],
        id="around-the-end-then-inside",
    ),
    pytest.param(
        ((0, 0), (400, 400)), [[(1, x, 400 - x)] for x in range(300, 99, -10)], [(1, "in")], id="diagonal-in"
    ),
    pytest.param(
        ((0, 0), (400, 400)),
        [[(1, x, 400 - x)] for x in range(100, 301, 10)],
        [(1, "out")],
        id="diagonal-out",
    ),
    pytest.param(
        ((320, 0), (320, 480)), path(1, range(250, 401, 10)), [(1, "out")], id="reversed-line-flips-direction"
    ),
    pytest.param(
        ((1e6, 1e6), (1e6, 0)),
        [[(1, 1e6 + dx, 5e5)] for dx in range(-80, 81, 16)],
        [(1, "in")],
        id="huge-coordinates",
    ),
    # The step from one anchor to the next is what crosses (or misses) the segment, not the new anchor.
    pytest.param(
        ((320, 480), (320, 200)),
        [[(1, 290, 235)], [(1, 310, 215)], [(1, 330, 195)], [(1, 350, 175)]],
        [(1, "in")],
        id="step-crosses-segment-lands-past-its-end",
    ),
    pytest.param(
        ((320, 480), (320, 200)),
        [[(1, 290, 165)], [(1, 310, 185)], [(1, 330, 205)], [(1, 350, 225)]],
        [],
        id="step-beside-segment-lands-inside",
    ),
]


@pytest.mark.parametrize(("line", "frames", "expected"), SEGMENT_CASES)
def test_line_geometry_table(line: Any, frames: list[list[Row]], expected: list[tuple[int, str]]) -> None:
    events = run(frames, counter_for(line))
    assert [(e.track_id, e.direction) for e in events] == expected


def test_a_track_seen_this_frame_never_donates_its_side() -> None:
    """A visible track is not lost: a new track of another class born beside it inherits nothing."""
    donor = path(1, range(290, 361, 10), y=240, cls=0)  # near the line on the left, then crosses
    newcomer = [[], [], *path(2, range(330, 391, 10), y=260, cls=1)]  # born on the right, beside track 1
    events = run(together(donor, newcomer), counter_for())
    assert [(e.track_id, e.direction) for e in events] == [(1, "in")]


def test_crossing_fields_and_totals() -> None:
    counter = counter_for(names=["apple", "banana"])
    frames = together(path(1, range(250, 401, 10), y=200, cls=1), path(2, range(400, 249, -10), y=300, cls=0))
    events = run(frames, counter, fps=10.0)
    assert {(e.line, e.track_id, e.class_id, e.direction) for e in events} == {
        ("lane", 1, 1, "in"),
        ("lane", 2, 0, "out"),
    }
    first = min(events, key=lambda e: e.frame)
    assert first.timestamp == pytest.approx(first.frame / 10.0)
    assert counter.totals == {"lane": {"in": {1: 1}, "out": {0: 1}}}


def test_class_filter_counts_only_named_classes() -> None:
    counter = counter_for(classes=["apple"], names=["apple", "banana"])
    frames = together(path(1, range(250, 401, 10), y=200, cls=0), path(2, range(250, 401, 10), y=300, cls=1))
    events = run(frames, counter)
    assert [(e.track_id, e.class_id) for e in events] == [(1, 0)]
    assert counter.totals == {"lane": {"in": {0: 1}, "out": {}}}


def test_class_filter_by_id_without_names() -> None:
    counter = counter_for(classes=["1"])
    frames = together(path(1, range(250, 401, 10), y=200, cls=0), path(2, range(250, 401, 10), y=300, cls=1))
    assert [e.track_id for e in run(frames, counter)] == [2]


@pytest.mark.parametrize(("classes", "names"), [(["pear"], ["apple"]), (["apple"], []), (["3"], ["a", "b"])])
def test_unknown_filter_class_is_a_config_error(classes: list[str], names: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"^counting\.lines\.0\.classes: unknown class"):
        counter_for(classes=classes, names=names)


def test_class_flicker_at_the_line_counts_the_majority_class() -> None:
    """One frame of a different class exactly at the crossing: the tracker's vote keeps the count right."""
    tracker = ProductTracker(TrackingConfig())
    counter = counter_for()
    xs = list(range(250, 401, 7))
    flicker = next(i for i, x in enumerate(xs) if x > 326)  # the frame whose anchor leaves the band
    events = []
    for f, x in enumerate(xs):
        cls = 4 if f == flicker else 2
        det = Detections(np.array([[x - 10, 210, x + 10, 240]]), np.array([0.9]), np.array([cls]))
        events += counter.update(tracker.update(det, f), f, f / 30)
    assert [(e.class_id, e.direction) for e in events] == [(2, "in")]
    assert counter.totals == {"lane": {"in": {2: 1}, "out": {}}}


def test_state_is_bounded_after_10k_tracks() -> None:
    # Every track dies near the line (so each leaves a hand-off record) and no two are close enough
    # for one to inherit from another: only expiry and pruning keep the state small.
    counter = counter_for(hysteresis_px=2, handoff_px=5)
    sizes = []
    for tid in range(10_000):  # one frame each: the state, not the frames, is what must stay bounded
        counter.update(make_tracked([(tid, 316.0, 20.0 + (tid * 7) % 440)]), tid, tid / 30)
        counter.prune({tid})
        sizes.append(counter.state_size)
    assert max(sizes) <= counter.cfg.handoff_frames + 2
    assert max(sizes) > 1  # hand-off records did exist
    counter.prune(set())
    counter.update(make_tracked([]), 10**6, 0.0)
    assert counter.state_size == 0


def test_update_needs_tracker_ids() -> None:
    counter = counter_for()
    with pytest.raises(ValueError, match="tracker_id"):
        counter.update(Detections(np.array([[0, 0, 5, 5]]), np.array([0.9]), np.array([0])), 0, 0.0)


# --- geometry ------------------------------------------------------------------------------------


def test_side_of_line_sign_convention() -> None:
    # Facing up the screen from (320, 480): +x is on the right. Facing right along y=100: down (+y) is right.
    assert np.sign(side_of_line([[300, 10], [340, 10]], (320, 480), (320, 0))).tolist() == [-1, 1]
    assert np.sign(side_of_line([[50, 50], [50, 150]], (0, 100), (100, 100))).tolist() == [-1, 1]
    assert side_of_line([[3, 4]], (0, 0), (0, 10)).tolist() == pytest.approx([-3.0])


def test_within_segment_and_distance() -> None:
    pts = [[5, -2], [5, 0], [5, 10], [5, 12], [0, 5]]
    assert within_segment(pts, (0, 0), (0, 10)).tolist() == [False, True, True, False, True]
    assert within_segment(pts, (0, 0), (0, 10), margin=2).tolist() == [True, True, True, True, True]
    assert segment_distance(pts, (0, 0), (0, 10)).tolist() == pytest.approx(
        [np.hypot(5, 2), 5, 5, np.hypot(5, 2), 0]
    )


def test_point_in_polygon_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    poly = np.array([[10, 10], [200, 30], [150, 180], [60, 120], [20, 160]], np.float32)
    pts = np.random.default_rng(0).uniform(0, 220, size=(500, 2))
    expected = [cv2.pointPolygonTest(poly, (float(x), float(y)), False) >= 0 for x, y in pts]
    assert point_in_polygon(pts, poly).tolist() == expected


def test_geometry_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        side_of_line([[0, 0]], (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        side_of_line([1, 2, 3], (0, 0), (1, 1))
    with pytest.raises(ValueError, match="polygon"):
        point_in_polygon([[0, 0]], [[0, 0], [1, 1]])
