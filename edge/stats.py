"""Tracking statistics from a tracks file: tracks per class, durations, short and long tracks.

The analysis of the original notebook's step 3.5, as a pure function over the rows of a tracks file
(:func:`edge.mot.read_tracks`; the class id is column 8). A track's duration is its frame range,
``last - first + 1`` frames, whether or not it was matched in every frame; its class is the most
frequent class among its rows. Many short tracks (< 1 s) usually mean id switches or flickering
detections; long ones (> 3 s) are products that stayed in view.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ConfigError
from edge.mot import TrackRow, read_tracks

__all__ = [
    "DEFAULT_FPS",
    "TrackStats",
    "TrackSummary",
    "format_stats",
    "load_track_stats",
    "run_metadata",
    "stats_inputs",
    "track_stats",
]

DEFAULT_FPS = 30.0  # only when neither the command line nor the run's metadata gives a frame rate


@dataclass(frozen=True)
class TrackSummary:
    """One track: its class and frame range."""

    track_id: int
    class_id: int | None
    first_frame: int
    last_frame: int
    rows: int  # frames in which the track was written (matched)

    @property
    def frames(self) -> int:
        """Duration in frames (the frame range, inclusive)."""
        return self.last_frame - self.first_frame + 1


@dataclass(frozen=True)
class TrackStats:
    """Statistics over all tracks of a run.

    Attributes:
        fps: frames per second used to turn frames into seconds.
        tracks: one summary per track id, by first frame.
        short_s: tracks shorter than this many seconds are "short".
        long_s: tracks longer than this many seconds are "long".
    """

    fps: float
    tracks: list[TrackSummary]
    short_s: float = 1.0
    long_s: float = 3.0

    def seconds(self, track: TrackSummary) -> float:
        """Duration of ``track`` in seconds."""
        return track.frames / self.fps

    @property
    def per_class(self) -> dict[int | None, int]:
        """Number of tracks per class id (``None``: no class column), most frequent first."""
        return dict(Counter(t.class_id for t in self.tracks).most_common())

    @property
    def durations(self) -> tuple[int, float, int]:
        """Minimum, mean and maximum duration in frames (zeros when there are no tracks)."""
        frames = [t.frames for t in self.tracks]
        if not frames:
            return 0, 0.0, 0
        return min(frames), sum(frames) / len(frames), max(frames)

    @property
    def short(self) -> list[TrackSummary]:
        """Tracks shorter than ``short_s`` seconds."""
        return [t for t in self.tracks if self.seconds(t) < self.short_s]

    @property
    def long(self) -> list[TrackSummary]:
        """Tracks longer than ``long_s`` seconds."""
        return [t for t in self.tracks if self.seconds(t) > self.long_s]


def track_stats(
    rows: Iterable[TrackRow], fps: float, short_s: float = 1.0, long_s: float = 3.0
) -> TrackStats:
    """Summarise tracks rows.

    Args:
        rows: rows of a tracks file, any order.
        fps: the video's frame rate.
        short_s: threshold of a short track, seconds.
        long_s: threshold of a long track, seconds.

    Raises:
        ValueError: when ``fps`` is not positive.

    Example:
        >>> rows = [TrackRow(f, 1, 0, 0, 5, 5, 1.0, 2) for f in range(2, 62)]
        >>> s = track_stats(rows, fps=30)
        >>> s.per_class, s.durations, len(s.long), len(s.short)
        ({2: 1}, (60, 60.0, 60), 0, 0)
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    spans: dict[int, list[int]] = {}
    classes: dict[int, Counter[int | None]] = {}
    for row in rows:
        span = spans.setdefault(row.track_id, [row.frame, row.frame, 0])
        span[0], span[1], span[2] = min(span[0], row.frame), max(span[1], row.frame), span[2] + 1
        classes.setdefault(row.track_id, Counter())[row.class_id] += 1
    tracks = [
        TrackSummary(tid, classes[tid].most_common(1)[0][0], first, last, n)
        for tid, (first, last, n) in spans.items()
    ]
    tracks.sort(key=lambda t: (t.first_frame, t.track_id))
    return TrackStats(fps, tracks, short_s, long_s)


