"""Planning for several robots at once (controller.planners.batch): every robot's candidates
scored in one rollout run from its own state, each robot's plan what it would plan alone,
budgets kept per robot; and per-robot settings over the control socket.

Real ONNX Runtime sessions over the exact pendulum (identical members, mean propagation: a
candidate's return does not depend on the rollout's random draws, so a robot's plan in a batch
can be compared with its plan alone)."""

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from controller.planners import Plan, Planner, PlannerSettings
from controller.planners.base import IterationCost
from controller.planners.batch import PlanRequest, plan_together
from controller.rollout.evaluator import RolloutEvaluator
from controller.rollout.settings import RolloutSettings
from controller.service import MPCService, ServiceConfig
from controller.service.control import request
from controller.tasks import get_task
from models.policy.export import PolicyRuntime
from models.store import TransitionReader
from sim_bridge import protocol as p
from sim_bridge.fleet import fleet_ids
from sim_bridge.link import BridgeLink
from tests.controller.known_models import export_pendulum
from tests.controller.policy_models import OBS, PolicyFiles
from tests.controller.service_fixtures import (
    CARTPOLE,
    LOOPBACK,
    SPEC,
    TICKMPC,
    Running,
    publish_cartpole,
    reply_to,
    send_state,
    start_service,
    stop_service,
)

PENDULUM = get_task("pendulum")
MEAN = RolloutSettings(sample=False)
"""Mean propagation: with identical members, a return does not depend on the draws."""
STATES = [
    np.array([np.cos(0.3), np.sin(0.3), 0.5]),
    np.array([np.cos(-2.0), np.sin(-2.0), -1.0]),
    np.array([np.cos(3.0), np.sin(3.0), 0.0]),
]


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> RolloutEvaluator:
    path = export_pendulum(tmp_path_factory.mktemp("fleet") / "pendulum.onnx")
    return RolloutEvaluator(path, PENDULUM)


class Counted:
    """The evaluator's ``evaluate``, counted: how many rollout runs a round took."""

    def __init__(self, evaluator: RolloutEvaluator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        real = evaluator.evaluate

        def evaluate(obs: np.ndarray, actions: np.ndarray, *args: Any, **kw: Any) -> np.ndarray:
            self.calls.append(len(actions))
            return real(obs, actions, *args, **kw)

        monkeypatch.setattr(evaluator, "evaluate", evaluate)


@pytest.mark.parametrize(
    ("propagation", "device_random"),
    [("ts1", False), ("tsinf", False), ("expectation", False), ("ts1", True)],
)
def test_each_candidate_starts_from_its_own_state(
    evaluator: RolloutEvaluator, propagation: str, device_random: bool
) -> None:
    if device_random:
        evaluator = RolloutEvaluator(evaluator.path, PENDULUM, device_random=True)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, (6, 10, 1)).astype(np.float32)
    settings = RolloutSettings(propagation=propagation, sample=False, particles=2)
    alone = [evaluator.evaluate(obs, actions, settings, rng) for obs in STATES[:2]]
    starts = np.repeat(np.stack(STATES[:2]), 3, axis=0)  # candidates 0-2 from one, 3-5 the other
    together = evaluator.evaluate(starts, actions, settings, rng)
    np.testing.assert_allclose(together[:3], alone[0][:3], rtol=1e-5)
    np.testing.assert_allclose(together[3:], alone[1][3:], rtol=1e-5)
    assert not np.allclose(alone[0], alone[1], rtol=1e-3)


def _planners(evaluator: RolloutEvaluator, settings: list[PlannerSettings]) -> list[Planner]:
    return [Planner(evaluator, s) for s in settings]


def _requests(planners: list[Planner], states: list[np.ndarray]) -> list[PlanRequest]:
    return [PlanRequest(pl, obs) for pl, obs in zip(planners, states, strict=True)]


