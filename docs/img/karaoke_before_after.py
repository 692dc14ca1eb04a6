"""Make docs/img/karaoke_before_after.png: spectrograms of a rendered song before/after stem removal.

Run from the repository root:  .venv/bin/python docs/img/karaoke_before_after.py

With the 4-stem model installed (``mmdense`` registered) it removes the vocals with
``Karaoke()``; otherwise it removes the drums with ``Karaoke("hpss", suppress="percussive")``.
The song is rendered from MIDI with fluidsynth (``stemcli.data.synth.render_pop_track``, seed 7),
so the true stems are known and the energy drop of the removed stem is printed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

SR = 44100
OUT = Path(__file__).with_suffix(".png")


def energy_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.sum(np.asarray(x, np.float64) ** 2)) + 1e-20)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import stft

    from stemcli.data.render import available_soundfonts
    from stemcli.data.synth import render_pop_track
    from stemcli.effects import Karaoke
    from stemcli.plugins import registry

    stems, _ = render_pop_track(np.random.default_rng(7), 12.0, available_soundfonts(), SR)
    mix = sum(stems.values()).astype(np.float32)
    if "mmdense" in registry():
        effect, removed, label = Karaoke(), "vocals", "vocals removed: Karaoke() with the 4-stem model 'mmdense'"
    else:
        effect, removed, label = (
            Karaoke("hpss", suppress="percussive"),
            "drums",
            "drums removed: Karaoke('hpss', suppress='percussive')",
        )
    out = effect(mix, SR)
    rest = mix - stems[removed]
    drop = energy_db(stems[removed]) - energy_db(out - rest)
    print(f"{label}: {removed} energy drop {drop:.1f} dB")

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True, constrained_layout=True)
    panels = (("mixture (before)", mix), (f"after ({removed} removed)", out), (f"true mixture without {removed}", rest))
    for ax, (title, audio) in zip(axes, panels):
        f, t, spec = stft(audio.mean(axis=0), fs=SR, nperseg=2048, noverlap=1536)
        db = 20 * np.log10(np.abs(spec) + 1e-6)
        ax.pcolormesh(t, f / 1000, db, vmin=db.max() - 80, vmax=db.max(), shading="auto", cmap="magma")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        ax.set_ylim(0, 8)
    axes[0].set_ylabel("frequency (kHz)")
    fig.suptitle(f"{label}; {removed} energy drop {drop:.1f} dB (rendered song, seed 7)", fontsize=10)
    fig.savefig(OUT, dpi=80)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    sys.exit(main())
