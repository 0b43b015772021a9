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


@app.command("offline")
def offline(
    task: Annotated[str, typer.Option(help="Task name (see controller/tasks).")] = (
        "cartpole-swingup"
    ),
    steps: Annotated[int, typer.Option(help="Random-action transitions to learn from.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed for data, split and training.")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write (default runs/<time>).")
    ] = None,
) -> None:
    """Learn a model of a MuJoCo task from random actions, offline (no controller).

    Collects transitions into the transition store, trains the ensemble, exports it to ONNX and
    checks it through ONNX Runtime on fresh data. The closed MPC loop replaces this later.
    """
    from controller.offline import OfflineConfig, run_offline

    config = OfflineConfig(task=task, steps=steps, seed=seed)
    run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    console.print(f"collecting {steps} random-action transitions of {task} ...")
    with console.status("collect, store, train, export, check ..."):
        result = run_offline(config, run_dir)
    console.print(result.report.summary())
    m = result.holdout
    table = Table(title=f"ONNX Runtime check on {m.rows} fresh transitions")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    table.add_row("worst-dim normalized MSE", f"{m.nmse:.2e}", "1.0 = predicting the mean delta")
    table.add_row("within 1 predicted std", f"{m.within_1std:.1%}", "68% if calibrated")
    table.add_row("disagreement (data)", f"{m.disagreement:.3g}", "variance of member means")
    table.add_row("disagreement (10x out)", f"{result.far_disagreement:.3g}", "should be larger")
    console.print(table)
    console.print(f"model v{result.model.version}: {result.model.path}")
    console.print(
        f"run directory: {result.run_dir} (config.toml, transitions/, models/, summary.json)"
    )


DEFAULT_CONTROL = "tcp://127.0.0.1:5556"


def _assignments(items: list[str] | None) -> dict[str, Any]:
    from controller.service.control import parse_assignments

    try:
        return parse_assignments(items or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("serve")
def serve(
    task: Annotated[str, typer.Option(help="The task the robots run.")] = "cartpole-swingup",
    models: Annotated[
        Path | None, typer.Option(help="Model directory to follow (none: random actions).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Transition store to record into.")] = None,
    endpoint: Annotated[str, typer.Option(help="Where bridges connect.")] = (
        "tcp://127.0.0.1:5555"
    ),
    control: Annotated[str, typer.Option(help="Control socket (tune, status).")] = (
        DEFAULT_CONTROL
    ),
    telemetry: Annotated[str, typer.Option(help="Telemetry PUB socket.")] = (
        "tcp://127.0.0.1:5557"
    ),
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow binding non-loopback addresses.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    rollout_slices: Annotated[
        int, typer.Option(help="Slices per rollout batch (0: one per core on the CPU).")
    ] = 1,
    setting: Annotated[
        list[str] | None, typer.Option("--set", help="Initial live setting NAME=VALUE.")
    ] = None,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: never).")] = 0,
) -> None:
    """Run the MPC service alone: plan for every bridge that connects, until Ctrl-C."""
    from controller.service import LiveSettings, MPCService, ServiceSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = ServiceSettings(
            task=task, endpoint=endpoint, control=control, telemetry=telemetry,
            allow_remote=allow_remote, models=models, store=store, device=device,
            rollout_slices=rollout_slices,
        )  # fmt: skip
        live = LiveSettings().changed(_assignments(setting))
        service = MPCService(settings, live)
        service.start()
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    signal.signal(signal.SIGTERM, lambda *_: service.stop_event.set())
    console.print(f"serving {task}: {json.dumps(service.endpoints)}", highlight=False)
    try:
        service.serve(duration or None)
    except KeyboardInterrupt:
        pass
    finally:
        service.close()


@app.command("bridge")
def bridge(
    task: Annotated[str, typer.Option(help="Task to simulate.")] = "cartpole-swingup",
    connect: Annotated[str, typer.Option(help="The service's robot endpoint.")] = (
        "tcp://127.0.0.1:5555"
    ),
    robot: Annotated[str, typer.Option(help="Robot id (unique per service).")] = "sim-0",
    mode: Annotated[str, typer.Option(help="lockstep or realtime.")] = "realtime",
    episodes: Annotated[int, typer.Option(help="Episodes to run (0: until Ctrl-C).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the episode resets.")] = 0,
    obs_noise: Annotated[float, typer.Option(help="Emulated observation noise std.")] = 0.0,
    action_delay: Annotated[int, typer.Option(help="Emulated action delay, ticks.")] = 0,
    jitter: Annotated[float, typer.Option(help="Emulated timing jitter, seconds.")] = 0.0,
    watchdog: Annotated[float, typer.Option(help="Safe action after this silence, s.")] = 0.1,
    reconnect: Annotated[float, typer.Option(help="Reconnect after this silence, s.")] = 1.0,
) -> None:
    """Run one simulated robot (MuJoCo / gymnasium) against a service."""
    from sim_bridge.hardware import BridgeSettings
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
    summary = {
        "episodes": stats.episodes, "returns": [round(r, 3) for r in stats.returns],
        "ticks": stats.ticks, "actions": stats.actions, "safe_actions": stats.safe_actions,
        "late_actions": stats.late_actions, "reconnects": stats.link.reconnects,
    }  # fmt: skip
    print(json.dumps(summary))