def test_robots_planned_together_plan_what_each_plans_alone(
    evaluator: RolloutEvaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three robots (CEM, iCEM with another population, MPPI; other seeds), one batch: one
    rollout run per round, and each robot's plan is its plan alone, twice in a row (the warm
    starts carry)."""
    settings = [
        PlannerSettings(
            planner="cem", horizon=12, population=40, iterations=3, seed=1, rollout=MEAN
        ),
        PlannerSettings(
            planner="icem", horizon=12, population=24, iterations=3, seed=2, rollout=MEAN
        ),
        PlannerSettings(
            planner="mppi", horizon=12, population=30, iterations=2, seed=3, rollout=MEAN
        ),
    ]
    alone = _planners(evaluator, settings)
    want = [[pl.plan(obs) for pl, obs in zip(alone, STATES, strict=True)] for _ in range(2)]
    counted = Counted(evaluator, monkeypatch)
    fleet = _planners(evaluator, settings)
    for turn in range(2):
        plans = plan_together(_requests(fleet, STATES), IterationCost())
        for got, solo in zip(plans, want[turn], strict=True):
            np.testing.assert_allclose(got.actions, solo.actions, atol=1e-5)
            assert (got.iterations, got.candidates, got.planner) == (
                solo.iterations, solo.candidates, solo.planner)  # fmt: skip
            assert got.predicted_return == pytest.approx(solo.predicted_return, rel=1e-5)
    # Rounds 1-2 hold all three robots' candidates (the iCEM population shrinks), round 3
    # the two left; twice.
    assert len(counted.calls) == 6
    assert counted.calls[0] == 40 + 24 + 30 and counted.calls[2] < 40 + 24


def test_robots_tuned_differently_are_scored_in_their_own_runs(
    evaluator: RolloutEvaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = PlannerSettings(planner="cem", horizon=10, population=20, iterations=2, rollout=MEAN)
    settings = [base, base.changed({"horizon": 6}), base.changed({"seed": 9})]
    want = [pl.plan(obs).actions for pl, obs in zip(_planners(evaluator, settings), STATES,
                                                      strict=True)]  # fmt: skip
    counted = Counted(evaluator, monkeypatch)
    fleet = _planners(evaluator, settings)
    plans = plan_together(_requests(fleet, STATES), IterationCost())
    for got, solo in zip(plans, want, strict=True):
        np.testing.assert_allclose(got.actions, solo, atol=1e-5)
    assert sorted(counted.calls) == [20, 20, 40, 40]  # horizon 6 alone; the seeds share a run


def test_a_realtime_robot_leaves_at_its_deadline_and_is_answered_first(
    evaluator: RolloutEvaluator,
) -> None:
    """With a cost estimate that makes a round 50 ms, a robot with a 20 ms budget leaves with
    no iteration (the previous plan shifted), answered at once; a lockstep robot beside it runs
    all its iterations."""
    settings = PlannerSettings(planner="cem", horizon=10, population=20, iterations=3, rollout=MEAN)
    fleet = _planners(evaluator, [settings, settings])
    cost = IterationCost(spread=0.0)
    rows = evaluator.rows(40, 10, settings.rollout)
    cost.update(rows, 0.05)
    order: list[tuple[int, Plan]] = []
    requests = [PlanRequest(fleet[0], STATES[0], 0.02), PlanRequest(fleet[1], STATES[1])]
    plans = plan_together(requests, cost, lambda i, plan: order.append((i, plan)))
    assert [i for i, _ in order] == [0, 1]
    assert plans[0].fallback and plans[0].deadline_miss and plans[0].iterations == 0
    assert plans[1].iterations == 3 and not plans[1].fallback
    # The lockstep robot alone now: its rounds got cheaper, and the estimate learned it.
    assert cost.predict(rows) is not None and cost.predict(rows) < 0.05


def test_the_robot_with_the_least_time_left_leaves_and_the_other_fits(
    evaluator: RolloutEvaluator,
) -> None:
    """A round that fits neither of two realtime robots: the one whose state came first (the
    most of its budget used) leaves, and the round is predicted again for the other one alone,
    which then fits."""
    settings = PlannerSettings(planner="cem", horizon=10, population=20, iterations=2, rollout=MEAN)
    fleet = _planners(evaluator, [settings, settings])
    rows = evaluator.rows(20, 10, settings.rollout)
    cost = IterationCost(spread=0.0)
    cost.update(rows, 0.03)  # one robot's round 30 ms, two robots' 60 ms
    now = time.perf_counter()
    requests = [PlanRequest(fleet[0], STATES[0], 0.045, start=now - 0.01),
                PlanRequest(fleet[1], STATES[1], 0.045, start=now)]  # fmt: skip
    order: list[int] = []
    a, b = plan_together(requests, cost, lambda i, _: order.append(i))
    assert a.fallback and not b.fallback and b.iterations >= 1 and order == [0, 1]


def test_a_robot_arriving_mid_pass_joins_the_batch(
    evaluator: RolloutEvaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state that arrives while the others plan joins at the next round: it is planned as
    it would be alone, sharing the later rounds' runs, and answered after its own iterations."""
    settings = PlannerSettings(planner="cem", horizon=10, population=20, iterations=3, rollout=MEAN)
    late_settings = settings.changed(seed=7)
    want = Planner(evaluator, late_settings).plan(STATES[1]).actions
    fleet = _planners(evaluator, [settings, late_settings])
    arrivals = [[], [PlanRequest(fleet[1], STATES[1])]]  # nothing before round 2, then one
    counted = Counted(evaluator, monkeypatch)
    order: list[int] = []
    plans = plan_together([PlanRequest(fleet[0], STATES[0])], IterationCost(),
                          lambda i, _: order.append(i),
                          lambda: arrivals.pop(0) if arrivals else [])  # fmt: skip
    assert order == [0, 1] and [p.iterations for p in plans] == [3, 3]
    np.testing.assert_allclose(plans[1].actions, want, atol=1e-5)
    assert counted.calls == [20, 20, 40, 20, 20]  # alone, alone, together, then the late one


