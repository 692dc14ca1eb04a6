"""Example third-party stemcli plugin: a mid/side split.

``mid`` holds what both channels share (the centre: usually vocals, bass, kick), ``side``
what differs between them (wide pads, reverb, panned instruments).  The two stems sum back
to the mixture exactly.  The whole plugin is this class plus one entry point.
"""

from __future__ import annotations

import numpy as np

from stemcli.plugins import Separator


class MidSideSeparator(Separator):
    sources = ("mid", "side")
    sample_rate = 44100
    channels = 2
    segment = 30.0
    description = "Example plugin: centre (mid) vs. sides of a stereo mix"

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Args:
            mix: [shape=(batch, 2, time)] float32.

        Returns:
            [shape=(batch, 2, 2, time)]: mid = (L+R)/2 on both channels, side = ±(L-R)/2.
        """
        mid = mix.mean(axis=1, keepdims=True)
        mid = np.repeat(mid, 2, axis=1)
        side = mix - mid
        return np.stack([mid, side], axis=1).astype(np.float32)
