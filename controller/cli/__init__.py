"""The ``tickmpc`` command line. Flags are read here and nowhere else: each command composes
the config tree (controller.config) from its defaults, a ``--config`` file and its flags.

Commands: ``run`` (the closed loop, ``learning.py``), ``serve``, ``bridge``, ``tune``,
``status`` (``service.py``), ``learn`` (``learning.py``), ``dashboard`` (``dashboard.py``),
``model info`` (here).
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from controller.cli import dashboard, learning, service
from controller.cli.common import DEFAULT_DEVICE, app, console

__all__ = ["app", "dashboard", "learning", "main", "service"]

model_app = typer.Typer(help="Inspect exported models.", no_args_is_help=True)
app.add_typer(model_app, name="model")


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
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = DEFAULT_DEVICE,
    as_json: Annotated[bool, typer.Option("--json", help="Print metadata as JSON.")] = False,
) -> None:
    """Print an exported model's metadata and check that it loads and predicts finite values."""
    import numpy as np

    from models.export import ModelFileError
    from models.runtime import OnnxEnsemble, RuntimeConfig

    try:
        runtime = OnnxEnsemble(path, options=RuntimeConfig(device=device))
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


def main() -> None:
    app()
