"""Frame sources: real video files and image folders; live sources against a fake camera.

Only the camera is faked (:class:`FakeCamera`): no USB/CSI/RTSP camera exists here. The fake is what
``cv2.VideoCapture`` looks like to the source (isOpened/read/get/release), and it can refuse to open,
stop delivering, or block inside ``read`` the way a hung RTSP stream does. Everything else (threads,
backoff, stall detection, newest-frame-only hand-over) is the real code with tiny delays.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import SourceConfig
from edge.errors import SourceError
from edge.sources import (
    FileSource,
    Frame,
    ImageFolderSource,
    LiveSource,
    ReadAhead,
    Source,
    backoff_delays,
    csi_pipeline,
    open_source,
)

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.fixture(scope="module")
def synth_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s conveyor video rendered by the project's own generator (30 frames at 15 fps)."""
    from train.synth_video import render_video

    out = tmp_path_factory.mktemp("video")
    render_video(out, seconds=2.0, seed=5)
    return out / "video.mp4"


def all_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


# --- pure helpers ----------------------------------------------------------------------------------


def test_csi_pipeline_string() -> None:
    cfg = SourceConfig(type="csi", device=1, width=1920, height=1080, fps=29.97, flip_method=2)
    assert csi_pipeline(cfg) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
        "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )


def test_backoff_doubles_up_to_the_cap() -> None:
    assert list(islice(backoff_delays(0.5, 30.0), 8)) == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert list(islice(backoff_delays(5.0, 2.0), 2)) == [2.0, 2.0]


# --- files -----------------------------------------------------------------------------------------


def test_file_source_delivers_every_frame_in_order_then_ends(synth_video: Path) -> None:
    expected = all_frames(synth_video)
    assert len(expected) == 30
    with open_source(SourceConfig(type="file", path=str(synth_video))) as src:
        assert not src.live and src.fps == pytest.approx(15.0) and not src.finished
        frames = list(src)
        assert src.finished and src.state == "ended" and src.read() is None
    assert [f.index for f in frames] == list(range(30))
    assert [f.timestamp for f in frames] == pytest.approx([i / 15 for i in range(30)])
    for got, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(got.image, want)


def test_file_source_loops(synth_video: Path) -> None:
    first = all_frames(synth_video)[0]
    src = open_source(SourceConfig(type="file", path=str(synth_video), loop=True))
    frames = [src.read() for _ in range(65)]
    src.close()
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f] == list(range(65))
    np.testing.assert_array_equal(frames[30].image, first)  # type: ignore[union-attr]
    np.testing.assert_array_equal(frames[60].image, first)  # type: ignore[union-attr]
    assert src.finished


def test_file_source_relative_to_base_dir(synth_video: Path) -> None:
    src = open_source(SourceConfig(type="file", path=synth_video.name), base_dir=synth_video.parent)
    assert src.read() is not None
    src.close()


def test_missing_or_unreadable_file_is_one_line_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video file not found") as err:
        open_source(SourceConfig(type="file", path=str(tmp_path / "nope.mp4")))
    assert str(tmp_path / "nope.mp4") in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match=r"bad\.mp4: OpenCV cannot open this video"):
        open_source(SourceConfig(type="file", path=str(tmp_path / "bad.mp4")))


@pytest.mark.skipif(not VTEST.exists(), reason=f"{VTEST} (opencv-doc sample footage) not installed")
def test_real_footage_vtest_avi() -> None:
    cap = cv2.VideoCapture(str(VTEST))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    with open_source(SourceConfig(type="file", path=str(VTEST))) as src:
        n, last = 0, None
        for frame in src:
            assert frame.index == n and frame.image.shape == (576, 768, 3)
            n, last = n + 1, frame
    assert n == count > 100 and last is not None and last.timestamp == pytest.approx((n - 1) / src.fps)


# --- image folders ---------------------------------------------------------------------------------


