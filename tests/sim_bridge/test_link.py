"""BridgeLink and describe on real sockets, against a scripted controller: the WELCOME spec is
remembered or refused, DESCRIBE is answered, and dropped sends, wrong-length ACTIONs and late
ACTIONs are each counted as what they are."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import zmq

from sim_bridge import protocol as p
from sim_bridge.hardware import BridgeSettings, HardwareBridge, Reading
from sim_bridge.link import BridgeLink, Refused, RobotSpec, describe

SPEC = RobotSpec("toy-1", "toy", 2, 1, (-1.0,), (1.0,), 0.02)
SERVED: dict[str, Any] = {
    "task": "toy", "obs_dim": 2, "act_dim": 1, "control_period": 0.02, "episode_steps": 50,
    "learns_reward": False,
    "action_low": (-1.0,), "action_high": (1.0,),
}  # fmt: skip
"""What a controller serving SPEC's task says in SPEC and WELCOME."""


class Controller:
    """A ROUTER on loopback that the test drives message by message."""

    def __init__(self) -> None:
        self.router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.endpoint: str = self.router.getsockopt_string(zmq.LAST_ENDPOINT)

    def receive(self, timeout_s: float = 5.0) -> tuple[bytes, p.Message]:
        assert self.router.poll(int(timeout_s * 1000)), "nothing from the bridge"
        identity, *frames = self.router.recv_multipart()
        return identity, p.decode(frames)

    def send(self, identity: bytes, msg: p.Message) -> None:
        self.router.send_multipart([identity, *p.encode(msg)])

    def welcome(self, identity: bytes, **spec_changes: Any) -> None:
        spec = SERVED | spec_changes
        self.send(identity, p.make(p.WELCOME, SPEC.robot, model_version=0, planner="cem",
                                   horizon=10, budget_ms=15.0, **spec))  # fmt: skip

    def action(self, identity: bytes, state: p.Message, action: Any, answers: int) -> None:
        self.send(identity, p.make(
            p.ACTION, state.robot, seq=state.seq, episode=state.episode, answers=answers,
            planner="cem", horizon=10, iterations=3, predicted_return=None, plan_ms=1.0,
            model_version=0, deadline_miss=False, fallback=False, nonfinite=0, action=action,
        ))  # fmt: skip


@pytest.fixture
def controller() -> Iterator[Controller]:
    served = Controller()
    yield served
    served.router.close(linger=0)


@pytest.fixture
def link(controller: Controller) -> Iterator[BridgeLink]:
    connected = BridgeLink(controller.endpoint, SPEC, "lockstep")
    yield connected
    connected.close()


def welcomed(controller: Controller, link: BridgeLink, **spec_changes: Any) -> bytes:
    """Connect ``link`` through a HELLO answered with WELCOME; the link's routing id."""
    answered: list[bytes] = []

    def answer() -> None:
        identity, hello = controller.receive()
        assert hello.type == p.HELLO
        controller.welcome(identity, **spec_changes)
        answered.append(identity)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        link.connect(timeout_s=5.0)
    finally:
        thread.join()
    return answered[0]


