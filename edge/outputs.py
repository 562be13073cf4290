"""What a run writes besides MQTT: the annotated video/frames and the tracks file with its sidecar.

``output.tracks: X/tracks.txt`` also writes ``X/tracks.json`` = ``{"fps", "names", "source"}`` so
``lanecount-edge stats`` knows the frame rate and class names without being told.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from edge.annotate import Annotator, draw
from edge.config import EdgeConfig
from edge.counts import Counts
from edge.detections import Detections
from edge.errors import ConfigError
from edge.mot import TrackWriter

__all__ = ["Outputs"]


class Outputs:
    """Annotated output and tracks of one run.

    Args:
        cfg: the config (``output`` and ``counting.lines`` are used).
        fps: the source's frame rate.
        names: the model's class names.
        source: a description of the source, for the tracks sidecar.

    Raises:
        ConfigError: an output path cannot be written (one line naming the field).
    """

    def __init__(self, cfg: EdgeConfig, fps: float, names: Sequence[str], source: str) -> None:
        self.cfg = cfg
        self.names = list(names)
        try:
            self.annotator = Annotator(cfg.output, fps)
        except OSError as exc:
            raise ConfigError(f"output: cannot write there: {exc.strerror or exc}") from None
        self._tracks_file: TextIO | None = None
        self._tracks: TrackWriter | None = None
        if cfg.output.tracks:
            path = Path(cfg.output.tracks)
            self._tracks_file = _open_for_writing(path, "output.tracks")
            self._tracks = TrackWriter(self._tracks_file)
            meta = {"fps": fps, "names": self.names, "source": source}
            path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def write(self, image: np.ndarray, index: int, tracked: Detections, counts: Counts) -> None:
        """Record one frame: its tracks, and the annotated picture when one is due."""
        if self._tracks is not None:
            self._tracks.write(index + 1, tracked)  # MOT frames count from 1
        if self.annotator.wants():
            lines = self.cfg.counting.lines
            totals = counts.to_json(line.name for line in lines)
            self.annotator.write(draw(image, tracked, self.names, lines, totals), index)
        elif self.annotator.enabled:
            self.annotator.skip()

    def close(self) -> None:
        """Finish the video and close the tracks file."""
        self.annotator.close()
        if self._tracks_file is not None:
            self._tracks_file.close()


def _open_for_writing(path: Path, field_name: str) -> TextIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{field_name}: cannot write {path}: {exc.strerror or exc}") from None
