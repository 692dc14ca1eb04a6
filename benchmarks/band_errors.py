"""Where a stem's error lives: the energy of (reference - estimate) per frequency band, for two or
more models on the same tracks.

SDR is a ratio of energies over the whole band, so a stem's score is decided where its error
energy is.  For each model and stem this prints the error energy per band as a share of the
first model's total error for that stem, and each model's error against the first one's in dB
per band (negative: less error than the first model there).

    .venv/bin/python benchmarks/band_errors.py --data data/pop_v2 --tracks 6 \\
        ours=models/mmdense.json umx=/work/runs/umx14/umx.json --json benchmarks/results/band_errors.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EDGES = (0, 100, 250, 500, 1000, 2000, 4000, 8000, 22050)  # Hz
N_FFT, HOP = 4096, 1024


def band_energy(signal: np.ndarray, rate: int, edges: tuple[int, ...] = EDGES) -> np.ndarray:
    """Energy of ``signal`` [shape=(channels, time)] per band ``[edges[k], edges[k+1])`` (Hz), from
    its STFT (Hann, 4096 / 1024): [shape=(len(edges) - 1,)]."""
    from stemcli.spectral import stft

    power = np.abs(stft(np.asarray(signal, np.float32), N_FFT, HOP)) ** 2  # [C, F, bins]
    per_bin = power.sum(axis=(0, 1))
    freqs = np.arange(per_bin.size) * rate / N_FFT
    return np.array([per_bin[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])


def band_errors(models: dict[str, Any], data: Path, split: str, tracks: int | list[str] | None,
                stems: list[str] | None = None) -> dict[str, Any]:
    """Error and reference energy per band, summed over tracks: ``{"bands", "tracks", "stems",
    "reference": stem -> [E], "error": model -> stem -> [E]}``.  ``models`` maps a label to
    anything ``stemcli.api.separate`` takes as ``model``."""
    from stemcli import api
    from stemcli.evaluate import find_tracks, read_track

    folders = find_tracks(data, split, tracks)
    out: dict[str, Any] = {"bands": [list(b) for b in zip(EDGES[:-1], EDGES[1:])], "tracks": [f.name for f in folders],
                           "reference": {}, "error": {m: {} for m in models}}
    for folder in folders:
        mix, rate, refs = read_track(folder)
        names = [s for s in (stems or list(refs)) if s in refs]
        for s in names:
            out["reference"][s] = out["reference"].get(s, 0) + band_energy(refs[s], rate)
        for label, model in models.items():
            est = api.separate(mix, rate, model=model)
            for s in names:
                if s not in est:
                    raise ValueError(f"{label}: the model gives no '{s}' stem (it gives {', '.join(est)})")
                err = band_energy(refs[s] - est[s][..., : refs[s].shape[-1]], rate)
                out["error"][label][s] = out["error"][label].get(s, 0) + err
    out["stems"] = list(out["reference"])
    return out


def _db(x: float, ref: float) -> str:
    """``10 log10(x / ref)`` signed to 2 decimals, ``n/a`` where either is 0."""
    return f"{10 * np.log10(x / ref):+.2f}" if x > 0 and ref > 0 else "n/a"


def report(res: dict[str, Any]) -> str:
    """The per-band table: reference share, each model's error share (of the first model's total),
    and each later model's error against the first one's in dB."""
    labels = list(res["error"])
    first = labels[0]
    lines = []
    for s in res["stems"]:
        ref = np.asarray(res["reference"][s], float)
        base = np.asarray(res["error"][first][s], float)
        totals = ", ".join(f"{m} {_db(np.sum(res['error'][m][s]), base.sum())} dB" for m in labels[1:])
        lines.append(f"{s}: total error against {first}: {totals or '-'}")
        head = f"  {'band (Hz)':>13}  {'reference':>9}" + "".join(f"  {m + ' err':>12}" for m in labels)
        head += "".join(f"  {m + ' - ' + first:>14}" for m in labels[1:])
        lines.append(head)
        for k, (lo, hi) in enumerate(res["bands"]):
            row = f"  {f'{lo}-{hi}':>13}  {100 * ref[k] / max(ref.sum(), 1e-30):8.1f}%"
            row += "".join(f"  {100 * res['error'][m][s][k] / max(base.sum(), 1e-30):11.1f}%" for m in labels)
            row += "".join(f"  {_db(res['error'][m][s][k], base[k]):>13}" for m in labels[1:])
            lines.append(row)
    lines.append(f"(error shares: percent of {first}'s total error for the stem; tracks: {', '.join(res['tracks'])})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", metavar="LABEL=MODEL", help="two or more: a label and a model name or card")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--tracks", default=None,
                    help="the first N tracks, or a comma-separated list of track names (default: all)")
    ap.add_argument("--stems", default=None, help="comma-separated stems (default: all the reference has)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    models = {}
    for spec in args.models:
        label, sep, model = spec.partition("=")
        if not sep or not label or not model:
            ap.error(f"expected LABEL=MODEL, got '{spec}'")
        models[label] = model
    if len(models) < 2:
        ap.error("give at least two models to compare")
    tracks: int | list[str] | None = None
    if args.tracks:
        tracks = int(args.tracks) if args.tracks.isdigit() else args.tracks.split(",")
    sys.path.insert(0, str(REPO))
    try:
        res = band_errors(models, args.data, args.split, tracks, args.stems.split(",") if args.stems else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(res))
    if args.json:
        from stemcli.evaluate import write_json

        write_json({"command": " ".join([Path(sys.executable).name, *sys.argv]), **res}, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
