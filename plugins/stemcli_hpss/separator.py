"""Harmonic/percussive separation by median filtering (Fitzgerald, DAFx 2010).

Harmonic sounds are smooth along time in a spectrogram, percussive ones along frequency:
median-filter the magnitude along each axis, build soft (Wiener-like) masks from the two
filtered spectrograms and apply them to the complex STFT.  The masks sum to one, so the two
stems sum back to the mixture.  No training, numpy/scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from stemcli.plugins import Separator


class HPSSSeparator(Separator):
    """Median-filtering HPSS with soft masks.

    Args:
        n_fft: FFT size.
        hop: hop size (n_fft // 4 gives perfect reconstruction with a Hann window).
        harmonic_kernel: median length along time (frames).
        percussive_kernel: median length along frequency (bins).
        power: mask exponent (2 = Wiener-like soft mask, large = binary).
    """

    sources = ("harmonic", "percussive")
    sample_rate = 44100
    channels = 2
    segment = 20.0
    context = 0.5
    description = "Harmonic/percussive split by median filtering (no training)"

    def __init__(
        self,
        n_fft: int = 2048,
        hop: int = 512,
        harmonic_kernel: int = 17,
        percussive_kernel: int = 17,
        power: float = 2.0,
    ):
        for label, value in (("n_fft", n_fft), ("hop", hop), ("harmonic_kernel", harmonic_kernel), ("percussive_kernel", percussive_kernel)):
            if int(value) < 1:
                raise ValueError(f"hpss: {label} must be >= 1, got {value}")
        if hop > n_fft:
            raise ValueError(f"hpss: hop ({hop}) must not exceed n_fft ({n_fft})")
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.kh, self.kp, self.power = int(harmonic_kernel), int(percussive_kernel), float(power)
        self._stft = ShortTimeFFT(hann(self.n_fft, sym=False), hop=self.hop, fs=self.sample_rate, scale_to=None)

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Args:
            mix: [shape=(batch, channels, time)] float32.

        Returns:
            [shape=(batch, 2, channels, time)] float32: harmonic, percussive.
        """
        b, c, n = mix.shape
        x = mix.astype(np.float64)
        if n < self.n_fft:  # the STFT needs at least half a window: a short input is zero-padded
            x = np.pad(x, [(0, 0), (0, 0), (0, self.n_fft - n)])
        spec = self._stft.stft(x, axis=-1)  # (b, c, freq, frames)
        mag = np.abs(spec).mean(axis=1)  # masks shared by the channels: (b, freq, frames)
        harm = median_filter(mag, size=(1, 1, self.kh), mode="reflect")
        perc = median_filter(mag, size=(1, self.kp, 1), mode="reflect")
        hp, pp = harm**self.power, perc**self.power
        total = hp + pp
        mask_h = np.where(total > 0, hp / np.where(total > 0, total, 1.0), 0.5)[:, None]
        out = np.empty((b, 2, c, n), np.float32)
        k1 = x.shape[-1]
        out[:, 0] = self._stft.istft(spec * mask_h, k1=k1)[..., :n]
        out[:, 1] = self._stft.istft(spec * (1.0 - mask_h), k1=k1)[..., :n]
        return out
