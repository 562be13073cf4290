"""What identifies a recording, so a restarted ``run`` resumes it and a finished one is not counted twice.

The identity is a hash of the recording's *content*, not of its path or modification time: a copy
to another disk, a ``touch``, a re-mount under another path or a rename is the same recording. For
a video file that is its size with its first and last MiB (the whole file when it is smaller than
2 MiB); for an image folder, the names and sizes of its images with the first and last image's
content. Reading 2 MiB at start costs milliseconds.

Databases of earlier versions stored ``file:<path>:<size>:<mtime>`` (:func:`legacy_identity`); the
daemon carries such progress over to the content identity the first time it sees it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from edge.config import SourceConfig
from edge.sources import IMAGE_SUFFIXES
from edge.state import StateStore

__all__ = ["legacy_identity", "recording_identity", "resume_point"]

log = logging.getLogger("lanecount")

_CHUNK = 1 << 20  # bytes hashed at each end of a file


def resume_point(
    state: StateStore, cfg: SourceConfig, base_dir: str | Path | None, recount: bool = False
) -> tuple[str | None, int] | None:
    """Where to start counting ``cfg``'s recording: ``(identity, first uncounted frame)``.

    ``(None, 0)`` for sources that are not resumed (live, looping); ``None`` when this state already
    counted the whole recording (logged: ``--recount`` counts it again, and forgets the progress).
    """
    identity = recording_identity(cfg, base_dir)
    if identity is None:
        return None, 0
    legacy = legacy_identity(cfg, base_dir)
    if legacy is not None:  # progress stored by lanecount 0.2 (path, size, mtime)
        state.adopt_progress(legacy, identity)
    if recount:
        state.forget_progress(identity)
    done = state.progress(identity)
    if done is not None and done.finished:
        log.warning(
            "%s was already counted (%d frames) with this state_dir; --recount counts it again",
            cfg.path,
            done.frames,
        )
        return None
    if done is not None and done.frames:
        log.info("resuming %s after frame %d (counted by an earlier run)", cfg.path, done.frames)
        return identity, done.frames
    return identity, 0


def recording_identity(cfg: SourceConfig, base_dir: str | Path | None = None) -> str | None:
    """The content identity of the recording ``cfg`` names.

    ``None`` for live sources and looping files (those are counted as they come, never resumed), and
    when the path cannot be read (opening the source reports that in one line).
    """
    path = _path(cfg, base_dir)
    if path is None:
        return None
    try:
        if cfg.type == "file":
            return f"file-sha256:{_file_digest(path)}"
        return f"images-sha256:{_folder_digest(path)}"
    except OSError:
        return None


def legacy_identity(cfg: SourceConfig, base_dir: str | Path | None = None) -> str | None:
    """The identity lanecount 0.2 stored (path, size, mtime), to carry its progress over."""
    path = _path(cfg, base_dir)
    if path is None:
        return None
    try:
        if cfg.type == "file":
            st = path.stat()
            return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        files = _images(path)
        newest = max((p.stat().st_mtime_ns for p in files), default=0)
        return f"images:{path.resolve()}:{len(files)}:{newest}"
    except OSError:
        return None


def _path(cfg: SourceConfig, base_dir: str | Path | None) -> Path | None:
    if cfg.loop or cfg.type not in ("file", "images"):
        return None
    path = Path(cfg.path or "").expanduser()
    return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        size = f.seek(0, 2)
        h.update(f"{size}:".encode())
        f.seek(0)
        if size <= 2 * _CHUNK:
            h.update(f.read())
        else:
            h.update(f.read(_CHUNK))
            f.seek(size - _CHUNK)
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def _folder_digest(folder: Path) -> str:
    files = _images(folder)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    for p in files[:1] + files[-1:]:
        h.update(_file_digest(p).encode())
    return h.hexdigest()
