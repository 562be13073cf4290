"""What the state directory holds beside ``state.db``: the lock, the epoch marker, moved-aside files.

* ``state.lock``: one daemon per state directory. An exclusive ``flock`` held for the life of the
  :class:`~edge.state.StateStore`; the kernel releases it when the process dies, however it dies.
  The holder's PID is written into it so a second daemon can say who holds it.
* ``state.epoch``: the marker. The current epoch and the one before it, written (and synced) before
  an epoch's first message is committed. It is outside the database on purpose: when ``state.db``
  is lost (deleted, 0 bytes, moved aside) the marker still says that the daemon ran here, and which
  epoch the lost database carried.
* ``state.db.damaged-<time>[-n]``: a damaged database moved aside; a name is never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from edge.errors import LanecountError

__all__ = ["DirLock", "StateInUse", "aside_name", "fsync_write", "moved_aside", "read_marker"]

_SIDE_FILES = ("-wal", "-shm", "-journal")


class StateInUse(LanecountError):
    """Another process holds the state directory's lock."""


class DirLock:
    """An exclusive lock on ``path`` (a ``flock``), with the holder's PID in the file.

    Raises:
        StateInUse: another process holds it (the message names its PID when known).
        OSError: the lock file cannot be created (read-only or missing directory).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateInUse(
                f"{path.parent} is in use by another lanecount daemon (PID {holder}); "
                "one daemon per state_dir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._fd: int | None = fd
        with contextlib.suppress(OSError):  # the PID is information only; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Release the lock (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def fsync_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (temp file, sync, rename, sync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_marker(path: Path) -> dict[str, Any] | None:
    """The epoch marker's content, or ``None`` when there is none (or it is unreadable)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("epoch"), str) else None


def moved_aside(db: Path) -> list[Path]:
    """Damaged databases moved aside from ``db`` earlier (they prove the daemon ran here)."""
    return sorted(p for p in db.parent.glob(f"{db.name}.damaged-*") if not p.name.endswith(_SIDE_FILES))


def aside_name(db: Path, now: float | None = None) -> Path:
    """A name for moving ``db`` aside that no earlier file (or its side files) has.

    The time is in the name for people; ``-2``, ``-3``... make it unique when the second repeats
    (two starts in one second, or a clock stepped back).
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    base = db.with_name(f"{db.name}.damaged-{stamp}")
    candidate, n = base, 1
    while any(Path(f"{candidate}{s}").exists() for s in ("", *_SIDE_FILES)):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
