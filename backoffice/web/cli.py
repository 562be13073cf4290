"""``lanecount-backoffice serve``, ``user add|list|passwd|remove`` and ``site tz``.

Registered on the main CLI by :func:`register`; FastAPI and uvicorn are imported only by ``serve``, so
the query commands start as fast as before.
"""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from backoffice.collector import BrokerURL

__all__ = ["register"]

log = logging.getLogger("backoffice.web")

user_app = typer.Typer(no_args_is_help=True, help="Dashboard users: add, list, change a password, remove.")
site_app = typer.Typer(no_args_is_help=True, help="Per-store settings of the dashboard.")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LANECOUNT_BACKOFFICE_DB",
        help="database URL or SQLite file [default: ./lanecount-backoffice.db]",
    ),
]
StdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from the first line of stdin (scripts)")
]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _migrated(db: str | None) -> Engine:
    """A writer engine on a database at the newest schema (created and migrated if needed)."""
    from backoffice.cli import _engine, _short
    from backoffice.db import describe, migrate, normalise_url

    engine = _engine(db, writer=True)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        _fail(f"cannot open {describe(normalise_url(db))}: {_short(exc)}")
    return engine


def _password(from_stdin: bool, confirm: bool = True) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        _fail("no terminal to ask the password on: pass --password-stdin and write it to stdin")
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != first:
        _fail("the passwords differ")
    return first


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option("--role", help="admin (every store) or store (--sites only)")],
    sites: Annotated[
        str | None, typer.Option("--sites", help="comma-separated store ids a store user sees")
    ] = None,
    password_stdin: StdinOpt = False,
    db: DbOpt = None,
) -> None:
    """Add a user; the password is asked (at least 10 characters), stored as an argon2id hash."""
    from backoffice.web.accounts import AccountError, add_user

    site_list = [s.strip() for s in (sites or "").split(",") if s.strip()]
    engine = _migrated(db)
    try:
        user = add_user(engine, name, role, site_list, _password(password_stdin))
    except AccountError as exc:
        _fail(str(exc))
        return
    typer.echo(
        f"user {user.name} added: {user.role}, "
        + ("every store" if user.is_admin else "stores " + ", ".join(user.sites))
    )


@user_app.command("list")
def user_list(db: DbOpt = None) -> None:
    """Users, their roles and stores."""
    from backoffice.web.accounts import list_users

    with _migrated(db).connect() as conn:
        users = list_users(conn)
    if not users:
        typer.echo("(no users: add one with `lanecount-backoffice user add NAME --role admin`)")
    for u in users:
        typer.echo(f"{u.name}  {u.role}  {'*' if u.is_admin else ','.join(u.sites)}")


@user_app.command("passwd")
def user_passwd(name: str, password_stdin: StdinOpt = False, db: DbOpt = None) -> None:
    """Change a password (the user's sessions end)."""
    from backoffice.web.accounts import AccountError, set_password

    engine = _migrated(db)
    try:
        set_password(engine, name, _password(password_stdin))
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"password of {name} changed; its sessions ended")


@user_app.command("remove")
def user_remove(name: str, db: DbOpt = None) -> None:
    """Remove a user (its sessions end; its commands stay in the audit log)."""
    from backoffice.web.accounts import AccountError, remove_user

    try:
        remove_user(_migrated(db), name)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"user {name} removed")


@site_app.command("tz")
def site_tz(
    site: Annotated[str, typer.Argument(help="store id")],
    tz: Annotated[str, typer.Argument(help="IANA time zone, e.g. Europe/Paris")],
    db: DbOpt = None,
) -> None:
    """Show a store's times in ``tz`` on the dashboard and in its exports."""
    from backoffice.web.accounts import AccountError, check_site_name
    from backoffice.web.settings import set_site_tz

    try:
        ZoneInfo(tz)
        check_site_name(site)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        _fail(
            f"unknown time zone {tz!r} (e.g. Europe/Paris)" if not isinstance(exc, AccountError) else str(exc)
        )
    set_site_tz(_migrated(db), site, tz, getpass.getuser())
    typer.echo(f"store {site}: times in {tz}")


def serve(
    db: DbOpt = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            envvar="LANECOUNT_BACKOFFICE_BROKER",
            help="mqtt://[user@]HOST[:PORT] to send commands (without it: read-only)",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to bind (loopback unless a reverse proxy elsewhere must reach it)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    prefix: Annotated[str, typer.Option(help="topic prefix of the devices")] = "lanecount",
    tz: Annotated[
        str, typer.Option("--tz", help="time zone of stores without their own (`site tz`)")
    ] = "UTC",
    secure_cookies: Annotated[
        bool, typer.Option("--secure-cookies", help="behind TLS: Secure, __Host- cookies")
    ] = False,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(help="proxies whose X-Forwarded-For is trusted (client address for the login limit)"),
    ] = "127.0.0.1",
    password_file: Annotated[
        Path | None, typer.Option(help="broker password (relative to $CREDENTIALS_DIRECTORY under systemd)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """The dashboard and JSON API (FastAPI + uvicorn); refuses to start while no user exists."""
    import uvicorn

    from backoffice.cli import _read_password, _setup_logging
    from backoffice.collector import BrokerURL
    from backoffice.db import describe, normalise_url
    from backoffice.web.accounts import count_users

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(f"--log-level: {log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        _fail(f"--tz: unknown time zone {tz!r} (e.g. UTC, Europe/Paris)")
    url = None
    if broker:
        try:
            url = BrokerURL.parse(broker)
        except ValueError as exc:
            _fail(str(exc))
    _setup_logging(log_level)
    writer = _migrated(db)
    with writer.connect() as conn:
        users = count_users(conn)
    where = describe(normalise_url(db))
    if users == 0:
        _fail(
            f"no user can sign in to {where}: add one first, e.g.\n"
            f"  lanecount-backoffice user add NAME --role admin{' --db ' + db if db else ''}"
        )
    app = _app(db, url, prefix, tz, secure_cookies, _read_password(password_file))
    log.info(
        "dashboard on http://%s:%d/ (%s, %d users, commands %s)",
        host,
        port,
        where,
        users,
        f"via {broker}" if url else "off: no --broker",
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        access_log=True,
    )
    uvicorn.Server(config).run()


def _app(
    db: str | None, broker: BrokerURL | None, prefix: str, tz: str, secure: bool, password: str | None
) -> FastAPI:
    import time

    from backoffice.db import make_engine
    from backoffice.web.app import create_app
    from backoffice.web.commands import Commander
    from backoffice.web.deps import Settings
    from edge.notify import Notifier

    reader, writer = make_engine(db), make_engine(db, writer=True)
    commander = Commander(reader, writer, broker, prefix, password)
    return create_app(Settings(reader, writer, commander, tz, secure, time.time()), Notifier())


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``user`` and ``site`` to the ``lanecount-backoffice`` CLI."""
    app.command("serve")(serve)
    app.add_typer(user_app, name="user")
    app.add_typer(site_app, name="site")
