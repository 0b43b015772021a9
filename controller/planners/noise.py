"""Pure sampling cores for the optimizers (numpy; numba did not beat these, see
``benchmarks/sampling_numba.py``)."""

from __future__ import annotations

import numpy as np

TRUNCATION = 2.0
"""Truncated normal draws lie within this many standard deviations (as PETS)."""


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws truncated to [-TRUNCATION, TRUNCATION] by resampling."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > TRUNCATION
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > TRUNCATION
    return z


def colored_noise(rng: np.random.Generator, beta: float, n: int, h: int, a: int) -> np.ndarray:
    """[n, h, a] Gaussian noise with power spectrum 1/f^beta along the horizon, unit variance.

    beta 0 is white noise; larger beta gives smoother, lower-frequency sequences (iCEM). Drawn
    in the frequency domain (scale f^(-beta/2), f floored at 1/h) and transformed back; the
    scale is normalized analytically, so every time step has variance 1.
    """
    if beta == 0.0 or h == 1:
        return rng.standard_normal((n, h, a))
    freqs = np.fft.rfftfreq(h)
    freqs[0] = 1.0 / h
    scale = freqs ** (-beta / 2.0)
    k = len(freqs)
    spectrum = rng.standard_normal((n, a, k)) + 1j * rng.standard_normal((n, a, k))
    spectrum *= scale
    series = np.fft.irfft(spectrum, n=h, axis=-1)
    # Per-step variance of the inverse transform: the DC bin (and for even h the Nyquist bin)
    # keeps only its real part, variance s^2; every other bin appears with its conjugate,
    # 2 Re(X e^{i w t}), variance 4 s^2. All over h^2.
    edge = scale[0] ** 2 + (scale[-1] ** 2 if h % 2 == 0 else 0.0)
    middle = scale[1:-1] if h % 2 == 0 else scale[1:]
    variance = (edge + 4.0 * float(np.sum(middle**2))) / h**2
    series /= np.sqrt(variance)
    return np.ascontiguousarray(series.transpose(0, 2, 1))
