"""Exceptions of lanecount, one tree, translated from third-party errors at the boundary.

::

    LanecountError
    ├── ConfigError          bad or missing configuration (exit 2, one line per problem)
    ├── ModelError           model file missing/corrupt, metadata mismatch
    ├── BackendError
    │   ├── BackendUnavailable   runtime module not installed (e.g. tensorrt off-Jetson)
    │   └── InferenceError       a run of the model failed
    ├── SourceError          a camera/file/stream cannot be opened or read
    ├── PublishError         MQTT configuration or connection problems
    ├── CommandError         an inbound command is malformed or not allowed
    └── FatalError           the daemon cannot go on (state not writable, inference failing for
                             ``backend.max_failure_s``): it exits 1 so systemd restarts it

The daemon decides per class: a ``SourceError`` at run time is retried with backoff, an
``InferenceError`` skips the frame, anything else at start-up exits non-zero so systemd restarts it.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "CommandError",
    "ConfigError",
    "FatalError",
    "InferenceError",
    "LanecountError",
    "ModelError",
    "PublishError",
    "SourceError",
]


class LanecountError(Exception):
    """Base class of every error lanecount raises on purpose."""


class ConfigError(LanecountError):
    """Invalid configuration. ``problems`` holds one ``file:line: field: message`` string per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ModelError(LanecountError):
    """A model file or its metadata is missing, corrupt or inconsistent."""


class BackendError(LanecountError):
    """A detector backend failed."""


class BackendUnavailable(BackendError):
    """The backend's runtime module is not installed here."""


class InferenceError(BackendError):
    """One inference call failed."""


class SourceError(LanecountError):
    """A frame source cannot be opened or read."""


class PublishError(LanecountError):
    """MQTT publishing is misconfigured or failing."""


class CommandError(LanecountError):
    """An inbound command is malformed, too large, or unknown."""


class FatalError(LanecountError):
    """The running daemon cannot go on; what is committed stays, and it exits 1 for systemd to restart."""