def test_policy_proposals_of_several_robots_follow_each_robots_state(
    policy_evaluator: RolloutEvaluator, policy_files: PolicyFiles
) -> None:
    """Proposals only, no noise: each robot plans the policy's action at its own state, though
    all proposals go first in the shared run."""
    settings = PlannerSettings(planner="cem", horizon=8, population=12, iterations=2)
    policy = settings.changed(policy_share=1.0, policy_noise=0.0)
    states = [OBS, np.array([np.cos(-1.0), np.sin(-1.0), 2.0], np.float32)]
    fleet = [Planner(policy_evaluator, policy), Planner(policy_evaluator, policy.changed(seed=4))]
    plans = plan_together(_requests(fleet, states), IterationCost())
    runtime = PolicyRuntime(policy_files.policy)
    for plan, state in zip(plans, states, strict=True):
        np.testing.assert_allclose(plan.action, runtime.predict(state)[0], atol=2e-5)
    assert abs(float(plans[0].action[0] - plans[1].action[0])) > 1e-3


# --- per-robot settings over the control socket ------------------------------------------


@pytest.fixture
def two_robots(tmp_path: Path) -> Iterator[tuple[Running, BridgeLink, BridgeLink]]:
    publish_cartpole(tmp_path / "models")
    running = start_service(tmp_path)
    links = []
    for name in ("cart-a", "cart-b"):
        link = BridgeLink(running.endpoint, replace(SPEC, robot=name), "lockstep")
        link.connect(10.0)
        links.append(link)
    yield running, links[0], links[1]
    for link in links:
        link.close()
    stop_service(running)


def _tick(link: BridgeLink, step: int) -> p.Message:
    send_state(link, step, np.array([0.0, 3.0, 0.0, 0.0]), None if step == 0 else 0.0)
    return reply_to(link)


def test_one_robot_is_tuned_alone_and_every_robot_together(
    two_robots: tuple[Running, BridgeLink, BridgeLink],
) -> None:
    running, a, b = two_robots
    control = running.control
    assert _tick(a, 0)["horizon"] == _tick(b, 0)["horizon"] == 15
    mine = request(control, "set", changes={"horizon": 6}, robot="cart-a")["settings"]
    assert mine["horizon"] == 6
    assert (_tick(a, 1)["horizon"], _tick(b, 1)["horizon"]) == (6, 15)
    assert request(control, "get", robot="cart-a")["settings"]["horizon"] == 6
    assert request(control, "get")["settings"]["horizon"] == 15  # what new robots start with
    # Every robot: the names given change everywhere; cart-a keeps its own horizon.
    every = request(control, "set", changes={"iterations": 1})["settings"]
    assert (every["iterations"], every["horizon"]) == (1, 15)
    ra, rb = _tick(a, 2), _tick(b, 2)
    assert (ra["horizon"], ra["iterations"], rb["horizon"], rb["iterations"]) == (6, 1, 15, 1)
    # A refused change to one robot changes nothing anywhere.
    with pytest.raises(p.ProtocolError, match="bad_setting: horizon"):
        request(control, "set", changes={"horizon": 0}, robot="cart-b")
    status = request(control, "status")
    robots = status["robots"]
    assert robots["cart-a"]["settings"]["horizon"] == 6
    assert robots["cart-b"]["settings"] == status["settings"]
    only = request(control, "status", robot="cart-b")["robots"]
    assert list(only) == ["cart-b"]
    with pytest.raises(p.ProtocolError, match="bad_field: robot 'cart-c' is not connected"):
        request(control, "get", robot="cart-c")


# --- a fleet of simulated robots in one bridge process -----------------------------------


def test_fleet_ids_count_up_from_the_first() -> None:
    assert fleet_ids("sim-0", 3) == ["sim-0", "sim-1", "sim-2"]
    assert fleet_ids("arm7", 2) == ["arm7", "arm8"]
    assert fleet_ids("cart", 2) == ["cart-0", "cart-1"] and fleet_ids("cart", 1) == ["cart"]
    with pytest.raises(ValueError, match="at least one robot"):
        fleet_ids("cart", 0)


