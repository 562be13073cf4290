"""``lanecount-edge``: run the daemon, check a config, replay detections offline, print tracking stats."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge import __version__
from edge.cli_model import app as model_app
from edge.errors import ConfigError, LanecountError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="lanecount edge daemon: camera → detector → tracking → line counts → MQTT.",
)

app.add_typer(model_app, name="model")

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file")]


def _setup_logging(level: str) -> None:
    """Journal under systemd (structured fields), stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler | None = None
    if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="lanecount-edge")
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]


def _log_level(value: str | None) -> str | None:
    """``--log-level`` in any case; an unknown level is a user mistake, not a ValueError traceback."""
    if value is None:
        return None
    if value.upper() not in _LEVELS:
        raise ConfigError(f"--log-level: {value!r} is not one of {', '.join(_LEVELS)}")
    return value.upper()


@app.command()
def run(
    config: ConfigOpt,
    counts_out: Annotated[
        Path | None,
        typer.Option(help="write this run's final counts here (JSON, replay's counts.json shape)"),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="override the config's log_level")] = None,
    recount: Annotated[
        bool, typer.Option(help="count a recording again even if this state_dir already counted it")
    ] = False,
) -> None:
    """Run the daemon until the source ends (a file without loop) or SIGTERM."""
    from edge.daemon import Daemon

    level = _log_level(log_level)
    daemon = Daemon(config, counts_out=counts_out, recount=recount)
    _setup_logging(level or daemon.cfg.log_level)
    rc = daemon.run()
    if daemon.source is not None and not daemon.source.live:
        typer.echo(f"{config}: {daemon.summary()}", err=True)
    raise typer.Exit(rc)


@app.command("check-config")
def check_config(
    path: Annotated[Path, typer.Argument(help="YAML config file")],
    replay_only: Annotated[bool, typer.Option("--replay", help="check only what replay needs")] = False,
) -> None:
    """Validate a config file as ``run`` does; prints every problem as file:line: field: message."""
    from edge.config import load_config
    from edge.validate import validate_for_run

    cfg = load_config(path)
    model = "" if replay_only else f", model {validate_for_run(cfg, path).version}"
    lines = ", ".join(line.name for line in cfg.counting.lines) or "none"
    typer.echo(f"{path}: ok (site {cfg.site}, device {cfg.device}, lines: {lines}{model})")


@app.command()
def replay(
    config: ConfigOpt,
    detections: Annotated[Path, typer.Option(help="MOTChallenge detections: frame,-1,l,t,w,h,conf[,class]")],
    out: Annotated[Path, typer.Option(help="output folder for tracks.txt and counts.json")],
    fps: Annotated[float, typer.Option(help="frame rate of the recording the detections come from")] = 30.0,
) -> None:
    """Run the tracker and counter on a detections file instead of a camera."""
    from edge.config import load_config
    from edge.replay import replay as run_replay

    counts = run_replay(load_config(config), detections, out, fps=fps)
    typer.echo(json.dumps(counts, indent=2, sort_keys=True))
    typer.echo(f"wrote {out / 'tracks.txt'} and {out / 'counts.json'}", err=True)


@app.command()
def stats(
    tracks: Annotated[Path, typer.Argument(help="tracks.txt of a run or replay, or the folder holding it")],
    fps: Annotated[
        float | None, typer.Option(help="frame rate (default: the run's tracks.json, else 30)")
    ] = None,
    names: Annotated[
        str | None, typer.Option(help="comma-separated class names (default: the run's tracks.json)")
    ] = None,
) -> None:
    """Tracking analysis: tracks per class, durations, frame ranges, short and long tracks."""
    from edge.stats import format_stats, load_track_stats, stats_inputs

    path = tracks / "tracks.txt" if tracks.is_dir() else tracks
    rate, class_names, note = stats_inputs(path, fps, names.split(",") if names else None)
    typer.echo(note)
    typer.echo(format_stats(load_track_stats(path, fps=rate), class_names))


@app.command()
def version() -> None:
    """Print the lanecount version."""
    typer.echo(__version__)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Usage errors: newer typer vendors click (as ``typer.TyperException``), older typer imports it."""
    kinds: list[type[Exception]] = []
    vendored = getattr(typer, "TyperException", None)
    if vendored is not None:
        kinds.append(vendored)
    try:
        import click
    except ImportError:
        pass
    else:
        kinds.append(click.ClickException)
    return tuple(kinds)


def run_cli(cli: typer.Typer) -> None:
    """Run a typer app as a console script: user mistakes become one line on stderr and exit code 2.

    Shared by ``lanecount-edge`` and ``lanecount-export``.
    """
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of exiting.
        rc = cli(standalone_mode=False)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        sys.exit(2)
    except LanecountError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _usage_errors()):  # a bad option or a missing argument: usage + message
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                typer.echo(f"error: {exc}", err=True)
            sys.exit(int(getattr(exc, "exit_code", 2)))
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


def main() -> None:
    """Console entry point of ``lanecount-edge``."""
    run_cli(app)


if __name__ == "__main__":
    main()
