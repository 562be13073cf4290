"""Live cameras (USB, RTSP, Jetson CSI) that keep only the newest frame and survive unplugging.

A reader thread keeps only the newest frame (older ones are dropped, so a slow detector never works on
stale frames), and a supervisor reopens the camera with exponential backoff when it cannot be opened or
delivers nothing for ``stall_timeout_s``. Nothing is raised into the caller while it runs: ``state``,
``reconnects`` and ``error`` report the trouble. Sources are opened through :func:`edge.sources.open_source`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt

from edge.config import SourceConfig
from edge.frames import Capture, CaptureOpener, Frame, Source, fps_of

__all__ = ["LiveSource", "backoff_delays", "csi_pipeline", "live_opener", "redact"]

log = logging.getLogger(__name__)

_RETRY_READ_S = 0.01  # pause after a failed read, so a dead camera returning False at once does not spin


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


def redact(url: str) -> str:
    """Hide the password of ``rtsp://user:pass@host`` in logs and status."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***@{host}" if at and ":" in creds else url


def live_opener(cfg: SourceConfig) -> CaptureOpener:
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


# --- the live source -----------------------------------------------------------------------------


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
        self.fps = fps_of(cap, self._cfg.fps)
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
