"""Policy export (models.policy.export): ONNX parity with torch, bounds, metadata, refusal of
corrupt files, and the versioned policy directory.

Shapes: B batch, S observation, A action.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.export import ModelFileError
from models.policy.export import (
    LATEST_POLICY,
    PolicyDirectory,
    PolicyGraph,
    PolicyMetadata,
    PolicyRuntime,
    export_policy,
    read_policy,
)
from models.policy.sac import SAC, SACConfig

S, A = 5, 3
LOW = np.array([-2.0, 0.5, -0.1])
HIGH = np.array([3.0, 0.7, 0.0])
SMALL = SACConfig(hidden_units=64, batch_size=64)
META = {
    "model_version": 7,
    "updates": 20,
    "real_rows": 1234,
    "rollout_length": 3,
    "evaluation": {"mean_return": -12.5, "episodes": 4},
}


def _mean_bias(agent: SAC) -> torch.Tensor:
    """The bias of the actor's pre-tanh means [A]: a handle to move the policy."""
    last = agent.actor.net[-1]
    assert isinstance(last, nn.Linear)
    return last.bias[:A]


def _trained_agent(seed: int = 0) -> SAC:
    """An agent after a few updates, so its weights are not the initialization's."""
    agent = SAC(S, A, LOW, HIGH, dataclasses.replace(SMALL, seed=seed))
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.as_tensor(LOW, dtype=torch.float32), torch.as_tensor(HIGH, dtype=torch.float32)
    for _ in range(20):
        agent.update(
            {
                "obs": torch.randn(64, S, generator=g),
                "act": lo + (hi - lo) * torch.rand(64, A, generator=g),
                "reward": torch.randn(64, generator=g),
                "next_obs": torch.randn(64, S, generator=g),
                "done": torch.zeros(64),
            }
        )
    return agent


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAC, Path, PolicyMetadata]:
    agent = _trained_agent()
    path = tmp_path_factory.mktemp("policy") / "policy.onnx"
    meta = export_policy(agent, path, **META)  # type: ignore[arg-type]
    return agent, path, meta


def _torch_outputs(agent: SAC, obs: np.ndarray) -> tuple[np.ndarray, ...]:
    x = torch.as_tensor(obs)
    with torch.no_grad():
        action = agent.actor.mean_action(x)
        std = agent.actor.std(x)
        value = torch.min(*agent.critic(x, action))
    return action.numpy(), std.numpy(), value.numpy()


@pytest.mark.parametrize("batch", [1, 4096])
def test_onnx_matches_torch(exported: tuple[SAC, Path, PolicyMetadata], batch: int) -> None:
    agent, path, _ = exported
    obs = np.random.default_rng(batch).normal(0, 2, (batch, S)).astype(np.float32)
    runtime = PolicyRuntime(path, obs_dim=S, act_dim=A)
    action, std, value = runtime.predict(obs)
    assert action.shape == std.shape == (batch, A) and value.shape == (batch,)
    for got, want in zip((action, std, value), _torch_outputs(agent, obs), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(runtime.act(obs), action)
    np.testing.assert_allclose(action, agent.act(obs, deterministic=True), rtol=1e-5, atol=1e-5)


def test_single_observation_gives_unbatched_outputs(
    exported: tuple[SAC, Path, PolicyMetadata],
) -> None:
    _, path, _ = exported
    runtime = PolicyRuntime(path)
    obs = np.linspace(-1, 1, S)
    action, std, value = runtime.predict(obs)
    assert action.shape == std.shape == (A,) and value.shape == ()
    batched = runtime.predict(obs[None])
    np.testing.assert_array_equal(action, batched[0][0])
    np.testing.assert_array_equal(runtime.act(obs), action)
    with pytest.raises(ValueError, match="obs must be"):
        runtime.act(np.zeros((2, S + 1)))


def test_graph_matches_actor_scaling_when_saturated(tmp_path: Path) -> None:
    """Means far past tanh's range put every action on a bound, never beyond, in torch and ORT."""
    agent = _trained_agent(seed=1)
    obs = np.random.default_rng(0).normal(0, 50, (512, S)).astype(np.float32)
    for bias in (-60.0, 60.0):
        with torch.no_grad():
            _mean_bias(agent).fill_(bias)
        path = tmp_path / f"p{bias}.onnx"
        export_policy(agent, path, **META)  # type: ignore[arg-type]
        action = PolicyRuntime(path).act(obs)
        want = agent.actor.mean_action(torch.as_tensor(obs)).detach().numpy()
        np.testing.assert_array_equal(action, want)
        low, high = LOW.astype(np.float32), HIGH.astype(np.float32)
        assert (action >= low).all() and (action <= high).all()


def test_actions_within_bounds(exported: tuple[SAC, Path, PolicyMetadata]) -> None:
    _, path, meta = exported
    obs = np.random.default_rng(1).normal(0, 100, (2048, S)).astype(np.float32)
    action, std, _ = PolicyRuntime(path).predict(obs)
    low, high = np.asarray(meta.low, np.float32), np.asarray(meta.high, np.float32)
    assert (action >= low).all() and (action <= high).all()
    assert (std > 0).all() and np.isfinite(std).all()


def test_metadata_round_trip(exported: tuple[SAC, Path, PolicyMetadata]) -> None:
    _, path, meta = exported
    _, read = read_policy(path)
    assert read == meta
    assert PolicyMetadata.from_props(meta.to_props(), "x") == meta
    assert (meta.obs_dim, meta.act_dim) == (S, A)
    np.testing.assert_allclose(meta.low, LOW.astype(np.float32))
    np.testing.assert_allclose(meta.high, HIGH.astype(np.float32))
    assert (meta.model_version, meta.updates, meta.real_rows, meta.rollout_length) == (
        7,
        20,
        1234,
        3,
    )
    assert meta.evaluation == META["evaluation"]
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["tickmpc.kind"] == "policy" and all(k.startswith("tickmpc.") for k in props)


def test_flipped_graph_byte_is_refused(
    exported: tuple[SAC, Path, PolicyMetadata], tmp_path: Path
) -> None:
    _, path, _ = exported
    data = bytearray(path.read_bytes())
    weights = next(t for t in onnx.load(path).graph.initializer if len(t.raw_data) >= 64)
    at = data.find(weights.raw_data[:32])
    assert at > 0 and data.find(weights.raw_data[:32], at + 1) == -1
    data[at + 5] ^= 0x40
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"bad\.onnx: corrupt policy: graph hash"):
        read_policy(bad)
    with pytest.raises(ModelFileError, match="corrupt policy"):
        PolicyRuntime(bad)


