"""The checks ``run`` needs beyond the typed config, shared by ``check-config`` and the daemon's start-up.

The typed models (:mod:`edge.config`) check each value on its own. What is checked here needs the model's
class names, the file system or the frame size, so ``check-config`` and the daemon (at start-up and on
SIGHUP) both run :func:`validate_for_run` and report the same problems, each as ``file:line: field:
message``:

* the model: file present, readable, with metadata (class names, input size);
* class names: ``counting.lines[].classes``, ``alerts.*.product`` and ``backend.classes`` name classes the
  model has (a misspelt depletion product never counts a sale; an unknown occupancy product raises a
  permanent false alert); a product with two rules of one kind (their alerts would share a topic);
* geometry: a line or a zone that lies wholly outside the frame, when the frame size is known
  (``frame_size``, else the first frame of a file or image folder, else ``width``/``height`` of a camera);
* files: the source's file or folder, the broker's TLS files, the state directory and the outputs;
* a broker password without a username (paho would drop it without a word).

Example:
    >>> info = validate_for_run(load_config("lane.yaml"), "lane.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from edge.config import EdgeConfig, KeyLines, Loc, SourceConfig, config_key_lines, require_for_run
from edge.errors import ConfigError, ModelError
from edge.model import ModelInfo, load_model_info

__all__ = ["probe_frame_size", "run_problems", "validate_for_run"]

FrameSize = tuple[int, int]
"""``(width, height)`` in pixels."""


class _Report:
    """Problems of one config file, each placed at the line of the field it is about."""

    def __init__(self, source_name: str, lines: KeyLines) -> None:
        self.source_name = source_name
        self.lines = lines
        self.problems: list[str] = []

    def add(self, loc: Loc, message: str) -> None:
        field = ".".join(str(p) for p in loc)
        self.problems.append(f"{self.lines.where(self.source_name, loc)}: {field}: {message}")


def validate_for_run(
    cfg: EdgeConfig,
    config_path: str | os.PathLike[str],
    *,
    model: ModelInfo | None = None,
    frame_size: FrameSize | None = None,
) -> ModelInfo:
    """Check everything ``run`` needs; return the model's metadata.

    Args:
        cfg: the config, as :func:`edge.config.load_config` returned it.
        config_path: the file it came from (for line numbers and relative paths).
        model: the model's metadata when already loaded; else it is loaded here (cheaply: metadata and a
            checksum, no inference session when a JSON sits beside the model).
        frame_size: ``(width, height)`` of the source when known (e.g. from the first frame of an RTSP
            stream); else probed from the config (:func:`probe_frame_size`).

    Returns:
        The model's :class:`~edge.model.ModelInfo` (``model`` itself when one was given).

    Raises:
        ConfigError: one ``file:line: field: message`` per problem, all of them at once.
    """
    problems, info = run_problems(cfg, config_path, model=model, frame_size=frame_size)
    if problems or info is None:
        raise ConfigError(problems or [f"{config_path}: model: no model metadata"])
    return info


def run_problems(
    cfg: EdgeConfig,
    config_path: str | os.PathLike[str],
    *,
    model: ModelInfo | None = None,
    frame_size: FrameSize | None = None,
) -> tuple[list[str], ModelInfo | None]:
    """Like :func:`validate_for_run`, but return ``(problems, model or None)`` instead of raising."""
    path = Path(config_path)
    try:
        require_for_run(cfg, str(path))
    except ConfigError as exc:
        return exc.problems, None
    report = _Report(str(path), config_key_lines(path))
    if model is None:
        model = _load_model(cfg, path.parent, report)
    if model is not None:
        _check_names(cfg, model.names, report)
    _check_duplicate_products(cfg, report)
    size = frame_size or _probe(cfg.source, path.parent, report)
    if size is not None:
        _check_geometry(cfg, size, report)
    _check_files(cfg, report)
    return report.problems, model


# --- the model ---------------------------------------------------------------------------------------


def _load_model(cfg: EdgeConfig, base_dir: Path, report: _Report) -> ModelInfo | None:
    assert cfg.model is not None
    try:
        return load_model_info(cfg.model, base_dir=base_dir)
    except ModelError as exc:
        report.add(("model", "path"), str(exc))
    except OSError as exc:  # e.g. a model file that exists but is not readable by the daemon's user
        report.add(("model", "path"), f"cannot read {exc.filename or cfg.model.path}: {exc.strerror or exc}")
    return None


def _check_names(cfg: EdgeConfig, names: Sequence[str], report: _Report) -> None:
    known = set(names)
    listed = ", ".join(names)

    def check(loc: Loc, name: str) -> None:
        if name not in known:
            report.add(loc, f"{name!r} is not a class of the model (its classes: {listed})")

    for i, line in enumerate(cfg.counting.lines):
        for name in line.classes or ():
            check(("counting", "lines", i, "classes"), name)
    for kind, products in _products(cfg):
        for i, product in enumerate(products):
            check(("alerts", kind, i, "product"), product)
    for class_id in cfg.backend.classes or ():
        if not 0 <= class_id < len(names):
            report.add(
                ("backend", "classes"), f"class id {class_id} is not in the model (ids 0..{len(names) - 1})"
            )


def _check_duplicate_products(cfg: EdgeConfig, report: _Report) -> None:
    # Two rules of one kind for a product share its state and its retained alert topic.
    for kind, products in _products(cfg):
        first: dict[str, int] = {}
        for i, product in enumerate(products):
            if product in first:
                report.add(
                    ("alerts", kind, i, "product"),
                    f"a second {kind} rule for {product!r} (the first is alerts.{kind}.{first[product]}); "
                    "one product has at most one rule of each kind",
                )
            first.setdefault(product, i)


def _products(cfg: EdgeConfig) -> tuple[tuple[str, list[str]], ...]:
    """``(kind, [product of each rule])`` for both kinds of alert rule."""
    return (
        ("depletion", [r.product for r in cfg.alerts.depletion]),
        ("occupancy", [r.product for r in cfg.alerts.occupancy]),
    )


# --- geometry ----------------------------------------------------------------------------------------


def probe_frame_size(source: SourceConfig, base_dir: str | Path | None = None) -> FrameSize | None:
    """The source's frame size when it can be known without starting it.

    A video file: its header (OpenCV); an image folder: its first image; a USB or CSI camera: the
    requested ``width``/``height``; an RTSP stream: unknown (``None``). ``None`` too when the file cannot
    be read (that is reported by the file checks).
    """
    if source.type in ("usb", "csi"):
        return source.width, source.height
    if source.type not in ("file", "images") or not source.path:
        return None
    import cv2  # OpenCV is heavy to import; only needed here

    path = _resolve(source.path, base_dir)
    if source.type == "images":
        from edge.sources import IMAGE_SUFFIXES

        if not path.is_dir():
            return None
        first = min((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), default=None)
        image = cv2.imread(str(first)) if first is not None else None
        return None if image is None else (int(image.shape[1]), int(image.shape[0]))
    if not path.is_file():
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    return (w, h) if w > 0 and h > 0 else None


def _probe(source: SourceConfig | None, base_dir: Path, report: _Report) -> FrameSize | None:
    if source is None:
        return None
    try:
        return probe_frame_size(source, base_dir)
    except OSError as exc:
        report.add(("source", "path"), f"cannot read {exc.filename or source.path}: {exc.strerror or exc}")
        return None


def _segment_meets_box(a: tuple[float, float], b: tuple[float, float], w: float, h: float) -> bool:
    """Whether the segment ``a``–``b`` has a point in the box [0, w] x [0, h] (Liang–Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    dx, dy = b[0] - a[0], b[1] - a[1]
    for p, q in ((-dx, a[0]), (dx, w - a[0]), (-dy, a[1]), (dy, h - a[1])):
        if p == 0:
            if q < 0:
                return False
        elif p < 0:
            t0 = max(t0, q / p)
        else:
            t1 = min(t1, q / p)
    return t0 <= t1


def _box_meets_box(points: Iterable[tuple[float, float]], w: float, h: float) -> bool:
    xs, ys = zip(*points, strict=True)
    return min(xs) <= w and max(xs) >= 0 and min(ys) <= h and max(ys) >= 0


def _check_geometry(cfg: EdgeConfig, size: FrameSize, report: _Report) -> None:
    w, h = size
    for i, line in enumerate(cfg.counting.lines):
        if not _segment_meets_box(line.start, line.end, w, h):
            report.add(
                ("counting", "lines", i, "start"),
                f"line {line.name!r} from {list(line.start)} to {list(line.end)} lies outside the "
                f"{w}x{h} frame: nothing can cross it",
            )
    for i, rule in enumerate(cfg.alerts.occupancy):
        if not _box_meets_box(rule.zone, w, h):
            report.add(
                ("alerts", "occupancy", i, "zone"),
                f"the zone of {rule.product!r} lies outside the {w}x{h} frame: it would always be empty",
            )


# --- files -------------------------------------------------------------------------------------------


def _resolve(p: str, base_dir: str | Path | None) -> Path:
    path = Path(p).expanduser()
    return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path


def _check_files(cfg: EdgeConfig, report: _Report) -> None:
    src = cfg.source
    base_dir = Path(report.source_name).parent
    if src is not None and src.path and src.type in ("file", "images"):
        path = _resolve(src.path, base_dir)
        want = "a folder" if src.type == "images" else "a file"
        ok = path.is_dir() if src.type == "images" else path.is_file()
        if not ok:
            report.add(("source", "path"), f"{path} is not {want}")
        elif not os.access(path, os.R_OK):
            report.add(("source", "path"), f"{path} is not readable")
    _check_credentials(cfg, report)
    tls = cfg.mqtt.tls
    if cfg.mqtt.enabled and tls is not None:
        # paho opens these as given, relative to the daemon's working directory.
        for name in ("ca_certs", "certfile", "keyfile"):
            value = getattr(tls, name)
            if value and not (Path(value).is_file() and os.access(value, os.R_OK)):
                reason = "is not readable" if Path(value).is_file() else "does not exist"
                report.add(("mqtt", "tls", name), f"TLS file {value} {reason}")
    # The state and the outputs are opened relative to the working directory (systemd: /var/lib/lanecount).
    _check_writable(cfg.state_path(), True, ("state_dir",), report)
    out = cfg.output
    for loc, value, is_dir in (
        (("output", "video"), out.video, False),
        (("output", "frames_dir"), out.frames_dir, True),
        (("output", "tracks"), out.tracks, False),
    ):
        if value:
            _check_writable(Path(value), is_dir, loc, report)


def _check_credentials(cfg: EdgeConfig, report: _Report) -> None:
    # paho sends a password only together with a username: without one it would be silently dropped.
    mqtt = cfg.mqtt
    for name in ("password", "password_file"):
        if getattr(mqtt, name) is not None and not mqtt.username:
            report.add(("mqtt", name), f"mqtt.{name} is set but mqtt.username is not: set the username")


def _check_writable(path: Path, is_dir: bool, loc: Loc, report: _Report) -> None:
    """Report when ``path`` (a directory or a file) can neither be written nor created."""
    problem = _write_problem(path, is_dir)
    if problem:
        report.add(loc, f"cannot write {path}: {problem}")


def _write_problem(path: Path, is_dir: bool) -> str | None:
    if path.exists():
        if is_dir != path.is_dir():
            return "it is not a directory" if is_dir else "it is a directory"
        return None if os.access(path, os.W_OK | (os.X_OK if is_dir else 0)) else "permission denied"
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"permission denied to create it in {parent}"
    return None
