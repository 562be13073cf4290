"""Multi-object tracking with Norfair: :class:`Detections` in, confirmed tracks with ids out.

Design choices (each one is tested in ``tests/test_tracking.py``):

* **Boxes out are the matched detections' boxes, not the Kalman estimate.** Counting decides on the
  anchor's side of a line, and should decide on what the camera saw: the estimate lags when a product
  stops or is pulled back and coasts on when it is hidden. The Kalman filter is still what associates
  detections across frames (its prediction is what the new boxes are compared with).
* **Only confirmed tracks matched in this frame are returned.** A track that is coasting (no detection
  this frame) keeps its id and comes back with it; it is simply absent from that frame's output.
* **No hard class gating.** Norfair can refuse to match detections whose ``label`` differs, but a
  detector that flickers between two classes for one frame would then split the track in two and the
  counter could count the product twice. Instead each track's class is the majority vote over its last
  ``class_vote_window`` matched detections, each weighing its confidence (``class_vote_confidence``;
  ties keep the earlier winner), so one odd frame changes nothing and an unsure detection counts less.
* **Lean Norfair objects.** Stock Norfair spends ~50 µs per matched object in ``TrackedObject.hit``
  (building sensor masks for keypoints that may be missing). Boxes always have both corners, so
  :class:`_LeanTrackedObject` does the same update without the masks, and :class:`_LeanKalmanFilter`
  keeps Norfair's ``OptimizedKalmanFilter`` maths with scalar variances (with every sensor always
  measured, the per-coordinate variances stay equal). ``test_lean_objects_match_stock_norfair`` checks
  ids and estimates against stock Norfair frame by frame.
* **Fast belts: velocity from the second detection, confirmed tracks outlive gaps.** A new track's
  velocity variance starts large (it is unknown), so the Kalman prediction follows a product moving
  10-30 px per frame from its second detection on; and a confirmed track survives
  ``hit_counter_max`` frames without a detection however young it is. On the fast-belt bank
  (:mod:`train.scenebank`) these two changes cut missed crossings from 224 to 74 of 825.
* **A lost product that comes back where its motion leads is re-linked, not renamed.** When a belt
  stops or slows while a product is hidden, the Kalman prediction runs ahead of it and the product
  comes back as a new track. On its first match that newborn is compared with every confirmed track
  that is unmatched or lost (kept ``hit_counter_max`` frames more for this): the lost track's
  prediction, or its last box, against the newborn's box, or the newborn's box carried back along
  its own velocity over the gap; distance in box sizes, boxes of a different width or height (over
  :data:`RELINK_SHAPE` times) never linked. Below ``relink_distance`` the old track takes the newborn
  over, id, class vote and all, so the counter sees one track step across the line (counted once,
  in the right direction) instead of a lost track and an unknown new one. The shape test matters on
  real footage: a person must not take over a carriage's lost track of a similar area.
* **Bad boxes never reach Norfair.** Non-finite or zero-area boxes are dropped before matching (a NaN
  there raises inside Norfair and would stop the daemon), and the distance functions map anything
  non-finite to ``inf`` (never matched).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
from norfair import Detection as NfDetection
from norfair import Tracker as NfTracker
from norfair.distances import Distance
from norfair.filter import FilterFactory
from norfair.tracker import TrackedObject, _TrackedObjectFactory

from edge.config import TrackingConfig
from edge.detections import Detections

__all__ = ["ProductTracker"]

FloatArray = npt.NDArray[np.float64]

# A new track's velocity is unknown, so its variance starts large and the second detection sets it.
# Norfair's default (1 px²/frame²) needs 4-5 detections to learn a belt moving 25 px per frame, and
# until then the prediction trails the product by up to a box width: IoU matching fails on fast belts.
UNKNOWN_VELOCITY_VARIANCE = 1e3
# A re-linked newborn's width and height are each within this factor of the lost track's last box:
# detections of one object vary by ~20 % between frames on real footage, different objects by more.
RELINK_SHAPE = 1.5


class _Row(NamedTuple):
    """What a Norfair detection carries back: the update it belongs to and its row in the input."""

    step: int
    row: int
    box: FloatArray


# --- distances ---------------------------------------------------------------------------------


def _iou_distance(cand: FloatArray, objs: FloatArray) -> FloatArray:
    """``1 - IoU`` of ``(n, 4)`` candidates against ``(m, 4)`` objects; never NaN."""
    lt = np.maximum(cand[:, None, :2], objs[None, :, :2])
    rb = np.minimum(cand[:, None, 2:], objs[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_c = np.prod(np.clip(cand[:, 2:] - cand[:, :2], 0.0, None), axis=1)
    area_o = np.prod(np.clip(objs[:, 2:] - objs[:, :2], 0.0, None), axis=1)
    union = area_c[:, None] + area_o[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = 1.0 - inter / union
    return dist


def _centroid_distance(cand: FloatArray, objs: FloatArray) -> FloatArray:
    """Pixel distance between box centres, ``(n, m)``."""
    cc = (cand[:, :2] + cand[:, 2:]) / 2
    co = (objs[:, :2] + objs[:, 2:]) / 2
    diff = cc[:, None, :] - co[None, :, :]
    return np.sqrt(np.einsum("nmk,nmk->nm", diff, diff))


_DISTANCES = {"iou": _iou_distance, "euclidean": _centroid_distance}


class _BoxDistance(Distance):
    """Vectorised box distance for Norfair with a guard: anything non-finite becomes ``inf``.

    Norfair's own ``VectorizedDistance`` restacks points per label and its ``iou`` divides by zero
    for degenerate estimates (NaN, which makes ``Tracker.update`` raise). Candidates are always our
    detections here (re-linking has its own distance, below), so their boxes come straight from ``data``.
    """

    def __init__(self, name: str) -> None:
        self._fn = _DISTANCES[name]

    def get_distances(self, objects: Any, candidates: Any) -> FloatArray:
        """Return the ``(len(candidates), len(objects))`` distance matrix."""
        if not objects or not candidates:
            return np.full((len(candidates or ()), len(objects or ())), np.inf, dtype=np.float64)
        cand = np.stack([c.data.box for c in candidates])
        objs = np.stack([o.filter.x[:4, 0] for o in objects])
        dist = self._fn(cand, objs)
        return np.where(np.isfinite(dist), dist, np.inf)


class _RelinkDistance(Distance):
    """Newborn tracks (candidates) against lost or unmatched confirmed tracks (objects), in box sizes.

    Two estimates of where the lost product is now, the smaller wins: the lost track's Kalman
    prediction against the newborn's box (right when the product kept its speed), and the lost
    track's last box against the newborn's box carried back along the newborn's own velocity over
    the gap (right when it changed speed while hidden). Centre distance over the geometric mean of
    the two boxes' sizes, so the reach scales with the object.
    """

    def __init__(self, step: Callable[[], int]) -> None:
        self._step = step

    def get_distances(self, objects: Any, candidates: Any) -> FloatArray:
        """Return the ``(len(candidates), len(objects))`` distance matrix (``inf``: never linked)."""
        out = np.full((len(candidates or ()), len(objects or ())), np.inf, dtype=np.float64)
        step = self._step()
        for i, new in enumerate(candidates or ()):
            box = new.last_detection.data.box
            velocity = new.filter.x[4:8, 0]
            for j, lost in enumerate(objects or ()):
                last = lost.last_detection.data.box
                if lost.id is None or not _same_shape(box, last):
                    continue
                gap = step - lost.last_detection.data.step
                ahead = _centre_gap(lost.filter.x[:4, 0], box)
                back = _centre_gap(last, box - velocity * gap)
                out[i, j] = min(ahead, back) / np.sqrt(_size(box) * _size(last))
        return np.where(np.isfinite(out), out, np.inf)


def _size(box: FloatArray) -> float:
    return float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)))


def _centre_gap(a: FloatArray, b: FloatArray) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))


def _same_shape(a: FloatArray, b: FloatArray) -> bool:
    """Width and height each within :data:`RELINK_SHAPE` of the other box's."""
    wa, ha, wb, hb = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
    return max(wa / wb, wb / wa, ha / hb, hb / ha) <= RELINK_SHAPE


