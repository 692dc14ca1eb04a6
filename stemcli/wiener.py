"""Multichannel Wiener post-filter for any separator's estimates (EM, as in norbert / Open-Unmix).

Given the mixture ``x`` and first estimates of its sources, each source ``j`` is modelled per
time-frequency bin as a zero-mean complex Gaussian with power ``v_j(f, t)`` (mean over
channels of ``|Y_j|^2``) and a per-frequency spatial covariance ``R_j(f)`` (``sum_t Y_j Y_j^H /
sum_t v_j``).  One EM iteration replaces every estimate by its posterior mean

    ``Y_j = v_j R_j (sum_k v_k R_k + eps I)^-1 X``,

which uses the inter-channel structure the masks ignore and restores phase consistency
between the sources.  The filtered stems still sum to the mixture (the filters sum to
identity up to ``eps``; the rounding is spread evenly so the sum is exact to float32).

Works on waveforms, so it wraps any :class:`~stemcli.plugins.Separator` (:class:`WienerSeparator`)
without touching the plugin: file -> chunk -> separator -> **Wiener** -> overlap-add.
Frequencies are processed in blocks (``R_j`` is per frequency), so memory stays a few times the
chunk's spectrogram.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stemcli.plugins import Separator
from stemcli.spectral import istft, stft

EPS = 1e-10
REG = 1e-5  # diagonal loading of the mixture model, relative to its mean power per bin


def _em_step(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One EM step.  ``x [B, C, F, k]`` mixture, ``y [B, S, C, F, k]`` estimates (complex)."""
    c = x.shape[1]
    v = np.mean(y.real**2 + y.imag**2, axis=2)  # [B, S, F, k]
    norm = 1.0 / (v.sum(axis=2) + EPS)  # [B, S, k]
    # spatial covariances R[c][d] [B, S, 1, k] and the mixture model sum_j v_j R_j + eps I
    r = [[None] * c for _ in range(c)]
    cov = [[None] * c for _ in range(c)]
    for a in range(c):
        for b in range(a, c):
            r[a][b] = (np.sum(y[:, :, a] * y[:, :, b].conj(), axis=2) * norm)[:, :, None]
            if b > a:
                r[b][a] = r[a][b].conj()
    for a in range(c):
        for b in range(c):
            cov[a][b] = np.sum(v * r[a][b], axis=1).astype(np.complex128)  # [B, F, k]
    # diagonal loading relative to the power: identical channels (a mono file through a stereo
    # model) make every R_j rank one and the model singular; an absolute eps vanishes in float32
    reg = REG * sum(cov[a][a].real for a in range(c)) / c + EPS
    for a in range(c):
        cov[a][a] = cov[a][a] + reg
    # z = (sum_j v_j R_j)^-1 x, per bin
    if c == 1:
        z = [x[:, 0] / cov[0][0]]
    elif c == 2:
        det = cov[0][0] * cov[1][1] - cov[0][1] * cov[1][0]
        z = [(cov[1][1] * x[:, 0] - cov[0][1] * x[:, 1]) / det, (cov[0][0] * x[:, 1] - cov[1][0] * x[:, 0]) / det]
    else:
        m = np.stack([np.stack(row, axis=-1) for row in cov], axis=-2)  # [B, F, k, C, C]
        sol = np.linalg.solve(m, np.moveaxis(x, 1, -1)[..., None])[..., 0]
        z = [sol[..., a] for a in range(c)]
    z = [np.asarray(q, np.complex64) for q in z]
    out = np.empty_like(y)
    for a in range(c):
        acc = r[a][0] * z[0][:, None]
        for b in range(1, c):
            acc = acc + r[a][b] * z[b][:, None]
        out[:, :, a] = v * acc
    return out


def wiener(mix: np.ndarray, est: np.ndarray, iterations: int = 1, n_fft: int = 4096, hop: int = 1024,
           block: int = 128) -> np.ndarray:
    """Refine source estimates with ``iterations`` EM steps of the multichannel Wiener filter.

    Args:
        mix: [shape=(batch, channels, time)] float32.
        est: [shape=(batch, sources, channels, time)] float32, first estimates.
        iterations: EM iterations (0 returns ``est`` unchanged).
        n_fft, hop: STFT of the filter (Open-Unmix uses 4096 / 1024).
        block: frequency bins filtered at once (memory).

    Returns:
        [shape=(batch, sources, channels, time)] float32, summing to ``mix``.
    """
    if iterations < 0:
        raise ValueError(f"Wiener iterations must be >= 0, got {iterations}")
    est = np.asarray(est, np.float32)
    if iterations == 0 or est.shape[-1] == 0:
        return est
    b, s, c, t = est.shape
    X = stft(mix, n_fft, hop)  # [B, C, F, K]
    Y = stft(est, n_fft, hop)  # [B, S, C, F, K]
    out = np.empty_like(Y)
    for k0 in range(0, X.shape[-1], block):
        x = X[..., k0 : k0 + block]  # [B, C, F, k]
        y = Y[..., k0 : k0 + block]  # [B, S, C, F, k]
        for _ in range(iterations):
            y = _em_step(x, y)
        out[..., k0 : k0 + block] = y
    y = istft(out, n_fft, hop, t)
    y += (np.asarray(mix, np.float32) - y.sum(axis=1))[:, None] / s  # exact sum, spread evenly
    return np.asarray(y, np.float32)


class WienerSeparator(Separator):
    """Any separator followed by the multichannel Wiener post-filter.

    Args:
        inner: the separator to refine.
        iterations: EM iterations (>= 1).
        n_fft, hop: the filter's STFT.
    """

    def __init__(self, inner: Separator, iterations: int = 1, n_fft: int = 4096, hop: int = 1024) -> None:
        if iterations < 1:
            raise ValueError(f"Wiener iterations must be >= 1, got {iterations}")
        if n_fft < 2 or hop < 1 or n_fft % hop or n_fft // hop < 2:
            raise ValueError(f"Wiener STFT: hop={hop} must divide n_fft={n_fft} at least twice")
        self.inner = inner
        self.iterations, self.n_fft, self.hop = int(iterations), int(n_fft), int(hop)
        self.name = f"{inner.name}+wiener{self.iterations}"
        self.description = f"{inner.description} (+ multichannel Wiener, {self.iterations} EM iteration(s))"
        self.sources = tuple(inner.sources)
        self.sample_rate = inner.sample_rate
        self.channels = inner.channels
        self.segment = inner.segment
        self.overlap = float(getattr(inner, "overlap", Separator.overlap))
        # the filter's STFT frames reach hop..n_fft samples further: a little more context
        self.context = float(getattr(inner, "context", 0.0)) + n_fft / inner.sample_rate

    def select_sources(self, sources: Any) -> None:
        # the filter needs every source's estimate; only writing is restricted (by the caller)
        pass

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Args:
            mix: [shape=(batch, channels, time)] float32.

        Returns:
            [shape=(batch, sources, channels, time)] float32.
        """
        mix = np.ascontiguousarray(mix, np.float32)
        return wiener(mix, self.inner.separate(mix), self.iterations, self.n_fft, self.hop)

    def info(self) -> dict[str, Any]:
        d = dict(self.inner.info())
        d.update({"name": self.name, "wiener": {"iterations": self.iterations, "n_fft": self.n_fft, "hop": self.hop}})
        return d
