"""Ideal-ratio-mask oracle: the best a magnitude ratio mask can do at a given STFT.

A mask model estimates, per time-frequency bin, how much of the mixture belongs to each stem.
Given the true stems, the *ideal* ratio mask is

    M_j = |S_j|^p / sum_k |S_k|^p,        stem_j = ISTFT(M_j * X)

where ``X`` is the STFT of the mixture and ``S_k`` the STFT of stem ``k``.  With the same STFT
(``n_fft``/``hop``) as the model, its SDR is the ceiling such a model can approach, so
``oracle SDR - model SDR`` states how much of the remaining error is the model's.
``power=1`` is the magnitude ratio mask (IRM1), ``power=2`` the Wiener-like power ratio mask
(IRM2, the default: it scores higher on BSS Eval, so it is the stricter ceiling).

``mask="psm"`` is the clipped phase-sensitive mask instead,

    M_j = clip(Re(S_j conj(X)) / |X|^2, 0, 1),

the real mask in [0, 1] that brings ``M_j * X`` closest to ``S_j`` in each bin (the projection
of ``S_j`` on ``X``, clipped; ``|M X - S|^2`` is convex in ``M``): no real mask in [0, 1] has a
smaller spectrogram error, bin by bin.  That makes it an upper reference for a mask model,
higher than IRM2 (a ratio mask ignores that stems cancel each other in a bin), not a strict
bound on SDR: the inverse STFT of a masked spectrogram is not the least time-domain error,
BSS Eval allows a distortion filter and takes medians, and a residual stem's mask (one minus
the others) can leave [0, 1].  Its masks need not sum to one over the stems.

Numpy/scipy only (no torch), so evaluation never needs a deep learning stack.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.signal import check_NOLA, istft, stft

from stemcli.plugins import Separator

DEFAULT_N_FFT = 4096
DEFAULT_HOP = 1024
DEFAULT_POWER = 2.0
MASKS = ("irm", "psm")  # ideal ratio mask |S_j|^p / sum |S_k|^p; clipped phase-sensitive mask


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[shape=(..., time)] -> [shape=(..., bins, frames)] complex (Hann window)."""
    _, _, spec = stft(
        x, nperseg=n_fft, noverlap=n_fft - hop, window="hann", boundary="zeros", padded=True, axis=-1
    )
    return spec


def _istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    _, x = istft(spec, nperseg=n_fft, noverlap=n_fft - hop, window="hann", boundary=True, time_axis=-1, freq_axis=-2)
    return _fit(x, length)


def _fit(x: np.ndarray, length: int) -> np.ndarray:
    if x.shape[-1] >= length:
        return x[..., :length]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return np.pad(x, pad)


def check_mask(mask: str) -> None:
    """Raise ``ValueError`` unless ``mask`` is one of :data:`MASKS`."""
    if mask not in MASKS:
        raise ValueError(f"unknown oracle mask '{mask}' (choose from {', '.join(MASKS)})")


def check_stft(n_fft: int, hop: int) -> None:
    """Raise ``ValueError`` unless the oracle's STFT can be inverted: ``n_fft >= 2``,
    ``1 <= hop <= n_fft``, and Hann windows ``hop`` apart overlap everywhere (scipy's NOLA
    condition; it fails only for hops within a few samples of ``n_fft``, where the inverse
    divides by a window sum that is zero or nearly so: at n_fft 1024, hop 1023 put the stems
    0.5 off the mixture)."""
    if n_fft < 2:
        raise ValueError(f"oracle n_fft must be >= 2, got {n_fft}")
    if not 1 <= hop <= n_fft:
        raise ValueError(f"oracle hop must be in [1, n_fft], got {hop} (n_fft={n_fft})")
    if not check_NOLA("hann", n_fft, n_fft - hop):
        raise ValueError(
            f"oracle hop {hop} leaves Hann windows of {n_fft} samples too little overlap to invert "
            f"the STFT; use a hop of at most {n_fft // 2}"
        )