def test_bad_or_missing_metadata_is_refused(
    exported: tuple[SAC, Path, PolicyMetadata], tmp_path: Path
) -> None:
    _, path, meta = exported
    props = meta.to_props()
    with pytest.raises(ModelFileError, match=r"f\.onnx: not a tickmpc policy"):
        PolicyMetadata.from_props({k: v for k, v in props.items() if k != "tickmpc.kind"}, "f.onnx")
    for key, value in (
        ("tickmpc.low", "[0, 0, 0]"),  # low == high in the last dimension
        ("tickmpc.high", "[1, 2]"),  # wrong length
        ("tickmpc.evaluation", "[1]"),  # not an object
        ("tickmpc.updates", "-1"),
        ("tickmpc.graph_sha256", "abc"),
    ):
        with pytest.raises(ModelFileError, match=r"f\.onnx: bad tickmpc policy metadata"):
            PolicyMetadata.from_props({**props, key: value}, "f.onnx")
    with pytest.raises(ModelFileError, match=r"f\.onnx: bad tickmpc policy metadata"):
        PolicyMetadata.from_props(
            {k: v for k, v in props.items() if k != "tickmpc.updates"}, "f.onnx"
        )
    with pytest.raises(ModelFileError, match="format version 99"):
        PolicyMetadata.from_props({**props, "tickmpc.format_version": "99"}, "f.onnx")
    with pytest.raises(ModelFileError, match="not a valid ONNX file"):
        (tmp_path / "junk.onnx").write_bytes(b"\xff" * 100)
        read_policy(tmp_path / "junk.onnx")
    with pytest.raises(ModelFileError, match="obs_dim=5, expected 6"):
        PolicyRuntime(path, obs_dim=6)


def test_directory_publishes_versions_atomically(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    directory = PolicyDirectory(root)
    assert directory.latest() is None and directory.versions() == []
    agent = _trained_agent()
    (root).mkdir()
    (root / "v000009.onnx").write_bytes(b"a dynamics model, not a policy")
    (root / "LATEST").write_text("9\n")

    first, meta1 = directory.publish(agent, **META)  # type: ignore[arg-type]
    with torch.no_grad():
        _mean_bias(agent).add_(0.5)
    second, meta2 = directory.publish(agent, **{**META, "model_version": 8})  # type: ignore[arg-type]

    assert (first.version, second.version) == (1, 2)
    assert second.path == root / "p000002.onnx"
    assert directory.versions() == [1, 2]
    assert directory.latest() == second
    assert (root / LATEST_POLICY).read_text() == "2\n"
    assert (root / "LATEST").read_text() == "9\n"  # the dynamics models' marker is untouched
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert read_policy(first.path)[1] == meta1 and read_policy(second.path)[1] == meta2
    assert meta1.graph_sha256 != meta2.graph_sha256

    directory.mark_latest(1)  # a rollback
    assert directory.latest() == first
    with pytest.raises(FileNotFoundError):
        directory.mark_latest(3)
    (root / LATEST_POLICY).unlink()
    assert directory.latest() == second  # no marker: the highest on disk


def test_failed_publish_leaves_directory_unchanged(tmp_path: Path) -> None:
    directory = PolicyDirectory(tmp_path)
    agent = _trained_agent()
    published, _ = directory.publish(agent, **META)  # type: ignore[arg-type]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        directory.publish(agent, **{**META, "evaluation": {"mean_return": float("nan")}})  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert directory.latest() == published


def test_graph_is_a_snapshot_of_the_agent() -> None:
    agent = _trained_agent()
    graph = PolicyGraph(agent)
    obs = torch.randn(8, S)
    before = graph(obs)[0].clone()
    with torch.no_grad():
        _mean_bias(agent).add_(1.0)
    torch.testing.assert_close(graph(obs)[0], before)
