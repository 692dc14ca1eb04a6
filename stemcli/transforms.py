"""Spectrogram front ends as torch modules that export to ONNX.

Everything here is built from ``MatMul``, ``Reshape``, ``Transpose``, ``Slice``, ``Pad``,
``Mul`` and ``Add``, so the modules export with the legacy and the dynamo exporter, with
dynamic batch and time axes, and run fast on onnxruntime:

* :class:`STFT` / :class:`ISTFT`: framing by reshape (``n_fft`` a multiple of ``hop``), the
  DFT as two batched matmul stages ("four-step" FFT, ``n_fft = P * Q``, twiddles and windows
  folded into the stage matrices), overlap-add by shifted sums; the window-square envelope
  is folded into the synthesis window when ``n_fft = 2 * hop``.  Measured on this machine:
  ``torch.istft`` does not export, the ONNX ``DFT`` op runs an inverse of 20k frames of 2048
  in 1.7 s on onnxruntime, a dense inverse-DFT matmul in 2.6 s; the two-stage matmul FFT
  needs ~1/12 of the dense multiply-adds and few memory passes.
* :class:`CQT`: a thin wrapper over nnAudio's ``CQT1992v2`` (exports with both exporters).
* :func:`stft_native` / :func:`istft_native`: the same transform pair through ``torch.stft``
  and torch's inverse FFT (complex, not exportable), for training and torch inference; models
  switch to the modules under ``torch.onnx.is_in_onnx_export()``.  :func:`istft_frames` is
  the inverse on the frames-major layout ``[..., frames, bins]``.

Spectrogram layout: ``(real, imag)``, each ``[shape=(batch, channels, bins, frames)]``, the
layout of ``torch.stft`` with ``center=True`` (zero padding instead of reflect padding).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn


def _factor(n_fft: int, hop: int) -> tuple[int, int]:
    """Split ``n_fft = P * Q`` (powers of two, ``Q <= P``) for the two matmul stages."""
    if n_fft < 4 or n_fft & (n_fft - 1):
        raise ValueError(f"n_fft={n_fft} must be a power of two >= 4")
    if hop <= 0 or n_fft % hop or n_fft // hop < 2:
        raise ValueError(f"hop={hop} must divide n_fft={n_fft} at least twice (overlapping frames)")
    q = 1 << (int(math.log2(n_fft)) // 2)
    if hop % q:
        raise ValueError(f"hop={hop} must be a multiple of {q} for n_fft={n_fft}")
    return n_fft // q, q


def _hann(n_fft: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def _f32(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)


class _FFTBase(nn.Module):
    def __init__(self, n_fft: int, hop: int, bins: int | None) -> None:
        super().__init__()
        self.p, self.q = _factor(int(n_fft), int(hop))
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.ratio = self.n_fft // self.hop
        self.half = self.n_fft // 2
        self.pb = self.p // self.ratio  # rows of the (P x Q) frame grid inside one hop
        full = self.half + 1
        self.bins = full if bins is None else int(bins)
        if not 0 < self.bins <= full:
            raise ValueError(f"bins={bins} must be in [1, {full}] for n_fft={n_fft}")


class STFT(_FFTBase):
    """Short-time Fourier transform: Hann window, ``center=True`` with zero padding.

    Frame ``f`` covers padded samples ``[f * hop, f * hop + n_fft)`` of the signal padded by
    ``n_fft / 2`` zeros on the left and ``n_fft / 2`` plus up to ``hop - 1`` on the right, so
    ``frames = ceil(time / hop) + 1`` and the values equal ``torch.stft(..., center=True,
    pad_mode="constant")`` on the frames both produce.

    Internally ``n_fft = P * Q``, sample ``n = Q n1 + n2``, bin ``k = k1 + P k2``: stage 1 is a
    batched matmul over ``n2`` (window and twiddles folded in), stage 2 one plain GEMM.  The
    native output (:meth:`fft_layout`) is ``[2, K2, batch, channels, frames, P]`` with bin
    ``k = P * k2 + k1`` split over axes 1 and 5; the other methods rearrange it.

    Args:
        n_fft: frame length, a power of two.
        hop: hop size; ``n_fft / hop`` must be an integer >= 2 and ``hop`` a multiple of ``Q``.
        bins: number of output bins (the lowest ``bins``); default all ``n_fft / 2 + 1``.
    """

    def __init__(self, n_fft: int = 2048, hop: int = 512, bins: int | None = None) -> None:
        super().__init__(n_fft, hop, bins)
        p, q, n = self.p, self.q, self.n_fft
        self.k2 = -(-self.bins // p)
        win = _hann(n)
        n1, n2, k1 = np.arange(p)[None, :, None], np.arange(q)[:, None, None], np.arange(p)[None, None, :]
        ang = -2.0 * np.pi * (k1 * n1 / p + k1 * n2 / n)  # [Q(n2), P(n1), P(k1)]
        w = win[q * n1 + n2]  # [Q, P, 1]
        self.register_buffer("w1", _f32(np.stack([w * np.cos(ang), w * np.sin(ang)])), persistent=False)
        # stage 2: rows (c', k2), columns (c, n2), complex e^{-2 pi i k2 n2 / Q}
        ang = -2.0 * np.pi * np.outer(np.arange(self.k2), np.arange(q)) / q
        c, s = np.cos(ang), np.sin(ang)
        self.register_buffer("w2", _f32(np.block([[c, -s], [s, c]])), persistent=False)

    def fft_layout(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(2, K2, batch, channels, frames, P)]: real/imag, bin ``P * k2 + k1``
            (bins beyond ``bins`` up to ``K2 * P`` are computed too).
        """
        b, c, t = wave.shape
        p, q, r, h = self.p, self.q, self.ratio, self.hop
        extra = (h - t % h) % h
        x = nn.functional.pad(wave, (self.half, self.half + extra))
        blocks = x.reshape(b * c, -1, self.pb, q).permute(3, 0, 1, 2)  # [Q(n2), BC, nb, Pb]
        nb = blocks.shape[2]
        frames = torch.cat([blocks[:, :, j : nb - (r - 1 - j)] for j in range(r)], dim=-1)  # [Q, BC, F, P(n1)]
        nf = frames.shape[2]
        a = torch.matmul(frames.reshape(1, q, -1, p), self.w1)  # [2(c), Q(n2), R, P(k1)]
        z = torch.matmul(self.w2, a.reshape(2 * q, -1))  # [(c', k2), (R, k1)]
        return z.reshape(2, self.k2, b, c, nf, p)

    def frames_major(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(2, batch, channels, frames, bins)]: real part, imaginary part.
        """
        z = self.fft_layout(wave)
        _, k2, b, c, nf, p = z.shape
        z = z.permute(0, 2, 3, 4, 1, 5).reshape(2, b, c, nf, k2 * p)
        return z[..., : self.bins] if k2 * p != self.bins else z

    def stacked(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(2, batch, channels, bins, frames)]: real part, imaginary part.
        """
        return self.frames_major(wave).transpose(-1, -2)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            (real, imag), each [shape=(batch, channels, bins, frames)].
        """
        z = self.stacked(wave)
        return z[0], z[1]


class ISTFT(_FFTBase):
    """Inverse of :class:`STFT`: weighted overlap-add divided by the window-square envelope.

    Bins not given (above ``bins``) count as zero.  For ``n_fft / hop == 2`` the envelope is
    folded into the synthesis window (it is periodic wherever output is kept); otherwise it is
    computed and divided explicitly.

    Internally bin ``k = P k1 + k2``, sample ``n = n_a + Q n_b``: stage 1 is a batched matmul
    over ``k2`` (twiddles and the one-sided weights folded in), stage 2 one plain GEMM with a
    real output (its columns ordered ``(k2, c)`` to read stage 1's output as it lies).  The native input (:meth:`from_fft_layout`) is ``[P(k2), 2, K1(k1), *rest]``.

    Args:
        n_fft, hop: as for :class:`STFT`.
        bins: number of input bins (the lowest ``bins``); default all ``n_fft / 2 + 1``.
    """

    def __init__(self, n_fft: int = 2048, hop: int = 512, bins: int | None = None) -> None:
        super().__init__(n_fft, hop, bins)
        p, q, n, h, r = self.p, self.q, self.n_fft, self.hop, self.ratio
        self.k1 = -(-self.bins // p)
        k2, na, k1 = np.arange(p)[:, None, None], np.arange(q)[None, :, None], np.arange(self.k1)[None, None, :]
        k = p * k1 + k2  # [P, 1, K1]
        coef = np.where((k == 0) | (k == self.half), 1.0 / n, 2.0 / n) * (k <= self.half)
        ang = 2.0 * np.pi * (k1 * na / q + k2 * na / n)  # [P(k2), Q(n_a), K1(k1)]
        gr, gi = coef * np.cos(ang), coef * np.sin(ang)
        w1 = np.stack([np.concatenate([gr, -gi], axis=2), np.concatenate([gi, gr], axis=2)], axis=1)  # [P, 2, Q, 2K1]
        self.register_buffer("w1", _f32(w1.reshape(p, 2 * q, 2 * self.k1)), persistent=False)
        phi = 2.0 * np.pi * np.outer(np.arange(p), np.arange(p)) / p  # [n_b, k2]
        w2 = np.stack([np.cos(phi), -np.sin(phi)], axis=2)  # [n_b, k2, c']
        self.register_buffer("w2", _f32(w2.reshape(p, 2 * p)), persistent=False)
        win = _hann(n)
        self.folded = r == 2
        if self.folded:
            env = sum(np.roll(win**2, -j * h)[:h] for j in range(r))  # [h], periodic envelope
            synth = win / np.tile(env, r)
        else:
            synth = win
        self.register_buffer("window", _f32(synth.reshape(p, q, 1)), persistent=False)  # [n_b, n_a, 1]
        self.register_buffer("win_sq", _f32((win**2).reshape(p, q, 1)), persistent=False)

    def _ola(self, y: torch.Tensor) -> torch.Tensor:
        """``y [P(n_b), Q(n_a), BC, F]`` -> overlap-added ``[Pb, Q, BC, F + r - 1]``."""
        r, pb = self.ratio, self.pb
        out = None
        for j in range(r):
            o = nn.functional.pad(y[j * pb : (j + 1) * pb], (j, r - 1 - j))
            out = o if out is None else out + o
        return out

    def from_fft_layout(self, spec: torch.Tensor, length: int | torch.Tensor) -> torch.Tensor:
        """Args:
            spec: [shape=(P, 2, K1, *rest, frames)]: bin ``P * k1 + k2`` at ``[k2, c, k1]``.
            length: number of output samples.

        Returns:
            [shape=(prod(rest), length)].
        """
        p, q = self.p, self.q
        nf = spec.shape[-1]
        x = spec.reshape(p, 2 * self.k1, -1)  # [P, (c, k1), R]
        s1 = torch.matmul(self.w1, x)  # [P(k2), (c', Q(n_a)), R]
        y = torch.matmul(self.w2, s1.reshape(2 * p, -1))  # [P(n_b), (Q(n_a), R)]
        y = y.reshape(p, q, -1) * self.window
        y = self._ola(y.reshape(p, q, -1, nf))  # [Pb, Q, BC, F + r - 1]
        if not self.folded:
            one = torch.ones_like(spec.reshape(-1, nf)[:1])  # [1, F]
            env = self._ola((self.win_sq * one.reshape(1, 1, -1)).reshape(p, q, 1, nf))
            y = y / env.clamp_min(1e-8)
        bc = y.shape[2]
        y = y.reshape(self.hop, bc, -1).permute(1, 2, 0).reshape(bc, -1)
        return y[:, self.half : self.half + length]

    def stacked(self, spec: torch.Tensor, length: int | torch.Tensor) -> torch.Tensor:
        """Args:
            spec: [shape=(2, batch, channels, bins, frames)]: real part, imaginary part.
            length: number of output samples (the ``time`` given to :class:`STFT`).

        Returns:
            [shape=(batch, channels, length)].
        """
        _, b, c, nbins, nf = spec.shape
        if nbins != self.bins:
            raise ValueError(f"ISTFT expects {self.bins} bins, got {nbins}")
        p = self.p
        if self.k1 * p != nbins:
            spec = nn.functional.pad(spec, (0, 0, 0, self.k1 * p - nbins))
        x = spec.reshape(2, b, c, self.k1, p, nf).permute(4, 0, 3, 1, 2, 5)  # [P, 2, K1, B, C, F]
        return self.from_fft_layout(x, length).reshape(b, c, -1)

    def frames_major(self, spec: torch.Tensor, length: int | torch.Tensor) -> torch.Tensor:
        """Like :meth:`stacked` with ``spec [shape=(2, batch, channels, frames, bins)]``."""
        return self.stacked(spec.transpose(-1, -2), length)

    def forward(self, real: torch.Tensor, imag: torch.Tensor, length: int | torch.Tensor) -> torch.Tensor:
        """Args:
            real, imag: [shape=(batch, channels, bins, frames)].
            length: number of output samples (the ``time`` given to :class:`STFT`).

        Returns:
            [shape=(batch, channels, length)].
        """
        return self.stacked(torch.stack([real, imag]), length)


def stft_native(wave: torch.Tensor, n_fft: int, hop: int, bins: int | None = None) -> torch.Tensor:
    """:class:`STFT` through ``torch.stft`` (an FFT): the same frames and values, complex, for
    training and torch inference (``torch.istft`` does not export; use the modules there).

    The two matmul stages per direction are fast on onnxruntime but slow under autograd; the
    FFT pair made training steps ~10 % (MMDenseNet) to ~25 % (Open-Unmix, ``n_fft=4096``)
    faster on this machine (see export/README.md).

    Args:
        wave: [shape=(batch, channels, time)].
        n_fft, hop: as for :class:`STFT` (``n_fft`` a power of two, ``hop`` dividing it).
        bins: keep the lowest ``bins`` bins (default all ``n_fft / 2 + 1``).

    Returns:
        [shape=(batch, channels, bins, frames)] complex, ``frames = ceil(time / hop) + 1``.
    """
    b, c, t = wave.shape
    extra = (hop - t % hop) % hop
    x = nn.functional.pad(wave, (0, extra)).reshape(b * c, t + extra)
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    if bins is not None:
        spec = spec[:, :bins]
    return spec.reshape(b, c, spec.shape[1], spec.shape[2])


def istft_native(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """Inverse of :func:`stft_native` (and of :class:`STFT`): :func:`istft_frames` on the
    bins-major layout.

    Args:
        spec: [shape=(*rest, bins, frames)] complex; missing bins above ``bins`` count as zero.
        n_fft, hop: as for :func:`stft_native`.
        length: number of output samples.

    Returns:
        [shape=(*rest, length)].
    """
    return istft_frames(spec.transpose(-1, -2), n_fft, hop, length)


def istft_frames(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """Inverse STFT of a frames-major spectrogram, the layout mask models compute in
    (differentiable; what ``torch.istft`` computes, without its layout changes).

    ``torch.istft`` takes ``[batch, bins, frames]``, moves it to frames-major for the inverse
    FFT and overlap-adds with ``unfold_backward``; a model holding ``[..., frames, bins]``
    paid three copies of the complex spectrogram there and in its gradient.  Here: one inverse
    real FFT over the last axis (zero-padded to ``n_fft``), the synthesis window, the
    overlap-add as ``n_fft / hop`` shifted sums of hop-long pieces, the window-square envelope.
    An ``mmdense`` training step's masking and inverse (forward and backward, batch 8 x 3 s)
    went from 1.1-2.3 s to 0.67-1.1 s on a 2-core EPYC; values within 1e-6 of ``torch.istft``.

    Args:
        spec: [shape=(*rest, frames, bins)] complex, ``bins <= n_fft / 2 + 1`` (missing bins
            above count as zero).
        n_fft, hop: as for :func:`stft_native` (``hop`` divides ``n_fft``).
        length: number of output samples.

    Returns:
        [shape=(*rest, length)] real, the dtype of ``spec``'s parts.
    """
    *rest, nf, nb = spec.shape
    if n_fft % hop:
        raise ValueError(f"hop={hop} must divide n_fft={n_fft}")
    if nb > n_fft // 2 + 1:
        raise ValueError(f"spectrogram has {nb} bins, more than n_fft/2 + 1 = {n_fft // 2 + 1}")
    ratio, half = n_fft // hop, n_fft // 2
    frames = torch.fft.irfft(spec.reshape(-1, nf, nb), n=n_fft, dim=-1)  # [N, F, n_fft]
    frames = frames * torch.hann_window(n_fft, periodic=True, dtype=frames.dtype, device=frames.device)
    pieces = frames.reshape(-1, nf, ratio, hop)
    out = nn.functional.pad(pieces[:, :, 0], (0, 0, 0, ratio - 1))
    for j in range(1, ratio):  # piece j of frame f lands in output block f + j
        out = out + nn.functional.pad(pieces[:, :, j], (0, 0, j, ratio - 1 - j))
    out = out / _ola_envelope(n_fft, hop, nf).to(device=out.device, dtype=out.dtype)
    return out.reshape(*rest, (nf + ratio - 1) * hop)[..., half : half + length]


@lru_cache(maxsize=8)
def _ola_envelope(n_fft: int, hop: int, frames: int) -> torch.Tensor:
    """:func:`stemcli.spectral.ola_envelope` as a float64 tensor (cast per use), kept for the
    next step of the same size."""
    from stemcli.spectral import ola_envelope

    return torch.from_numpy(ola_envelope(n_fft, hop, frames))


class Spectrogram(nn.Module):
    """Magnitude spectrogram ``|STFT|``: [shape=(batch, channels, bins, frames)]."""

    def __init__(self, n_fft: int = 2048, hop: int = 512, bins: int | None = None) -> None:
        super().__init__()
        self.stft = STFT(n_fft, hop, bins)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        z = self.stft.stacked(wave)
        return torch.sqrt((z * z).sum(0) + 1e-12)


class CQT(nn.Module):
    """Constant-Q magnitude via nnAudio ``CQT1992v2`` (for the research comparisons).

    Args:
        sample_rate: audio rate (Hz).
        hop: hop size in samples.
        fmin: lowest centre frequency (Hz).
        n_bins: number of bins.
        bins_per_octave: resolution.

    Input ``[shape=(batch, channels, time)]``, output ``[shape=(batch, channels, n_bins, frames)]``.
    """

    def __init__(
        self,
        sample_rate: int = 44100,
        hop: int = 512,
        fmin: float = 32.70,
        n_bins: int = 84,
        bins_per_octave: int = 12,
    ) -> None:
        super().__init__()
        from nnAudio.features import CQT1992v2

        self.cqt = CQT1992v2(
            sr=sample_rate, hop_length=hop, fmin=fmin, n_bins=n_bins,
            bins_per_octave=bins_per_octave, output_format="Magnitude", verbose=False,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        b, c, t = wave.shape
        out = self.cqt(wave.reshape(b * c, t))  # [B*C, bins, frames]
        return out.reshape(b, c, out.shape[-2], out.shape[-1])