def test_image_folder_sorted_at_nominal_fps(tmp_path: Path) -> None:
    for name, value in (("b.png", 20), ("a.jpg", 10), ("c.PNG", 30)):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b2.png").write_bytes(b"broken png")  # sorted between b.png and c.PNG; skipped
    src = open_source(SourceConfig(type="images", path=str(tmp_path), fps=4))
    frames = list(src)
    assert src.finished and src.error is not None and "b2.png" in src.error
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20, 30]  # jpg of a flat image stays exact
    assert [f.timestamp for f in frames] == [0.0, 0.25, 0.75]  # index 2 was the broken file


def test_image_folder_loops(tmp_path: Path) -> None:
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
    src = open_source(SourceConfig(type="images", path=str(tmp_path), loop=True))
    values = [int(src.read().image[0, 0, 0]) for _ in range(5)]  # type: ignore[union-attr]
    assert values == [0, 1, 0, 1, 0] and not src.finished


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="image folder not found"):
        open_source(SourceConfig(type="images", path=str(tmp_path / "missing")))
    with pytest.raises(SourceError, match=f"{tmp_path}: no images"):
        open_source(SourceConfig(type="images", path=str(tmp_path)))


def test_image_folder_of_only_broken_files_ends_even_when_looping(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"junk")
    src = open_source(SourceConfig(type="images", path=str(tmp_path), loop=True))
    assert src.read() is None and src.finished


# --- live sources with a fake camera ---------------------------------------------------------------