def ideal_ratio_mask(
    mixture: np.ndarray,
    references: np.ndarray,
    n_fft: int = DEFAULT_N_FFT,
    hop: int = DEFAULT_HOP,
    power: float = DEFAULT_POWER,
    eps: float = 1e-10,
    mask: str = "irm",
) -> np.ndarray:
    """Apply the ideal masks computed from ``references`` to ``mixture``.

    Args:
        mixture: [shape=(channels, time)] float audio.
        references: [shape=(sources, channels, time)] the true stems (same length as the mixture).
        n_fft: STFT frame length (samples), as the model's.
        hop: STFT hop (samples), as the model's.
        power: exponent ``p`` of the mask (1: magnitude ratio, 2: power ratio).
        eps: added to the mask denominator; bins where every stem is silent get an equal split
            (``"psm"``: bins where the mixture is silent get zero).
        mask: ``"irm"`` (ratio mask, exponent ``power``) or ``"psm"`` (clipped phase-sensitive
            mask; ``power`` unused).

    Returns:
        [shape=(sources, channels, time)] float32 estimates.

    Raises:
        ValueError: on shapes that do not match or bad STFT parameters.
    """
    mixture = np.asarray(mixture, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    if mixture.ndim != 2:
        raise ValueError(f"mixture must have shape (channels, time), got {mixture.shape}")
    if references.ndim != 3 or references.shape[1:] != mixture.shape:
        raise ValueError(
            f"references must have shape (sources, {mixture.shape[0]}, {mixture.shape[1]}) to match the "
            f"mixture, got {references.shape}"
        )
    check_stft(n_fft, hop)
    check_mask(mask)
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    length = mixture.shape[-1]
    mix_spec = _stft(mixture, n_fft, hop)  # (channels, bins, frames)
    ref_spec = _stft(references, n_fft, hop)  # (sources, channels, bins, frames)
    if mask == "psm":
        mix_pow = np.abs(mix_spec) ** 2
        proj = ref_spec.real * mix_spec.real[None] + ref_spec.imag * mix_spec.imag[None]  # Re(S_j conj(X))
        del ref_spec  # the stems' spectra are the largest array: not kept through the inverse
        proj /= np.maximum(mix_pow, eps)
        np.clip(proj, 0.0, 1.0, out=proj)
        masks = np.where(mix_pow > eps, proj, 0.0)
        del proj
    else:
        ref_mag = np.abs(ref_spec) ** power
        del ref_spec
        total = ref_mag.sum(axis=0, keepdims=True)
        n_src = references.shape[0]
        masks = np.where(total > eps, ref_mag / np.maximum(total, eps), 1.0 / n_src)
    estimates = _istft(masks * mix_spec[None], n_fft, hop, length)
    return estimates.astype(np.float32)


def oracle_separate(
    mixture: np.ndarray,
    references: Mapping[str, np.ndarray],
    n_fft: int = DEFAULT_N_FFT,
    hop: int = DEFAULT_HOP,
    power: float = DEFAULT_POWER,
    mask: str = "irm",
) -> dict[str, np.ndarray]:
    """Dict flavour of :func:`ideal_ratio_mask`, shaped like :func:`stemcli.api.separate`'s result.

    Args:
        mixture: [shape=(channels, time)].
        references: stem -> [shape=(channels, time)].

    Returns:
        stem -> [shape=(channels, time)] float32.
    """
    names = list(references)
    if not names:
        raise ValueError("the oracle needs at least one reference stem")
    refs = np.stack([np.asarray(references[s]) for s in names])
    est = ideal_ratio_mask(mixture, refs, n_fft=n_fft, hop=hop, power=power, mask=mask)
    return {s: est[i] for i, s in enumerate(names)}


class OracleSeparator(Separator):
    """The ideal-ratio-mask oracle behind the :class:`~stemcli.plugins.Separator` interface.

    It is built for one track (it holds that track's true stems), so it is not registered as an
    entry point; :func:`stemcli.evaluate.evaluate` builds one per track.  ``separate`` must be
    given the whole track (the segment is set to the track length so the engine does not chunk).

    Args:
        references: [shape=(sources, channels, time)] the true stems.
        sources: their names.
        sample_rate: their rate (Hz).
    """

    description = "ideal-ratio-mask oracle (needs the true stems; evaluation only)"

    def __init__(
        self,
        references: np.ndarray,
        sources: Sequence[str],
        sample_rate: int = 44100,
        n_fft: int = DEFAULT_N_FFT,
        hop: int = DEFAULT_HOP,
        power: float = DEFAULT_POWER,
        mask: str = "irm",
    ) -> None:
        check_mask(mask)
        references = np.asarray(references, dtype=np.float32)
        if references.ndim != 3 or references.shape[0] != len(sources):
            raise ValueError(
                f"references must have shape ({len(sources)}, channels, time) for sources {list(sources)}, "
                f"got {references.shape}"
            )
        self.references = references
        self.name = "oracle"
        self.sources = tuple(sources)
        self.sample_rate = int(sample_rate)
        self.channels = int(references.shape[1])
        self.segment = references.shape[-1] / self.sample_rate + 1.0
        self.n_fft, self.hop, self.power, self.mask = int(n_fft), int(hop), float(power), mask

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Args: mix: [shape=(batch, channels, time)], each item the whole track.

        Returns:
            [shape=(batch, sources, channels, time)] float32.
        """
        mix = np.asarray(mix)
        if mix.ndim != 3 or mix.shape[1] != self.channels:
            raise ValueError(f"oracle: mix must have shape (batch, {self.channels}, time), got {mix.shape}")
        n = self.references.shape[-1]
        out = []
        for item in mix:
            # The engine may pad the track; align the references to the given length.
            refs = _fit(self.references, item.shape[-1])
            if item.shape[-1] < n:
                raise ValueError(
                    f"oracle: got {item.shape[-1]} samples but the references have {n}; "
                    "the oracle must see the whole track"
                )
            out.append(ideal_ratio_mask(item, refs, self.n_fft, self.hop, self.power, mask=self.mask))
        return np.stack(out).astype(np.float32)


__all__ = ["ideal_ratio_mask", "oracle_separate", "OracleSeparator", "DEFAULT_N_FFT", "DEFAULT_HOP", "MASKS", "check_mask"]
