"""The tickmpc console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.ensemble import EnsembleConfig, GaussianEnsemble
from models.registry import ModelDirectory

TICKMPC = [sys.executable, "-m", "controller.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TICKMPC, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = EnsembleConfig(obs_dim=3, act_dim=2, members=2, hidden_layers=1, hidden_units=8)
    version, _ = ModelDirectory(tmp_path_factory.mktemp("models")).publish(
        GaussianEnsemble(cfg), train_rows=42, holdout={"holdout_nll": -1.0}
    )
    return version.path


def test_version() -> None:
    out = _run("--version")
    assert out.returncode == 0
    assert out.stdout.strip().startswith("tickmpc 0.")


def test_model_info_json(model_file: Path) -> None:
    out = _run("model", "info", str(model_file), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["config"]["obs_dim"] == 3 and info["config"]["members"] == 2
    assert info["train_rows"] == 42
    assert info["holdout"] == {"holdout_nll": -1.0}
    assert info["outputs"] == ["next_obs_mean", "next_obs_logvar"]
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["check_batch_finite"] is True


def test_model_info_table(model_file: Path) -> None:
    out = _run("model", "info", str(model_file))
    assert out.returncode == 0, out.stderr
    assert "graph_sha256" in out.stdout and "train_rows" in out.stdout


def test_model_info_refuses_corrupt_file(model_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model_file.read_bytes()[:100])
    out = _run("model", "info", str(bad))
    assert out.returncode == 1
    assert "not a valid ONNX file" in out.stderr and str(bad) in out.stderr
    missing = _run("model", "info", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