class FakeCamera:
    """A stand-in for cv2.VideoCapture on a camera (none exists here).

    Each opened capture delivers ``frames_per_open`` frames (None: endless), then either fails its reads
    (``then="fail"``) or blocks inside ``read`` until released by the test (``then="block"``). The first
    ``fail_opens`` opens fail.
    """

    def __init__(
        self, fail_opens: int = 0, frames_per_open: int | None = None, then: str = "fail", period: float = 0.0
    ) -> None:
        self.fail_opens = fail_opens
        self.frames_per_open = frames_per_open
        self.then = then
        self.period = period
        self.open_times: list[float] = []
        self.released = 0
        self.unblock = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()

    def open(self) -> FakeCamera.Capture:
        self.open_times.append(time.monotonic())
        return FakeCamera.Capture(self, opened=len(self.open_times) > self.fail_opens)

    class Capture:
        def __init__(self, cam: FakeCamera, opened: bool) -> None:
            self.cam, self.opened, self.delivered = cam, opened, 0

        def isOpened(self) -> bool:
            return self.opened

        def get(self, prop: int) -> float:
            return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self) -> tuple[bool, np.ndarray | None]:
            cam = self.cam
            if cam.frames_per_open is not None and self.delivered >= cam.frames_per_open:
                if cam.then == "block":
                    cam.unblock.wait()
                return False, None
            if cam.period:
                time.sleep(cam.period)
            with cam._lock:
                value = cam.sent
                cam.sent += 1
            self.delivered += 1
            image = np.zeros((4, 4, 3), np.uint8)
            image[0, 0] = (value % 256, value // 256 % 256, 0)  # frame number, readable back
            return True, image

        def release(self) -> None:
            self.cam.released += 1


def live(cam: FakeCamera | Callable[[], object], **cfg: float) -> LiveSource:
    opener = cam.open if isinstance(cam, FakeCamera) else cam
    settings = {"stall_timeout_s": 0.2, "reconnect_initial_s": 0.02, "reconnect_max_s": 0.08} | cfg
    src = open_source(SourceConfig(type="usb", **settings), open_capture=opener)  # type: ignore[arg-type]
    assert isinstance(src, LiveSource)
    return src


def sent_number(image: np.ndarray) -> int:
    return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def test_live_source_reconnects_with_growing_backoff() -> None:
    cam = FakeCamera(fail_opens=4, period=0.005)
    src = live(cam)
    try:
        assert src.live and not src.finished
        frame = src.read(timeout=5.0)
        assert frame is not None and src.state == "ok" and src.error is None
        assert src.reconnects == 4 and len(cam.open_times) == 5 and src.fps == 25.0
        gaps = np.diff(cam.open_times)
        # Lower bounds only (a busy machine may add time): 0.02, 0.04, 0.08, then capped at 0.08.
        assert np.all(gaps >= np.array([0.02, 0.04, 0.08, 0.08]) * 0.95), gaps
        assert gaps[2] > gaps[0]
    finally:
        src.close()
    assert wait_until(lambda: cam.released == 5), cam.released  # the four refused captures too
    assert src.finished and src.read(timeout=0.01) is None


def test_live_source_failing_opener_never_raises() -> None:
    def broken() -> object:
        raise RuntimeError("no such device /dev/video7")

    src = live(broken)
    try:
        assert src.read(timeout=0.3) is None
        assert src.state == "reconnecting" and src.reconnects >= 2
        assert src.error is not None and "no such device" in src.error
    finally:
        src.close()


@pytest.mark.parametrize("then", ["fail", "block"])
def test_live_source_reopens_after_a_stall(then: str) -> None:
    cam = FakeCamera(frames_per_open=3, then=then, period=0.002)
    src = live(cam, stall_timeout_s=0.15, reconnect_initial_s=0.1, reconnect_max_s=0.2)
    try:
        assert wait_until(lambda: len(cam.open_times) >= 3), cam.open_times
        assert src.reconnects >= 2
        # A stalled capture was given up only after stall_timeout_s without frames.
        assert cam.open_times[1] - cam.open_times[0] >= 0.15
        assert wait_until(lambda: src.state == "reconnecting", 1.0)
        got = [src.read(timeout=1.0) for _ in range(2)]
        assert all(f is not None for f in got)
    finally:
        cam.unblock.set()
        src.close()
    if then == "block":  # the abandoned readers release their captures once their read returns
        assert wait_until(lambda: cam.released == len(cam.open_times), 2.0)


def test_live_source_hands_over_only_the_newest_frame() -> None:
    cam = FakeCamera(period=0.002)
    src = live(cam)
    try:
        first = src.read(timeout=2.0)
        assert first is not None
        time.sleep(0.15)  # the consumer is slow: the camera keeps delivering meanwhile
        newest = src.read(timeout=1.0)
        assert newest is not None and newest.index > first.index + 5
        assert src.dropped >= newest.index - first.index - 1  # every frame in between was dropped
        assert sent_number(newest.image) == newest.index  # the index is the camera's frame number
        after = src.read(timeout=1.0)
        assert after is not None and after.index > newest.index  # never an older frame
    finally:
        src.close()


def test_live_source_close_stops_its_threads() -> None:
    cam = FakeCamera(period=0.002)
    src = live(cam)
    assert src.read(timeout=2.0) is not None
    src.close()
    assert not src._supervisor.is_alive()
    assert wait_until(lambda: cam.released == len(cam.open_times), 2.0)
    sent = cam.sent
    time.sleep(0.05)
    assert cam.sent == sent and src.finished


def test_rtsp_source_name_hides_the_password() -> None:
    cam = FakeCamera()
    cfg = SourceConfig(type="rtsp", url="rtsp://admin:secret@10.0.0.5:554/stream1")
    src = open_source(cfg, open_capture=cam.open)  # type: ignore[arg-type]
    try:
        assert isinstance(src, LiveSource) and src.name == "rtsp:rtsp://admin:***@10.0.0.5:554/stream1"
    finally:
        src.close()


def test_sources_are_sources(synth_video: Path) -> None:
    src = FileSource(synth_video)
    assert isinstance(src, Source)
    src.close()
    assert src.read() is None


def test_read_ahead_applies_the_transform_in_order_and_survives_its_failure(tmp_path: Path) -> None:
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
    assert isinstance(open_source(SourceConfig(type="images", path=str(tmp_path))), ReadAhead)

    def mark(frame: Frame) -> Frame:
        if frame.index == 2:
            raise RuntimeError("boom")
        return dataclasses.replace(frame, prepared=frame.index * 10)

    src = ReadAhead(ImageFolderSource(tmp_path), depth=2, transform=mark)
    frames = list(src)
    assert [f.index for f in frames] == list(range(6))
    assert [f.prepared for f in frames] == [0, 10, None, 30, 40, 50]  # a failed transform passes the frame on
