"""Frame sources: video files, image folders, and live cameras that survive unplugging.

:func:`open_source` turns a :class:`~edge.config.SourceConfig` into a :class:`Source`:

* ``file`` and ``images`` deliver every frame, in order, as fast as they are read; they end
  (``finished``) at the last frame unless ``loop`` is set. A path that cannot be opened is a
  :class:`~edge.errors.SourceError` at once.
* ``usb``, ``rtsp`` and ``csi`` are *live*: a reader thread keeps only the newest frame (older ones are
  dropped, so a slow detector never works on stale frames), and a supervisor reopens the camera with
  exponential backoff when it cannot be opened or delivers nothing for ``stall_timeout_s``. Nothing is
  raised into the caller while it runs: ``state``, ``reconnects`` and ``error`` report the trouble.

The camera is opened through an injectable ``open_capture`` callable returning anything shaped like
``cv2.VideoCapture`` (:class:`Capture`), which is how tests simulate a failing or stalling camera.

Example:
    >>> with open_source(cfg.source) as src:
    ...     while not src.finished:
    ...         frame = src.read(timeout=1.0)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edge.config import SourceConfig
from edge.errors import SourceError

__all__ = [
    "IMAGE_SUFFIXES",
    "Capture",
    "FileSource",
    "Frame",
    "ImageFolderSource",
    "LiveSource",
    "Source",
    "backoff_delays",
    "csi_pipeline",
    "open_source",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_DEFAULT_FPS = 30.0
_RETRY_READ_S = 0.01  # pause after a failed read, so a dead camera returning False at once does not spin


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
    fps: float = _DEFAULT_FPS
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


def backoff_delays(initial: float, maximum: float) -> Iterator[float]:
    """Reopen delays: ``initial``, doubling on each failure, capped at ``maximum``.

    Example:
        >>> from itertools import islice
        >>> list(islice(backoff_delays(0.5, 3.0), 5))
        [0.5, 1.0, 2.0, 3.0, 3.0]
    """
    delay = initial
    while True:
        yield min(delay, maximum)
        delay = min(delay * 2, maximum)


def csi_pipeline(cfg: SourceConfig) -> str:
    """GStreamer pipeline for a Jetson CSI camera (``nvarguscamerasrc``) ending in a BGR appsink.

    ``drop=1 max-buffers=1`` makes the appsink keep only the newest frame, like the live reader.
    """
    return (
        f"nvarguscamerasrc sensor-id={cfg.device} ! "
        f"video/x-raw(memory:NVMM),width={cfg.width},height={cfg.height},framerate={round(cfg.fps)}/1 ! "
        f"nvvidconv flip-method={cfg.flip_method} ! video/x-raw,format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
    )


def open_source(
    cfg: SourceConfig, open_capture: CaptureOpener | None = None, base_dir: str | Path | None = None
) -> Source:
    """Open the source a config describes.

    Args:
        cfg: the ``source`` section.
        open_capture: replaces the OpenCV opener (tests: a fake camera); ignored for ``images``.
        base_dir: directory relative paths are resolved against (the config file's).

    Raises:
        SourceError: a file or folder cannot be opened (live sources never raise: they keep retrying).
    """
    if cfg.type == "file":
        return FileSource(_resolve(cfg.path, base_dir), loop=cfg.loop, open_capture=open_capture)
    if cfg.type == "images":
        return ImageFolderSource(_resolve(cfg.path, base_dir), fps=cfg.fps, loop=cfg.loop)
    name = {"usb": f"usb:{cfg.device}", "rtsp": f"rtsp:{_redact(cfg.url or '')}", "csi": f"csi:{cfg.device}"}[
        cfg.type
    ]
    return LiveSource(name, open_capture or _opener(cfg), cfg)


def _resolve(p: str | None, base_dir: str | Path | None) -> Path:
    path = Path(p or "").expanduser()
    return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path


def _redact(url: str) -> str:
    """Hide the password of ``rtsp://user:pass@host`` in logs and status."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***@{host}" if at and ":" in creds else url


def _opener(cfg: SourceConfig) -> CaptureOpener:
    """The real OpenCV opener of a live source."""

    def usb() -> Capture:
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(cfg.device, backend)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)):
            cap.set(prop, value)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver queue would otherwise hand out old frames
        return cap

    def rtsp() -> Capture:
        # FFmpeg's own timeouts make a dead stream return from open/read, so its thread is not stuck forever.
        ms = int(cfg.stall_timeout_s * 1000)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(ms, 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(ms, 1000),
        ]
        return cv2.VideoCapture(cfg.url or "", cv2.CAP_FFMPEG, params)

    def csi() -> Capture:
        return cv2.VideoCapture(csi_pipeline(cfg), cv2.CAP_GSTREAMER)

    return {"usb": usb, "rtsp": rtsp, "csi": csi}[cfg.type]


