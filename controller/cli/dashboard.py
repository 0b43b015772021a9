"""``tickmpc dashboard``: the operator's live web page of a running service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from controller.cli.common import (
    DEFAULT_CONTROL,
    KeysOption,
    ServerKeyOption,
    app,
    client_keys,
    default_of,
)
from controller.config import Config
from controller.run import RunDir

DEFAULT_TELEMETRY = default_of("service.telemetry")
TOKEN_ENV = "TICKMPC_DASHBOARD_TOKEN"


def service_of(path: Path) -> tuple[Config, Path | None]:
    """The service config of ``--service`` (a config file, or a ``tickmpc run`` directory
    with its config.toml) and the run's videos directory (None for a config file)."""
    run = RunDir(path) if path.is_dir() else None
    try:
        config = Config.load(run.config if run is not None else path)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: --service {path}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    return config, (run.videos if run is not None else None)


@app.command("dashboard")
def dashboard(
    service: Annotated[
        Path | None,
        typer.Option(
            help="The service to show: its config file, or a tickmpc run directory "
            "(its config.toml, and the run's videos). Sets --control, --telemetry "
            "and, when the service has keys, --keys."
        ),
    ] = None,
    control: Annotated[
        str | None, typer.Option(help=f"The service's control socket (default: {DEFAULT_CONTROL}).")
    ] = None,
    telemetry: Annotated[
        str | None,
        typer.Option(help=f"The service's telemetry socket (default: {DEFAULT_TELEMETRY})."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address the page is served on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page (0: any free port).")] = 8765,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --host (needs an access "
            "token: --token, or one is made and printed).",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            help=f"The access token every request must carry (or ${TOKEN_ENV}); "
            "at least 16 characters."
        ),
    ] = None,
    videos: Annotated[
        Path | None, typer.Option(help="A tickmpc run's videos directory to play.")
    ] = None,
    nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            help="Niceness added to this process, so that it yields the cores to a service "
            "on the same machine (0: none).",
        ),
    ] = 10,
    keys: KeysOption = None,
    server_key: ServerKeyOption = None,
) -> None:
    """Serve a live page of the service: plan times against the budget, misses and
    fallbacks, iterations, predicted and received return, reward terms, actions, learning
    curves, model versions and rejections, episode videos, and its settings to change. Prints
    the page's address."""
    from controller.dashboard.server import Dashboard, DashboardConfig, is_loopback, serve

    config, run_videos = service_of(service) if service is not None else (None, None)
    if config is not None and keys is None and config.service.keys is not None:
        keys = config.service.keys  # the service's own pair, as the learner beside it uses
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and allow_remote and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    try:
        settings = DashboardConfig(
            control=control or (config.service.control if config else DEFAULT_CONTROL),
            telemetry=telemetry or (config.service.telemetry if config else DEFAULT_TELEMETRY),
            host=host,
            port=port,
            allow_remote=allow_remote,
            token=token,
            videos=videos or run_videos,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    board = Dashboard(settings, client_keys(keys, server_key))
    os.nice(nice)  # the page can wait a few milliseconds; the robot's plan cannot

    def ready(url: str) -> None:
        print(f"tickmpc dashboard: {url}", flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(board, ready)

    try:
        asyncio.run(main())
    except OSError as exc:  # the port is taken, the address not this machine's
        typer.echo(f"error: cannot serve on {host}:{port}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    sys.stdout.flush()