# --- lean Norfair objects ----------------------------------------------------------------------


class _LeanKalmanFilter:
    """Norfair's ``OptimizedKalmanFilter`` for the case where every coordinate is measured each hit.

    The per-coordinate variances then evolve identically, so they are kept as Python floats and only
    the state ``x`` (positions then velocities, shape ``(2 * dim_z, 1)`` as Norfair reads it) is an array.
    """

    def __init__(
        self, points: FloatArray, r: float, q: float, pos_var: float, pos_vel: float, vel_var: float
    ):
        self.dim_z = points.size
        self.x = np.zeros((2 * self.dim_z, 1))
        self.x[: self.dim_z, 0] = points.ravel()
        self._r, self._q = r, q
        self._pos_var, self._pos_vel, self._vel_var = pos_var, pos_vel, vel_var

    def predict(self) -> None:
        """Advance positions by the velocity (Norfair's optimised filter leaves variances alone)."""
        self.x[: self.dim_z] += self.x[self.dim_z :]

    def update(self, z: FloatArray, R: Any = None, H: Any = None) -> None:
        """Fold in a full measurement ``z`` of shape ``(dim_z, 1)`` (``R`` and ``H`` are ignored)."""
        vel_plus_cov = self._pos_vel + self._vel_var
        added = self._pos_var + self._pos_vel + vel_plus_cov + self._q + self._r
        gain_vel = vel_plus_cov / added
        keep = 1.0 - self._r / added
        error = z - self.x[: self.dim_z]
        self.x[: self.dim_z] += keep * error
        self.x[self.dim_z :] += gain_vel * error
        self._pos_var = keep * self._r
        self._pos_vel = gain_vel * self._r
        self._vel_var += self._q - gain_vel * gain_vel * added


