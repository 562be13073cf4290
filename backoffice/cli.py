"""``lanecount-backoffice``: collect MQTT messages into a database, migrate it, query it.

The query commands are thin shells over :mod:`backoffice.queries` (the dashboard calls the same
functions). Every mistake in an option or a database URL is one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from backoffice import __version__, queries
from backoffice.db import (
    DatabaseError,
    describe,
    head_revision,
    make_engine,
    migrate,
    normalise_url,
    prune,
    revision,
)
from backoffice.render import counts_columns, render, when

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="lanecount back office: every lane's counts received over MQTT, stored exactly once, queryable.",
)
log = logging.getLogger("backoffice")


class Fmt(str, Enum):
    """Output formats."""

    table = "table"
    csv = "csv"
    json = "json"


class By(str, Enum):
    """Bucket sizes."""

    hour = "hour"
    day = "day"


DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LANECOUNT_BACKOFFICE_DB",
        help="database URL or SQLite file [default: ./lanecount-backoffice.db]",
    ),
]
FmtOpt = Annotated[Fmt, typer.Option("--format", "-f", help="table, csv or json")]
SiteOpt = Annotated[str | None, typer.Option("--site", help="store id")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="lane id")]
TzOpt = Annotated[str, typer.Option("--tz", help="time zone for --since/--until, days and printed times")]


def fail(message: str) -> None:
    """One line on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("backoffice.collector.paho").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _engine(db: str | None, writer: bool = False) -> Engine:
    try:
        return make_engine(db, writer=writer)
    except DatabaseError as exc:
        fail(str(exc))
        raise  # unreachable


def _reader(db: str | None) -> Engine:
    """An engine on a migrated database, or one line saying what to do."""
    engine = _engine(db)
    url = normalise_url(db)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        fail(f"no database at {url[len('sqlite:///') :]}: start `lanecount-backoffice collect` or pass --db")
    try:
        rev = revision(engine)
    except SQLAlchemyError as exc:
        fail(f"cannot open {describe(url)}: {_short(exc)}")
    if rev != head_revision():
        fail(
            f"{describe(url)} is at schema {rev or 'none'}, this version needs {head_revision()}: "
            "run `lanecount-backoffice migrate --db ...`"
        )
    return engine


def _short(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]


def parse_time(value: str, tz: str, now: float | None = None) -> float:
    """A time: ``now``, ``today``, ``-30d``/``-2h``/``-15m``, Unix seconds, or ISO (in ``tz`` unless offset).

    Raises:
        ValueError: anything else.
    """
    now = time.time() if now is None else now
    zone = ZoneInfo(tz)
    v = value.strip()
    if v == "now":
        return now
    if v == "today":
        return (
            datetime.fromtimestamp(now, zone).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        )
    if m := re.fullmatch(r"-(\d+(?:\.\d+)?)([dhm])", v):
        return now - float(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)]
    if re.fullmatch(r"\d{9,11}(\.\d+)?", v):
        return float(v)
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(
            f"{value!r}: use now, today, -30d, -2h, Unix seconds or 2025-12-06[T14:00]"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=zone)).timestamp()


