"""Typed configuration of the edge daemon: every option, its default, its description and its checks.

One YAML file is validated by these models (unknown keys are rejected). :func:`load_config` turns
pydantic's errors into one line per problem naming the file, the line and the field, e.g.
``lane.yaml:14: backend.type: Input should be 'onnxruntime', 'tensorrt' or 'ultralytics'``.

Every section has defaults, so a file holding only ``counting: {lines: [...]}`` is a valid config for
``replay``; ``run`` additionally needs ``model`` and ``source`` (:func:`require_for_run`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.errors import ConfigError

__all__ = [
    "AlertsConfig",
    "BackendConfig",
    "CountingConfig",
    "DepletionRule",
    "EdgeConfig",
    "KeyLines",
    "LineConfig",
    "ModelConfig",
    "MqttConfig",
    "OccupancyRule",
    "OutputConfig",
    "SourceConfig",
    "TrackingConfig",
    "config_key_lines",
    "load_config",
    "parse_config",
    "read_yaml",
    "require_for_run",
    "topic_prefix_problem",
]

Point = Annotated[tuple[float, float], Field(description="[x, y] in frame pixels")]
Anchor = Literal["center", "bottom_center", "top_center", "center_left", "center_right"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Model):
    """Where frames come from."""

    type: Literal["file", "images", "usb", "rtsp", "csi"] = Field(
        "file",
        description="file: a video file; images: a folder of images; usb: a V4L2 camera; "
        "rtsp: an RTSP URL; csi: a Jetson CSI camera through GStreamer nvarguscamerasrc",
    )
    path: str | None = Field(None, description="video file (file), folder (images)")
    loop: bool = Field(False, description="file/images: start again at the end instead of stopping")
    device: int | str = Field(0, description="usb: camera index or /dev/videoN; csi: sensor id")
    url: str | None = Field(None, description="rtsp: the stream URL")
    width: int = Field(1280, ge=16, description="usb/csi: requested frame width")
    height: int = Field(720, ge=16, description="usb/csi: requested frame height")
    fps: float = Field(30.0, gt=0, description="usb/csi: requested frame rate; images: playback rate")
    flip_method: int = Field(0, ge=0, le=7, description="csi: nvvidconv flip-method")
    stall_timeout_s: float = Field(5.0, gt=0, description="live sources: no frame for this long = stalled")
    reconnect_initial_s: float = Field(0.5, gt=0, description="first reopen delay; doubles on each failure")
    reconnect_max_s: float = Field(30.0, gt=0, description="upper bound of the reopen delay")
    alert_after_s: float = Field(
        60.0, gt=0, description="live sources: no frame for this long raises the retained alerts/source alert"
    )

    @model_validator(mode="after")
    def _needs_location(self) -> SourceConfig:
        if self.type in ("file", "images") and not self.path:
            raise ValueError(f"source.path is required for type {self.type!r}")
        if self.type == "rtsp" and not self.url:
            raise ValueError("source.url is required for type 'rtsp'")
        return self


class ModelConfig(_Model):
    """The detector model: a file plus its metadata (class names, imgsz, version)."""

    path: str = Field(
        description="model file: .onnx (onnxruntime), .engine/.plan (tensorrt), .pt (ultralytics), "
        "or a signed bundle .lcb (lanecount-export bundle)"
    )
    meta: str | None = Field(
        None, description="metadata JSON (names, imgsz, version); default: the model path with .json"
    )
    names: list[str] | None = Field(None, description="class names; overrides the metadata")
    imgsz: int | None = Field(None, ge=32, description="network input size; overrides the metadata")
    public_key: str | None = Field(
        None, description="ed25519 public key (signing.pub) a bundle must be signed with; required for .lcb"
    )
    # Set by EdgeConfig: what edge.model needs to pick a bundle's variant and where to extract it.
    _bundle_context: tuple[str, str, str] | None = PrivateAttr(None)


class BackendConfig(_Model):
    """Which runtime executes the model, and the post-processing thresholds."""

    type: Literal["onnxruntime", "tensorrt", "ultralytics"] = Field(
        "onnxruntime", description="detector backend"
    )
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="onnxruntime: use CUDA when available")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = runtime default")
    conf: float = Field(0.25, ge=0, le=1, description="minimum confidence kept")
    iou: float = Field(0.45, ge=0, le=1, description="NMS IoU threshold (class-aware)")
    max_det: int = Field(100, ge=1, description="most detections kept per frame")
    classes: list[int] | None = Field(None, description="keep only these class ids (default: all)")
    max_failure_s: float = Field(
        30.0,
        gt=0,
        description="inference failing on every frame for this long: exit non-zero (systemd restarts)",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="bundles: int8 runs the INT8 ONNX variant on ONNX Runtime; engines of it preferred",
    )


class TrackingConfig(_Model):
    """Norfair tracker parameters."""

    distance: Literal["iou", "euclidean"] = Field(
        "iou", description="iou: 1 - IoU of boxes; euclidean: centre distance in px"
    )
    distance_threshold: float = Field(0.8, gt=0, description="largest distance that still matches (iou: < 1)")
    hit_counter_max: int = Field(15, ge=1, description="frames a confirmed track lives without a detection")
    initialization_delay: int = Field(3, ge=0, description="detections needed before a track is confirmed")
    relink_distance: float = Field(
        0.5,
        ge=0,
        description=(
            "re-link a new track to a lost one whose motion leads to it within this many box sizes (0: off)"
        ),
    )
    past_detections_length: int = Field(4, ge=0, description="past detections kept per track (re-id)")
    class_vote_window: int = Field(100, ge=1, description="detections in a track's majority class vote")
    class_vote_confidence: bool = Field(
        True, description="weigh each detection's class vote by its confidence"
    )

    @model_validator(mode="after")
    def _delay_below_max(self) -> TrackingConfig:
        if self.initialization_delay >= self.hit_counter_max:
            raise ValueError("tracking.initialization_delay must be smaller than tracking.hit_counter_max")
        if self.distance == "iou" and self.distance_threshold >= 1:
            raise ValueError("tracking.distance_threshold must be < 1 for distance 'iou'")
        return self


class LineConfig(_Model):
    """A counting line: a segment from ``start`` to ``end``.

    Direction "in" means the anchor moved from the left-hand side to the right-hand side of someone
    standing on ``start`` and looking at ``end`` (in the image as displayed).
    """

    name: str = Field(min_length=1, description="line name used in counts and topics")
    start: Point
    end: Point
    classes: list[str] | None = Field(None, description="count only these classes (default: all)")

    @model_validator(mode="after")
    def _not_degenerate(self) -> LineConfig:
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point")
        return self


class CountingConfig(_Model):
    """Line-crossing counting."""

    lines: list[LineConfig] = Field(default_factory=list, description="counting lines")
    anchor: Anchor = Field("bottom_center", description="the point of a box that must cross a line")
    hysteresis_px: float = Field(
        12.0,
        ge=0,
        description="band around a line the anchor must leave on the far side before a crossing counts",
    )
    handoff_frames: int = Field(
        30,
        ge=0,
        description=(
            "a track born near a line within this many frames inherits the side of one that died there"
        ),
    )
    handoff_px: float = Field(80.0, ge=0, description="how near (px) a new track must be born to inherit")

    @field_validator("lines")
    @classmethod
    def _unique_names(cls, lines: list[LineConfig]) -> list[LineConfig]:
        names = [line.name for line in lines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate line names: {', '.join(dupes)}")
        return lines


class DepletionRule(_Model):
    """Alert when the estimated shelf stock of a class falls to a threshold."""

    product: str = Field(description="class name")
    stock: int = Field(ge=0, description="units on the shelf after a restock")
    threshold: int = Field(ge=0, description="alert when the estimate is at or below this")
    line: str | None = Field(None, description="line whose crossings are sales (default: any line)")
    direction: Literal["in", "out"] = Field("in", description="crossing direction that is a sale")


class OccupancyRule(_Model):
    """Alert when fewer than ``min_count`` products of a class stay inside a zone for ``hold_s``."""

    product: str = Field(description="class name")
    zone: list[Point] = Field(min_length=3, description="polygon [[x, y], ...] in frame pixels")
    min_count: int = Field(ge=1, description="alert below this many products in the zone")
    hold_s: float = Field(30.0, ge=0, description="seconds a condition must hold to raise or to clear")


class AlertsConfig(_Model):
    """Restock alert rules."""

    depletion: list[DepletionRule] = Field(default_factory=list)
    occupancy: list[OccupancyRule] = Field(default_factory=list)


class TlsConfig(_Model):
    """TLS for the broker connection."""

    ca_certs: str | None = Field(None, description="CA bundle file")
    certfile: str | None = Field(None, description="client certificate")
    keyfile: str | None = Field(None, description="client key")
    insecure: bool = Field(False, description="skip hostname verification (testing only)")


class MqttConfig(_Model):
    """MQTT publishing (paho-mqtt 2.x, QoS 1, durable outbox)."""

    enabled: bool = Field(True, description="publish over MQTT (switch off for offline runs on recordings)")
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    prefix: str = Field("lanecount", description="topic prefix: {prefix}/{site}/{device}/...")
    client_id: str | None = Field(
        None, description="default: lanecount-{site}-{device} (stable across restarts)"
    )
    username: str | None = None
    password: str | None = Field(None, description="prefer password_file (systemd LoadCredential)")
    password_file: str | None = Field(
        None, description="file holding the password; relative to $CREDENTIALS_DIRECTORY"
    )
    tls: TlsConfig | None = None
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive")
    reconnect_max_s: float = Field(
        10.0, gt=0, le=300, description="longest wait between reconnect attempts (the delay doubles up to it)"
    )
    publish_period_s: float = Field(10.0, gt=0, description="period of the counts message")
    status_period_s: float = Field(30.0, gt=0, description="period of the retained status message")
    max_command_bytes: int = Field(4096, ge=64, description="larger inbound commands are rejected")

    @field_validator("prefix")
    @classmethod
    def _publishable_prefix(cls, prefix: str) -> str:
        # A wildcard or an empty level makes every publish fail, and the outbox then drops each message
        # as unsendable; a leading "$" names the broker's own ($SYS) topics.
        problem = topic_prefix_problem(prefix)
        if problem:
            raise ValueError(problem)
        return prefix


class OutboxConfig(_Model):
    """The durable SQLite outbox every outbound message goes through."""

    max_messages: int = Field(
        100_000, ge=10, description="bound; the oldest are dropped (and logged) beyond it"
    )
    max_inflight: int = Field(20, ge=1, description="messages published but not yet acknowledged")


class OutputConfig(_Model):
    """Optional annotated output."""

    video: str | None = Field(None, description="write an annotated MP4 here")
    frames_dir: str | None = Field(None, description="write annotated JPEG frames here")
    every_n: int = Field(1, ge=1, description="annotate every n-th frame")
    tracks: str | None = Field(
        None, description="write confirmed tracks here (MOTChallenge format, for `stats`)"
    )


class EdgeConfig(_Model):
    """The whole daemon configuration."""

    site: str = Field("site", pattern=r"^[A-Za-z0-9_.-]+$", description="store id, used in topics")
    device: str = Field("device", pattern=r"^[A-Za-z0-9_.-]+$", description="lane/device id, used in topics")
    state_dir: str = Field(
        "state", description="counts and outbox databases; under systemd $STATE_DIRECTORY wins"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    source: SourceConfig | None = None
    model: ModelConfig | None = None
    backend: BackendConfig = Field(default_factory=BackendConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    counting: CountingConfig = Field(default_factory=CountingConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve Prometheus metrics on this port"
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the metrics port binds: loopback unless a remote Prometheus must reach it "
        "(0.0.0.0: every interface)",
    )

    @model_validator(mode="after")
    def _pass_bundle_context(self) -> EdgeConfig:
        # A bundle's variant depends on the backend, and its files are extracted under the state dir.
        if self.model is not None:
            self.model._bundle_context = (self.backend.type, self.backend.precision, str(self.state_path()))
        return self

    def state_path(self) -> Path:
        """Directory of the durable state: ``$STATE_DIRECTORY`` under systemd, else ``state_dir``."""
        return Path(os.environ.get("STATE_DIRECTORY", self.state_dir).split(":")[0])


def topic_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot start an MQTT topic name, or ``None`` when it can.

    Example:
        >>> topic_prefix_problem("lanecount/#")
        "topic prefix 'lanecount/#' contains the wildcard '#': topics to publish to cannot hold + or #"
    """
    for wildcard in ("#", "+"):
        if wildcard in prefix:
            return (
                f"topic prefix {prefix!r} contains the wildcard {wildcard!r}: "
                "topics to publish to cannot hold + or #"
            )
    if "\0" in prefix:
        return f"topic prefix {prefix!r} contains a NUL character"
    if prefix.startswith("$"):
        return f"topic prefix {prefix!r} starts with '$', which brokers reserve for their own topics ($SYS)"
    if prefix.startswith("/") or prefix.endswith("/"):
        return f"topic prefix {prefix!r} starts or ends with '/': that makes an empty topic level"
    if "" in prefix.split("/"):
        return f"topic prefix {prefix!r} has an empty level ('//' or nothing at all)"
    return None


