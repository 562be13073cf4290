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

The live camera lives in :mod:`edge.camera` and the :class:`Source` interface in :mod:`edge.frames`;
both are re-exported here, so ``from edge.sources import Frame, Source, LiveSource`` keeps working.

Example:
    >>> with open_source(cfg.source) as src:
    ...     while not src.finished:
    ...         frame = src.read(timeout=1.0)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge.camera import LiveSource, backoff_delays, csi_pipeline, live_opener, redact
from edge.config import SourceConfig
from edge.errors import SourceError
from edge.frames import DEFAULT_FPS, Capture, CaptureOpener, Frame, Source, fps_of

__all__ = [
    "IMAGE_SUFFIXES",
    "Capture",
    "FileSource",
    "Frame",
    "ImageFolderSource",
    "LiveSource",
    "ReadAhead",
    "Source",
    "backoff_delays",
    "csi_pipeline",
    "open_source",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def open_source(
    cfg: SourceConfig,
    open_capture: CaptureOpener | None = None,
    base_dir: str | Path | None = None,
    start: int = 0,
) -> Source:
    """Open the source a config describes.

    Args:
        cfg: the ``source`` section.
        open_capture: replaces the OpenCV opener (tests: a fake camera); ignored for ``images``.
        base_dir: directory relative paths are resolved against (the config file's).
        start: files and folders: the first frame to deliver (a resumed recording); frame indexes
            keep counting from the file's start.

    Raises:
        SourceError: a file or folder cannot be opened (live sources never raise: they keep retrying).
    """
    if cfg.type == "file":
        path = _resolve(cfg.path, base_dir)
        return ReadAhead(FileSource(path, loop=cfg.loop, open_capture=open_capture, start=start))
    if cfg.type == "images":
        folder = _resolve(cfg.path, base_dir)
        return ReadAhead(ImageFolderSource(folder, fps=cfg.fps, loop=cfg.loop, start=start))
    name = {"usb": f"usb:{cfg.device}", "rtsp": f"rtsp:{redact(cfg.url or '')}", "csi": f"csi:{cfg.device}"}[
        cfg.type
    ]
    return LiveSource(name, open_capture or live_opener(cfg), cfg)


def _resolve(p: str | None, base_dir: str | Path | None) -> Path:
    path = Path(p or "").expanduser()
    return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path


# --- files and folders -----------------------------------------------------------------------------


class FileSource(Source):
    """Every frame of a video file, in order; optionally looping.

    Raises:
        SourceError: the file does not exist or OpenCV cannot open it.
    """

    def __init__(
        self, path: Path, loop: bool = False, open_capture: CaptureOpener | None = None, start: int = 0
    ) -> None:
        self.path = path
        self.loop = loop
        self._open = open_capture or (lambda: cv2.VideoCapture(str(path)))
        if open_capture is None and not path.is_file():
            raise SourceError(f"{path}: video file not found")
        self._cap: Capture | None = self._open()
        if not self._cap.isOpened():
            raise SourceError(f"{path}: OpenCV cannot open this video")
        self.fps = fps_of(self._cap, DEFAULT_FPS)
        self._index = 0
        self._pass_frames = 0
        while self._index < start:  # grab without decoding: seeking is not frame-exact for every codec
            grab = getattr(self._cap, "grab", None)
            ok = grab() if grab is not None else self._cap.read()[0]
            if not ok:
                break
            self._index += 1
            self._pass_frames += 1

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

    def __init__(self, folder: Path, fps: float = DEFAULT_FPS, loop: bool = False, start: int = 0) -> None:
        if not folder.is_dir():
            raise SourceError(f"{folder}: image folder not found")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        self.fps = fps
        self.loop = loop
        self._index = start

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


class ReadAhead(Source):
    """Decode a file or folder source a few frames ahead in a thread; every frame, in order.

    Decoding (OpenCV releases the GIL) then overlaps inference instead of adding to it. The queue is
    small and bounded, so memory stays flat and a slow pipeline simply makes the reader wait.
    """

    def __init__(
        self, inner: Source, depth: int = 4, transform: Callable[[Frame], Frame] | None = None
    ) -> None:
        """Start reading ``inner`` ahead, at most ``depth`` frames, applying ``transform`` to each."""
        self.inner = inner
        self.fps = inner.fps
        self.live = inner.live
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=depth)
        self._failure: str | None = None
        # Set by the daemon: work to do on each frame in this thread (the detector's letterbox).
        self.transform = transform
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.inner.read()
            except Exception as exc:  # a decoder error ends the file like EOF, but is reported
                log.error("%s: read failed: %s", getattr(self.inner, "path", "source"), exc)
                self._failure = str(exc)
                frame = None
            transform = self.transform  # read once: the daemon may set it while we run
            if frame is not None and transform is not None:
                try:
                    frame = transform(frame)
                except Exception as exc:  # the consumer redoes the work; reading must go on
                    log.warning("read-ahead transform failed on frame %d: %s", frame.index, exc)
            if not self._put(frame) or frame is None:
                return

    def _put(self, item: Frame | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @property
    def error(self) -> str | None:  # type: ignore[override]
        """The reader's own failure, else the inner source's last problem."""
        return self._failure or self.inner.error

    @property
    def reconnects(self) -> int:  # type: ignore[override]
        """Reopens of the inner source."""
        return self.inner.reconnects

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; ``None`` at the end, or when none is ready within ``timeout``."""
        if self.finished:
            return None
        try:
            frame = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if frame is None:
            self.state = "ended"
        return frame

    def close(self) -> None:
        """Stop the reader thread and release the inner source."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.inner.close()
        self.state = "ended"