def _fps_of(cap: Capture, fallback: float) -> float:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if 0 < fps < 1000 else fallback


# --- files and folders -----------------------------------------------------------------------------


class FileSource(Source):
    """Every frame of a video file, in order; optionally looping.

    Raises:
        SourceError: the file does not exist or OpenCV cannot open it.
    """

    def __init__(self, path: Path, loop: bool = False, open_capture: CaptureOpener | None = None) -> None:
        self.path = path
        self.loop = loop
        self._open = open_capture or (lambda: cv2.VideoCapture(str(path)))
        if open_capture is None and not path.is_file():
            raise SourceError(f"{path}: video file not found")
        self._cap: Capture | None = self._open()
        if not self._cap.isOpened():
            raise SourceError(f"{path}: OpenCV cannot open this video")
        self.fps = _fps_of(self._cap, _DEFAULT_FPS)
        self._index = 0
        self._pass_frames = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` at the end of the file (``timeout`` is not used: reads are direct)."""
        if self._cap is None or self.finished:
            return None
        ok, image = self._cap.read()
        if not ok and self.loop and self._pass_frames > 0:  # an empty file must not loop forever
            self._cap.release()
            self._cap = self._open()
            self._pass_frames = 0
            ok, image = self._cap.read()
        if not ok or image is None:
            self.state = "ended"
            return None
        frame = Frame(image, self._index, self._index / self.fps)
        self._index += 1
        self._pass_frames += 1
        return frame

    def close(self) -> None:
        """Release the file."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self.state = "ended"


class ImageFolderSource(Source):
    """The images of a folder in sorted name order, stamped at a nominal ``fps``.

    Raises:
        SourceError: the folder does not exist or holds no images.
    """

    def __init__(self, folder: Path, fps: float = _DEFAULT_FPS, loop: bool = False) -> None:
        if not folder.is_dir():
            raise SourceError(f"{folder}: image folder not found")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        self.fps = fps
        self.loop = loop
        self._index = 0

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next image; unreadable files are skipped with a warning (``timeout`` is not used)."""
        for _ in range(len(self.files)):  # a whole pass of unreadable files ends a looping source too
            if self.finished or (not self.loop and self._index >= len(self.files)):
                self.state = "ended"
                return None
            path = self.files[self._index % len(self.files)]
            index = self._index
            self._index += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return Frame(np.asarray(image, dtype=np.uint8), index, index / self.fps)
            self.error = f"{path}: not a readable image"
            log.warning("%s; skipped", self.error)
        self.state = "ended"
        return None

    def close(self) -> None:
        """Stop delivering images."""
        self.state = "ended"


# --- live cameras ----------------------------------------------------------------------------------


class LiveSource(Source):
    """A camera read by a background thread that keeps only the newest frame and reconnects forever.

    A supervisor thread opens the camera and starts a reader thread for it. If no frame arrives for
    ``stall_timeout_s`` (a read that fails, or one that blocks), the supervisor abandons that reader,
    which releases its capture when its read returns, and reopens after a backoff delay. The capture is
    only ever touched by the thread that reads it, because OpenCV captures are not thread-safe.

    Args:
        name: label for logs and status (an RTSP password is already redacted).
        open_capture: returns a new capture; may raise or return one that is not opened.
        cfg: the source config (timeouts, backoff, nominal fps).
    """

    live = True

    def __init__(self, name: str, open_capture: CaptureOpener, cfg: SourceConfig) -> None:
        self.name = name
        self.fps = cfg.fps
        self.dropped = 0
        self.state = "reconnecting"
        self._open = open_capture
        self._cfg = cfg
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._captured = 0  # frames captured so far, the next frame's index
        self._generation = 0
        self._last_frame_at = time.monotonic()
        self._supervisor = threading.Thread(target=self._supervise, name=f"source-{name}", daemon=True)
        self._supervisor.start()

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned, waiting up to ``timeout`` s (``None``: until one comes)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._stop.is_set(), timeout)
            frame, self._latest = self._latest, None
            return frame

    def close(self) -> None:
        """Stop the threads; a reader blocked in a read releases its capture when the read returns."""
        self._stop.set()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        if self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=2.0)
        self.state = "ended"

    # The supervisor: open, watch for stalls, back off, reopen.

    def _supervise(self) -> None:
        delays = backoff_delays(self._cfg.reconnect_initial_s, self._cfg.reconnect_max_s)
        first = True
        while not self._stop.is_set():
            if not first:
                self.reconnects += 1
            first = False
            cap = self._try_open()
            if cap is not None and self._watch(cap):
                delays = backoff_delays(self._cfg.reconnect_initial_s, self._cfg.reconnect_max_s)
            if self._stop.is_set():
                break
            self.state = "reconnecting"
            delay = next(delays)
            log.warning(
                "%s: %s; reopening in %.2f s (reconnect %d)",
                self.name,
                self.error,
                delay,
                self.reconnects + 1,
            )
            self._stop.wait(delay)

    def _try_open(self) -> Capture | None:
        try:
            cap = self._open()
        except Exception as exc:  # an opener may raise anything; the daemon must keep running
            self.error = f"cannot open: {exc}"
            return None
        if not cap.isOpened():
            cap.release()
            self.error = "cannot open the camera"
            return None
        self.fps = _fps_of(cap, self._cfg.fps)
        return cap

    def _watch(self, cap: Capture) -> bool:
        """Run a reader on ``cap`` until it stalls or the source closes; True if it delivered frames."""
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._last_frame_at = time.monotonic()
            received = self._captured
        reader = threading.Thread(
            target=self._read_loop, args=(cap, generation), name=f"reader-{self.name}", daemon=True
        )
        reader.start()
        stall = self._cfg.stall_timeout_s
        while not self._stop.wait(min(stall / 4, 0.25)):
            if time.monotonic() - self._last_frame_at > stall or not reader.is_alive():
                self.error = f"no frame for {stall:g} s"
                break
        with self._cond:
            self._generation += 1  # the reader stops publishing and releases cap when its read returns
            return self._captured > received

    def _read_loop(self, cap: Capture, generation: int) -> None:
        try:
            while self._generation == generation:
                try:
                    ok, image = cap.read()
                except Exception as exc:  # a driver error is a failed read like any other
                    ok, image = False, None
                    self.error = f"read failed: {exc}"
                if ok and image is not None:
                    self._publish(image, generation)
                else:
                    time.sleep(_RETRY_READ_S)
        finally:
            cap.release()

    def _publish(self, image: npt.NDArray[np.uint8], generation: int) -> None:
        with self._cond:
            if generation != self._generation:
                return
            if self._latest is not None:
                self.dropped += 1
            self._latest = Frame(image, self._captured, time.time())
            self._captured += 1
            self._last_frame_at = time.monotonic()
            self.state, self.error = "ok", None
            self._cond.notify_all()