@app.command("learn")
def learn(
    store: Annotated[Path, typer.Option(help="Transition store to learn from.")],
    models: Annotated[Path, typer.Option(help="Model directory to publish into.")],
    task: Annotated[str, typer.Option(help="Task (for its observation preprocessing).")] = (
        "cartpole-swingup"
    ),
    retrain_every: Annotated[int, typer.Option(help="New transitions per retrain.")] = 200,
    min_transitions: Annotated[int, typer.Option(help="Transitions before model v1.")] = 200,
    hidden_units: Annotated[int, typer.Option(help="Units per hidden layer.")] = 200,
    hidden_layers: Annotated[int, typer.Option(help="Hidden layers per member.")] = 3,
    members: Annotated[int, typer.Option(help="Ensemble members.")] = 5,
    max_epochs: Annotated[int, typer.Option(help="Epochs per retrain (early stopping).")] = 200,
    torch_threads: Annotated[
        int, typer.Option(help="Torch threads (leave the planner its cores).")
    ] = 1,
    metrics: Annotated[Path | None, typer.Option(help="JSON lines, one per retrain.")] = None,
    announce: Annotated[
        str | None, typer.Option(help="A service's control socket to tell of each new version.")
    ] = None,
    episode_end: Annotated[bool, typer.Option(help="Also retrain at each episode end.")] = True,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
) -> None:
    """Run the learner alone: retrain from the store and publish checked models, until Ctrl-C."""
    from controller.tasks import get_task
    from models.learner import Learner, LearnerConfig, ModelVersion

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = LearnerConfig(
            preprocess=get_task(task).preprocess, members=members, hidden_layers=hidden_layers,
            hidden_units=hidden_units, min_transitions=min_transitions,
            retrain_every=retrain_every, retrain_at_episode_end=episode_end, max_epochs=max_epochs,
            torch_threads=torch_threads, seed=seed,
        )  # fmt: skip
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    from controller.service.control import request

    def tell_service(version: ModelVersion) -> None:
        request(str(announce), {"cmd": "model"}, timeout_s=2.0)

    learner = Learner(store, models, config, metrics=metrics,
                      on_publish=tell_service if announce else None)  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: learner.stop_event.set())
    try:
        learner.run()
    except KeyboardInterrupt:
        pass


@app.command("tune")
def tune(
    changes: Annotated[list[str], typer.Argument(help="NAME=VALUE ..., weight.TERM=VALUE.")],
    control: Annotated[str, typer.Option(help="The service's control socket.")] = (DEFAULT_CONTROL),
) -> None:
    """Change live settings (applied at every robot's next tick), e.g. horizon=30 planner=icem."""
    reply = _control_request(control, {"cmd": "set", "changes": _assignments(changes)})
    console.print_json(data=reply["settings"])


@app.command("status")
def status(
    control: Annotated[str, typer.Option(help="The service's control socket.")] = (DEFAULT_CONTROL),
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Per robot: tick rate, plan time p50/p99, deadline misses, dropped states, model."""
    reply = _control_request(control, {"cmd": "status"})
    if as_json:
        print(json.dumps(reply, indent=2))
        return
    console.print(
        f"task {reply['task']}, model v{reply['model_version']}, "
        f"{reply['transitions']} transitions, up {reply['uptime_s']} s"
    )
    table = Table()
    columns = ["tick_hz", "plan_ms_p50", "plan_ms_p99", "deadline_misses", "dropped_stale",
               "errors", "episodes", "last_return", "model_version", "mode"]  # fmt: skip
    table.add_column("robot")
    for name in columns:
        table.add_column(name, justify="right")
    for robot, row in reply["robots"].items():
        table.add_row(robot, *(str(row[c]) for c in columns))
    console.print(table)


def _control_request(endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    from controller.service.control import request

    try:
        reply = request(endpoint, payload)
    except (TimeoutError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    if not reply.get("ok"):
        typer.echo(f"error: {reply.get('error')}", err=True)
        raise typer.Exit(code=1)
    return reply


@app.command("run")
def run(
    task: Annotated[str, typer.Option(help="Task to learn.")] = "cartpole-swingup",
    episodes: Annotated[
        int | None,
        typer.Option(help="Episodes, the first random [default: 10; on --resume: the run's]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of resets, planner and training.")] = 0,
    planner: Annotated[str, typer.Option(help="random, cem, icem or mppi.")] = "cem",
    horizon: Annotated[int, typer.Option(help="Planning horizon.")] = 25,
    population: Annotated[int, typer.Option(help="Candidates per iteration.")] = 200,
    iterations: Annotated[int, typer.Option(help="Optimizer iterations per plan.")] = 3,
    realtime: Annotated[
        bool, typer.Option("--realtime", help="Wall-clock robot (default: lockstep).")
    ] = False,
    hidden_units: Annotated[int, typer.Option(help="Model units per hidden layer.")] = 200,
    episode_steps: Annotated[int, typer.Option(help="Truncate episodes (0: task's).")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<time>).")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
) -> None:
    """The embedded default: a simulated robot, the MPC service and the learner, learning from
    scratch. Prints a line per episode and a summary; writes everything to the run directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from controller.closed_loop import ClosedLoop, RunConfig, plot_learning_curve, run_closed_loop

    first = 0
    try:
        if resume is not None:
            config, first = ClosedLoop.resume(resume)
            if episodes is not None:  # continue to a new total
                config = RunConfig(**{**config.__dict__, "episodes": episodes})
            run_dir = resume
        else:
            config = RunConfig(
                task=task, episodes=10 if episodes is None else episodes, seed=seed,
                planner=planner, horizon=horizon,
                population=population, iterations=iterations, realtime=realtime,
                hidden_units=hidden_units, episode_steps=episode_steps,
            )  # fmt: skip
            run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    except (ValueError, OSError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    console.print(f"run directory: {run_dir}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"))  # fmt: skip
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("episodes", total=config.episodes, completed=first, info="")

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
