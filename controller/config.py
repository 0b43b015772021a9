"""The one configuration tree: what a run, the service and the learner are set up with.

``Config`` is composed of the parts' own frozen dataclasses, so no field is declared twice:
``[service]`` (:class:`~controller.service.settings.ServiceConfig`, with its ONNX Runtime
options under ``[service.runtime]``), ``[planner]`` (the live settings, one flat table, see
:mod:`controller.planners.settings`), ``[learner]`` (:class:`~models.learner.LearnerConfig`),
``[policy]`` (:class:`~models.policy.trainer.PolicyTrainerConfig`) and ``[run]`` (what only
``tickmpc run`` uses). A config file is TOML holding any subset of the tree; what it leaves out
keeps the dataclasses' defaults.

Every way in goes through :func:`updated`: the file, ``--set section.name=value`` flags, the
named CLI flags and ``--resume``. An unknown key is refused with the keys allowed there, a
value of the wrong type with the type it needs, and a value out of range with its range (the
dataclasses check their own ranges). Files and flags are read at the entry points only.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from controller.checks import check_bool, check_choice, check_int, check_number, parse_value
from controller.planners.registry import PLANNERS
from controller.planners.settings import PlannerSettings
from controller.service.settings import ServiceConfig
from controller.tasks import AUTO, Task, load_task
from models.learner import LearnerConfig
from models.policy.trainer import PolicyTrainerConfig

T = TypeVar("T")
SOURCES = ("task", "learned")
"""Where a run's reward and termination come from."""
MOVED: dict[str, tuple[str, ...]] = {
    "learner.members": ("learner.model.members",),
    "learner.hidden_layers": ("learner.model.hidden_layers", "learner.model.reward_layers"),
    "learner.hidden_units": ("learner.model.hidden_units", "learner.model.reward_units"),
    "learner.max_epochs": ("learner.train.max_epochs",),
    "learner.max_seconds": ("learner.train.max_seconds",),
    "learner.seed": ("learner.train.seed",),
    **{
        f"policy.{name}": (f"policy.mbpo.{name}",)
        for name in (
            "real_ratio",
            "rollout_batch",
            "k_min",
            "k_max",
            "epoch_start",
            "epoch_end",
            "naive",
            "buffer_versions",
        )
    },
    "policy.layers": ("policy.mbpo.sac.hidden_layers", "policy.bptt.hidden_layers"),
    "policy.units": ("policy.mbpo.sac.hidden_units", "policy.bptt.hidden_units"),
    "policy.batch_size": ("policy.mbpo.sac.batch_size", "policy.bptt.batch"),
    "policy.lr": (
        "policy.mbpo.sac.actor_lr",
        "policy.mbpo.sac.critic_lr",
        "policy.mbpo.sac.alpha_lr",
    ),
    "policy.gamma": ("policy.mbpo.sac.discount", "policy.bptt.discount"),
    "policy.bptt_horizon": ("policy.bptt.horizon",),
    "policy.bptt_lr": ("policy.bptt.lr",),
    "policy.grad_clip": ("policy.bptt.grad_clip",),
    "policy.seed": ("policy.mbpo.seed", "policy.mbpo.sac.seed", "policy.bptt.seed"),
}
"""Keys of earlier versions -> the keys they set now: the learner's and the policy trainer's
configs compose the configs of the parts they feed instead of repeating their fields flat
(under other names, for the policy's). Still read, from files (a run's saved config that
``--resume`` reads again included) and flags alike: the old key sets each new one it stood for
(``learner.hidden_layers`` set the reward network's depth too, ``policy.lr`` the three SAC
learning rates, ``policy.seed`` every part's seed), so an old file means what it meant."""


