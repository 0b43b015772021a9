"""The ``tickmpc`` command line. Flags are read here and nowhere else."""

from __future__ import annotations

import json
import logging
import signal
import time
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.config import Config, as_dict, merged, nested, parse_overrides, updated
from sim_bridge.hardware import BridgeSettings

app = typer.Typer(
    help="tickmpc: real-time MPC with a learned probabilistic ensemble in ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
)
model_app = typer.Typer(help="Inspect exported models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"tickmpc {package_version('tickmpc')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """tickmpc: real-time MPC with a learned probabilistic ensemble in ONNX Runtime."""


@model_app.command("info")
def model_info(
    path: Annotated[Path, typer.Argument(help="An exported .onnx model file.")],
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print metadata as JSON.")] = False,
) -> None:
    """Print an exported model's metadata and check that it loads and predicts finite values."""
    import numpy as np

    from models.export import ModelFileError
    from models.runtime import OnnxEnsemble, RuntimeOptions

    try:
        runtime = OnnxEnsemble(path, options=RuntimeOptions(device=device))
    except (ModelFileError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    meta = runtime.metadata
    obs = np.zeros((4, meta.config.obs_dim), np.float32)
    act = np.zeros((4, meta.config.act_dim), np.float32)
    outputs = runtime.predict(obs, act)
    finite = all(bool(np.isfinite(o).all()) for o in outputs)
    info = {
        "path": str(path),
        "format_version": meta.format_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta.created_unix)),
        "config": meta.config.to_dict(),
        "member_batched": meta.member_batched,
        "train_rows": meta.train_rows,
        "holdout": dict(meta.holdout),
        "code_sha256": meta.code_sha256,
        "graph_sha256": meta.graph_sha256,
        "inputs": list(meta.input_names),
        "outputs": list(meta.output_names),
        "providers": runtime.providers,
        "check_batch_finite": finite,
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        table = Table(title=str(path), show_header=False)
        for key, value in info.items():
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        console.print(table)
    if not finite:
        typer.echo("error: the model predicts non-finite values on a zero batch", err=True)
        raise typer.Exit(code=1)


DEFAULTS = as_dict(Config())
"""The default config tree: every CLI default is read from it (so from the dataclasses)."""


def _default(path: str) -> Any:
    """The dataclass default of a config field (``service.endpoint``)."""
    node: Any = DEFAULTS
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _compose(config_file: Path | None, sets: list[str] | None, named: dict[str, Any]) -> Config:
    """The config: dataclass defaults, then the file, then the named flags that were given,
    then ``--set``; anything refused ends the command with the reason."""
    given = {path: str(v) if isinstance(v, Path) else v for path, v in named.items()}
    try:
        tree = merged(nested((k, v) for k, v in given.items() if v is not None),
                      parse_overrides(sets or []))  # fmt: skip
        if config_file is not None:
            return Config.load(config_file, tree)
        return updated(Config(), tree)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="A TOML config file (any part of the tree).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="SECTION.NAME=VALUE over the file, e.g. planner.horizon=30."),
]


DEFAULT_TASK = _default("task")
DEFAULT_ENDPOINT = _default("service.endpoint")
DEFAULT_CONTROL = _default("service.control")


def _help(text: str, path: str) -> str:
    return f"{text} (default: {_default(path)})"


@app.command("serve")
def serve(
    config_file: ConfigOption = None,
    task: Annotated[str | None, typer.Option(help=_help("The task the robots run.", "task"))] = (
        None
    ),
    models: Annotated[
        Path | None, typer.Option(help="Model directory to follow (none: random actions).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Transition store to record into.")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help=_help("Where bridges connect.", "service.endpoint"))
    ] = None,
    control: Annotated[
        str | None, typer.Option(help=_help("Control socket (tune, status).", "service.control"))
    ] = None,
    telemetry: Annotated[
        str | None, typer.Option(help=_help("Telemetry PUB socket.", "service.telemetry"))
    ] = None,
    allow_remote: Annotated[
        bool | None, typer.Option("--allow-remote", help="Allow binding non-loopback addresses.")
    ] = None,
    durable: Annotated[
        bool | None, typer.Option("--durable", help="fsync the store after every pass.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=_help("cpu, cuda or auto.", "service.runtime.device"))
    ] = None,
    sets: SetOption = None,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: never).")] = 0,
) -> None:
    """Run the MPC service alone: plan for every bridge that connects, until Ctrl-C."""
    config = _compose(config_file, sets, {
        "task": task, "service.models": models, "service.store": store,
        "service.endpoint": endpoint, "service.control": control,
        "service.telemetry": telemetry, "service.allow_remote": allow_remote,
        "service.durable": durable, "service.runtime.device": device,
    })  # fmt: skip
    from controller.service import MPCService
    from controller.tasks import get_task

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        service = MPCService(get_task(config.task), config.service, config.planner)
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
    task: Annotated[str, typer.Option(help="Task to simulate.")] = DEFAULT_TASK,
    connect: Annotated[str, typer.Option(help="The service's robot endpoint.")] = (
        DEFAULT_ENDPOINT
    ),
    robot: Annotated[str, typer.Option(help="Robot id (unique per service).")] = "sim-0",
    mode: Annotated[str, typer.Option(help="lockstep or realtime.")] = "realtime",
    episodes: Annotated[int, typer.Option(help="Episodes to run (0: until Ctrl-C).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the episode resets.")] = 0,
    obs_noise: Annotated[float, typer.Option(help="Emulated observation noise std.")] = 0.0,
    action_delay: Annotated[int, typer.Option(help="Emulated action delay, ticks.")] = 0,
    jitter: Annotated[float, typer.Option(help="Emulated timing jitter, seconds.")] = 0.0,
    watchdog: Annotated[
        float, typer.Option(help="Safe action after this silence, s.")
    ] = BridgeSettings.watchdog_s,
    reconnect: Annotated[
        float, typer.Option(help="Reconnect after this silence, s.")
    ] = BridgeSettings.reconnect_s,
) -> None:
    """Run one simulated robot (MuJoCo / gymnasium) against a service."""
    from sim_bridge.link import Refused
    from sim_bridge.mujoco_bridge import Emulation, MujocoBridge

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        sim = MujocoBridge(
            task, robot, seed=seed,
            emulation=Emulation(obs_noise, action_delay, jitter),
            settings=BridgeSettings(watchdog_s=watchdog, reconnect_s=reconnect),
        )  # fmt: skip
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    signal.signal(signal.SIGTERM, lambda *_: sim.stop_event.set())
    try:
        stats = sim.run(connect, mode=mode, episodes=episodes or None)
    except (Refused, TimeoutError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    except KeyboardInterrupt:
        stats = sim.stats
    link = stats.link
    summary = {
        "episodes": stats.episodes, "returns": [round(r, 3) for r in stats.returns],
        "ticks": stats.ticks, "actions": stats.actions, "safe_actions": stats.safe_actions,
        "late_actions": stats.late_actions, "reconnects": link.reconnects,
        "dropped_sends": link.dropped_sends, "bad_actions": link.bad_actions,
    }  # fmt: skip
    print(json.dumps(summary))


@app.command("learn")
def learn(
    config_file: ConfigOption = None,
    task: Annotated[
        str | None, typer.Option(help=_help("Task (for its observation preprocessing).", "task"))
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Transition store to learn from (config: service.store).")
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(help="Model directory to publish into (config: service.models)."),
    ] = None,
    metrics: Annotated[Path | None, typer.Option(help="JSON lines, one per retrain.")] = None,
    announce: Annotated[
        bool,
        typer.Option("--announce", help="Tell the service (service.control) of each version."),
    ] = False,
    seed: Annotated[int | None, typer.Option(help=_help("Training seed.", "learner.seed"))] = (
        None
    ),
    torch_threads: Annotated[
        int | None,
        typer.Option(
            help=_help("Torch threads (leave the planner its cores).", "learner.torch_threads")
        ),
    ] = None,
    sets: SetOption = None,
) -> None:
    """Run the learner alone: retrain from the store and publish checked models, until Ctrl-C.
    Model and training settings: ``--set learner.NAME=VALUE`` or the config file."""
    config = _compose(config_file, sets, {
        "task": task, "service.store": store, "service.models": models,
        "learner.seed": seed, "learner.torch_threads": torch_threads,
    })  # fmt: skip
    from controller.service.control import request
    from controller.tasks import get_task
    from models.learner import Learner, ModelVersion

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if config.service.store is None or config.service.models is None:
        typer.echo("error: learn needs a store and a model directory (--store, --models, or "
                   "service.store and service.models in --config)", err=True)  # fmt: skip
        raise typer.Exit(code=1)

    def tell_service(version: ModelVersion) -> None:
        request(config.service.control, "model", timeout_s=2.0)

    learner = Learner(
        config.service.store, config.service.models, config.learner,
        preprocess=get_task(config.task).preprocess, metrics=metrics,
        on_publish=tell_service if announce else None,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: learner.stop_event.set())
    try:
        learner.run()
    except KeyboardInterrupt:
        pass


def _assignments(items: list[str] | None) -> dict[str, Any]:
    from controller.service.control import parse_assignments

    try:
        return parse_assignments(items or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


ControlOption = Annotated[str, typer.Option(help="The service's control socket.")]


@app.command("tune")
def tune(
    changes: Annotated[list[str], typer.Argument(help="NAME=VALUE ..., weight.TERM=VALUE.")],
    control: ControlOption = DEFAULT_CONTROL,
) -> None:
    """Change live settings (applied at every robot's next tick), e.g. horizon=30 planner=icem;
    seed=N reseeds every robot's planner."""
    reply = _control_request(control, "set", changes=_assignments(changes))
    console.print_json(data=reply["settings"])


STATUS_COLUMNS = ("tick_hz", "plan_ms_p50", "plan_ms_p99", "deadline_misses", "fallbacks",
                  "nonfinite", "dropped_stale", "errors", "episodes", "last_return",
                  "model_version", "mode")  # fmt: skip


@app.command("status")
def status(
    control: ControlOption = DEFAULT_CONTROL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Per robot: tick rate, plan time p50/p99, deadline misses, fallbacks, non-finite
    candidates, dropped states, errors, model."""
    reply = _control_request(control, "status")
    if as_json:
        print(json.dumps(reply, indent=2))
        return
    console.print(
        f"task {reply['task']}, model v{reply['model_version']}, "
        f"{reply['transitions']} transitions, up {reply['uptime_s']} s"
    )
    table = Table()
    table.add_column("robot")
    for name in STATUS_COLUMNS:
        table.add_column(name, justify="right")
    for robot, row in reply["robots"].items():
        table.add_row(robot, *(str(row[c]) for c in STATUS_COLUMNS))
    console.print(table)


def _control_request(endpoint: str, cmd: str, **fields: Any) -> dict[str, Any]:
    from controller.service.control import request

    try:
        return request(endpoint, cmd, **fields)
    except (TimeoutError, ValueError) as exc:  # a refusal is a ProtocolError: "code: reason"
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@app.command("run")
def run(
    config_file: ConfigOption = None,
    task: Annotated[str | None, typer.Option(help=_help("Task to learn.", "task"))] = None,
    episodes: Annotated[
        int | None,
        typer.Option(
            help=_help("Episodes, the first random (on --resume: a new total).", "run.episodes")
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help=_help("One seed for the run: resets, planner and training.", "run.seed")),
    ] = None,
    planner: Annotated[
        str | None, typer.Option(help=_help("random, cem, icem or mppi.", "planner.planner"))
    ] = None,
    horizon: Annotated[
        int | None, typer.Option(help=_help("Planning horizon.", "planner.horizon"))
    ] = None,
    population: Annotated[
        int | None, typer.Option(help=_help("Candidates per iteration.", "planner.population"))
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(help=_help("Optimizer iterations per plan.", "planner.iterations")),
    ] = None,
    realtime: Annotated[
        bool | None, typer.Option("--realtime", help="Wall-clock robot (default: lockstep).")
    ] = None,
    hidden_units: Annotated[
        int | None,
        typer.Option(help=_help("Model units per hidden layer.", "learner.hidden_units")),
    ] = None,
    episode_steps: Annotated[
        int | None,
        typer.Option(help=_help("Truncate episodes (0: task's).", "run.episode_steps")),
    ] = None,
    sets: SetOption = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<time>).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory (its config.toml, then flags)."),
    ] = None,
) -> None:
    """The embedded default: a simulated robot, the MPC service and the learner, learning from
    scratch. Prints a line per episode and a summary; writes everything to the run directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from controller.closed_loop import ClosedLoop, plot_learning_curve, run_closed_loop

    named = {
        "task": task, "run.episodes": episodes, "planner.planner": planner,
        "planner.horizon": horizon, "planner.population": population,
        "planner.iterations": iterations, "run.realtime": realtime,
        "learner.hidden_units": hidden_units, "run.episode_steps": episode_steps,
        "run.seed": seed, "planner.seed": seed, "learner.seed": seed,
    }  # fmt: skip
    first = 0
    if resume is not None:
        if config_file is not None:
            typer.echo("error: --resume takes the run's own config.toml, not --config", err=True)
            raise typer.Exit(code=1)
        config = _compose(resume / "config.toml", sets, named)
        first = ClosedLoop.completed(resume)
        run_dir = resume
    else:
        config = _compose(config_file, sets, named)
        run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    console.print(f"run directory: {run_dir}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"))  # fmt: skip
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("episodes", total=config.run.episodes, completed=first, info="")

        def show(line: dict[str, Any]) -> None:
            progress.update(bar, advance=1, info=(
                f"return {line['return']:.1f}  {line['ticks_per_s']:.0f} ticks/s  plan p99 "
                f"{line['plan_ms_p99']} ms  model v{line['model_version']}  "
                f"misses {line['deadline_misses']}"))  # fmt: skip

        try:
            lines, codes = run_closed_loop(config, run_dir, first_episode=first, on_episode=show)
        except KeyboardInterrupt:
            console.print("stopped; resume with --resume " + str(run_dir))
            raise typer.Exit(code=130) from None
        except (RuntimeError, TimeoutError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from exc
    table = Table(title=f"{config.task}: {len(lines)} episodes")
    for name in ("episode", "return", "ticks_per_s", "plan_ms_p99", "deadline_misses",
                 "model_version"):  # fmt: skip
        table.add_column(name, justify="right")
    for line in lines:
        table.add_row(*(str(round(line[k], 1) if isinstance(line[k], float) else line[k])
                        for k in ("episode", "return", "ticks_per_s", "plan_ms_p99",
                                  "deadline_misses", "model_version")))  # fmt: skip
    console.print(table)
    console.print(f"processes exited: {codes}")
    console.print(f"learning curve: {plot_learning_curve(run_dir, config.task)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
