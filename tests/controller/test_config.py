"""The one config tree: defaults, files, --set flags and resume all go through one checked path."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from controller.config import MOVED, Config, as_dict, parse_overrides, updated
from controller.planners import OPTIMIZERS, PlannerSettings
from controller.service import ServiceConfig

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
    """A part's config is held whole by the config that feeds it, never repeated field by
    field (under its own name or another): no dataclass of the tree declares a name that a
    part it holds declares too, but for each part's own seed (its own random stream); and the
    flat namespaces (the top level, the planner's) hold each name once."""

    def check(obj: object, where: str) -> None:
        own = {f.name for f in fields(obj)}  # type: ignore[arg-type]
        for f in fields(obj):  # type: ignore[arg-type]
            part = getattr(obj, f.name)
            if is_dataclass(part) and not isinstance(part, PlannerSettings):
                inner = {g.name for g in fields(part)}
                assert own & inner <= {"seed"}, f"{where}{f.name} repeats {own & inner}"
                check(part, f"{where}{f.name}.")

    check(Config(), "")
    names: list[str] = list(as_dict(Config(planner=PlannerSettings()))["planner"])
    for planner in OPTIMIZERS:  # every optimizer's options, not only the default one's
        names += [n for n in PlannerSettings.names(planner) if n not in names]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_every_moved_key_names_keys_that_exist() -> None:
    defaults = as_dict(Config())
    for old, new in MOVED.items():
        section, name = old.split(".")
        assert name not in defaults[section], f"{old} is still a key"
        for path in new:
            node = defaults
            for key in path.split("."):
                assert isinstance(node, dict) and key in node, f"{old} -> {path}"
                node = node[key]


def test_a_run_config_saved_with_the_policys_old_flat_keys_still_loads(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text(
        '[policy]\noptimizer = "sac"\nupdates_per_step = 10\nreal_ratio = 0.1\n'
        "rollout_batch = 400\nk_max = 5\nlayers = 3\nunits = 64\nbatch_size = 32\n"
        "lr = 0.001\ngamma = 0.9\nbptt_horizon = 7\nbptt_lr = 0.01\ngrad_clip = 2.0\nseed = 3\n"
    )
    policy = Config.load(old).policy
    mbpo, sac, bptt = policy.mbpo, policy.mbpo.sac, policy.bptt
    assert (policy.optimizer, policy.updates_per_step) == ("sac", 10)
    assert (mbpo.real_ratio, mbpo.rollout_batch, mbpo.k_max, mbpo.seed) == (0.1, 400, 5, 3)
    assert (sac.hidden_layers, sac.hidden_units, sac.batch_size, sac.discount) == (3, 64, 32, 0.9)
    assert (sac.actor_lr, sac.critic_lr, sac.alpha_lr, sac.seed) == (0.001, 0.001, 0.001, 3)
    assert (bptt.horizon, bptt.lr, bptt.grad_clip, bptt.batch) == (7, 0.01, 2.0, 32)
    assert (bptt.hidden_layers, bptt.hidden_units, bptt.discount, bptt.seed) == (3, 64, 0.9, 3)
    defaults = Config().policy
    assert defaults.mbpo.rollout_batch == 100_000  # the trainer's default, as before
    with pytest.raises(ValueError, match=r"policy.lr is now policy.mbpo.sac.actor_lr and "):
        updated(Config(), {"policy": {"lr": 0.1, "mbpo": {"sac": {"actor_lr": 0.2}}}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['policy.mbpo.updates_per_step'\]"):
        updated(Config(), {"policy": {"mbpo": {"updates_per_step": 5}}})  # the trainer's G


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
    assert cli.DEFAULT_CONTROL == ServiceConfig().control
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
