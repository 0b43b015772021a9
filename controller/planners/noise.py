"""Pure sampling cores for the optimizers: candidate sequences drawn within the bounds.

Each ``*_candidates`` function computes the numpy expression written here, or for a large batch
its numba kernel (:mod:`controller.planners.kernels`: ask + tell 1.6-1.9x faster at
half-cheetah sizes, ``benchmarks/planner_cpu.py``) once compiled; both give
the same bits and consume the generator identically, so a seeded plan does not depend on which
ran.

Shapes: N candidates, H horizon, A action.
"""

from __future__ import annotations

import numpy as np

from controller.planners import kernels
from controller.planners.kernels import TRUNCATION

__all__ = [
    "TRUNCATION",
    "colored_candidates",
    "colored_noise",
    "gaussian_candidates",
    "truncated_candidates",
    "truncated_normal",
    "uniform_candidates",
]


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws truncated to [-TRUNCATION, TRUNCATION] by resampling."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > TRUNCATION
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > TRUNCATION
    return z


def _colored_scale(beta: float, h: int) -> tuple[np.ndarray, float]:
    """Amplitude per rfft frequency [H // 2 + 1] and the per-step std it gives after irfft."""
    freqs = np.fft.rfftfreq(h)
    freqs[0] = 1.0 / h
    scale = freqs ** (-beta / 2.0)
    # Per-step variance of the inverse transform: the DC bin (and for even h the Nyquist bin)
    # keeps only its real part, variance s^2; every other bin appears with its conjugate,
    # 2 Re(X e^{i w t}), variance 4 s^2. All over h^2.
    edge = scale[0] ** 2 + (scale[-1] ** 2 if h % 2 == 0 else 0.0)
    middle = scale[1:-1] if h % 2 == 0 else scale[1:]
    variance = (edge + 4.0 * float(np.sum(middle**2))) / h**2
    return scale, float(np.sqrt(variance))


def colored_noise(rng: np.random.Generator, beta: float, n: int, h: int, a: int) -> np.ndarray:
    """[n, h, a] Gaussian noise with power spectrum 1/f^beta along the horizon, unit variance.

    beta 0 is white noise; larger beta gives smoother, lower-frequency sequences (iCEM). Drawn
    in the frequency domain (scale f^(-beta/2), f floored at 1/h) and transformed back; the
    scale is normalized analytically, so every time step has variance 1.
    """
    if beta == 0.0 or h == 1:
        return rng.standard_normal((n, h, a))
    scale, sd = _colored_scale(beta, h)
    k = len(scale)
    spectrum = rng.standard_normal((n, a, k)) + 1j * rng.standard_normal((n, a, k))
    spectrum *= scale
    series = np.fft.irfft(spectrum, n=h, axis=-1)
    series /= sd
    return np.ascontiguousarray(series.transpose(0, 2, 1))


def gaussian_candidates(
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    n: int,
) -> np.ndarray:
    """[N, H, A] ``clip(mean + std * z, low, high)``: mean, std [H, A]; low, high [A]."""
    k = kernels.for_batch(n * mean.size)
    if k is not None:
        return k.gaussian(rng, mean, std, low, high, n)
    return np.clip(mean + std * rng.standard_normal((n, *mean.shape)), low, high)


def truncated_candidates(
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    n: int,
) -> np.ndarray:
    """As :func:`gaussian_candidates` with z from :func:`truncated_normal`."""
    k = kernels.for_batch(n * mean.size)
    if k is not None:
        return k.truncated(rng, mean, std, low, high, n)
    return np.clip(mean + std * truncated_normal(rng, (n, *mean.shape)), low, high)


def colored_candidates(
    rng: np.random.Generator,
    beta: float,
    mean: np.ndarray,
    std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    n: int,
) -> np.ndarray:
    """As :func:`gaussian_candidates` with z from :func:`colored_noise` (exponent ``beta``)."""
    h, a = mean.shape
    k = kernels.for_batch(n * h * a)
    if k is None:
        return np.clip(mean + std * colored_noise(rng, beta, n, h, a), low, high)
    if beta == 0.0 or h == 1:
        return k.gaussian(rng, mean, std, low, high, n)
    scale, sd = _colored_scale(beta, h)
    # numba has no FFT; the transform stays numpy's, on the kernel's spectrum.
    series = np.fft.irfft(k.spectrum(rng, n, a, scale), n=h, axis=-1)
    return k.colored_finish(series, sd, mean, std, low, high)


def uniform_candidates(
    rng: np.random.Generator, low: np.ndarray, high: np.ndarray, n: int, h: int
) -> np.ndarray:
    """[N, H, A] uniform in [low, high) per action dimension: low, high [A]."""
    k = kernels.for_batch(n * h * len(low))
    if k is not None:
        return k.uniform(rng, low, high, n, h)
    return rng.uniform(low, high, size=(n, h, len(low)))
