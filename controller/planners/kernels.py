"""numba kernels for the optimizers' candidate sampling, used for large batches.

Each kernel gives the same bits as the numpy expression in :mod:`controller.planners.noise` it
replaces: numba's ``Generator`` draws the same stream with the same algorithms, each element
goes through the same floating-point operations in the same order, and clipping keeps NaN as
``np.clip`` does. So a seeded plan does not depend on which of the two ran.

Only batches of at least :data:`MIN_ELEMENTS` values use them. Within a plan, right after an
ONNX Runtime run, numba's call overhead (unboxing the ``Generator`` alone takes ~50 us with cold
caches) ate the gain at cartpole sizes (N=200-500, H=15-25, A=1: ask + tell 0.85-0.99x of
numpy), while at half-cheetah sizes (N=200-1000, H=25-30, A=6) ask + tell ran 1.6-1.9x faster
(``benchmarks/planner_cpu.py``; figures in docs/planning.md, "CPU-side work and numba"). Small
configurations never run them.

Compiled off the hot path: the MPC service compiles them at start (:func:`compile_now`, ~0.3 s
from numba's on-disk cache, ~2.5 s on a machine's first run), since a live change may make any
configuration large and compiling holds the GIL for a few hundred milliseconds. Elsewhere the
first large batch (or :func:`start`) starts compiling in a background thread, and numpy serves
until the kernels are ready.
Importing this module does not import numba.

Shapes: N candidates, H horizon, A action, F frequencies (H // 2 + 1).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TRUNCATION = 2.0
"""Truncated normal draws lie within this many standard deviations (as PETS)."""
MIN_ELEMENTS = 20_000
"""Smallest batch (N x H x A values) sampled by numba: in plans it lost at 12,500 (N=500, H=25,
A=1: ask + tell 0.91-0.99x in five runs) and won at 30,000 (N=200, H=25, A=6: 1.58-1.67x in
two)."""


# ----------------------------------------------------------------------------------------------
# Kernel bodies: plain Python over arrays, compiled by numba (never run uncompiled).
# ----------------------------------------------------------------------------------------------


def _clip(v: float, lo: float, hi: float) -> float:
    # Comparisons, not min/max: NaN passes through as with np.clip.
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def _shift_scale_clip(
    z: np.ndarray, mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray
) -> None:
    """z [N, H, A] <- clip(mean + std * z, low, high), in place."""
    n, h, a = z.shape
    for i in range(n):
        for t in range(h):
            for j in range(a):
                z[i, t, j] = _clip(mean[t, j] + std[t, j] * z[i, t, j], low[j], high[j])


def _gaussian(
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    n: int,
) -> np.ndarray:
    h, a = mean.shape
    out = rng.standard_normal((n, h, a))
    _shift_scale_clip(out, mean, std, low, high)
    return out


def _truncated(
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    n: int,
) -> np.ndarray:
    h, a = mean.shape
    out = rng.standard_normal((n, h, a))
    flat = out.reshape(-1)
    bad = np.empty(flat.size, np.int64)
    while True:
        # Redraw every out-of-range value in index order, as z[bad] = rng.standard_normal(k)
        # does, so the stream is consumed identically.
        k = 0
        for i in range(flat.size):
            if abs(flat[i]) > TRUNCATION:
                bad[k] = i
                k += 1
        if k == 0:
            break
        redraw = rng.standard_normal(k)
        for i in range(k):
            flat[bad[i]] = redraw[i]
    _shift_scale_clip(out, mean, std, low, high)
    return out


def _spectrum(rng: np.random.Generator, n: int, a: int, scale: np.ndarray) -> np.ndarray:
    f = scale.size
    re = rng.standard_normal((n, a, f))
    im = rng.standard_normal((n, a, f))
    out = np.empty((n, a, f), np.complex128)
    for i in range(n):
        for j in range(a):
            for k in range(f):
                out[i, j, k] = complex(re[i, j, k] * scale[k], im[i, j, k] * scale[k])
    return out


def _colored_finish(
    series: np.ndarray,
    sd: float,
    mean: np.ndarray,
    std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
) -> np.ndarray:
    n, a, h = series.shape
    out = np.empty((n, h, a))
    for i in range(n):
        for t in range(h):
            for j in range(a):
                z = series[i, j, t] / sd
                out[i, t, j] = _clip(mean[t, j] + std[t, j] * z, low[j], high[j])
    return out


def _uniform(
    rng: np.random.Generator, low: np.ndarray, high: np.ndarray, n: int, h: int
) -> np.ndarray:
    a = low.size
    out = np.empty((n, h, a))
    for i in range(n):
        for t in range(h):
            for j in range(a):
                # Generator.uniform with array bounds: low + (high - low) * next_double.
                out[i, t, j] = low[j] + (high[j] - low[j]) * rng.random()
    return out


# ----------------------------------------------------------------------------------------------
# Compiled kernels
# ----------------------------------------------------------------------------------------------


def _f64(x: np.ndarray) -> np.ndarray:
    # One compiled signature per kernel: float64, C order. Upcasting float32 is exact, so the
    # result matches numpy's promotion.
    return np.ascontiguousarray(x, np.float64)


@dataclass(frozen=True)
class Kernels:
    """The compiled kernels, with array arguments brought to float64 C order."""

    jitted: dict[str, Any]

    def gaussian(
        self,
        rng: np.random.Generator,
        mean: np.ndarray,
        std: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """[N, H, A] ``clip(mean + std * z, low, high)``, z standard normal."""
        return self.jitted["gaussian"](rng, _f64(mean), _f64(std), _f64(low), _f64(high), n)

    def truncated(
        self,
        rng: np.random.Generator,
        mean: np.ndarray,
        std: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """[N, H, A] as :meth:`gaussian` with z truncated to +-TRUNCATION by resampling."""
        return self.jitted["truncated"](rng, _f64(mean), _f64(std), _f64(low), _f64(high), n)

    def spectrum(self, rng: np.random.Generator, n: int, a: int, scale: np.ndarray) -> np.ndarray:
        """[N, A, F] complex (re + i im) x scale, re and im [N, A, F] drawn in that order."""
        return self.jitted["spectrum"](rng, n, a, _f64(scale))

    def colored_finish(
        self,
        series: np.ndarray,
        sd: float,
        mean: np.ndarray,
        std: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
    ) -> np.ndarray:
        """[N, H, A] ``clip(mean + std * series.T / sd, low, high)`` from series [N, A, H]."""
        args = (_f64(series), float(sd), _f64(mean), _f64(std), _f64(low), _f64(high))
        return self.jitted["colored_finish"](*args)

    def uniform(
        self, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, n: int, h: int
    ) -> np.ndarray:
        """[N, H, A] ``rng.uniform(low, high, (N, H, A))``."""
        return self.jitted["uniform"](rng, _f64(low), _f64(high), n, h)


_BODIES = {
    "gaussian": _gaussian,
    "truncated": _truncated,
    "spectrum": _spectrum,
    "colored_finish": _colored_finish,
    "uniform": _uniform,
}

_lock = threading.Lock()
_building = threading.Lock()
_ready: Kernels | None = None
_started = False


def _build() -> Kernels:
    import numba
    from numba.extending import register_jitable

    jit = numba.njit(cache=True)
    register_jitable(_clip)  # the kernels call these; compiled inline into each
    register_jitable(_shift_scale_clip)
    kernels = Kernels({name: jit(body) for name, body in _BODIES.items()})
    # Compile (or load from the cache) every kernel now, on tiny inputs of the signatures used:
    # a later first call, e.g. after a live switch to another optimizer, compiles nothing.
    rng = np.random.default_rng(0)
    one = np.zeros((2, 1))
    bounds = np.array([-1.0]), np.array([1.0])
    kernels.gaussian(rng, one, one, *bounds, 2)
    kernels.truncated(rng, one, one, *bounds, 2)
    kernels.colored_finish(np.zeros((2, 1, 2)), 1.0, one, one, *bounds)
    kernels.spectrum(rng, 2, 1, np.ones(2))
    kernels.uniform(rng, *bounds, 2, 2)
    return kernels


def compile_now() -> Kernels:
    """Compile the kernels in this thread (or wait for the background compile); idempotent."""
    global _ready, _started
    with _building:
        if _ready is None:
            _ready = _build()
    with _lock:
        _started = True
    return _ready


def _compile_in_background() -> None:
    try:
        compile_now()
    except Exception:
        # numba is a dependency, so this is a broken install; plans stay on numpy (same results).
        log.exception("numba kernels failed to compile; the planners keep using numpy")


def start() -> None:
    """Start compiling the kernels in a background daemon thread, once; numpy serves until they
    are ready. :func:`for_batch` calls it at the first large batch of a process that has not
    compiled them (a script, a notebook, an in-process planner); call it earlier to have them
    sooner. The MPC service does not: it compiles in its own thread at start
    (:func:`compile_now`), before any robot is served."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_compile_in_background, name="numba-kernels", daemon=True).start()


def for_batch(elements: int) -> Kernels | None:
    """The compiled kernels for a draw of ``elements`` values (N x H x A), or None: numpy then.

    None below MIN_ELEMENTS; at or above it, None until the background compile it starts is
    done."""
    if elements < MIN_ELEMENTS:
        return None
    if not _started:
        start()
    return _ready