class _LeanKalmanFilterFactory(FilterFactory):
    """Creates :class:`_LeanKalmanFilter` with Norfair's ``OptimizedKalmanFilterFactory`` defaults."""

    def __init__(self, R: float = 4.0, Q: float = 0.1, pos_variance: float = 10.0) -> None:
        self.R, self.Q, self.pos_variance = R, Q, pos_variance

    def create_filter(self, initial_detection: FloatArray) -> _LeanKalmanFilter:
        """Start a filter at the detection's points with zero velocity of unknown size."""
        return _LeanKalmanFilter(
            initial_detection, self.R, self.Q, self.pos_variance, 0.0, UNKNOWN_VELOCITY_VARIANCE
        )


class _LeanTrackedObject(TrackedObject):
    """``TrackedObject.hit`` without the keypoint masks (boxes always have both corners, no scores).

    One rule differs from Norfair: a *confirmed* track's hit counter is reset to ``hit_counter_max`` on
    every match, so it survives ``hit_counter_max`` frames without a detection however young it is
    (ByteTrack's track buffer). In Norfair a track earns one frame of life per matched frame, so a
    product tracked for 5 frames on a fast belt died in any 6-frame occlusion and came back with a new
    id on the far side of the line, uncounted. Unconfirmed tracks keep Norfair's rule, so false boxes
    still die within a few frames.
    """

    def hit(self, detection: NfDetection, period: int = 1) -> None:
        """Match this object with ``detection`` (same bookkeeping as Norfair when ``scores`` is None)."""
        self._conditionally_add_to_past_detections(detection)
        self.last_detection = detection
        self.hit_counter = min(self.hit_counter + 2 * period, self.hit_counter_max)
        if self.is_initializing and self.hit_counter > self.initialization_delay:
            self.is_initializing = False
            self._acquire_ids()
        if not self.is_initializing:
            self.hit_counter = self.hit_counter_max  # a confirmed track outlives any gap up to the max
        counter = np.maximum(self.point_hit_counter + 2 * period, 0)  # ufuncs: np.clip costs 5x more here
        self.point_hit_counter = np.minimum(counter, self.pointwise_hit_counter_max)
        self.filter.update(detection.absolute_points.reshape(-1, 1))

    def merge(self, tracked_object: Any) -> None:
        """Take a re-linked newborn over; as a confirmed track, with its full life (see :meth:`hit`)."""
        super().merge(tracked_object)
        self.hit_counter = self.hit_counter_max


class _LeanObjectFactory(_TrackedObjectFactory):
    def create(self, **kwargs: Any) -> _LeanTrackedObject:  # type: ignore[override]  # Norfair passes keywords
        return _LeanTrackedObject(obj_factory=self, **kwargs)


# --- class vote --------------------------------------------------------------------------------


class _ClassVote:
    """Weighted majority class over a sliding window, updated in O(1); ties keep the current winner.

    Weights are integers (confidence in percent, or 1 each), so sums never drift as the window slides.
    """

    __slots__ = ("counts", "vote", "window")

    def __init__(self, size: int) -> None:
        self.window: deque[tuple[int, int]] = deque(maxlen=size)
        self.counts: dict[int, int] = {}
        self.vote = -1

    def add(self, class_id: int, weight: int = 1) -> int:
        """Record one matched detection's class with ``weight``; return the current winner."""
        counts, window = self.counts, self.window
        dropped = window[0] if len(window) == window.maxlen else None
        window.append((class_id, weight))
        if dropped is not None:
            counts[dropped[0]] -= dropped[1]
            if counts[dropped[0]] <= 0:
                del counts[dropped[0]]
        counts[class_id] = counts.get(class_id, 0) + weight
        if self.vote not in counts:
            self.vote = max(counts, key=lambda c: (counts[c], -self._first_index(c)))
        elif counts[class_id] > counts[self.vote]:
            self.vote = class_id
        elif dropped is not None and dropped[0] == self.vote:
            best = max(counts.values())
            if counts[self.vote] < best:
                self.vote = max(counts, key=lambda c: (counts[c], -self._first_index(c)))
        return self.vote

    def _first_index(self, class_id: int) -> int:
        """Index of ``class_id``'s first appearance in the window (earlier wins ties)."""
        for i, (c, _) in enumerate(self.window):
            if c == class_id:
                return i
        return len(self.window)