@dataclass(frozen=True)
class RunConfig:
    """What only ``tickmpc run`` reads: the episodes of the simulated robot."""

    episodes: int = 10
    """Episodes in all (of every robot together), the first ones random (until the learner's
    first model)."""
    robots: int = 1
    """Simulated robots feeding the one store and learner, each running its own episodes at
    the same time (a fleet of ``tickmpc bridge --robots``); 1..64."""
    realtime: bool = False
    """Run the robot on the wall clock (False: lockstep, each step waits for its ACTION and
    each episode for the retrain on everything stored so far; reproducible)."""
    episode_steps: int = 0
    """Truncate episodes here (0: the task's own length)."""
    model_timeout_s: float = 600.0
    """Lockstep: how long to wait for the retrain after an episode."""
    seed: int = 0
    """Seed of the simulated robots' episode resets (episode i uses seed + 1000 i)."""
    max_steps: int = 0
    """Stop after the episode in which the run's real steps reach this many (0: no limit): a
    budget of real steps, for comparing learners whose episodes differ in length."""
    videos: bool = True
    """Record videos of the first, the best and the last episode into the run's ``videos/``
    (a MuJoCo simulation only; rendered by a background process at the lowest priority)."""
    dashboard: bool = False
    """Serve the live dashboard of the run (``tickmpc dashboard``) on loopback while it runs."""
    dashboard_port: int = 8765
    """The dashboard's port (0, or when this one is taken: any free port)."""

    def __post_init__(self) -> None:
        check_int("episodes", self.episodes, 1, 1_000_000)
        check_int("robots", self.robots, 1, 64)
        check_int("max_steps", self.max_steps, 0, 10**12)
        check_bool("realtime", self.realtime)
        check_bool("videos", self.videos)
        check_bool("dashboard", self.dashboard)
        check_int("dashboard_port", self.dashboard_port, 0, 65535)
        check_int("episode_steps", self.episode_steps, 0, 10_000_000)
        check_number("model_timeout_s", self.model_timeout_s, 0.0, 86400.0, low_open=True)
        check_int("seed", self.seed, 0, 2**31 - 1)


@dataclass(frozen=True)
class Config:
    """A whole deployment: the task and every part's settings."""

    task: str = "cartpole-swingup"
    """The task every process of a run serves, learns and simulates: a built-in name, a task
    file ``path/to/file.py[:NAME]``, a module ``package.module:NAME``, a gymnasium id, or
    ``auto`` (serve: from the first robot's HELLO). See :mod:`controller.tasks.loading`."""
    reward: str = "task"
    """"task": the task's reward terms (learned where the task has none); "learned": the model
    predicts the reward from the rewards the robots report, whatever the task says."""
    termination: str = "task"
    """"task": the task's termination (learned where the task asks for it); "learned": the
    model predicts whether a transition ends the episode from the robots' ``terminated``."""
    service: ServiceConfig = field(default_factory=ServiceConfig)
    """The service: its sockets, model directory, store and ONNX Runtime (``[service]``)."""
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    """The planner's live settings, one flat table (``[planner]``; ``tickmpc tune`` changes
    them while it runs)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The model's learner: retrain cadence, gate, architecture, training (``[learner]``)."""
    policy: PolicyTrainerConfig = field(default_factory=PolicyTrainerConfig)
    """The policy trained beside the model (``optimizer = "none"``: none)."""
    run: RunConfig = field(default_factory=RunConfig)
    """What only ``tickmpc run`` reads (``[run]``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.task, str):
            raise ValueError(f"task must be a string, got {self.task!r}")
        check_choice("reward", self.reward, SOURCES)
        check_choice("termination", self.termination, SOURCES)
        task = self.resolved_task()
        if task is None and self.planner.weights:
            raise ValueError("task auto learns its reward: planner.weights must be empty")
        if task is not None:
            task.validated_weights(self.planner.weights)

    def resolved_task(self) -> Task | None:
        """The task as every process runs it: loaded and checked, with its reward and
        termination learned where the config says so; None for ``auto`` (the first robot's
        HELLO says)."""
        if self.task == AUTO:
            return None
        task = load_task(self.task)
        return task.learned(reward=self.reward == "learned",
                            termination=self.termination == "learned")  # fmt: skip

    @property
    def steps(self) -> int:
        """Steps per episode of a run (``auto`` has no length of its own: the robot decides)."""
        task = self.resolved_task()
        return self.run.episode_steps or (task.episode_steps if task is not None else 0)

    def save(self, path: Path) -> None:
        """Write the whole tree as TOML, atomically (a crash leaves the old file or the new)."""
        staged = path.with_name(path.name + ".tmp")
        staged.write_text(tomli_w.dumps(as_dict(self)))
        staged.replace(path)

    @staticmethod
    def load(path: Path, overrides: Mapping[str, Any] | None = None) -> Config:
        """The file's tree and ``overrides`` (flags) over the defaults, checked as one tree
        (so a check across fields sees both); ValueError naming the file.

        When the overrides switch the planner, the file's options of its own planner that the
        new one does not take are dropped (a run's saved config holds every option of the
        planner it ran), as a live switch does."""
        try:
            data = moved(tomllib.loads(path.read_text()))
            flags = moved(overrides or {})
            return updated(Config(), merged(_switched(data, flags), flags))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
            raise ValueError(f"config {path}: {exc}") from exc


def _switched(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the options of its planner that the overrides' planner does not take."""
    saved, wanted = data.get("planner"), overrides.get("planner")
    if not (isinstance(saved, dict) and isinstance(wanted, Mapping)):
        return data
    old, new = saved.get("planner", PlannerSettings.planner), wanted.get("planner")
    if new is None or new == old or new not in PLANNERS or old not in PLANNERS:
        return data  # no switch, or a name the checks will refuse with its own message
    dropped = set(PlannerSettings.names(old)) - set(PlannerSettings.names(new))
    return {**data, "planner": {k: v for k, v in saved.items() if k not in dropped}}