def _check_tz(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--tz: unknown time zone {tz!r} (e.g. UTC, Europe/Paris)")
    return tz


@app.command()
def collect(
    broker: Annotated[
        str,
        typer.Option(
            "--broker", envvar="LANECOUNT_BACKOFFICE_BROKER", help="mqtt://[user@]HOST[:PORT] or mqtts://..."
        ),
    ],
    db: DbOpt = None,
    prefix: Annotated[str, typer.Option(help="topic prefix of the devices")] = "lanecount",
    group: Annotated[
        str,
        typer.Option(
            help="shared-subscription group: collectors of one group split the load "
            "('': plain subscriptions, for one collector)"
        ),
    ] = "lanecount-backoffice",
    client_id: Annotated[
        str | None,
        typer.Option(
            help="MQTT client id (keep it stable: it names the persistent session) "
            "[default: lanecount-backoffice-HOSTNAME]"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10000, help="messages per transaction at most")] = 500,
    batch_ms: Annotated[
        float, typer.Option(min=1, max=10000, help="longest wait (ms) to fill a batch")
    ] = 100.0,
    keep_days: Annotated[
        float | None,
        typer.Option(
            min=0.01, help="remove raw messages older than this (roll-ups stay) [default: keep all]"
        ),
    ] = None,
    max_bytes: Annotated[int, typer.Option(min=256, help="larger payloads are rejected")] = 65536,
    session_expiry_s: Annotated[
        int, typer.Option(min=0, help="how long the broker keeps this collector's messages while it is away")
    ] = 7 * 86400,
    password_file: Annotated[
        Path | None, typer.Option(help="broker password (relative to $CREDENTIALS_DIRECTORY under systemd)")
    ] = None,
    stats_out: Annotated[
        Path | None, typer.Option(help="write counters and latency percentiles (JSON) here")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="serve Prometheus metrics on 127.0.0.1:PORT")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Subscribe to every device's messages and store them exactly once (foreground; systemd Type=notify)."""
    from backoffice.collector import BrokerURL, Collector, CollectorConfig
    from backoffice.ingest import Ingest

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level: {log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    _setup_logging(log_level)
    try:
        url = BrokerURL.parse(broker)
    except ValueError as exc:
        fail(str(exc))
    password = _read_password(password_file)
    engine = _engine(db, writer=True)
    cfg = CollectorConfig(
        broker=url,
        prefix=prefix.strip("/"),
        group=group,
        batch_size=batch_size,
        batch_ms=batch_ms,
        keep_days=keep_days,
        max_bytes=max_bytes,
        session_expiry_s=session_expiry_s,
        stats_out=stats_out,
        metrics_port=metrics_port,
    )
    if client_id:
        cfg.client_id = client_id
    collector = Collector(cfg, Ingest(engine), password)
    collector.install_signals()  # a SIGTERM during the migration below ends the run cleanly
    try:
        before, after = migrate(engine)
    except SQLAlchemyError as exc:
        fail(f"cannot open {describe(normalise_url(db))}: {_short(exc)}")
    if before != after:
        log.info("database %s migrated %s -> %s", describe(normalise_url(db)), before or "empty", after)
    log.info("lanecount-backoffice %s: %s -> %s", __version__, broker, describe(normalise_url(db)))
    raise typer.Exit(collector.run())


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_absolute() and os.environ.get("CREDENTIALS_DIRECTORY"):
        path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / path
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        fail(f"--password-file: cannot read {path}: {exc.strerror or exc}")
        raise  # unreachable


@app.command("migrate")
def migrate_cmd(db: DbOpt = None) -> None:
    """Create the schema or bring it to this version (Alembic); safe to run while collectors run."""
    url = normalise_url(db)
    try:
        before, after = migrate(_engine(db, writer=True))
    except SQLAlchemyError as exc:
        fail(f"cannot migrate {describe(url)}: {_short(exc)}")
    typer.echo(
        f"{describe(url)}: schema {before or 'none'} -> {after}"
        if before != after
        else f"{describe(url)}: schema {after} (up to date)"
    )


@app.command("prune")
def prune_cmd(
    keep_days: Annotated[float, typer.Option(min=0.01, help="remove raw messages older than this")],
    db: DbOpt = None,
) -> None:
    """Remove raw messages, crossings and periods older than --keep-days (hourly roll-ups stay)."""
    n = prune(_reader(db), keep_days)
    typer.echo(f"removed {n} rows older than {keep_days:g} days")


@app.command("counts")
def counts_cmd(
    site: SiteOpt = None,
    device: DeviceOpt = None,
    since: Annotated[
        str, typer.Option(help="start: now, today, -30d, -2h, Unix seconds or ISO date/time")
    ] = "today",
    until: Annotated[str, typer.Option(help="end (exclusive), same forms")] = "now",
    by: Annotated[By, typer.Option(help="hour or day")] = By.hour,
    per_device: Annotated[bool, typer.Option("--per-device", help="one row per lane")] = False,
    tz: TzOpt = "UTC",
    fmt: FmtOpt = Fmt.table,
    db: DbOpt = None,
) -> None:
    """Counts per hour (or day), line, direction and class; inexact buckets and their spans are marked."""
    tz = _check_tz(tz)
    if device is not None and site is None:
        fail("--device needs --site")
    try:
        lo = parse_time(since, tz)
    except ValueError as exc:
        fail(f"--since: {exc}")
    try:
        hi = parse_time(until, tz)
    except ValueError as exc:
        fail(f"--until: {exc}")
    if hi <= lo:
        fail(f"--until ({when(hi, tz)}) must be after --since ({when(lo, tz)})")
    if hi - lo > 400 * 86400:
        fail("the range is longer than 400 days: narrow --since/--until")
    with _reader(db).connect() as conn:
        res = queries.counts(
            conn, since=lo, until=hi, site=site, device=device, by=by.value, tz=tz, per_device=per_device
        )
    cols = counts_columns(device, per_device)
    if fmt is Fmt.json:
        import json

        from backoffice.render import _plain

        typer.echo(
            json.dumps(
                {"rows": [_plain(r) for r in res.rows], "spans": [_plain(s) for s in res.spans]}, indent=1
            )
        )
        return
    typer.echo(render(res.rows, fmt.value, cols, tz))
    if res.spans:
        out = sys.stderr if fmt is Fmt.csv else sys.stdout
        print("\nnot exact (buckets marked NO overlap these spans):", file=out)
        print(
            render(res.spans, "table", ["site", "device", "start", "end", "kind", "counts", "reason"], tz),
            file=out,
        )


@app.command("devices")
def devices_cmd(site: SiteOpt = None, tz: TzOpt = "UTC", fmt: FmtOpt = Fmt.table, db: DbOpt = None) -> None:
    """Every lane: status, model, fps, source, last counts, open alerts, missing messages."""
    tz = _check_tz(tz)
    with _reader(db).connect() as conn:
        rows = queries.devices(conn, site=site)
    cols = [
        "site",
        "device",
        "status",
        "status_at",
        "model_version",
        "fps",
        "source_state",
        "last_counts_end",
        "open_alerts",
        "missing_messages",
        "epoch",
        "state_recovered",
    ]
    typer.echo(render(rows, fmt.value, cols, tz))


@app.command("gaps")
def gaps_cmd(
    site: SiteOpt = None,
    device: DeviceOpt = None,
    tz: TzOpt = "UTC",
    fmt: FmtOpt = Fmt.table,
    db: DbOpt = None,
) -> None:
    """Missing seq ranges per (site, device, epoch); they close when late messages arrive."""
    tz = _check_tz(tz)
    with _reader(db).connect() as conn:
        rows = queries.gaps(conn, site=site, device=device)
    typer.echo(render(rows, fmt.value, ["site", "device", "epoch", "first_seq", "last_seq", "since"], tz))


@app.command("alerts")
def alerts_cmd(
    site: SiteOpt = None,
    device: DeviceOpt = None,
    all_states: Annotated[bool, typer.Option("--all", help="cleared alerts too")] = False,
    tz: TzOpt = "UTC",
    fmt: FmtOpt = Fmt.table,
    db: DbOpt = None,
) -> None:
    """Restock and source alerts raised now (with --all: cleared ones too), oldest first."""
    tz = _check_tz(tz)
    with _reader(db).connect() as conn:
        rows = queries.alerts(conn, site=site, device=device, state=None if all_states else "raised")
    typer.echo(render(rows, fmt.value, ["site", "device", "kind", "product", "state", "since", "topic"], tz))


@app.command("epochs")
def epochs_cmd(
    site: SiteOpt = None,
    device: DeviceOpt = None,
    tz: TzOpt = "UTC",
    fmt: FmtOpt = Fmt.table,
    db: DbOpt = None,
) -> None:
    """Epochs per lane: first seen, how each began, seq range."""
    tz = _check_tz(tz)
    with _reader(db).connect() as conn:
        rows = queries.epochs(conn, site=site, device=device)
    cols = [
        "site",
        "device",
        "epoch",
        "first_seen",
        "state",
        "prev_epoch",
        "prev_last_seq",
        "min_seq",
        "max_seq",
        "messages",
    ]
    typer.echo(render(rows, fmt.value, cols, tz))


@app.command("rejected")
def rejected_cmd(
    limit: Annotated[int, typer.Option(min=1)] = 50,
    tz: TzOpt = "UTC",
    fmt: FmtOpt = Fmt.table,
    db: DbOpt = None,
) -> None:
    """Malformed messages (newest first) with the reason each was rejected."""
    tz = _check_tz(tz)
    with _reader(db).connect() as conn:
        rows = queries.rejected(conn, limit=limit)
    typer.echo(render(rows, fmt.value, ["received", "topic", "size", "reason"], tz))


# The dashboard's commands (serve, user, site): backoffice/web/cli.py.
from backoffice.web.cli import register as _register_web  # noqa: E402

_register_web(app)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except SQLAlchemyError as exc:
        typer.echo(f"error: database: {_short(exc)}", err=True)
        sys.exit(1)
