"""ONNX export, the versioned model directory and the runtime wrapper, on real files and ORT."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.export import ModelFileError, export_ensemble
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble, RuntimeConfig

CFG = EnsembleConfig(
    obs_dim=4,
    act_dim=2,
    members=3,
    hidden_layers=2,
    hidden_units=32,
    preprocess={"kind": "sincos", "angle_indices": [1]},
)


def _model(cfg: EnsembleConfig = CFG, seed: int = 0) -> GaussianEnsemble:
    torch.manual_seed(seed)
    model = GaussianEnsemble(cfg)
    # Non-trivial normalization, so the test sees it baked into the graph.
    feats = torch.randn(256, model.feature_dim) * 3 + 1
    model.set_normalization(feats, torch.randn(256, cfg.out_dim) * 0.1 + 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[GaussianEnsemble, Path]:
    model = _model()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_ensemble(model, path, train_rows=123, holdout={"holdout_nll": -1.5})
    return model, path


@pytest.mark.parametrize("batch", [1, 2, 17, 1000])
def test_onnx_matches_torch(exported: tuple[GaussianEnsemble, Path], batch: int) -> None:
    model, path = exported
    runtime = OnnxEnsemble(path, obs_dim=4, act_dim=2)
    rng = np.random.default_rng(batch)
    obs = rng.normal(size=(batch, 4)).astype(np.float32) * 2
    act = rng.uniform(-1, 1, size=(batch, 2)).astype(np.float32)
    got = runtime.predict(obs, act)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(obs), torch.from_numpy(act))]
    assert [g.shape for g in got] == [(3, batch, 4), (3, batch, 4)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_member_batched_export_and_reward_outputs(tmp_path: Path) -> None:
    cfg = EnsembleConfig(obs_dim=3, act_dim=1, members=2, hidden_units=16, predict_reward=True)
    model = _model(cfg)
    export_ensemble(model, tmp_path / "m.onnx", member_batched=True)
    runtime = OnnxEnsemble(tmp_path / "m.onnx", options=RuntimeConfig(chunk_rows=2))
    obs = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    act = np.ones((2, 5, 1), np.float32)
    got = runtime.predict(obs, act)
    with torch.no_grad():
        want = model(torch.from_numpy(obs), torch.from_numpy(act))
    assert runtime.metadata.output_names == (
        "next_obs_mean",
        "next_obs_logvar",
        "reward_mean",
        "reward_logvar",
    )
    assert [g.shape for g in got] == [(2, 5, 3), (2, 5, 3), (2, 5, 1), (2, 5, 1)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)
    # Shared rows [B, S] go to every member.
    shared = runtime.predict(obs[0], act[0])
    np.testing.assert_allclose(shared[0][0], got[0][0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"obs must have shape \[E, B, 3\]"):
        runtime.predict(obs[..., :2], act)


def test_metadata_round_trip(exported: tuple[GaussianEnsemble, Path]) -> None:
    _, path = exported
    meta = OnnxEnsemble(path).metadata
    assert meta.config == CFG
    assert meta.train_rows == 123
    assert meta.holdout == {"holdout_nll": -1.5}
    assert meta.format_version == 1
    assert len(meta.code_sha256) == 64 and len(meta.graph_sha256) == 64
    props = {p.key for p in onnx.load(str(path)).metadata_props}
    for key in ("obs_dim", "act_dim", "members", "train_rows", "created", "format_version"):
        assert "tickmpc." + key in props


def test_refuses_wrong_dims(exported: tuple[GaussianEnsemble, Path]) -> None:
    _, path = exported
    with pytest.raises(ModelFileError, match="obs_dim=4, expected 5"):
        OnnxEnsemble(path, obs_dim=5)
    with pytest.raises(ModelFileError, match="act_dim=2, expected 1"):
        OnnxEnsemble(path, act_dim=1)


def test_refuses_corrupt_files(exported: tuple[GaussianEnsemble, Path], tmp_path: Path) -> None:
    _, path = exported
    data = bytearray(path.read_bytes())
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"truncated\.onnx"):
        OnnxEnsemble(truncated)

    # Flip bytes inside the largest weight tensor: still parses, but the graph hash catches it.
    proto = onnx.load(str(path))
    biggest = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    offset = data.find(biggest.raw_data) + len(biggest.raw_data) // 2
    data[offset : offset + 4] = b"\x00\x00\xc0\x7f"
    flipped = tmp_path / "flipped.onnx"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt model: graph hash"):
        OnnxEnsemble(flipped)

    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ModelFileError, match="not a tickmpc model"):
        OnnxEnsemble(foreign)

    with pytest.raises(ModelFileError, match="cannot read"):
        OnnxEnsemble(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    ("delta_std", "problem"),
    [
        (None, "no delta_std"),
        ([1.0, 2.0, 3.0], "delta_std has 3 values, the model's obs_dim is 4"),
        ([1.0, float("nan"), 1.0, 1.0], "finite numbers > 0"),
        ([1.0, float("inf"), 1.0, 1.0], "finite numbers > 0"),
        ([1.0, 0.0, 1.0, 1.0], "finite numbers > 0"),
        ([1.0, -0.5, 1.0, 1.0], "finite numbers > 0"),
        ([1.0, "1", 1.0, 1.0], "finite numbers > 0"),
        ("ones", "must be a list of 4 numbers"),
    ],
)
def test_refuses_a_model_without_a_valid_delta_std(
    exported: tuple[GaussianEnsemble, Path], tmp_path: Path, delta_std: Any, problem: str
) -> None:
    """Read as ones, a missing scale would silently change the disagreement penalty's units."""
    model, path = exported
    assert OnnxEnsemble(path).metadata.delta_std == pytest.approx(model.out_std[0, :4].tolist())
    proto = onnx.load(str(path))
    props = {p.key: p for p in proto.metadata_props}
    extra = {"store_rows": 5} | ({} if delta_std is None else {"delta_std": delta_std})
    props["tickmpc.extra"].value = json.dumps(extra)  # outside the graph hash: only this changes
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelFileError, match=rf"bad\.onnx: .*{re.escape(problem)}"):
        OnnxEnsemble(bad)


