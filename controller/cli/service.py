"""``tickmpc serve``, ``bridge``, ``tune`` and ``status``: the service, a simulated robot,
and the service's control socket from the shell."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from controller.cli.common import (
    DEFAULT_CONTROL,
    DEFAULT_ENDPOINT,
    DEFAULT_TASK,
    TASK_HELP,
    ConfigOption,
    ControlOption,
    KeysOption,
    RewardOption,
    ServerKeyOption,
    SetOption,
    TerminationOption,
    app,
    assignments,
    client_keys,
    compose,
    console,
    control_request,
    help_text,
)
from sim_bridge.hardware import BridgeSettings


@app.command("serve")
def serve(
    config_file: ConfigOption = None,
    task: Annotated[
        str | None,
        typer.Option(
            help=help_text(TASK_HELP + ", or auto (from the first robot's HELLO).", "task")
        ),
    ] = None,
    reward: RewardOption = None,
    termination: TerminationOption = None,
    models: Annotated[
        Path | None, typer.Option(help="Model directory to follow (none: random actions).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Transition store to record into.")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help=help_text("Where bridges connect.", "service.endpoint"))
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(help=help_text("Control socket (tune, status).", "service.control")),
    ] = None,
    telemetry: Annotated[
        str | None, typer.Option(help=help_text("Telemetry PUB socket.", "service.telemetry"))
    ] = None,
    allow_remote: Annotated[
        bool | None,
        typer.Option(
            "--allow-remote",
            help="Allow binding non-loopback addresses (needs --keys and --clients: CurveZMQ).",
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help=help_text(
                "The service's CurveZMQ key pair (.key_secret of tickmpc keys).", "service.keys"
            ),
        ),
    ] = None,
    clients: Annotated[
        Path | None,
        typer.Option(
            "--clients",
            help=help_text(
                "Directory of the client public keys (.key) it accepts.", "service.clients"
            ),
        ),
    ] = None,
    durable: Annotated[
        bool | None, typer.Option("--durable", help="fsync the store after every pass.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=help_text("cpu, cuda or auto.", "service.runtime.device"))
    ] = None,
    sets: SetOption = None,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: never).")] = 0,
) -> None:
    """Run the MPC service alone: plan for every bridge that connects, until Ctrl-C."""
    config = compose(config_file, sets, {
        "task": task, "reward": reward, "termination": termination,
        "service.models": models, "service.store": store,
        "service.endpoint": endpoint, "service.control": control,
        "service.telemetry": telemetry, "service.allow_remote": allow_remote,
        "service.keys": keys, "service.clients": clients,
        "service.durable": durable, "service.runtime.device": device,
    })  # fmt: skip
    from controller.service import MPCService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        service = MPCService(config.resolved_task(), config.service, config.planner)
        service.start()
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    signal.signal(signal.SIGTERM, lambda *_: service.stop_event.set())
    console.print(f"serving {config.task}: {json.dumps(service.endpoints)}", highlight=False)
    try:
        service.serve(duration or None)
    except KeyboardInterrupt:
        pass
    finally:
        service.close()


@app.command("bridge")
def bridge(
    task: Annotated[
        str, typer.Option(help=TASK_HELP + " (a task file's env_id is simulated).")
    ] = DEFAULT_TASK,
    connect: Annotated[str, typer.Option(help="The service's robot endpoint.")] = (
        DEFAULT_ENDPOINT
    ),
    robot: Annotated[
        str,
        typer.Option(
            help="Robot id (unique per service); with --robots N the first of N "
            "counted up (sim-0, sim-1, ...)."
        ),
    ] = "sim-0",
    robots: Annotated[
        int, typer.Option(min=1, help="Simulated robots in this process, one thread each.")
    ] = 1,
    mode: Annotated[str, typer.Option(help="lockstep or realtime.")] = "realtime",
    episodes: Annotated[
        int, typer.Option(help="Episodes to run, per robot (0: until Ctrl-C).")
    ] = 0,
    seed: Annotated[
        int, typer.Option(help="Seed of the episode resets: robot i, episode k seed + 1000 i + k.")
    ] = 0,
    obs_noise: Annotated[float, typer.Option(help="Emulated observation noise std.")] = 0.0,
    action_delay: Annotated[int, typer.Option(help="Emulated action delay, ticks.")] = 0,
    jitter: Annotated[float, typer.Option(help="Emulated timing jitter, seconds.")] = 0.0,
    watchdog: Annotated[
        float, typer.Option(help="Safe action after this silence, s.")
    ] = BridgeSettings.watchdog_s,
    reconnect: Annotated[
        float, typer.Option(help="Reconnect after this silence, s.")
    ] = BridgeSettings.reconnect_s,
    keys: KeysOption = None,
    server_key: ServerKeyOption = None,
) -> None:
    """Run simulated robots (MuJoCo / gymnasium) against a service: one, or with --robots N a
    fleet of N in this process, each with its own connection, robot id, seed and pacing.
    Prints one JSON summary line per robot."""
    from controller.tasks import load_task
    from sim_bridge.fleet import Fleet, fleet_ids
    from sim_bridge.mujoco_bridge import Emulation, MujocoBridge

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    emulation = Emulation(obs_noise, action_delay, jitter)
    settings = BridgeSettings(watchdog_s=watchdog, reconnect_s=reconnect,
                              curve=client_keys(keys, server_key))  # fmt: skip
    try:
        simulated = load_task(task)
        sims = [
            MujocoBridge.for_task(
                simulated, name, seed=seed + 1000 * i, emulation=emulation, settings=settings
            )
            for i, name in enumerate(fleet_ids(robot, robots))
        ]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    fleet = Fleet(sims)
    signal.signal(signal.SIGTERM, lambda *_: fleet.stop_event.set())
    try:
        fleet.run(connect, mode=mode, episodes=episodes or None)
    except KeyboardInterrupt:
        pass
    finally:
        for sim in sims:
            if sim not in fleet.running:  # one still stepping keeps its simulation
                sim.close()
    for sim in sims:
        stats, link = sim.stats, sim.stats.link
        summary = {
            "robot": sim.spec.robot, "episodes": stats.episodes,
            "returns": [None if r is None else round(r, 3) for r in stats.returns],
            "ticks": stats.ticks,
            "actions": stats.actions, "safe_actions": stats.safe_actions,
            "late_actions": stats.late_actions, "reconnects": link.reconnects,
            "dropped_sends": link.dropped_sends, "bad_actions": link.bad_actions,
        }  # fmt: skip
        print(json.dumps(summary))
    if fleet.errors:
        for name, error in fleet.errors.items():
            typer.echo(f"error: {name}: {error}", err=True)
        raise typer.Exit(code=1)


@app.command("tune")
def tune(
    changes: Annotated[list[str], typer.Argument(help="NAME=VALUE ..., weight.TERM=VALUE.")],
    control: ControlOption = DEFAULT_CONTROL,
    robot: Annotated[
        str | None, typer.Option(help="Change this robot's settings only (default: every robot's).")
    ] = None,
    keys: KeysOption = None,
    server_key: ServerKeyOption = None,
) -> None:
    """Change live settings (applied at the next tick), e.g. horizon=30 planner=icem: every
    robot's and the ones new robots start with, or with --robot one robot's; seed=N reseeds
    the planners it changes."""
    fields = {"robot": robot} if robot is not None else {}
    reply = control_request(control, "set", client_keys(keys, server_key),
                            changes=assignments(changes), **fields)  # fmt: skip
    console.print_json(data=reply["settings"])


STATUS_COLUMNS = ("tick_hz", "plan_ms_p50", "plan_ms_p99", "deadline_misses", "fallbacks",
                  "nonfinite", "dropped_stale", "errors", "episodes", "last_return",
                  "model_version", "mode")  # fmt: skip


@app.command("status")
def status(
    control: ControlOption = DEFAULT_CONTROL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    keys: KeysOption = None,
    server_key: ServerKeyOption = None,
) -> None:
    """Per robot: tick rate, plan time p50/p99, deadline misses, fallbacks, non-finite
    candidates, dropped states, errors, model, and the settings tuned for it alone (--json:
    every robot's settings whole)."""
    reply = control_request(control, "status", client_keys(keys, server_key))
    if as_json:
        print(json.dumps(reply, indent=2))
        return
    policy = f"policy p{reply['policy_version']}" if reply["policy_version"] else "no policy"
    rejected = len(reply["rejected_models"]) + len(reply["rejected_policies"])
    console.print(
        f"task {reply['task']}, model v{reply['model_version']}, {policy}, planner "
        f"{reply['settings']['planner']}, {reply['transitions']} transitions, up "
        f"{reply['uptime_s']} s" + (f", {rejected} versions rejected" if rejected else "")
    )
    table = Table()
    table.add_column("robot")
    for name in STATUS_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("own settings")
    for robot, row in reply["robots"].items():
        table.add_row(robot, *(str(row[c]) for c in STATUS_COLUMNS),
                      own_settings(row["settings"], reply["settings"]))  # fmt: skip
    console.print(table)


def own_settings(mine: dict[str, object], default: dict[str, object]) -> str:
    """The settings a robot was tuned to apart from the others, as NAME=VALUE (or "-")."""
    own = [f"{k}={json.dumps(v)}" for k, v in mine.items() if default.get(k) != v]
    return " ".join(own) or "-"


@app.command("keys")
def keys_command(
    name: Annotated[str, typer.Argument(help="The key pair's name, e.g. the robot's id.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")] = Path(
        "keys"
    ),
) -> None:
    """Make a CurveZMQ key pair: NAME.key (public: give it to the other side) and
    NAME.key_secret (keep it). A service's clients directory holds the .key files of the
    clients it accepts; a client needs its own .key_secret and the service's .key."""
    from sim_bridge.curve import make_key_pair

    try:
        public, secret = make_key_pair(directory, name)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    console.print(f"public key: {public}\nsecret key: {secret} (keep it private)",
                  highlight=False)  # fmt: skip
