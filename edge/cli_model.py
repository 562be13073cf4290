"""``lanecount-edge model ...``: install, list, switch, verify and clean up the device's model store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import ConfigError

app = typer.Typer(
    no_args_is_help=True,
    help="The device's model store: signed bundles, an atomic switch, rollback.",
)

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="the daemon's YAML config (public key, lines, alerts, backend)"),
]
StoreOpt = Annotated[Path, typer.Option("--store", help="model store root")]
ReloadOpt = Annotated[
    str,
    typer.Option("--reload-cmd", help="command that makes the daemon reload ('' = do not reload)"),
]
_DEFAULT_CONFIG = Path("/etc/lanecount/edge.yaml")


def _store(store: Path, keep: int = 3):  # type: ignore[no-untyped-def]
    from edge.modelstore import ModelStore

    return ModelStore(store, keep=keep)


def _public_key(config: Path, override: Path | None) -> Path:
    from edge.config import load_config

    if override is not None:
        return override
    cfg = load_config(config)
    if cfg.model is None or not cfg.model.public_key:
        raise ConfigError(f"{config}: model.public_key: required to verify model bundles")
    key = Path(cfg.model.public_key)
    return key if key.is_absolute() else config.parent / key


def _reload(command: str) -> None:
    from edge.modelstore import reload_daemon

    problem = reload_daemon(command)
    if problem:
        # The switch is done and durable; the daemon picks it up at its next start or reload.
        typer.echo(f"warning: {problem}", err=True)


@app.command()
def install(
    bundle: Annotated[Path, typer.Argument(help="the .lcb bundle")],
    config: ConfigOpt = _DEFAULT_CONFIG,
    store: StoreOpt = Path("/var/lib/lanecount/models"),
    keep: Annotated[int, typer.Option(help="releases kept (at least 2)")] = 3,
    precision: Annotated[
        str | None, typer.Option(help="fp32 | fp16 | int8; default: the config's backend.precision")
    ] = None,
    reload_cmd: ReloadOpt = "systemctl try-reload-or-restart lanecount-edge.service",
) -> None:
    """Verify a bundle (signature, sha256, compatibility), stage it, switch to it, reload the daemon."""
    from edge.config import load_config

    cfg = load_config(config)
    release, changed = _store(store, keep).install(
        bundle, cfg, _public_key(config, None), precision=precision
    )
    if changed:
        _reload(reload_cmd)
    what = "installed and active" if changed else "already active, nothing changed"
    typer.echo(f"{release.version}: {what} ({release.path})")
    expected = release.path.parent.parent / "current"
    if cfg.model is not None and not cfg.model.path.startswith(str(expected)):
        typer.echo(
            f"warning: {config}: model.path is {cfg.model.path}, not under {expected}; "
            "the daemon does not run the store's model",
            err=True,
        )


@app.command("list")
def list_(
    store: StoreOpt = Path("/var/lib/lanecount/models"),
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Installed versions: which is active, when installed, sha256 and metrics."""
    releases = _store(store).installed()
    if as_json:
        rows = [
            {
                "version": r.version,
                "active": r.active,
                "previous": r.previous,
                "installed_at": r.installed_at,
                "sha256": r.sha256,
                "variant": r.variant,
                "metrics": r.metrics,
            }
            for r in releases
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not releases:
        typer.echo(f"{store}: no model installed")
        return
    typer.echo(f"{'':2}{'version':<20} {'installed_at':<21} {'sha256':<13} {'variant':<12} metrics")
    for r in releases:
        mark = "*" if r.active else ("<" if r.previous else " ")
        metrics = " ".join(f"{k}={v}" for k, v in sorted(r.metrics.items())) or "-"
        variant = f"{r.variant.get('kind', '?')}/{r.variant.get('precision', '?')}"
        typer.echo(
            f"{mark:2}{r.version:<20} {r.installed_at:<21} {r.sha256[:12]:<13} {variant:<12} {metrics}"
        )
    typer.echo("(* active, < previous: the target of `rollback`)")


@app.command()
def activate(
    version: Annotated[str, typer.Argument(help="an installed version (see `model list`)")],
    store: StoreOpt = Path("/var/lib/lanecount/models"),
    reload_cmd: ReloadOpt = "systemctl try-reload-or-restart lanecount-edge.service",
) -> None:
    """Switch to an installed version."""
    release = _store(store).activate(version)
    _reload(reload_cmd)
    typer.echo(f"{release.version}: active")


@app.command()
def rollback(
    store: StoreOpt = Path("/var/lib/lanecount/models"),
    reload_cmd: ReloadOpt = "systemctl try-reload-or-restart lanecount-edge.service",
) -> None:
    """Switch back to the version that was active before the current one."""
    release = _store(store).rollback()
    _reload(reload_cmd)
    typer.echo(f"{release.version}: active (rolled back)")


@app.command()
def verify(
    config: ConfigOpt = _DEFAULT_CONFIG,
    store: StoreOpt = Path("/var/lib/lanecount/models"),
    version: Annotated[str | None, typer.Option(help="check this version instead of the active one")] = None,
    public_key: Annotated[Path | None, typer.Option(help="instead of the config's model.public_key")] = None,
) -> None:
    """Check the active release again: signature, every file's sha256, the model file."""
    release = _store(store).verify(_public_key(config, public_key), version)
    typer.echo(f"{release.version}: ok ({release.path})")


@app.command()
def gc(
    store: StoreOpt = Path("/var/lib/lanecount/models"),
    keep: Annotated[int, typer.Option(help="releases kept (at least 2)")] = 3,
) -> None:
    """Remove old releases (never the active or previous one) and leftovers of interrupted installs."""
    removed = _store(store, keep).gc()
    typer.echo(f"removed: {', '.join(removed)}" if removed else "nothing to remove")


@app.command()
def health(
    version: Annotated[str, typer.Option(help="the model version the device must report")],
    config: ConfigOpt = _DEFAULT_CONFIG,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 120.0,
    credentials_dir: Annotated[
        Path | None, typer.Option(help="where mqtt.password_file lives (systemd's credentials directory)")
    ] = None,
) -> None:
    """Wait until the device's retained status shows VERSION, online, with frames flowing; else exit 1."""
    from edge.config import load_config
    from edge.healthgate import wait_healthy

    problem = wait_healthy(load_config(config), version, timeout, credentials_dir)
    if problem:
        typer.echo(f"unhealthy: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: model {version} running, frames flowing")
