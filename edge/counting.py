"""Line-crossing counts from tracked detections: per-track committed sides, hysteresis and ID hand-off.

For every track and line the counter keeps a *committed side* (``-1`` left, ``+1`` right, ``0`` not yet
known; sides as in :mod:`edge.geometry`). Each frame the track's anchor is classified::

      left (-1)     band      right (+1)
    ------------|----:----|------------        |signed distance| <= hysteresis_px: no decision
                    line

A crossing is counted when the anchor leaves the band on the side opposite to the committed one, and
only if the anchor's last step across the line (previous anchor → this one) went through the segment
(a pass beside the segment end updates the side silently, wherever the anchor lands). So jitter
within the band never counts, a product that stops on the line counts once, and a genuine pull-back
(leaving the band on the near side again) counts ``out`` and then ``in`` again.

ID hand-off: when the tracker loses a product near a line and starts a new id for it, the new track
would either miss the crossing (born inside the band, side unknown) or count it a second time. A track
not seen for up to ``handoff_frames`` frames (coasting, or already pruned) whose last anchor was within
``handoff_px`` of a line donates its committed sides, once, to a track born within ``handoff_px`` of
that anchor (nearest first, same class preferred). A track seen in the same frame is not lost and never
donates.

Memory is bounded: :meth:`LineCounter.prune` drops the state of tracks the tracker no longer holds,
and a pruned track's hand-off record expires after ``handoff_frames`` frames.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge.config import CountingConfig, LineConfig
from edge.detections import Detections
from edge.errors import ConfigError
from edge.geometry import line_coordinates

__all__ = ["Crossing", "Direction", "LineCounter"]

Direction = Literal["in", "out"]
Totals = dict[str, dict[str, dict[int, int]]]


@dataclass(frozen=True)
class Crossing:
    """One counted crossing of a line by a track.

    Attributes:
        line: the line's name.
        track_id: the tracker id that crossed.
        class_id: the track's (voted) class at the crossing.
        direction: ``"in"`` (left → right of start→end) or ``"out"``.
        frame: frame number of the crossing.
        timestamp: seconds (the caller's clock) of that frame.
    """

    line: str
    track_id: int
    class_id: int
    direction: Direction
    frame: int
    timestamp: float


@dataclass
class _Track:
    """What the counter remembers about one track."""

    sides: npt.NDArray[np.int8]  # (lines,) committed side: -1, +1, 0 unknown
    near: npt.NDArray[np.bool_]  # (lines,) last anchor within handoff_px of the line
    anchor: npt.NDArray[np.float64]  # (2,) last anchor
    class_id: int
    last_frame: int
    can_donate: bool  # last seen near a line with a committed side, and not donated yet
    dist: npt.NDArray[np.float64]  # (lines,) last anchor's signed distance from each line
    along: npt.NDArray[np.float64]  # (lines,) last anchor's position along each line
    cross: npt.NDArray[np.float64]  # (lines,) position along each line where the anchor last crossed it
    donated: bool = False


@dataclass(frozen=True)
class _Line:
    name: str
    start: tuple[float, float]
    end: tuple[float, float]
    classes: frozenset[int] | None  # class ids counted; None counts all


def _compile_line(index: int, line: LineConfig, names: Sequence[str]) -> _Line:
    if line.classes is None:
        return _Line(line.name, line.start, line.end, None)
    ids: set[int] = set()
    for name in line.classes:
        if name in names:
            ids.add(list(names).index(name))
        elif name.isdigit() and (not names or int(name) < len(names)):
            ids.add(int(name))
        else:
            known = ", ".join(names) if names else "none (no model.names; use class ids)"
            raise ConfigError(
                f"counting.lines.{index}.classes: unknown class {name!r}; known classes: {known}"
            )
    return _Line(line.name, line.start, line.end, frozenset(ids))


class LineCounter:
    """Counts tracks crossing the configured lines, per line, direction and class.

    Args:
        cfg: the ``counting`` section of the config.
        names: class names by id (may be empty: line class filters must then give ids).

    Raises:
        ConfigError: when a line's ``classes`` names an unknown class.

    Example:
        >>> from edge.config import CountingConfig, LineConfig
        >>> cfg = CountingConfig(lines=[LineConfig(name="lane", start=(50, 100), end=(50, 0))])
        >>> counter = LineCounter(cfg, ["apple"])
        >>> events = []
        >>> for frame, x in enumerate([20, 40, 60, 80]):
        ...     box = np.array([[x - 5, 40, x + 5, 50]])
        ...     tracked = Detections(box, np.array([0.9]), np.array([0]), tracker_id=np.array([7]))
        ...     events += counter.update(tracked, frame, frame / 30)
        >>> [(e.direction, e.frame) for e in events], counter.totals  # 60 is inside the 12 px band
        ([('in', 3)], {'lane': {'in': {0: 1}, 'out': {}}})
    """

    def __init__(self, cfg: CountingConfig, names: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.names = list(names)
        self._lines = [_compile_line(i, line, self.names) for i, line in enumerate(cfg.lines)]
        self._starts = np.array([ln.start for ln in self._lines], np.float64).reshape(-1, 2)
        self._ends = np.array([ln.end for ln in self._lines], np.float64).reshape(-1, 2)
        self._lengths = np.hypot(*(self._ends - self._starts).T)
        self._tracks: dict[int, _Track] = {}
        nan = np.full(len(self._lines), np.nan)
        self._blank = _Track(
            np.zeros(len(self._lines), np.int8),
            np.zeros(len(self._lines), bool),
            np.zeros(2),
            -1,
            -1,
            False,
            nan,
            nan,
            nan,
        )  # the prior of a track with no past: side and position unknown
        self._orphans: dict[int, _Track] = {}  # pruned tracks that may still hand their sides on
        self._totals: Totals = {line.name: {"in": {}, "out": {}} for line in self._lines}

    @property
    def totals(self) -> Totals:
        """Counts so far: ``{line: {"in": {class_id: n}, "out": {class_id: n}}}`` (a copy)."""
        return copy.deepcopy(self._totals)

    @property
    def state_size(self) -> int:
        """Number of per-track records held (live tracks plus hand-off records)."""
        return len(self._tracks) + len(self._orphans)

    def update(self, tracked: Detections, frame: int, timestamp: float) -> list[Crossing]:
        """Classify this frame's tracks against every line and return the crossings counted.

        Args:
            tracked: tracked detections of one frame (``tracker_id`` set, class ids voted).
            frame: the frame's number; must not decrease between calls.
            timestamp: the frame's time in seconds, copied into the crossings.

        Raises:
            ValueError: when ``tracked`` has no ``tracker_id``.
        """
        if tracked.tracker_id is None:
            raise ValueError("LineCounter.update needs tracked detections (tracker_id is None)")
        self._expire_orphans(frame)
        if not len(tracked) or not self._lines:
            return []
        anchors = tracked.anchors(self.cfg.anchor).astype(np.float64)
        dist, along, lengths = line_coordinates(anchors, self._starts, self._ends)  # (n, lines)
        observed, near = self._classify(dist, along)
        ids = tracked.tracker_id.tolist()
        classes = tracked.class_id.tolist()
        present = set(ids)
        priors = [
            self._tracks.get(tid) or self._inherit(anchors[k], classes[k], frame, present)
            for k, tid in enumerate(ids)
        ]
        prev = np.stack([p.sides for p in priors])
        cross = _zero_crossings(priors, dist, along)
        at = np.where(np.isnan(cross), along, cross)  # where the anchor last crossed the line, else is
        inside = (at >= 0) & (at <= lengths)
        crossed = inside & (observed != 0) & (prev != 0) & (observed != prev)
        sides = np.where(observed != 0, observed, prev).astype(np.int8)
        self._remember(ids, classes, sides, near, anchors, frame, (dist, along, cross))
        rows, cols = np.nonzero(crossed)
        return [
            self._count(j, ids[k], classes[k], int(observed[k, j]), frame, timestamp)
            for k, j in zip(rows.tolist(), cols.tolist(), strict=True)
            if self._counts_class(j, classes[k])
        ]

    def prune(self, alive_ids: Iterable[int]) -> None:
        """Drop the state of tracks the tracker no longer holds (call it every frame or so).

        A dropped track that was near a line is kept as a hand-off record for ``handoff_frames`` frames.
        """
        for tid in self._tracks.keys() - set(alive_ids):
            state = self._tracks.pop(tid)
            if self.cfg.handoff_frames and state.can_donate:
                self._orphans[tid] = state

    # --- internals -------------------------------------------------------------------------------

    def _classify(
        self, dist: npt.NDArray[np.float64], along: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
        """Per anchor and line: side observed (0 inside the band), near enough to hand off."""
        h, reach = self.cfg.hysteresis_px, self.cfg.handoff_px
        observed = np.where(dist > h, 1, np.where(dist < -h, -1, 0)).astype(np.int8)
        lengths = self._lengths
        near = (np.abs(dist) <= reach) & (along >= -reach) & (along <= lengths + reach)
        return observed, near

    def _remember(
        self,
        ids: list[int],
        classes: list[int],
        sides: npt.NDArray[np.int8],
        near: npt.NDArray[np.bool_],
        anchors: npt.NDArray[np.float64],
        frame: int,
        where: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]],
    ) -> None:
        donors = (near & (sides != 0)).any(axis=1).tolist()
        dist, along, cross = where
        for k, tid in enumerate(ids):
            state = self._tracks.get(tid)
            if state is None:
                self._tracks[tid] = _Track(
                    sides[k], near[k], anchors[k], classes[k], frame, donors[k], dist[k], along[k], cross[k]
                )
            else:
                state.sides, state.near, state.anchor = sides[k], near[k], anchors[k]
                state.dist, state.along, state.cross = dist[k], along[k], cross[k]
                state.class_id, state.last_frame = classes[k], frame
                state.can_donate = donors[k] and not state.donated

    def _counts_class(self, line_index: int, class_id: int) -> bool:
        allowed = self._lines[line_index].classes
        return allowed is None or class_id in allowed

    def _count(self, j: int, tid: int, class_id: int, side: int, frame: int, ts: float) -> Crossing:
        direction: Direction = "in" if side > 0 else "out"
        line = self._lines[j].name
        per_class = self._totals[line][direction]
        per_class[class_id] = per_class.get(class_id, 0) + 1
        return Crossing(line, tid, class_id, direction, frame, ts)

    def _inherit(
        self, anchor: npt.NDArray[np.float64], class_id: int, frame: int, present: set[int]
    ) -> _Track:
        """A new track's prior: a lost neighbour's sides and last anchor (consumed), or nothing known.

        A track seen in this very frame is not lost, so it never donates (it would be counted twice).
        """
        limit = self.cfg.handoff_frames
        candidates = [
            (tid, donor, pool is self._orphans)
            for pool in (self._tracks, self._orphans)
            for tid, donor in pool.items()
            if donor.can_donate and tid not in present and 0 < frame - donor.last_frame <= limit
        ]
        if not candidates:
            return self._blank
        gaps = np.hypot(*(np.array([c[1].anchor for c in candidates]) - anchor).T)
        other_class = np.array([c[1].class_id != class_id for c in candidates])
        gaps[gaps > self.cfg.handoff_px] = np.inf
        best = int(np.lexsort((gaps, other_class, np.isinf(gaps)))[0])  # within reach, same class, nearest
        if not np.isfinite(gaps[best]):
            return self._blank
        tid, donor, is_orphan = candidates[best]
        donor.can_donate, donor.donated = False, True  # a donor gives once
        if is_orphan:
            del self._orphans[tid]
        return dataclasses.replace(donor, sides=np.where(donor.near, donor.sides, 0).astype(np.int8))

    def _expire_orphans(self, frame: int) -> None:
        limit = self.cfg.handoff_frames
        for tid in [t for t, s in self._orphans.items() if frame - s.last_frame > limit]:
            del self._orphans[tid]


def _zero_crossings(
    priors: Sequence[_Track], dist: npt.NDArray[np.float64], along: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Per anchor and line: the position along the line where the anchor last crossed it.

    The step from the previous anchor to this one is tested against the line, so a step that crosses
    the segment and lands beyond its end counts, and one that passes beside it and lands within does
    not. NaN where the anchor has not crossed the line since the track began.
    """
    prev_dist = np.stack([p.dist for p in priors])
    prev_along = np.stack([p.along for p in priors])
    prev_cross = np.stack([p.cross for p in priors])
    flipped = np.isfinite(prev_dist) & (np.sign(prev_dist) != np.sign(dist))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = prev_dist / (prev_dist - dist)
        at = prev_along + t * (along - prev_along)
    return np.where(flipped, at, prev_cross)
