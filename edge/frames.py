"""The frame-source interface: :class:`Frame`, the :class:`Source` base class and the capture protocol.

Concrete sources live in :mod:`edge.sources` (files, image folders, :func:`~edge.sources.open_source`)
and :mod:`edge.camera` (live cameras).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_FPS", "Capture", "CaptureOpener", "Frame", "Source", "fps_of"]

DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class Frame:
    """One frame.

    Attributes:
        image: BGR uint8 ``(h, w, 3)``.
        index: 0-based number of the frame in the source (live sources: gaps are dropped frames).
        timestamp: seconds; media time (``index / fps``) for files and folders, wall-clock capture time
            (``time.time()``) for live sources.
    """

    image: npt.NDArray[np.uint8]
    index: int
    timestamp: float
    prepared: Any = None  # detector pre-processing done ahead, in the reader thread (see ReadAhead)


class Capture(Protocol):
    """What a source needs of ``cv2.VideoCapture``."""

    def isOpened(self) -> bool:
        """Whether the device or file is open."""
        ...

    def read(self) -> tuple[bool, Any]:
        """Grab and decode the next frame."""
        ...

    def get(self, prop: int) -> float:
        """A capture property, e.g. ``cv2.CAP_PROP_FPS``."""
        ...

    def release(self) -> None:
        """Close the device or file."""
        ...


CaptureOpener = Callable[[], Capture]


class Source(ABC):
    """A stream of frames.

    Attributes:
        live: frames come from a camera (newest-frame-only, reconnecting).
        fps: nominal frame rate.
        reconnects: how many times the source was reopened.
        state: ``ok``, ``reconnecting`` or ``ended``.
        error: the last problem seen, for status reports (``None`` when healthy).
    """

    live: bool = False
    fps: float = DEFAULT_FPS
    reconnects: int = 0
    state: str = "ok"
    error: str | None = None

    @property
    def finished(self) -> bool:
        """True once the source will deliver no more frames."""
        return self.state == "ended"

    @abstractmethod
    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` at the end (files) or when none came within ``timeout`` (live)."""

    @abstractmethod
    def close(self) -> None:
        """Release the source (idempotent)."""

    def __iter__(self) -> Iterator[Frame]:
        """Iterate until the source finishes (live sources: until closed)."""
        while not self.finished:
            frame = self.read(timeout=1.0)
            if frame is not None:
                yield frame

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def fps_of(cap: Capture, fallback: float) -> float:
    """The capture's frame rate, or ``fallback`` when it reports none (or nonsense)."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if 0 < fps < 1000 else fallback
