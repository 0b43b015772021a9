"""``tickmpc learn`` (the learner alone) and ``tickmpc run`` (the closed loop: a simulated
robot, the service and the learner, learning from scratch)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import (
    TASK_HELP,
    ConfigOption,
    PolicyOption,
    RewardOption,
    SetOption,
    TaskOption,
    TerminationOption,
    app,
    compose,
    console,
    help_text,
)

if TYPE_CHECKING:
    from controller.config import Config
    from controller.tasks import Task
    from models.learner import Learner, ModelVersion


@app.command("learn")
def learn(
    config_file: ConfigOption = None,
    task: Annotated[
        str | None,
        typer.Option(
            help=help_text(
                TASK_HELP + " or auto: what the model learns to predict "
                "and the observation preprocessing.",
                "task",
            )
        ),
    ] = None,
    reward: RewardOption = None,
    termination: TerminationOption = None,
    policy: PolicyOption = None,
    store: Annotated[
        Path | None, typer.Option(help="Transition store to learn from (config: service.store).")
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(help="Model directory to publish into (config: service.models)."),
    ] = None,
    metrics: Annotated[Path | None, typer.Option(help="JSON lines, one per retrain.")] = None,
    policy_metrics: Annotated[
        Path | None, typer.Option(help="JSON lines, one per published policy.")
    ] = None,
    announce: Annotated[
        bool,
        typer.Option("--announce", help="Tell the service (service.control) of each version."),
    ] = False,
    seed: Annotated[int | None, typer.Option(help=help_text("Training seed.", "learner.seed"))] = (
        None
    ),
    torch_threads: Annotated[
        int | None,
        typer.Option(
            help=help_text("Torch threads (leave the planner its cores).", "learner.torch_threads")
        ),
    ] = None,
    sets: SetOption = None,
) -> None:
    """Run the learner alone: retrain from the store and publish checked models (and, with
    --policy, a policy trained on them), until Ctrl-C. Model and training settings: ``--set
    learner.NAME=VALUE`` / ``--set policy.NAME=VALUE`` or the config file."""
    config = compose(config_file, sets, {
        "task": task, "reward": reward, "termination": termination, "policy.optimizer": policy,
        "service.store": store, "service.models": models,
        "learner.seed": seed, "learner.torch_threads": torch_threads,
    })  # fmt: skip
    from controller.service.control import request
    from models.learner import Learner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # The ONNX exporter's graph passes log every initializer they merge (~30 lines a version).
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # and the policy's, every export
    if config.service.store is None or config.service.models is None:
        typer.echo("error: learn needs a store and a model directory (--store, --models, or "
                   "service.store and service.models in --config)", err=True)  # fmt: skip
        raise typer.Exit(code=1)

    curve = None  # a service with CurveZMQ accepts its own key pair, which its config names
    if config.service.keys is not None:
        from sim_bridge.curve import CurveClient

        try:
            curve = CurveClient.load(config.service.keys)
        except ValueError as exc:
            typer.echo(f"error: service.keys: {exc}", err=True)
            raise typer.Exit(code=1) from None

    def tell_service(version: ModelVersion) -> None:
        request(config.service.control, "model", timeout_s=2.0, curve=curve)

    served = config.resolved_task()  # None: auto, a task nobody wrote (all learned)
    learner = Learner(
        config.service.store, config.service.models, config.learner,
        preprocess=served.preprocess if served is not None else {}, metrics=metrics,
        predict_reward=served is None or served.reward_learned,
        predict_done=served is None or served.termination_learned,
        on_publish=tell_service if announce else None,
    )  # fmt: skip
    idle = None
    if config.policy.optimizer != "none":
        if served is None:
            typer.echo("error: a policy needs a task's dims and bounds: give --task (auto "
                       "learns no policy yet)", err=True)  # fmt: skip
            raise typer.Exit(code=1)
        idle = policy_work(learner, config, served, tell_service if announce else None,
                           policy_metrics)  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: learner.stop_event.set())
    try:
        learner.run(idle=idle)
    except KeyboardInterrupt:
        pass


def policy_work(
    learner: Learner,
    config: Config,
    task: Task,
    announce: Callable[[ModelVersion], None] | None,
    metrics: Path | None,
) -> Callable[[], bool]:
    """The policy trainer composed with the task (its reward terms and termination for the
    imagined steps, unless the model learns them) and driven by ``learner``: the learner's
    idle callback, one chunk of policy work per call (see models.policy.trainer)."""
    import numpy as np

    from models.policy.trainer import PolicyTrainer

    reward_fn = None if task.reward_learned else task.reward
    done_fn = task.terminated  # None where the termination is learned or never happens
    if config.policy.optimizer == "bptt" and done_fn is not None:
        logging.getLogger(__name__).warning(
            "bptt differentiates the imagined return, and the task's termination is a hard "
            "threshold with no gradient: the policy ignores it (--termination learned gives "
            "the model a done probability to weigh the return by)"
        )
    assert config.service.models is not None  # learn checked it
    trainer = PolicyTrainer(
        config.service.models, config.policy, task.obs_dim, task.act_dim,
        np.asarray(task.action_low), np.asarray(task.action_high), reward_fn=reward_fn,
        done_fn=done_fn, metrics=metrics, on_publish=announce, preprocess=task.preprocess,
    )  # fmt: skip

    def work() -> bool:
        if learner.model is None or learner.trained is None:
            return False
        trainer.set_model(learner.model, learner.version)
        return trainer.work(learner.trained)

    return work


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command("run")
def run(
    config_file: ConfigOption = None,
    task: TaskOption = None,
    reward: RewardOption = None,
    termination: TerminationOption = None,
    episodes: Annotated[
        int | None,
        typer.Option(
            help=help_text("Episodes, the first random (on --resume: a new total).", "run.episodes")
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help=help_text("One seed for the run: resets, planner and training.", "run.seed")
        ),
    ] = None,
    planner: Annotated[
        str | None,
        typer.Option(
            help=help_text("random, cem, icem, mppi or policy (needs --policy).", "planner.planner")
        ),
    ] = None,
    policy: PolicyOption = None,
    horizon: Annotated[
        int | None, typer.Option(help=help_text("Planning horizon.", "planner.horizon"))
    ] = None,
    population: Annotated[
        int | None, typer.Option(help=help_text("Candidates per iteration.", "planner.population"))
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(help=help_text("Optimizer iterations per plan.", "planner.iterations")),
    ] = None,
    realtime: Annotated[
        bool | None, typer.Option("--realtime", help="Wall-clock robot (default: lockstep).")
    ] = None,
    robots: Annotated[
        int | None,
        typer.Option(
            help=help_text(
                "Simulated robots feeding one store and learner, each "
                "running its own episodes at once.",
                "run.robots",
            )
        ),
    ] = None,
    hidden_units: Annotated[
        int | None,
        typer.Option(help=help_text("Model units per hidden layer.", "learner.hidden_units")),
    ] = None,
    episode_steps: Annotated[
        int | None,
        typer.Option(help=help_text("Truncate episodes (0: task's).", "run.episode_steps")),
    ] = None,
    dashboard: Annotated[
        bool | None,
        typer.Option(
            "--dashboard/--no-dashboard",
            help=help_text(
                "Serve the live dashboard of the run on loopback (its address is printed; "
                "port run.dashboard_port).",
                "run.dashboard",
            ),
        ),
    ] = None,
    videos: Annotated[
        bool | None,
        typer.Option(
            "--videos/--no-videos",
            help=help_text(
                "WebM videos of the first, the best and the last episode in the run's videos/ "
                "(MuJoCo tasks), rendered in the background.",
                "run.videos",
            ),
        ),
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
    """The embedded default: a simulated robot (or --robots N), the MPC service and the learner,
    learning from scratch. Prints a line per episode and a summary; writes everything to the run
    directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from controller.run.loop import ClosedLoop, run_closed_loop
    from controller.run.plot import plot_learning_curve
    from controller.run.rundir import RunDir
    from controller.run.task_copy import resumed_task
    from controller.tasks import AUTO

    named = {
        "task": task, "reward": reward, "termination": termination,
        "run.episodes": episodes, "planner.planner": planner,
        "planner.horizon": horizon, "planner.population": population,
        "planner.iterations": iterations, "run.realtime": realtime, "run.robots": robots,
        "learner.hidden_units": hidden_units, "run.episode_steps": episode_steps,
        "run.seed": seed, "planner.seed": seed, "learner.seed": seed, "policy.seed": seed,
        "policy.optimizer": policy, "run.videos": videos,
        "run.dashboard": dashboard,
    }  # fmt: skip
    first = 0
    if resume is not None:
        if config_file is not None:
            typer.echo("error: --resume takes the run's own config.toml, not --config", err=True)
            raise typer.Exit(code=1)
        run = RunDir(resume)
        try:
            kept = resumed_task(run)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        if kept is not None:
            if task is not None:
                typer.echo("error: a run's task cannot change on --resume (it keeps its own "
                           f"copy: {kept})", err=True)  # fmt: skip
                raise typer.Exit(code=1)
            named["task"] = kept
        saved = compose(run.config, None, {"task": kept})
        config = compose(run.config, sets, named)
        changed = [k for k in ("reward", "termination")
                   if getattr(config, k) != getattr(saved, k)]  # fmt: skip
        if changed:
            typer.echo(f"error: a run's {' and '.join(changed)} cannot change on --resume (the "
                       "models learned what it started with)", err=True)  # fmt: skip
            raise typer.Exit(code=1)
        first = run.completed()
    else:
        config = compose(config_file, sets, named)
        run = RunDir(run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if config.task == AUTO:
        typer.echo("error: tickmpc run simulates the robot, so it needs a task to simulate, "
                   "not auto (serve and learn take auto)", err=True)  # fmt: skip
        raise typer.Exit(code=1)
    if config.planner.planner == "policy" and config.policy.optimizer == "none":
        typer.echo("error: --planner policy acts with a trained policy: give --policy sac or "
                   "--policy bptt to train one", err=True)  # fmt: skip
        raise typer.Exit(code=1)
    console.print(f"run directory: {run.root}")
    if config.steps < config.learner.min_transitions:
        console.print(
            f"note: the first model comes after learner.min_transitions = "
            f"{config.learner.min_transitions} transitions: about "
            f"{-(-config.learner.min_transitions // config.steps)} random episodes of "
            f"{config.steps} steps (--set learner.min_transitions=N for fewer)"
        )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"))  # fmt: skip
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("episodes", total=config.run.episodes, completed=first, info="")

        def show(line: dict[str, Any]) -> None:
            who = f"{line['robot']}  " if "robot" in line else ""
            progress.update(bar, advance=1, info=(
                f"{who}return {line['return']:.1f}  {line['ticks_per_s']:.0f} ticks/s  plan p99 "
                f"{line['plan_ms_p99']} ms  model v{line['model_version']}  "
                f"misses {line['deadline_misses']}"))  # fmt: skip

        def started(loop: ClosedLoop) -> None:
            if loop.dashboard_url is not None:
                progress.console.print(f"dashboard: {loop.dashboard_url}")
            elif config.run.dashboard:
                progress.console.print(f"dashboard: did not start, see {run.log('dashboard')}")

        # SIGTERM stops a run as Ctrl-C does: its service, learner, dashboard and renders stop
        # with it instead of living on without it.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            lines, codes = run_closed_loop(config, run, first_episode=first, on_episode=show,
                                           on_start=started)  # fmt: skip
        except KeyboardInterrupt:
            console.print(f"stopped; resume with --resume {run.root}")
            raise typer.Exit(code=130) from None
        except (RuntimeError, TimeoutError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from exc
    table = Table(title=f"{config.task}: {len(lines)} episodes")
    shown = ("episode", *(("robot",) if config.run.robots > 1 else ()), "return",
             "ticks_per_s", "plan_ms_p99", "deadline_misses", "model_version")  # fmt: skip
    for name in shown:
        table.add_column(name, justify="right")
    for line in lines:
        table.add_row(*(str(round(line[k], 1) if isinstance(line[k], float) else line[k])
                        for k in shown))  # fmt: skip
    console.print(table)
    console.print(f"processes exited: {codes}")
    served = config.resolved_task()
    reference = served.reference_return if served is not None else None
    console.print(f"learning curve: {plot_learning_curve(run, config.task, reference)}")
    if config.run.videos:
        show_videos(run.videos)


def show_videos(directory: Path) -> None:
    """The run's videos, as its ``index.json`` lists them, one line each."""
    from sim_bridge.video import read_index

    videos = read_index(directory)
    if not videos:
        console.print("videos: none (see the warning above)")
    for video in videos:
        score = "" if video.episode_return is None else f", return {video.episode_return:.1f}"
        console.print(f"video ({', '.join(video.tags)}): {directory / video.file}  "
                      f"(episode {video.episode}{score})", soft_wrap=True)  # fmt: skip
