"""The one config tree: defaults, files, --set flags and resume all go through one checked path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.config import Config, as_dict, parse_overrides, updated
from controller.planners import OPTIMIZERS, PlannerSettings
from controller.service import ServiceSettings

TICKMPC = [sys.executable, "-m", "controller.cli"]


def test_the_tree_round_trips_through_its_file(tmp_path: Path) -> None:
    config = updated(Config(), parse_overrides([
        "task=pendulum", "planner.planner=icem", "planner.noise_beta=3",
        "planner.weights.ctrl=0.5", "service.durable=true", "service.runtime.device=auto",
        f"service.store={tmp_path / 'store'}", "learner.members=3", "run.episodes=4",
    ]))  # fmt: skip
    assert config.planner.options.noise_beta == 3.0 and config.service.durable
    assert config.service.store == tmp_path / "store"
    config.save(tmp_path / "config.toml")
    assert Config.load(tmp_path / "config.toml") == config


def test_no_field_is_declared_twice() -> None:
    """Every setting name appears once in the whole tree, but for each part's own seed."""
    names: list[str] = []

    def leaves(table: dict[str, object]) -> None:
        for name, value in table.items():
            if isinstance(value, dict) and name not in ("weights", "preprocess"):
                leaves(value)
            else:
                names.append(name)

    leaves(as_dict(updated(Config(), {"planner": {"budget_ms": 30.0}})))
    for planner in OPTIMIZERS:  # every optimizer's options, not only the default one's
        names += [n for n in PlannerSettings.names(planner) if n not in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    # Each part's own: the seeds of the run's resets, the planner, the learner's training and
    # the policy; the batch of the model's training and of the policy's updates.
    assert repeated == ["batch_size", "seed"]
    assert names.count("seed") == 4 and names.count("batch_size") == 2


def test_a_run_config_saved_with_the_learners_old_flat_keys_still_loads(tmp_path: Path) -> None:
    """Before the learner's config composed the ensemble's and the training's, a saved run
    (what ``tickmpc run --resume`` reads again) and ``--set`` flags wrote them flat."""
    old = tmp_path / "old.toml"
    old.write_text(
        "[learner]\nmembers = 3\nhidden_layers = 2\nhidden_units = 64\n"
        "max_epochs = 80\nmax_seconds = 30.0\nseed = 7\nmin_transitions = 50\n"
    )
    config = Config.load(old)
    model, train = config.learner.model, config.learner.train
    assert (model.members, model.hidden_layers, model.hidden_units) == (3, 2, 64)
    assert (model.reward_layers, model.reward_units) == (2, 64)  # as the flat keys set them
    assert (train.max_epochs, train.max_seconds, train.seed) == (80, 30.0, 7)
    assert config.learner.min_transitions == 50
    flags = parse_overrides(["learner.members=3", "learner.hidden_layers=2",
                             "learner.hidden_units=64", "learner.max_epochs=80",
                             "learner.max_seconds=30.0", "learner.seed=7",
                             "learner.min_transitions=50"])  # fmt: skip
    assert updated(Config(), flags) == config
    config.save(tmp_path / "new.toml")  # written under the new keys, read back the same
    saved = (tmp_path / "new.toml").read_text()
    assert "[learner.model]" in saved and "[learner.train]" in saved
    assert Config.load(tmp_path / "new.toml") == config
    assert (
        Config.load(old, moved_flags := {"learner": {"max_epochs": 5}}).learner.train.max_epochs
        == 5
    )
    assert moved_flags == {"learner": {"max_epochs": 5}}  # the caller's tree is left alone


def test_a_file_and_flags_are_checked_as_one_tree(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[service]\nendpoint = "tcp://0.0.0.0:5555"\nkeys = "k.key_secret"\n'
                    'clients = "clients"\n[planner]\nnoise_beta = 2.5\n')  # fmt: skip
    both = Config.load(path, {"service": {"allow_remote": True}, "planner": {"planner": "icem"}})
    assert both.service.allow_remote and both.planner.options.noise_beta == 2.5
    with pytest.raises(ValueError, match="allow_remote"):
        Config.load(path, {"planner": {"planner": "icem"}})
    Config().save(path)  # a saved run holds every option of its planner (CEM)...
    switched = Config.load(path, {"planner": {"planner": "mppi", "temperature": 2.0}})
    assert switched.planner.options.temperature == 2.0  # ...which a switch leaves behind


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[planner]\nhorizn = 3\n", r"unknown setting\(s\) \['horizn'\]"),
        ("[service]\nflush_s = 1.0\n", r"unknown key\(s\) \['service.flush_s'\]; service takes"),
        ("[service.runtime]\ndevice = 'tpu'\n", "device must be one of"),
        ("[run]\nepisodes = 0\n", r"episodes must be an integer in \[1, "),
        ("[run]\nrealtime = 'yes'\n", "run.realtime must be true or false"),
        ("[learner]\nmembers = 2.5\n", "learner.model.members must be an integer"),
        ("[learner.model]\nmembers = 2.5\n", "learner.model.members must be an integer"),
        (
            "[learner]\nmembers = 3\n[learner.model]\nmembers = 4\n",
            "learner.members is now learner.model.members: set one of them, not both",
        ),
        ("task = 'no-such-task'\n", "no-such-task"),
        ("[nope]\nx = 1\n", r"unknown key\(s\) \['nope'\]; the top level takes"),
        ("planner = 3\n", "planner must be a table"),
        ("[planner\n", "config .*config.toml"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Config.load(path)


def test_the_cli_refuses_a_bad_flag_or_file_with_its_name(tmp_path: Path) -> None:
    bad = subprocess.run([*TICKMPC, "serve", "--set", "planner.horizon=0", "--duration", "1"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1 and "horizon must be an integer in [1, 500]" in bad.stderr
    path = tmp_path / "c.toml"
    path.write_text("[learner]\nmax_epoch = 3\n")
    out = subprocess.run([*TICKMPC, "learn", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and "learner.max_epoch" in out.stderr


def test_cli_defaults_are_the_dataclass_defaults() -> None:
    from controller.cli import common as cli

    assert cli.DEFAULTS == as_dict(Config())
    assert cli.DEFAULT_CONTROL == ServiceSettings().control
    help_text = subprocess.run([*TICKMPC, "run", "--help"], capture_output=True, text=True,
                               timeout=120, env={"COLUMNS": "200", "PATH": ""}).stdout  # fmt: skip
    assert f"(default: {PlannerSettings().horizon})" in help_text


def test_resume_refuses_a_run_config_with_an_unknown_key(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(
        'task = "cartpole-swingup"\n[run]\nepisodes = 3\nhorizon = 5\n'
    )
    out = subprocess.run([*TICKMPC, "run", "--resume", str(run)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and "run.horizon" in out.stderr and "config" in out.stderr
