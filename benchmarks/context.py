"""How much context does a model need at a join?  Parts with context against the whole track.

A long input is cut into time parts (``stemcli.runtime.run_in_parts``, one per thread) and a
song into chunks (the chunk plan), each fed ``context`` seconds of neighbouring audio and joined
by a short cross-fade.  Context costs time (every part separates it and throws it away) and
buys agreement with separating the whole track at once.  For each test track this script
separates the whole 30 s in one piece, then in two parts joined at the middle with each
context, and prints

* agreement: ``10 log10(|whole|^2 / |parts - whole|^2)`` per stem within 1.5 s of the join
  (dB, median over tracks; how far the join moved the output there; higher is closer);
* SDR of each against the true stems (plain SDR over the track, dB, median over tracks).

    .venv/bin/python benchmarks/context.py --data /work/data/pop_v2 [--model mmdense] [--tracks 8]
        [--contexts 0.37,0.74,1.11] [--json out.json]

Contexts are rounded up to the model's alignment (STFT hop x time stride; 16384 samples =
0.37 s for the shipped model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Plain SDR (dB) of ``est`` against ``ref`` (any equal shapes)."""
    num = float(np.sum(ref.astype(np.float64) ** 2))
    den = float(np.sum((ref.astype(np.float64) - est) ** 2))
    return 10.0 * np.log10((num + 1e-12) / (den + 1e-12))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="MUSDB-layout folder (its test split is used)")
    p.add_argument("--model", default="mmdense")
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--contexts", default="0.37,0.74,1.11", help="seconds, comma-separated")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)

    from stemcli.runtime import FADE_SECONDS, OnnxSeparator, run_in_parts, split_points

    sep = OnnxSeparator(a.model, threads=1)
    rate, align = sep.sample_rate, sep.alignment
    folders = sorted(d for d in (a.data / "test").iterdir() if (d / "mixture.wav").is_file())[: a.tracks]
    if not folders:
        sys.exit(f"error: {a.data / 'test'}: no track folders with mixture.wav")
    contexts = sorted({-(-int(float(c) * rate) // align) * align for c in a.contexts.split(",")})
    rows: dict[str, dict[str, list[float]]] = {"whole": {}, **{f"{c / rate:.2f}": {} for c in contexts}}
    agree: dict[str, dict[str, list[float]]] = {f"{c / rate:.2f}": {} for c in contexts}
    for folder in folders:
        mix = sf.read(folder / "mixture.wav", dtype="float32", always_2d=True)[0].T[None]
        refs = {s: sf.read(folder / f"{s}.wav", dtype="float32", always_2d=True)[0].T for s in sep.sources}
        whole = np.asarray(sep._run(mix))[0]  # one piece: no join at all
        bounds = split_points(mix.shape[-1], 2, 1, align)
        near = slice(bounds[1] - int(1.5 * rate), bounds[1] + int(1.5 * rate))
        for k, s in enumerate(sep.sources):
            rows["whole"].setdefault(s, []).append(sdr(refs[s], whole[k]))
        for c in contexts:
            key = f"{c / rate:.2f}"
            parts = run_in_parts(sep._run, mix, bounds, c, int(FADE_SECONDS * rate), None)[0]
            for k, s in enumerate(sep.sources):
                rows[key].setdefault(s, []).append(sdr(refs[s], parts[k]))
                agree[key].setdefault(s, []).append(sdr(whole[k][..., near], parts[k][..., near]))
        print(f"{folder.name}: done", flush=True)

    print(f"\n{sep.name}: {len(folders)} tracks, two parts joined at the middle (cross-fade {FADE_SECONDS:g} s)")
    print(f"{'context':>8s}  " + "  ".join(f"{s + ' agree':>13s}" for s in sep.sources))
    for key in agree:
        print(f"{key + ' s':>8s}  " + "  ".join(f"{np.median(agree[key][s]):13.1f}" for s in sep.sources))
    print(f"\n{'SDR':>8s}  " + "  ".join(f"{s:>8s}" for s in sep.sources))
    for key, per in rows.items():
        label = key if key == "whole" else key + " s"
        print(f"{label:>8s}  " + "  ".join(f"{np.median(per[s]):8.3f}" for s in sep.sources))
    if a.json:
        a.json.write_text(json.dumps({"model": sep.name, "tracks": [f.name for f in folders], "agreement_db": agree,
                                      "sdr_db": rows, "alignment": align, "rate": rate}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
