"""ProductTracker: confirmed-only output, stable ids, class voting, bad boxes, bounded state.

Everything runs the real Norfair tracker; ``test_lean_objects_match_stock_norfair`` compares our
streamlined Norfair objects (see ``edge/tracking.py``) with stock Norfair frame by frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import norfair
import numpy as np
import numpy.typing as npt
import pytest
from norfair.filter import OptimizedKalmanFilterFactory
from norfair.tracker import TrackedObject, _TrackedObjectFactory

from edge.config import CountingConfig, LineConfig, TrackingConfig
from edge.counting import LineCounter
from edge.detections import Detections
from edge.tracking import UNKNOWN_VELOCITY_VARIANCE, ProductTracker


def boxes(xyxy: npt.ArrayLike, classes: Sequence[int] | None = None) -> Detections:
    arr = np.asarray(xyxy, np.float32).reshape(-1, 4)
    cls = np.zeros(len(arr), np.int64) if classes is None else np.asarray(classes)
    return Detections(arr, np.full(len(arr), 0.8), cls)


def moving(
    n_frames: int, starts: Sequence[tuple[float, float]], speed: float = 7.0, size: float = 40.0
) -> list[Detections]:
    """Boxes moving right at ``speed`` px per frame from each start (x, y)."""
    out = []
    for f in range(n_frames):
        out.append(boxes([[x + f * speed, y, x + f * speed + size, y + size] for x, y in starts]))
    return out


def test_only_confirmed_tracks_are_returned() -> None:
    tracker = ProductTracker(TrackingConfig(initialization_delay=2))
    frames = moving(5, [(0, 0)])
    sizes = [len(tracker.update(d, f)) for f, d in enumerate(frames)]
    assert sizes == [0, 0, 1, 1, 1]  # Norfair confirms when hits exceed the delay: the third detection
    assert tracker.alive_ids() == {1}


def test_a_single_spurious_detection_never_appears() -> None:
    tracker = ProductTracker(TrackingConfig(initialization_delay=2))
    outputs = [
        tracker.update(boxes([[300, 300, 340, 340]]) if f == 3 else Detections.empty(), f) for f in range(10)
    ]
    assert all(len(o) == 0 for o in outputs)
    assert tracker.alive_ids() == set()


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(TrackingConfig(distance="iou", distance_threshold=0.8), id="iou"),
        pytest.param(TrackingConfig(distance="euclidean", distance_threshold=30), id="euclidean"),
    ],
)
def test_ids_are_stable_on_moving_boxes(cfg: TrackingConfig) -> None:
    tracker = ProductTracker(cfg)
    starts = [(0, 0), (0, 100), (60, 200)]
    seen: dict[int, set[int]] = {}  # input row → ids it got
    for f, dets in enumerate(moving(60, starts)):
        out = tracker.update(dets, f)
        assert out.tracker_id is not None
        for row_box, tid in zip(out.xyxy, out.tracker_id.tolist(), strict=True):
            row = int(np.argmin(np.abs(dets.xyxy - row_box).sum(axis=1)))
            seen.setdefault(row, set()).add(tid)
    assert sorted(len(ids) for ids in seen.values()) == [1, 1, 1]
    assert len(set().union(*seen.values())) == 3


def test_output_boxes_are_the_matched_detections() -> None:
    tracker = ProductTracker(TrackingConfig())
    rng = np.random.default_rng(1)
    for f, dets in enumerate(moving(20, [(0, 0), (0, 120)])):
        jittered = Detections(dets.xyxy + rng.normal(0, 1.5, dets.xyxy.shape), dets.confidence, dets.class_id)
        out = tracker.update(jittered, f)
        for box in out.xyxy:
            assert np.any(np.all(jittered.xyxy == box, axis=1))


def test_coasting_track_is_absent_then_returns_with_its_id() -> None:
    tracker = ProductTracker(TrackingConfig(initialization_delay=2))
    frames = moving(30, [(0, 0)])
    ids = []
    for f, dets in enumerate(frames):
        out = tracker.update(Detections.empty() if 10 <= f < 16 else dets, f)
        ids.append(out.tracker_id.tolist() if out.tracker_id is not None else [])
    assert all(ids[f] == [] for f in range(10, 16))
    assert {tuple(i) for i in ids[2:10] + ids[16:]} == {(1,)}


@pytest.mark.parametrize(
    ("classes", "window", "expected"),
    [
        pytest.param([1, 1, 1, 2, 1, 1], 30, [1, 1, 1, 1], id="one-frame-flicker"),
        pytest.param(
            [1, 1, 1, 1, 1, 2, 2, 2, 2], 5, [1, 1, 1, 1, 1, 2, 2], id="lasting-change-wins-in-window"
        ),
        pytest.param([3, 4, 3, 4, 4, 3], 30, [3, 3, 4, 4], id="ties-keep-the-earlier-winner"),
    ],
)
def test_class_is_the_majority_vote(classes: list[int], window: int, expected: list[int]) -> None:
    tracker = ProductTracker(TrackingConfig(class_vote_window=window, initialization_delay=2))
    got = []
    for f, (dets, cls) in enumerate(zip(moving(len(classes), [(0, 0)]), classes, strict=True)):
        out = tracker.update(boxes(dets.xyxy, [cls]), f)
        got += out.class_id.tolist()
    assert got == expected


@pytest.mark.parametrize(("by_confidence", "expected"), [(True, 2), (False, 1)])
def test_class_vote_weighs_confidence(by_confidence: bool, expected: int) -> None:
    """A detector unsure of the wrong class outvoted by fewer, surer detections of the right one."""
    tracker = ProductTracker(TrackingConfig(class_vote_confidence=by_confidence, initialization_delay=0))
    classes, confidences = [1, 2, 1, 2, 1], [0.3, 0.9, 0.3, 0.9, 0.3]
    for f, dets in enumerate(moving(5, [(0, 0)])):
        d = Detections(dets.xyxy, np.array([confidences[f]]), np.array([classes[f]]))
        out = tracker.update(d, f)
    assert out.class_id.tolist() == [expected]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([np.nan, 0, 10, 10], id="nan"),
        pytest.param([0, 0, np.inf, 10], id="inf"),
        pytest.param([5, 5, 5, 20], id="zero-width"),
        pytest.param([10, 10, 0, 0], id="inverted"),
    ],
)
def test_bad_boxes_are_dropped_without_breaking_tracks(bad: list[float]) -> None:
    tracker = ProductTracker(TrackingConfig())
    for f, dets in enumerate(moving(12, [(0, 0)])):
        mixed = boxes(np.vstack([dets.xyxy, [bad]]), [0, 0])
        out = tracker.update(mixed, f)
    assert out.tracker_id is not None and out.tracker_id.tolist() == [1]
    assert np.isfinite(out.xyxy).all()


def test_state_is_pruned_when_tracks_die() -> None:
    cfg = TrackingConfig(hit_counter_max=5, initialization_delay=1)
    tracker = ProductTracker(cfg)
    sizes = []
    for k in range(300):  # a new product every 4 frames, each seen 4 frames, at a new place
        x, y = (k * 53) % 900, (k * 97) % 700
        for step in range(4):
            tracker.update(boxes([[x + step, y, x + step + 30, y + 30]]), k * 4 + step)
        sizes.append(tracker.state_size)
    # A product lives 4 frames plus ~hit_counter_max frames of coasting: about 3 at a time, each with
    # one Norfair object and one class vote; a lost track is held hit_counter_max frames more for
    # re-linking, so one more at a time.
    assert max(sizes) <= 10
    assert len(tracker.alive_ids()) <= 4
    for f in range(1200, 1220):
        tracker.update(Detections.empty(), f)
    assert tracker.alive_ids() == set()
    assert tracker.state_size == 0


class _StockWithLife(TrackedObject):
    """Stock Norfair ``hit`` plus lanecount's one rule: a confirmed track's counter resets to the max."""

    def hit(self, detection: norfair.Detection, period: int = 1) -> None:
        super().hit(detection, period)
        if not self.is_initializing:
            self.hit_counter = self.hit_counter_max


class _StockFactory(_TrackedObjectFactory):
    def create(self, **kwargs: Any) -> _StockWithLife:  # type: ignore[override]
        return _StockWithLife(obj_factory=self, **kwargs)


def test_lean_objects_match_stock_norfair() -> None:
    """Same ids and Kalman estimates as stock Norfair (stock filter, stock hit, stock IoU distance).

    Stock Norfair gets lanecount's two deliberate differences: the unknown velocity at birth
    (``vel_variance``) and a confirmed track's full life after each match; re-linking (Norfair's ReID
    hook, tested on its own below) is off.
    """
    cfg = TrackingConfig(relink_distance=0)
    ours = ProductTracker(cfg)
    stock = norfair.Tracker(
        distance_function="iou",
        distance_threshold=cfg.distance_threshold,
        hit_counter_max=cfg.hit_counter_max,
        initialization_delay=cfg.initialization_delay,
        past_detections_length=cfg.past_detections_length,
        filter_factory=OptimizedKalmanFilterFactory(vel_variance=UNKNOWN_VELOCITY_VARIANCE),
    )
    stock._obj_factory = _StockFactory()
    rng = np.random.default_rng(7)
    for f in range(150):
        starts = [(-40 + 9 * ((f + 13 * i) % 90), 60 * i) for i in range(6)]
        xy = np.array(starts, np.float64) + rng.normal(0, 1.0, (6, 2))
        xy = xy[rng.random(6) > 0.1]  # some missed detections
        dets = boxes(np.hstack([xy, xy + rng.uniform(35, 45, (len(xy), 2))]))
        out = ours.update(dets, f)
        stock_objs = stock.update(
            [norfair.Detection(b.reshape(2, 2).astype(np.float64)) for b in dets.xyxy] or None
        )
        ours_objs = sorted(ours._tracker.get_active_objects(), key=lambda o: o.id or 0)
        stock_objs = sorted(stock_objs, key=lambda o: o.id or 0)
        assert [o.id for o in ours_objs] == [o.id for o in stock_objs], f"frame {f}"
        for a, b in zip(ours_objs, stock_objs, strict=True):
            np.testing.assert_allclose(a.estimate, b.estimate, rtol=1e-5, atol=1e-3, err_msg=f"frame {f}")
        assert out.tracker_id is not None and set(out.tracker_id.tolist()) <= {o.id for o in ours_objs}


# --- fast belts: products moving 10-30 px per frame (issue "counts that hold, part 2") -------------


def _run(
    xs: Sequence[float | None], size: float = 60.0, seed: int = 0
) -> tuple[list[tuple[int, str]], set[int]]:
    """One product whose box centre is at ``xs[f]`` (None: not detected) → crossings of x = 320, ids."""
    rng = np.random.default_rng(seed)
    tracker = ProductTracker(TrackingConfig())
    line = LineConfig(name="lane", start=(320, 480), end=(320, 0))
    counter = LineCounter(CountingConfig(lines=[line]))
    events, ids = [], set()
    for f, x in enumerate(xs):
        if x is None:
            dets = Detections.empty()
        else:
            e = rng.normal(0, 1.0, 4)
            dets = boxes([[x - size / 2 + e[0], 200 + e[1], x + size / 2 + e[2], 200 + size + e[3]]])
        out = tracker.update(dets, f)
        ids |= set(out.tracker_id.tolist())
        events += [(c.frame, c.direction) for c in counter.update(out, f, f / 15)]
        counter.prune(tracker.alive_ids())
    return events, ids


def test_a_fast_pull_back_that_recrosses_within_ten_frames_counts_in_out_in() -> None:
    """Pushed across at 22 px/frame, pulled back at 18 px/frame, pushed again: in, out, in.

    The Kalman prediction overshoots at each reversal and the tracker starts a new id there; the
    counter's hand-off gives the new track the lost one's side, so every crossing still counts once.
    """
    xs = list(np.arange(100, 381, 22.0)) + list(np.arange(380, 259, -18.0)) + list(np.arange(260, 641, 22.0))
    events, _ = _run(xs)
    assert [d for _, d in events] == ["in", "out", "in"], events
    assert events[1][0] - events[0][0] <= 8 and events[2][0] - events[1][0] <= 8  # re-crossed within 8 frames


@pytest.mark.parametrize(("speed", "size"), [(10.0, 40.0), (20.0, 40.0), (30.0, 60.0)])
def test_a_product_on_a_fast_belt_keeps_one_track(speed: float, size: float) -> None:
    """The second detection sets the velocity, so a box moving half its width per frame is followed.

    (Faster than that, the first two detections do not overlap enough to be matched at all.)
    """
    events, ids = _run(list(np.arange(40, 620, speed)), size=size)
    assert [d for _, d in events] == ["in"] and len(ids) == 1


def test_a_young_track_survives_an_occlusion_while_the_product_crosses() -> None:
    """Seen for 5 frames, hidden for 8 (crossing the line meanwhile), seen again: one id, counted once."""
    xs: list[float | None] = [float(x) for x in np.arange(150, 251, 20.0)]
    xs += [None] * 8 + [float(x) for x in np.arange(250 + 9 * 20, 640, 20.0)]
    events, ids = _run(xs)
    assert [d for _, d in events] == ["in"] and len(ids) == 1


@pytest.mark.parametrize("relink", [0.5, 0.0])
def test_a_product_that_stops_while_hidden_keeps_its_id(relink: float) -> None:
    """Seen moving at 20 px/frame, hidden 6 frames while the belt stops, seen again 15 px further.

    The prediction has run 120 px ahead, so the product comes back as a new track; re-linking gives
    it back its id (the newborn carried back along its own velocity, ~0, lands on the lost box).
    """
    xs: list[float | None] = [float(x) for x in np.arange(200, 301, 20.0)]
    xs += [None] * 6 + [315.0] * 4 + [float(x) for x in np.arange(335, 500, 20.0)]
    tracker = ProductTracker(TrackingConfig(relink_distance=relink))
    ids: list[int] = []
    for f, x in enumerate(xs):
        dets = Detections.empty() if x is None else boxes([[x - 20, 200, x + 20, 240]])
        ids += tracker.update(dets, f).tracker_id.tolist()
    assert (len(set(ids)) == 1) == (relink > 0), ids


def test_relinking_never_joins_boxes_of_another_shape() -> None:
    """A tall box (a person) born on the centre of a lost wide one (a cart) is a new track.

    (Their IoU is 0.125, too little to match; without the shape test the centres would re-link them.)
    """
    tracker = ProductTracker(TrackingConfig())
    ids: list[int] = []
    for f in range(6):
        ids += tracker.update(boxes([[100 + 2 * f, 100, 220 + 2 * f, 130]]), f).tracker_id.tolist()
    for f in range(6, 12):
        ids += tracker.update(boxes([[157, 55, 187, 175]]), f).tracker_id.tolist()
    assert len(set(ids)) == 2, ids