def load_track_stats(path: str | os.PathLike[str], fps: float) -> TrackStats:
    """Read a tracks file and summarise it.

    Raises:
        MotFormatError: when the file is unreadable or malformed.
    """
    return track_stats(read_tracks(path), fps)


def run_metadata(tracks: str | os.PathLike[str]) -> tuple[Path, dict[str, object]] | None:
    """The run's metadata beside a tracks file: ``X/tracks.json`` for ``X/tracks.txt``.

    The daemon writes it with ``output.tracks``: ``{"fps": float, "names": [...], "source": str}``.

    Returns:
        ``(path, metadata)``, or ``None`` when there is no such file.

    Raises:
        ConfigError: the file exists but is not a JSON object (named, with its line).
    """
    path = Path(tracks).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with fps and names")
    return path, data


def stats_inputs(
    tracks: str | os.PathLike[str], fps: float | None, names: Sequence[str] | None
) -> tuple[float, tuple[str, ...], str]:
    """The frame rate and class names to use, and a line saying where each came from.

    The command line wins over the run's metadata (:func:`run_metadata`); without either the frame
    rate is :data:`DEFAULT_FPS` and classes show as ids.

    Raises:
        ConfigError: the metadata file is unreadable or its fps/names are malformed.
    """
    found = run_metadata(tracks)
    meta_path, meta = found if found else (None, {})
    fps_from, names_from = "--fps", "--names"
    if fps is None:
        raw = meta.get("fps")
        if raw is not None:
            if not isinstance(raw, (int, float)) or isinstance(raw, bool) or raw <= 0:
                raise ConfigError(f"{meta_path}: fps: expected a positive number, got {raw!r}")
            fps, fps_from = float(raw), str(meta_path)
        else:
            fps, fps_from = DEFAULT_FPS, "default, no run metadata" if meta_path is None else "default"
    if names is None:
        raw_names = meta.get("names")
        if raw_names is not None:
            if not isinstance(raw_names, list):
                raise ConfigError(f"{meta_path}: names: expected a list of class names")
            names, names_from = tuple(str(n) for n in raw_names), str(meta_path)
        else:
            names, names_from = (), "none: class ids shown"
    note = f"fps: {fps:g} ({fps_from}); class names: {names_from}"
    return fps, tuple(names), note


def _class_name(class_id: int | None, names: Sequence[str]) -> str:
    if class_id is None:
        return "-"
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def format_stats(stats: TrackStats, names: Sequence[str] = ()) -> str:
    """Render the statistics as a plain-text report (summary, one row per track, per class, quality).

    Args:
        stats: from :func:`track_stats`.
        names: class names by id; ids are shown when a name is missing.
    """
    n = len(stats.tracks)
    lo, mean, hi = stats.durations
    out = [
        "Tracking statistics",
        f"  tracks:            {n}",
        f"  duration mean:     {mean:.1f} frames ({mean / stats.fps:.1f} s)",
        f"  duration max:      {hi} frames ({hi / stats.fps:.1f} s)",
        f"  duration min:      {lo} frames ({lo / stats.fps:.1f} s)",
        "",
        f"{'track':>7}  {'class':<16} {'duration':>20}  {'frames':>13}",
    ]
    for t in stats.tracks:
        duration = f"{t.frames} frames ({stats.seconds(t):4.1f} s)"
        frames = f"{t.first_frame:>5} → {t.last_frame:<5}"
        out.append(f"{t.track_id:>7}  {_class_name(t.class_id, names):<16} {duration:>20}  {frames}")
    out += ["", "Tracks per class"]
    out += [f"  {_class_name(c, names):<16} {k:>5}" for c, k in stats.per_class.items()]
    share = (lambda k: f"{100 * k / n:.1f}%") if n else (lambda k: "-")
    out += [
        "",
        "Quality",
        f"  short (< {stats.short_s:g} s):   {len(stats.short):>4} ({share(len(stats.short))})",
        f"  long (> {stats.long_s:g} s):    {len(stats.long):>4} ({share(len(stats.long))})",
    ]
    return "\n".join(out) + "\n"