def test_one_bridge_process_runs_a_fleet_planned_together(served: Running) -> None:
    """``tickmpc bridge --robots 3`` in lockstep: three robots with their own ids and seeds,
    every tick answered, and the service planning them in shared passes."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(served.service.endpoints["telemetry"])
    sub.subscribe(p.TELEMETRY_TOPIC)
    time.sleep(0.3)  # the subscription reaches the service
    done = subprocess.run(
        [*TICKMPC, "bridge", "--robots", "3", "--robot", "cart-0", "--mode", "lockstep",
         "--episodes", "1", "--connect", served.endpoint],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(x) for x in done.stdout.strip().splitlines()]
    assert [x["robot"] for x in lines] == ["cart-0", "cart-1", "cart-2"]
    assert all(x["actions"] == 200 and x["safe_actions"] == 0 for x in lines)
    records = []
    while sub.poll(1000):
        records.append(p.parse_telemetry(sub.recv_multipart()))
    sub.close()
    assert len(records) == 600 and {r["robot"] for r in records} == {"cart-0", "cart-1", "cart-2"}
    assert all(r["rows"] > 0 and 1 <= r["batch"] <= 3 for r in records)
    # Lockstep robots that start together send their states together: most passes hold all.
    assert sum(r["batch"] == 3 for r in records) > 300
    robots = served.service.status()["robots"]
    assert all(robots[name]["transitions"] == 200 for name in ("cart-0", "cart-1", "cart-2"))
    data = TransitionReader(served.root / "store").read_all()
    starts = {tuple(data.obs[data.episode == e][0]) for e in set(data.episode.tolist())}
    assert len(starts) == 3  # own seeds: own resets


def test_robots_with_one_seed_draw_their_own_streams(tmp_path: Path) -> None:
    """No model yet: every robot explores with uniform draws, each from its own stream of the
    one seed (the same seed for every robot would make a fleet collect one data set N times)."""
    running = start_service(tmp_path)
    links = [BridgeLink(running.endpoint, replace(SPEC, robot=name), "lockstep")
             for name in ("cart-a", "cart-b")]  # fmt: skip
    try:
        for link in links:
            link.connect(10.0)
        first = [float(_tick(link, 0)["action"][0]) for link in links]
        assert first[0] != first[1]
    finally:
        for link in links:
            link.close()
        stop_service(running)


def test_a_state_beyond_float32_is_refused_and_the_others_are_served(
    two_robots: tuple[Running, BridgeLink, BridgeLink],
) -> None:
    _, a, b = two_robots
    send_state(a, 0, np.array([0.0, 1e300, 0.0, 0.0]))
    error = reply_to(a)
    assert error.type == p.ERROR and error["code"] == "bad_array" and "float32" in error["reason"]
    assert _tick(b, 0).type == p.ACTION and _tick(a, 0).type == p.ACTION


def test_a_new_episode_arriving_mid_plan_starts_cold_after_the_plan_in_flight(
    tmp_path: Path,
) -> None:
    """A realtime robot's new-episode STATE read while its own plan is in flight (the batch's
    admission between rounds) resets its planner only at the next plan: the plan in flight
    must not put the old episode's warm start back. Seen through a fallback (a budget no
    iteration fits), which sends the previous plan shifted: for a new episode, the middle of
    the bounds."""
    publish_cartpole(tmp_path / "models")
    long_plan = PlannerSettings(planner="cem", horizon=15, population=400, iterations=40,
                                budget_ms=60_000.0)  # fmt: skip
    service = MPCService(CARTPOLE, ServiceConfig(
        endpoint=LOOPBACK, control=LOOPBACK, telemetry=LOOPBACK, models=tmp_path / "models",
        store=tmp_path / "store", stale_after_s=60.0), long_plan)  # fmt: skip
    service.start()
    link = BridgeLink(service.endpoints["endpoint"], SPEC, "realtime")
    try:
        while not link.welcomed:  # a HELLO sent before the socket connected is dropped
            link.say_hello()
            service.step()
            link.receive(0.05)
        send_state(link, 0, np.array([0.1, 0.0, 0.3, 0.0]), episode=1)
        first_pass = threading.Thread(target=service.step)
        first_pass.start()
        time.sleep(0.3)  # the first plan is under way: 40 iterations of 400 candidates
        send_state(link, 0, np.zeros(4), episode=2)
        first_pass.join(60)
        first = reply_to(link)
        assert first.episode == 1 and first["iterations"] > 1, "no plan in flight to admit into"
        assert service.status()["robots"]["probe"]["episode"] == 2, "the new episode was not read"
        service.fleet.apply({"budget_ms": 0.001})  # nothing fits: the fallback shows the start
        for _ in range(5):
            service.step()
        second = reply_to(link)
        assert second.episode == 2 and second["fallback"]
        np.testing.assert_array_equal(second["action"], [0.0])  # cold: the middle of [-1, 1]
    finally:
        link.close()
        service.close()
