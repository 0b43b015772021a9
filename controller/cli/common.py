"""What the commands share: the app, the config tree composed from defaults, file and flags,
the defaults the flags show (read from the config's dataclasses), and the control client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from controller.config import MOVED, Config, as_dict, merged, nested, parse_overrides, updated

if TYPE_CHECKING:
    from sim_bridge.curve import CurveClient

app = typer.Typer(
    help="tickmpc: real-time MPC with a learned probabilistic ensemble in ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

DEFAULTS = as_dict(Config())
"""The default config tree: every CLI default is read from it (so from the dataclasses)."""


def default_of(path: str) -> Any:
    """The dataclass default of a config field (``service.endpoint``)."""
    node: Any = DEFAULTS
    path = MOVED.get(path, (path,))[0]  # a flag may still name a key by its old name
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def help_text(text: str, path: str) -> str:
    return f"{text} (default: {default_of(path)})"


def compose(config_file: Path | None, sets: list[str] | None, named: dict[str, Any]) -> Config:
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


TASK_HELP = (
    "The task: a built-in name, path/to/file.py[:NAME], package.module:NAME or a gymnasium id"
)
TaskOption = Annotated[str | None, typer.Option("--task", help=help_text(TASK_HELP + ".", "task"))]
RewardOption = Annotated[
    str | None,
    typer.Option(help=help_text("task (the task's terms) or learned (from the robots' rewards).",
                                "reward")),
]  # fmt: skip
TerminationOption = Annotated[
    str | None,
    typer.Option(help=help_text("task (the task's own) or learned (from the robots' flags).",
                                "termination")),
]  # fmt: skip

PolicyOption = Annotated[
    str | None,
    typer.Option("--policy", help=help_text(
        "Train a policy beside the model: sac (MBPO: SAC on short model rollouts), bptt "
        "(backprop through the model) or none. Act with it: --planner policy.",
        "policy.optimizer")),
]  # fmt: skip

DEFAULT_TASK = default_of("task")
DEFAULT_ENDPOINT = default_of("service.endpoint")
DEFAULT_CONTROL = default_of("service.control")
DEFAULT_DEVICE = default_of("service.runtime.device")


ControlOption = Annotated[str, typer.Option(help="The service's control socket.")]
KeysOption = Annotated[
    Path | None,
    typer.Option("--keys", help="This client's CurveZMQ key pair (a .key_secret file of "
                 "tickmpc keys), for a service that requires CurveZMQ."),
]  # fmt: skip
ServerKeyOption = Annotated[
    Path | None,
    typer.Option("--server-key", help="The service's public key (its .key file); default: "
                 "--keys is the service's own pair."),
]  # fmt: skip


def client_keys(keys: Path | None, server_key: Path | None) -> CurveClient | None:
    """The CurveZMQ client of ``--keys`` and ``--server-key`` (None without ``--keys``); a
    file that is not a key ends the command with the reason."""
    from sim_bridge.curve import CurveClient

    if keys is None:
        if server_key is not None:
            raise typer.BadParameter("--server-key goes with --keys (this client's key pair)")
        return None
    try:
        return CurveClient.load(keys, server_key)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


def assignments(items: list[str] | None) -> dict[str, Any]:
    """``tune``'s NAME=VALUE arguments as the changes of a ``set`` request."""
    from controller.service.control import parse_assignments

    try:
        return parse_assignments(items or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def control_request(
    endpoint: str, cmd: str, curve: CurveClient | None = None, **fields: Any
) -> dict[str, Any]:
    """One control request; a refusal or no answer ends the command with the reason."""
    from controller.service.control import request

    try:
        return request(endpoint, cmd, curve=curve, **fields)
    except (TimeoutError, ValueError) as exc:  # a refusal is a ProtocolError: "code: reason"
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