def require_for_run(cfg: EdgeConfig, source_name: str = "config") -> None:
    """Check what ``run`` needs beyond what ``replay`` needs.

    Raises:
        ConfigError: naming each missing section.
    """
    missing = [name for name in ("model", "source") if getattr(cfg, name) is None]
    if missing:
        raise ConfigError([f"{source_name}: {name}: required for run" for name in missing])


# --- loading with line numbers -------------------------------------------------------------------

Loc = Sequence[Any]
"""A path into the document: mapping keys and list indexes, e.g. ``("counting", "lines", 0, "name")``."""


class KeyLines:
    r"""The line of every mapping key of a parsed YAML document, looked up by path.

    Example:
        >>> _, lines, _ = read_yaml("mqtt:\n  prefix: a\n", "edge.yaml")
        >>> lines.where("edge.yaml", ("mqtt", "prefix"))
        'edge.yaml:2'
    """

    def __init__(self, root: Any = None, table: dict[int, tuple[Any, dict[Any, int]]] | None = None) -> None:
        """Wrap a parsed document and its ``id(mapping) -> (mapping, {key: line})`` table."""
        self._root = root
        self._table = table or {}

    def line(self, loc: Loc) -> int | None:
        """Line (1-based) of the deepest key of ``loc`` present in the document; ``None`` when none is."""
        node, line = self._root, None
        for part in loc:
            entry = self._table.get(id(node)) if isinstance(node, dict) else None
            if entry and part in entry[1]:
                line = entry[1][part]
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                break
        return line

    def where(self, source_name: str, loc: Loc) -> str:
        """``source:line`` of ``loc``, or ``source`` alone when the document does not hold it."""
        line = self.line(loc)
        return f"{source_name}:{line}" if line else source_name


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key, and every key given twice."""

    key_lines: dict[int, tuple[Any, dict[Any, int]]]
    duplicates: list[tuple[dict[Any, Any], Any, int, int]]  # (mapping, key, first line, repeated line)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in lines:
            loader.duplicates.append((mapping, key, lines[key], line))
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = line
    loader.key_lines[id(mapping)] = (mapping, lines)
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _mapping_paths(
    node: Any, path: tuple[Any, ...], out: dict[int, tuple[Any, ...]]
) -> dict[int, tuple[Any, ...]]:
    """``id(mapping) -> path`` for every mapping in the document."""
    if isinstance(node, dict):
        out[id(node)] = path
        for key, value in node.items():
            _mapping_paths(value, (*path, key), out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _mapping_paths(value, (*path, i), out)
    return out


def _duplicate_problems(loader: _LineLoader, root: Any, source_name: str) -> list[str]:
    # YAML lets the last of two equal keys win without a word: a second state_dir silently moved the state.
    paths = _mapping_paths(root, (), {})
    problems = []
    for mapping, key, first, line in loader.duplicates:
        field = ".".join(str(p) for p in (*paths.get(id(mapping), ()), key))
        problems.append(
            f"{source_name}:{line}: {field}: duplicate key (first at line {first}); "
            "YAML would silently keep only the last one"
        )
    return problems


def read_yaml(text: str, source_name: str = "<config>") -> tuple[Any, KeyLines, list[str]]:
    """Parse YAML text, remembering the line of every key.

    Returns:
        ``(document, key lines, problems)``: one ``source:line: field: duplicate key ...`` problem per key
        given twice in the same mapping.

    Raises:
        ConfigError: when the text is not valid YAML (with the line of the error).
    """
    loader = _LineLoader(text)
    loader.key_lines = {}
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source_name}:{mark.line + 1}" if mark else source_name
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()
    return data, KeyLines(data, loader.key_lines), _duplicate_problems(loader, data, source_name)


def parse_config(text: str, source_name: str = "<config>") -> EdgeConfig:
    """Parse and validate YAML text.

    Raises:
        ConfigError: one ``source:line: field: message`` per problem, duplicate keys included.
    """
    data, lines, problems = read_yaml(text, source_name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source_name}:1: the config must be a mapping of sections")
    try:
        cfg = EdgeConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            field = ".".join(str(p) for p in loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{lines.where(source_name, loc)}: {field}: {msg}")
    if problems:
        raise ConfigError(problems)
    return cfg


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the config is not UTF-8 text: {exc.reason}") from None


def load_config(path: str | os.PathLike[str]) -> EdgeConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: when the file cannot be read or is invalid; one line per problem.
    """
    p = Path(path)
    return parse_config(_read_text(p), str(p))


def config_key_lines(path: str | os.PathLike[str]) -> KeyLines:
    """The key lines of a config file (for checks beyond the typed models); empty when it cannot be read."""
    try:
        return read_yaml(_read_text(Path(path)), str(path))[1]
    except ConfigError:
        return KeyLines()


# --- reload policy ---------------------------------------------------------------------------------

RESTART_ONLY = ("site", "device", "state_dir", "source", "outbox", "output", "metrics_port", "metrics_host")
"""Sections a reload cannot apply: they belong to resources opened once at start-up."""


def reloadable(running: EdgeConfig, new: EdgeConfig) -> tuple[EdgeConfig, list[str]]:
    """``new`` with the running values of what only a restart can change, and the names of those kept.

    The MQTT connection stays as it is too, except its publish and status periods.
    """
    keep: dict[str, Any] = {
        k: getattr(running, k) for k in RESTART_ONLY if getattr(new, k) != getattr(running, k)
    }
    periods = {"publish_period_s": new.mqtt.publish_period_s, "status_period_s": new.mqtt.status_period_s}
    mqtt = running.mqtt.model_copy(update=periods)
    if mqtt != new.mqtt:
        keep["mqtt"] = mqtt
    return (new.model_copy(update=keep) if keep else new), sorted(keep)