class _Identity(torch.nn.Module):
    """A hand-written "ensemble": next_obs = obs, exactly."""

    def __init__(self, delta_std: list[float] | None = None) -> None:
        super().__init__()
        self.config = EnsembleConfig(obs_dim=2, act_dim=1, members=2)
        if delta_std is not None:
            self.delta_std = delta_std

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = obs.unsqueeze(0).expand(2, *obs.shape)
        return mean, torch.full_like(mean, -30.0)


def test_a_hand_written_model_records_its_own_delta_std_or_ones(tmp_path: Path) -> None:
    export_ensemble(_Identity(), tmp_path / "ones.onnx")
    assert OnnxEnsemble(tmp_path / "ones.onnx").metadata.delta_std == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"cannot export .*finite numbers > 0"):
        export_ensemble(_Identity([0.5, 0.0]), tmp_path / "zero.onnx")
    assert not (tmp_path / "zero.onnx").exists()


def test_predict_checks_shapes(exported: tuple[GaussianEnsemble, Path]) -> None:
    runtime = OnnxEnsemble(exported[1])
    with pytest.raises(ValueError, match=r"obs must have shape \[B, 4\]"):
        runtime.predict(np.zeros((3, 5)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="batch shapes differ"):
        runtime.predict(np.zeros((3, 4)), np.zeros((2, 2)))


def test_runtime_options_validated_and_cpu_fallback(
    exported: tuple[GaussianEnsemble, Path],
) -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        RuntimeConfig(device="tpu")
    with pytest.raises(ValueError, match="intra_op_threads"):
        RuntimeConfig(intra_op_threads=-1)
    runtime = OnnxEnsemble(exported[1], options=RuntimeConfig(device="auto", intra_op_threads=1))
    assert runtime.providers[-1] == "CPUExecutionProvider"


def test_model_directory_versions_and_latest(tmp_path: Path) -> None:
    models = ModelDirectory(tmp_path / "models")
    assert models.latest() is None
    first, _ = models.publish(_model(seed=1), train_rows=10)
    second, meta = models.publish(_model(seed=2), train_rows=20)
    assert (first.version, second.version) == (1, 2)
    assert models.versions() == [1, 2]
    latest = models.latest()
    assert latest is not None and latest.version == 2
    assert OnnxEnsemble(latest.path).metadata.train_rows == 20
    assert meta.train_rows == 20
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp")]
    models.mark_latest(1)
    assert models.latest() == first
    with pytest.raises(FileNotFoundError):
        models.mark_latest(7)


def test_refused_candidates_set_aside_in_one_second_keep_their_own_names_and_reasons(
    tmp_path: Path,
) -> None:
    models = ModelDirectory(tmp_path / "models")
    assert models.refusals().read() == []  # no rejected/ yet
    kept = []
    for k in range(3):  # well inside one second (and the rows are the same): one base name
        candidate = tmp_path / "models" / f".candidate-{k}.onnx"
        candidate.parent.mkdir(exist_ok=True)
        candidate.write_bytes(f"candidate {k}".encode())
        kept.append(models.set_aside(candidate, 600, f"reason {k}"))
        assert not candidate.exists()
    assert len(set(kept)) == 3
    assert [p.read_bytes() for p in kept] == [b"candidate 0", b"candidate 1", b"candidate 2"]
    seconds = {int(json.loads(p.with_suffix(".json").read_text())["time"]) for p in kept}
    if len(seconds) == 1:  # the usual case: the second refusal of a second is -2, then -3
        (second,) = seconds
        assert [p.stem for p in kept] == [f"rows00000600-{second}{k}" for k in ("", "-2", "-3")]
    refusals = sorted(models.refusals().read(), key=lambda r: r.time)
    assert [(r.rows, r.reason) for r in refusals] == [(600, f"reason {k}") for k in range(3)]


def test_reader_never_sees_partial_model(tmp_path: Path) -> None:
    """Publish repeatedly while another process loads whatever LATEST names."""
    root = tmp_path / "models"
    models = ModelDirectory(root)
    models.publish(_model(seed=0))
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER_SCRIPT, str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for seed in range(1, 4):
            models.publish(_model(seed=seed))
    finally:
        out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0, out
    loads = int(out.split()[-1])
    assert loads > 0


_READER_SCRIPT = """
import sys, time
from models.registry import ModelDirectory
from models.runtime import OnnxEnsemble
models = ModelDirectory(sys.argv[1])
loads, deadline = 0, time.time() + 8
while time.time() < deadline:
    latest = models.latest()
    OnnxEnsemble(latest.path)  # raises on a partial or corrupt file
    loads += 1
    if latest.version >= 4:
        break
print("loads", loads)
"""


def test_chunked_prediction_matches_one_call(exported: tuple[GaussianEnsemble, Path]) -> None:
    path = exported[1]
    whole = OnnxEnsemble(path, options=RuntimeConfig(chunk_rows=0))
    chunked = OnnxEnsemble(path, options=RuntimeConfig(chunk_rows=7))
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(50, 4)).astype(np.float32)
    act = rng.normal(size=(50, 2)).astype(np.float32)
    for a, b in zip(whole.predict(obs, act), chunked.predict(obs, act), strict=True):
        assert a.shape == b.shape == (3, 50, 4)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_rows"):
        RuntimeConfig(chunk_rows=-1)