def moved(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with the keys of :data:`MOVED` under their new names; ValueError when a table
    sets an old key and one of its new ones at once (which one was meant?)."""
    out = merged(tree)
    for old, new in MOVED.items():
        section, name = old.split(".")
        table = out.get(section)
        if not isinstance(table, dict) or name not in table:
            continue
        value = table.pop(name)
        for path in new:
            *parents, leaf = path.split(".")
            node = out
            for key in parents:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise ValueError(f"{'.'.join(parents)} must be a table, got {child!r}")
                node = child
            if leaf in node:
                raise ValueError(f"{old} is now {' and '.join(new)}: set one of them, not both")
            node[leaf] = value
    return out


def updated(obj: T, changes: Mapping[str, Any], where: str = "") -> T:
    """``obj`` (a frozen dataclass) with ``changes`` applied, nested tables into nested
    dataclasses; every key and value checked (ValueError naming ``section.key``). At the top
    of a :class:`Config`, the keys of :data:`MOVED` are read under their new names."""
    if not isinstance(changes, Mapping):
        raise ValueError(f"{where.rstrip('.') or 'config'} must be a table, got {changes!r}")
    if isinstance(obj, Config) and not where:
        changes = moved(changes)
    if isinstance(obj, PlannerSettings):  # one flat namespace, shared with live tuning
        try:
            return obj.changed(changes)  # type: ignore[return-value]
        except ValueError as exc:
            raise ValueError(f"{where.rstrip('.')}: {exc}") from None
    assert is_dataclass(obj) and not isinstance(obj, type)
    known = [f.name for f in fields(obj)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {[where + k for k in unknown]}; "
                         f"{where.rstrip('.') or 'the top level'} takes {known}")  # fmt: skip
    hints = typing.get_type_hints(type(obj))
    new: dict[str, Any] = {}
    for name, value in changes.items():
        current = getattr(obj, name)
        if is_dataclass(current):
            new[name] = updated(current, value, f"{where}{name}.")
        else:
            new[name] = _typed(hints[name], value, where + name)
    try:
        return replace(obj, **new)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}" if where else str(exc)) from None


def _typed(hint: Any, value: Any, name: str) -> Any:
    """``value`` as the field's simple type (bool, int, float, str, Path, optional of one);
    other types are left to the dataclass's own checks."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)] or [Any]
    if hint is bool:
        check_bool(name, value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if hint is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ValueError(f"{name} must be a path, got {value!r}")
        return Path(value)
    return value


def as_dict(obj: Any) -> dict[str, Any]:
    """The TOML form of a config tree: nested tables, paths as strings, unset (None) left out
    (so that reading it back gives the same tree)."""
    if isinstance(obj, PlannerSettings):
        items = list(obj.to_dict().items())
    else:
        items = [(f.name, getattr(obj, f.name)) for f in fields(obj)]
    out: dict[str, Any] = {}
    for name, value in items:
        if value is None:
            continue
        if is_dataclass(value):
            out[name] = as_dict(value)
        elif isinstance(value, Path):
            out[name] = str(value)
        elif isinstance(value, Mapping):
            out[name] = dict(value)
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def nested(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``[("planner.horizon", 30)]`` -> ``{"planner": {"horizon": 30}}``."""
    tree: dict[str, Any] = {}
    for path, value in pairs:
        *parents, leaf = keys = path.split(".")
        if not all(keys):
            raise ValueError(f"{path!r} is not a SECTION.NAME path")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path!r} sets a value and a table at once")
        node[leaf] = value
    return tree


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["planner.horizon=30", "service.durable=true"]`` -> a nested table for ``updated``."""
    pairs = []
    for item in items:
        path, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"expected SECTION.NAME=VALUE, got {item!r}")
        pairs.append((path, parse_value(text)))
    return nested(pairs)


def merged(*trees: Mapping[str, Any]) -> dict[str, Any]:
    """Nested tables merged left to right (later values win)."""
    out: dict[str, Any] = {}
    for tree in trees:
        for key, value in tree.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out
