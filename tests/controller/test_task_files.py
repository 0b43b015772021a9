"""Tasks from outside the package: task files, modules and gymnasium ids, each checked on load;
a bad one is refused with what is wrong."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from controller.config import Config, updated
from controller.run.rundir import RunDir
from controller.run.task_copy import keep_task_copy, resumed_task
from controller.tasks import load_task, task_source

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tasks" / "inverted_double_pendulum.py"

GOOD = """
import torch
from controller.tasks import Task

def terms(obs, act, next_obs):
    return {"upright": next_obs[..., 1].cos(), "ctrl": -(act ** 2).sum(-1)}

TASK = Task(name="toy-arm", obs_dim=3, act_dim=2, action_low=(-1.0, -2.0),
            action_high=(1.0, 2.0), control_period=0.02, episode_steps=100, terms=terms,
            weights={WEIGHTS})
"""


def _file(tmp_path: Path, body: str, name: str = "task.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_the_example_task_file_states_the_environments_reward_and_termination() -> None:
    task = load_task(str(EXAMPLE))
    assert task.name == "inverted-double-pendulum" and task.env_id == "InvertedDoublePendulum-v5"
    env = gym.make(task.env_id)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    ends = 0
    for step in range(400):
        act = rng.uniform(-1.0, 1.0, size=1).astype(np.float32)
        nxt, reward, terminated, truncated, _ = env.step(act)
        x, a, x2 = (torch.tensor(np.asarray(v), dtype=torch.float64)[None] for v in (obs, act, nxt))
        # gymnasium reads the tip from MuJoCo's site position: equal to rounding (~1e-5)
        assert float(task.reward(x, a, x2)[0]) == pytest.approx(reward, abs=1e-4)
        assert task.terminated is not None and bool(task.terminated(x2)[0]) == terminated
        ends += terminated
        obs = nxt
        if terminated or truncated:
            obs, _ = env.reset(seed=step)
    env.close()
    assert ends >= 10  # random actions topple it within tens of steps: both branches seen


def test_a_task_file_by_path_by_name_and_as_a_factory(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD.replace("{WEIGHTS}", '{"upright": 1.0, "ctrl": 0.1}'))
    task = load_task(str(path))
    assert (task.name, task.obs_dim, task.act_dim, dict(task.weights)) == (
        "toy-arm",
        3,
        2,
        {"upright": 1.0, "ctrl": 0.1},
    )
    assert load_task(str(path)) is task  # loaded once per reference and content
    assert load_task(f"{path}:TASK").weights == task.weights  # the attribute by name
    factory = _file(tmp_path, GOOD.replace("{WEIGHTS}", '{"upright": 1.0, "ctrl": 0.1}')
                    .replace("TASK = Task(", "def make():\n    return Task(")
                    .replace("weights={", "        weights={"), "factory.py")  # fmt: skip
    assert load_task(f"{factory}:make").name == "toy-arm"
    source = task_source(f"{path}:TASK")
    assert source is not None and source.path == path.resolve() and source.name == "TASK"
    # The config takes it wherever a task is named, and checks it there.
    assert updated(Config(), {"task": str(path)}).resolved_task() is task


def test_a_task_from_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mylab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "limits.py").write_text("CTRL = 0.1\n")
    body = GOOD.replace("{WEIGHTS}", '{"upright": 2.0, "ctrl": CTRL}')
    _file(package, "from .limits import CTRL\n" + body, "arm.py")  # imported in its package
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("mylab.arm:TASK")
    assert task.name == "toy-arm" and task.weights["upright"] == 2.0
    with pytest.raises(ValueError, match=r"task module mylab\.nothere not found"):
        load_task("mylab.nothere:TASK")


BAD = {
    "bounds of the wrong length": (
        GOOD.replace("action_low=(-1.0, -2.0)", "action_low=(-1.0,)"),
        "action bounds must have 2 entries",
    ),
    "a term that raises": (
        GOOD.replace("next_obs[..., 1].cos()", "next_obs[..., 7].cos()"),
        "the reward terms raise on a batch obs [4, 3, 3], act [4, 3, 2]: IndexError",
    ),
    "a term of the wrong shape": (
        GOOD.replace("-(act ** 2).sum(-1)", "-(act ** 2)"),
        "reward term 'ctrl' returns shape [4, 3, 2] for a batch of shape [4, 3]",
    ),
    "a term that does not export to ONNX": (
        GOOD.replace("-(act ** 2).sum(-1)", "torch.cummax(act, -1).values.sum(-1)"),
        "reward term 'ctrl' does not export to ONNX: DispatchError: No ONNX function found "
        "for <OpOverload(op='aten.cummax'",
    ),
    "a NaN weight": (
        GOOD.replace("{WEIGHTS}", '{"upright": float("nan"), "ctrl": 0.1}'),
        "weight 'upright' is nan: every weight must be finite",
    ),
    "terms the weights do not name": (
        GOOD.replace("{WEIGHTS}", '{"upright": 1.0}'),
        "the reward terms return ['ctrl', 'upright'] but the weights name ['upright']",
    ),
    "a term that branches in Python on values": (
        GOOD.replace(
            "next_obs[..., 1].cos()",
            "(next_obs[..., 1] if bool(next_obs[..., 1].sum() > 1e9) else next_obs[..., 2])",
        ),
        "",  # either refused at export (data-dependent branch) or by the comparison
    ),
    "a termination that is not a flag": (
        GOOD.replace(
            "weights={WEIGHTS})", "weights={WEIGHTS}, terminated=lambda x: x[..., 0].abs())"
        ),
        "terminated returns torch.float32, not a bool tensor",
    ),
    "no task in the file": ("x = 1\n", "defines 0 Task objects and no 'TASK'"),
    "not Python": ("def (:\n", "raised SyntaxError"),
    "not a Task": ("TASK = 42\n", "TASK is a int, not a Task"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_task_file_is_refused_with_what_is_wrong(tmp_path: Path, case: str) -> None:
    body, message = BAD[case]
    path = _file(tmp_path, body.replace("{WEIGHTS}", '{"upright": 1.0, "ctrl": 0.1}'))
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        load_task(str(path))
    assert str(path) in str(refused.value)  # the message names the file
    with pytest.raises(ValueError, match=re.escape(message)):  # the config refuses it alike
        updated(Config(), {"task": str(path)})


def test_a_run_keeps_a_copy_that_loads_as_the_original_did(tmp_path: Path) -> None:
    """The copy's reference names the attribute only where the original did: a file whose
    only Task is not called TASK loads from the copy too."""
    path = _file(tmp_path, GOOD.replace("{WEIGHTS}", '{"upright": 1.0, "ctrl": 0.1}')
                 .replace("TASK = Task(", "ARM = Task("))  # fmt: skip
    run = RunDir(tmp_path / "run")
    config = keep_task_copy(updated(Config(), {"task": str(path)}), run)
    assert config.task == str((tmp_path / "run" / "task" / "task.py").resolve())
    assert resumed_task(run) == config.task
    task = config.resolved_task()
    assert task is not None and task.name == "toy-arm"


def test_auto_takes_no_weights() -> None:
    with pytest.raises(ValueError, match="task auto learns its reward"):
        updated(Config(), {"task": "auto", "planner": {"weights": {"tip": 2.0}}})


def test_unknown_references_are_refused_with_every_way_to_name_a_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path/to/file.py\[:NAME\]"):
        load_task("no-such-task")
    with pytest.raises(ValueError, match="does not exist"):
        load_task(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="defines no 'NOPE'"):
        good = GOOD.replace("{WEIGHTS}", '{"upright": 1.0, "ctrl": 0.1}')
        load_task(f"{_file(tmp_path, good)}:NOPE")


def test_a_gymnasium_id_nobody_wrote_a_task_for() -> None:
    task = load_task("Hopper-v5")
    assert (task.obs_dim, task.act_dim, task.episode_steps) == (11, 3, 1000)
    assert task.control_period == pytest.approx(0.008)  # 0.002 s x frame skip 4
    assert task.action_low == (-1.0,) * 3 and task.action_high == (1.0,) * 3
    assert task.reward_learned and task.termination_learned
    with pytest.raises(ValueError, match="its action space is Discrete, tickmpc needs a Box"):
        load_task("CartPole-v1")
    with pytest.raises(ValueError, match="has no dt"):  # classic control: no control period
        load_task("MountainCarContinuous-v0")


def test_reward_and_termination_learned_on_request() -> None:
    config = updated(Config(), {"task": "inverted-pendulum", "reward": "learned"})
    task = config.resolved_task()
    assert task is not None and task.reward_learned and not task.weights
    assert task.terminated is not None  # the task's own termination stays
    both = updated(config, {"termination": "learned"}).resolved_task()
    assert both is not None and both.termination_learned
    with pytest.raises(ValueError, match="reward must be one of"):
        updated(Config(), {"reward": "guessed"})
    assert updated(Config(), {"task": "auto"}).resolved_task() is None