FULL = EnsembleConfig(
    obs_dim=4,
    act_dim=2,
    members=3,
    hidden_layers=2,
    hidden_units=32,
    predict_reward=True,
    predict_done=True,
    preprocess={"kind": "sincos", "angle_indices": [1]},
)
"""A model with every output: state, reward and done."""


@pytest.fixture(scope="module", params=[False, True], ids=["shared", "member_batched"])
def exported_full(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[GaussianEnsemble, Path]:
    model = _model(FULL)
    with torch.no_grad():  # spread the done logits, so probabilities near 0 and 1 are compared
        model.head.bias[..., -1] = torch.tensor([-6.0, 0.0, 6.0]).view(3, 1)
    path = tmp_path_factory.mktemp("export_full") / "model.onnx"
    export_ensemble(model, path, member_batched=request.param, holdout={"done_brier": 0.01})
    return model, path


@pytest.mark.parametrize("batch", [1, 3000])
def test_reward_and_done_outputs_match_torch(
    exported_full: tuple[GaussianEnsemble, Path], batch: int
) -> None:
    """All five outputs, in the fixed order, equal torch's at batch 1 and at a batch split into
    chunks (the default chunk_rows is 1024)."""
    model, path = exported_full
    runtime = OnnxEnsemble(path, obs_dim=4, act_dim=2)
    rng = np.random.default_rng(batch)
    obs = rng.normal(size=(batch, 4)).astype(np.float32) * 2
    act = rng.uniform(-1, 1, size=(batch, 2)).astype(np.float32)
    got = runtime.predict(obs, act)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(obs), torch.from_numpy(act))]
    names = ("next_obs_mean", "next_obs_logvar", "reward_mean", "reward_logvar", "done_prob")
    assert runtime.metadata.output_names == names
    assert [g.shape for g in got] == [(3, batch, 4)] * 2 + [(3, batch, 1)] * 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    done = runtime.predict_named(obs, act)["done_prob"]
    assert ((done >= 0) & (done <= 1)).all()
    if batch > 1:
        assert done[0].max() < 0.1 and done[2].min() > 0.9  # the spread logits, both ends