def test_welcome_spec_is_remembered(controller: Controller, link: BridgeLink) -> None:
    welcomed(controller, link)
    assert link.welcomed and link.served_spec == SERVED


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"act_dim": 2, "action_low": (-1.0, -1.0), "action_high": (1.0, 1.0)}, "dims"),
     ({"action_high": (2.0,)}, "action_high [2.0]"), ({"control_period": 0.05}, "period 0.05")],
)  # fmt: skip
def test_a_welcome_to_another_spec_is_refused(
    controller: Controller, link: BridgeLink, changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(Refused, match="WELCOME to another task") as info:
        welcomed(controller, link, **changes)
    assert named in str(info.value) and not link.welcomed and link.served_spec is None


def test_a_welcome_within_the_tolerances_and_under_an_alias_is_accepted(
    controller: Controller, link: BridgeLink
) -> None:
    welcomed(controller, link, task="toy-v0", control_period=0.02 * (1 + p.PERIOD_RTOL / 2),
             action_low=(-1.0 - p.BOUNDS_ATOL / 2,))  # fmt: skip
    assert link.welcomed


def test_describe_asks_again_until_answered(controller: Controller, link: BridgeLink) -> None:
    def answer_the_second() -> None:
        controller.receive()  # the first DESCRIBE goes unanswered
        identity, ask = controller.receive()
        assert (ask.type, ask.robot, dict(ask.fields)) == (p.DESCRIBE, SPEC.robot, {})
        controller.send(identity, p.make(p.SPEC, ask.robot, seq=ask.seq, **SERVED))

    thread = threading.Thread(target=answer_the_second)
    thread.start()
    try:
        assert describe(controller.endpoint, SPEC.robot, timeout_s=5.0, retry_s=0.1) == SERVED
    finally:
        thread.join()
    assert not link.welcomed  # DESCRIBE is no HELLO


def test_link_describe_and_refusals(controller: Controller, link: BridgeLink) -> None:
    def answer(reply: str) -> None:
        identity, ask = controller.receive()
        if reply == "spec":
            controller.send(identity, p.make(p.SPEC, ask.robot, seq=ask.seq, **SERVED))
        else:
            exc = p.ProtocolError("unknown_type", "no DESCRIBE here", seq=ask.seq)
            controller.send(identity, p.error_reply(exc, ask.robot))

    for reply in ("spec", "error"):
        thread = threading.Thread(target=answer, args=(reply,))
        thread.start()
        try:
            if reply == "spec":
                assert link.describe(5.0) == SERVED
            else:
                with pytest.raises(Refused, match="unknown_type: no DESCRIBE here"):
                    link.describe(5.0)
        finally:
            thread.join()


def test_describe_with_no_controller_times_out(controller: Controller) -> None:
    with pytest.raises(TimeoutError, match="no SPEC"):
        describe(controller.endpoint, SPEC.robot, timeout_s=0.3, retry_s=0.1)


def test_sends_that_do_not_go_out_are_counted_as_dropped() -> None:
    nobody: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    port = nobody.bind_to_random_port("tcp://127.0.0.1")
    nobody.close(linger=0)  # the port is free again: no controller there
    link = BridgeLink(f"tcp://127.0.0.1:{port}", SPEC, "realtime")
    try:
        assert not link.send(link.message(p.HEARTBEAT, 0))
        link.say_hello()
        assert (link.stats.sent, link.stats.dropped_sends) == (0, 2)
    finally:
        link.close()


def test_a_wrong_length_action_is_dropped_and_counted(
    controller: Controller, link: BridgeLink
) -> None:
    identity = welcomed(controller, link)
    state = link.message(p.STATE, 1, step=0, reward=None, terminated=False, truncated=False,
                         obs=[0.0, 0.0])  # fmt: skip
    assert link.send(state)
    controller.receive()
    controller.action(identity, state, [0.5, 0.5], state.seq)
    controller.action(identity, state, [0.5], state.seq)
    assert link.receive(5.0) is None
    msg = link.receive(5.0)
    assert msg is not None and msg["action"].tolist() == [0.5]
    assert (link.stats.bad_actions, link.stats.received, len(link.stats.round_trip_s)) == (1, 2, 1)


class Cart(HardwareBridge):
    """A robot that only remembers what it was told to do."""

    def __init__(self, steps: int) -> None:
        super().__init__(SPEC, BridgeSettings(episode_steps=steps))
        self.commands: list[float] = []

    def read_state(self) -> Reading:
        return Reading(np.zeros(2), reward=1.0)

    def apply_action(self, action: npt.NDArray[np.float64]) -> None:
        self.commands.append(float(action[0]))

    def safe_stop(self) -> None:
        pass


def test_bad_and_late_actions_are_told_apart(controller: Controller) -> None:
    """Each STATE is answered with a wrong-length ACTION, one for the STATE before (late, from
    step 1), then its own: only the late ones count as late."""
    steps = 5
    bridge = Cart(steps)
    thread = threading.Thread(target=bridge.run, args=(controller.endpoint,),
                              kwargs={"mode": "lockstep", "episodes": 1})  # fmt: skip
    thread.start()
    try:
        while True:
            identity, msg = controller.receive()
            if msg.type == p.HELLO:
                controller.welcome(identity)
            elif msg.type == p.EPISODE and msg["event"] == "end":
                break
            elif msg.type == p.STATE and not msg["truncated"]:
                controller.action(identity, msg, [0.1, 0.1], msg.seq)
                if msg["step"] > 0:
                    controller.action(identity, msg, [-0.9], msg.seq - 1)
                controller.action(identity, msg, [0.1 * msg["step"]], msg.seq)
    finally:
        bridge.stop_event.set()
        thread.join(5.0)
    stats = bridge.stats
    assert (stats.actions, stats.late_actions, stats.link.bad_actions) == (steps, steps - 1, steps)
    assert bridge.commands == pytest.approx([0.1 * k for k in range(steps)])
    assert stats.returns == [steps * 1.0] and stats.link.dropped_sends == 0
