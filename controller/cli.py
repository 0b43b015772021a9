"""The ``tickmpc`` command line. Flags are read here and nowhere else."""

from __future__ import annotations

import json
import time
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from models.export import ModelFileError
from models.runtime import OnnxEnsemble, RuntimeOptions

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


@app.command("run")
def run(
    task: Annotated[str, typer.Option(help="Task name (see controller/tasks).")] = (
        "cartpole-swingup"
    ),
    steps: Annotated[int, typer.Option(help="Random-action transitions to learn from.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed for data, split and training.")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write (default runs/<time>).")
    ] = None,
) -> None:
    """Embedded default (for now): learn a model of a MuJoCo task from random actions.

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