def test_reward_and_done_metadata_round_trip(exported_full: tuple[GaussianEnsemble, Path]) -> None:
    _, path = exported_full
    meta = OnnxEnsemble(path).metadata
    assert meta.config == FULL and meta.config.predict_reward and meta.config.predict_done
    assert meta.holdout == {"done_brier": 0.01}
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["tickmpc.predict_reward"] == props["tickmpc.predict_done"] == "true"
    assert [o.name for o in onnx.load(str(path)).graph.output] == list(meta.output_names)


def test_done_without_reward_has_three_outputs(tmp_path: Path) -> None:
    cfg = EnsembleConfig(obs_dim=3, act_dim=1, members=2, hidden_units=16, predict_done=True)
    model = _model(cfg)
    export_ensemble(model, tmp_path / "m.onnx", member_batched=True)
    runtime = OnnxEnsemble(tmp_path / "m.onnx", options=RuntimeConfig(chunk_rows=4))
    obs = np.random.default_rng(1).normal(size=(2, 9, 3)).astype(np.float32)
    act = np.zeros((2, 9, 1), np.float32)
    got = runtime.predict_named(obs, act)
    assert list(got) == ["next_obs_mean", "next_obs_logvar", "done_prob"]
    with torch.no_grad():
        want = model(torch.from_numpy(obs), torch.from_numpy(act))
    for g, w in zip(got.values(), want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)


def test_a_file_written_before_predict_done_existed_loads(
    exported: tuple[GaussianEnsemble, Path], tmp_path: Path
) -> None:
    """Metadata of a model exported before the termination could be learned: no predict_done
    anywhere. It loads as a model without it."""
    proto = onnx.load(str(exported[1]))
    props = {p.key: p for p in proto.metadata_props}
    config = json.loads(props["tickmpc.config"].value)
    del config["predict_done"]
    props["tickmpc.config"].value = json.dumps(config)  # outside the graph hash
    proto.metadata_props.remove(props["tickmpc.predict_done"])
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    meta = OnnxEnsemble(old).metadata
    assert meta.config == CFG and not meta.config.predict_done
    assert meta.output_names == ("next_obs_mean", "next_obs_logvar")