# --- the tracker -------------------------------------------------------------------------------


class ProductTracker:
    """Norfair tracker over :class:`Detections` boxes with per-track class voting.

    Args:
        cfg: the ``tracking`` section of the config.

    Example:
        >>> from edge.config import TrackingConfig
        >>> t = ProductTracker(TrackingConfig(initialization_delay=0))
        >>> box = Detections(np.array([[10, 10, 50, 50]]), np.array([0.9]), np.array([3]))
        >>> out = t.update(box, frame_index=0)
        >>> out.tracker_id.tolist(), out.class_id.tolist()
        ([1], [3])
    """

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self._tracker = NfTracker(
            distance_function="iou",  # replaced below; Norfair only accepts names or scalar callables here
            distance_threshold=cfg.distance_threshold,
            hit_counter_max=cfg.hit_counter_max,
            initialization_delay=cfg.initialization_delay,
            filter_factory=_LeanKalmanFilterFactory(),
            past_detections_length=cfg.past_detections_length,
        )
        self._tracker.distance_function = _BoxDistance(cfg.distance)  # type: ignore[assignment]
        self._tracker._obj_factory = _LeanObjectFactory()
        if cfg.relink_distance > 0:  # Norfair's ReID hook: newborns against unmatched and lost tracks
            self._tracker.reid_distance_function = _RelinkDistance(lambda: self._step)  # type: ignore[assignment]
            self._tracker.reid_distance_threshold = cfg.relink_distance
            self._tracker.reid_hit_counter_max = cfg.hit_counter_max
        self._votes: dict[int, _ClassVote] = {}  # by Norfair initializing_id: votes start before confirmation
        self._step = 0  # matching uses our own step count, so a repeated frame number cannot confuse it
        self.frame_index: int | None = None  # the last frame processed, for logs

    def update(self, dets: Detections, frame_index: int, period: int = 1) -> Detections:
        """Advance the tracker by one frame; call it for every frame, with empty detections if need be.

        Args:
            dets: this frame's detections (not modified).
            frame_index: the frame's number, kept as :attr:`frame_index` for logs.
            period: frames since the previous call (the detector may skip frames).

        Returns:
            The confirmed tracks matched in this frame: the matched detections' boxes and confidences,
            ``tracker_id`` set and ``class_id`` replaced by the track's majority class.
        """
        self._step += 1
        step = self._step
        good = np.flatnonzero(_valid_boxes(dets.xyxy))
        boxes = dets.xyxy.astype(np.float64)
        nf_dets = [NfDetection(boxes[i].reshape(2, 2), data=_Row(step, int(i), boxes[i])) for i in good]
        self._tracker.update(nf_dets or None, period=period)
        rows, ids, classes = [], [], []
        for obj in self._tracker.tracked_objects:
            match: _Row = obj.last_detection.data
            if match.step != step:
                continue  # coasting: no detection this frame
            key = cast(int, obj.initializing_id)  # set for every object Norfair creates
            vote = self._votes.get(key)
            if vote is None:
                vote = self._votes[key] = _ClassVote(self.cfg.class_vote_window)
            weight = round(100 * float(dets.confidence[match.row])) if self.cfg.class_vote_confidence else 1
            cls = vote.add(int(dets.class_id[match.row]), max(weight, 1))
            if obj.id is not None and not obj.is_initializing:
                rows.append(match.row)
                ids.append(obj.id)
                classes.append(cls)
        self._prune_votes()
        self.frame_index = frame_index
        if not rows:
            return Detections.empty().with_tracker_id(np.zeros(0, np.int64))
        idx = np.asarray(rows)
        return Detections(dets.xyxy[idx], dets.confidence[idx], np.asarray(classes), np.asarray(ids))

    def alive_ids(self) -> set[int]:
        """Ids of the confirmed tracks Norfair still holds (matched, coasting, or lost but re-linkable)."""
        held = self._tracker.reid_hit_counter_max is not None  # lost tracks stay, for re-linking
        return {
            o.id
            for o in self._tracker.tracked_objects
            if o.id is not None and (held or o.hit_counter_is_positive)
        }

    @property
    def state_size(self) -> int:
        """Number of per-track records held (Norfair objects plus class votes); bounded over time."""
        return len(self._tracker.tracked_objects) + len(self._votes)

    def _prune_votes(self) -> None:
        objects = self._tracker.tracked_objects
        if len(self._votes) > len(objects):
            alive = {o.initializing_id for o in objects}
            for key in [k for k in self._votes if k not in alive]:
                del self._votes[key]


def _valid_boxes(xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Finite boxes with positive width and height."""
    finite = np.isfinite(xyxy).all(axis=1)
    with np.errstate(invalid="ignore"):
        return finite & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
