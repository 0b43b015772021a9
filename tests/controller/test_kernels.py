"""The numba sampling kernels give numpy's bits and stream, and stay out of small plans."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from controller.planners import PlannerSettings, kernels, make_optimizer, noise
from controller.planners.base import WarmStart


@pytest.fixture(scope="module")
def compiled() -> kernels.Kernels:
    return kernels.compile_now()


def _on(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0 if path == "numba" else 1 << 62)


def _draws(seed: int) -> Iterator[tuple[str, Callable[[np.random.Generator], np.ndarray]]]:
    r = np.random.default_rng(seed)
    h, a, n = int(r.integers(1, 32)), int(r.integers(1, 7)), int(r.integers(1, 300))
    low, high = -r.uniform(0.5, 3, a), r.uniform(0.5, 3, a)
    mean = r.uniform(low, high, (h, a))
    std = r.uniform(0, 2, (h, a))
    std[0] = 0.0  # a collapsed dimension
    beta = float(r.choice([0.0, 0.5, 2.0, 3.7]))
    yield "gaussian", lambda g: noise.gaussian_candidates(g, mean, std, low, high, n)
    yield "truncated", lambda g: noise.truncated_candidates(g, mean, std, low, high, n)
    yield "colored", lambda g: noise.colored_candidates(g, beta, mean, std, low, high, n)
    yield "uniform", lambda g: noise.uniform_candidates(g, low, high, n, h)
    # float32 inputs: numpy promotes, the kernels upcast first; the same values either way.
    m32, s32 = mean.astype(np.float32), std.astype(np.float32)
    yield "gaussian32", lambda g: noise.gaussian_candidates(g, m32, s32, low, high, n)


def _run(path: str, fn: Callable[[np.random.Generator], Any], mp: pytest.MonkeyPatch) -> Any:
    _on(path, mp)
    rng = np.random.default_rng(123)
    return fn(rng), rng.integers(1 << 62)


@pytest.mark.parametrize("seed", range(12))
def test_kernels_match_numpy_bits_and_stream(
    compiled: kernels.Kernels, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, fn in _draws(seed):
        want, want_next = _run("numpy", fn, monkeypatch)
        got, got_next = _run("numba", fn, monkeypatch)
        assert got.shape == want.shape and got.dtype == want.dtype == np.float64, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got_next == want_next, f"{name}: the generator advanced differently"


def test_clipping_keeps_nan_like_numpy(
    compiled: kernels.Kernels, monkeypatch: pytest.MonkeyPatch
) -> None:
    mean = np.array([[0.0], [np.nan], [5.0]])
    std = np.full((3, 1), 0.5)
    low, high = np.array([-1.0]), np.array([1.0])

    def draw(g: np.random.Generator) -> np.ndarray:
        return noise.gaussian_candidates(g, mean, std, low, high, 4)

    want, _ = _run("numpy", draw, monkeypatch)
    got, _ = _run("numba", draw, monkeypatch)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[:, 1]).all() and (got[:, 2] == 1.0).all()


@pytest.mark.parametrize(
    ("planner", "options"),
    [("cem", {}), ("cem", {"bounds": "clip"}), ("icem", {}), ("mppi", {}), ("random", {})],
)
def test_optimizers_identical_on_either_path(
    compiled: kernels.Kernels,
    planner: str,
    options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = PlannerSettings(planner=planner, horizon=20, population=150, iterations=4)
    settings = settings.changed(options)
    low, high = np.array([-2.0, -1.0]), np.array([2.0, 0.5])

    def optimize(path: str) -> list[np.ndarray]:
        _on(path, monkeypatch)
        opt = make_optimizer(settings, low, high)
        opt.begin(WarmStart(np.zeros((20, 2))), np.random.default_rng(5))
        seen = []
        for it in range(settings.iterations):
            batch = opt.ask(it)
            target = np.linspace(-1, 0.5, 20)[:, None]
            opt.tell(batch, -((batch - target) ** 2).sum(axis=(1, 2)))
            seen.append(batch)
        seen.append(opt.solution()[0])
        return seen

    for want, got in zip(optimize("numpy"), optimize("numba"), strict=True):
        np.testing.assert_array_equal(got, want)


def test_only_large_batches_use_numba(compiled: kernels.Kernels) -> None:
    assert kernels.for_batch(kernels.MIN_ELEMENTS - 1) is None
    assert kernels.for_batch(kernels.MIN_ELEMENTS) is compiled
    assert kernels.compile_now() is compiled


def test_small_plans_never_import_numba() -> None:
    code = (
        "import sys, numpy as np\n"
        "from controller.planners import PlannerSettings, make_optimizer\n"
        "from controller.planners.base import WarmStart\n"
        "assert 'numba' not in sys.modules, 'imported by controller.planners'\n"
        "for name in ('cem', 'icem', 'mppi', 'random'):\n"
        "    s = PlannerSettings(planner=name, horizon=25, population=500)\n"
        "    opt = make_optimizer(s, np.array([-1.0]), np.array([1.0]))\n"
        "    opt.begin(WarmStart(np.zeros((25, 1))), np.random.default_rng(0))\n"
        "    batch = opt.ask(0)\n"
        "    opt.tell(batch, -np.abs(batch).sum(axis=(1, 2)))\n"
        "sys.exit('numba' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
