"""Render the bundled example song (examples/example.ogg) with stemcli's own synthesiser.

    python examples/make_example.py [--seed 3] [--seconds 20]

A generated pop track (sung espeak-ng vocals, GM drums, bass and chords through fluidsynth),
mixed and stored as Ogg Vorbis so the repository stays small.  It is not in any training split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from stemcli.data.render import available_soundfonts
from stemcli.data.synth import render_pop_track


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("example.ogg"))
    args = ap.parse_args()
    stems, info = render_pop_track(np.random.default_rng(args.seed), args.seconds, available_soundfonts())
    mix = sum(stems.values())
    mix = mix / max(1.0, float(np.abs(mix).max()) / 0.9)
    sf.write(str(args.output), mix.T, 44100, format="OGG", subtype="VORBIS")
    print(f"wrote {args.output} ({args.seconds:g} s); vocals: {info.get('vocal_mode', '?')}")


if __name__ == "__main__":
    main()
