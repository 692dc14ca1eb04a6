"""Where a stem's error lives: the energy of (reference - estimate) per frequency band, for two or
more models on the same tracks.

SDR is a ratio of energies over the whole band, so a stem's score is decided where its error
energy is.  For each model and stem this prints the error energy per band as a share of the
first model's total error for that stem, and each model's error against the first one's in dB
per band (negative: less error than the first model there).

    .venv/bin/python benchmarks/band_errors.py --data data/pop_v2 --tracks 6 \\
        ours=models/mmdense.json umx=/work/runs/umx14/umx.json --json benchmarks/results/band_errors.json

``--exchange`` also says which stem each stem's error is traded with (one model is then enough).
When a model's stems and the references both sum to the mixture, the errors ``e_s = est_s -
ref_s`` sum to zero, so ``||e_s||^2 = -sum over x != s of <e_s, e_x>``: each term is the part of
stem ``s``'s error energy exchanged with stem ``x`` (bass taken for drums below 100 Hz, say).  The
inner products are taken per band from the same STFT and summed over tracks; what the stems
leave unexplained (the error of a model whose stems do not sum to the mixture, of a mixture that
is not the sum of its references, or of a stem left out of the comparison) is reported as
``rest``.  The terms are signed net amounts, not a partition: where a stem's errors against two
others are correlated, one term can be negative and another above 100%.

    .venv/bin/python benchmarks/band_errors.py --data data/pop_v2 --exchange ours=models/mmdense.json
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
    its STFT (Hann, 4096 / 1024): [shape=(len(edges) - 1,)] (the diagonal of :func:`band_cross`)."""
    return band_cross([signal], rate, edges)[0, 0]


def band_cross(signals: list[np.ndarray], rate: int, edges: tuple[int, ...] = EDGES) -> np.ndarray:
    """Inner products of ``signals`` (each [shape=(channels, time)]) per band, from the STFT of
    :func:`band_energy`: ``[shape=(S, S, len(edges) - 1)]``, entry ``[i, j, k]`` the real part of
    ``sum X_i conj(X_j)`` over the bins of band ``k`` (the diagonal: each signal's energy per band)."""
    from stemcli.spectral import stft

    spec = stft(np.stack([np.asarray(x, np.float32) for x in signals]), N_FFT, HOP)  # [S, C, F, bins]
    freqs = np.arange(spec.shape[-1]) * rate / N_FFT
    out = np.zeros((len(signals), len(signals), len(edges) - 1))
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        band = spec[..., (freqs >= lo) & (freqs < hi)].reshape(len(signals), -1).astype(np.complex128)
        out[:, :, k] = np.real(band @ band.conj().T)
    return out


def exchange_terms(names: list[str], cross: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The exchange table of one track, from :func:`band_cross` of the stems' errors ``est - ref``
    (in the order of ``names``): stem -> other stem -> ``-<e_stem, e_other>`` per band, and
    ``"rest"`` -> ``<e_stem, sum of all errors>`` = ``||e_stem||^2`` minus the others' terms (zero
    when the errors sum to zero).  The terms are signed: with correlated errors one can be
    negative and another above the stem's whole error."""
    if not names:
        raise ValueError("no stems to compare")
    out = {}
    for i, s in enumerate(names):
        row = {x: -cross[i, j] for j, x in enumerate(names) if j != i}
        row["rest"] = cross[i].sum(axis=0)  # ||e_s||^2 + sum over x of <e_s, e_x>
        out[s] = row
    return out


def band_errors(models: dict[str, Any], data: Path, split: str, tracks: int | list[str] | None,
                stems: list[str] | None = None, exchange: bool = False) -> dict[str, Any]:
    """Error and reference energy per band, summed over tracks: ``{"bands", "tracks", "stems",
    "reference": stem -> [E], "error": model -> stem -> [E]}``, and with ``exchange`` also
    ``"exchange": model -> stem -> other stem (or "rest") -> [E]``: the part of the stem's error
    energy traded with the other stem, ``-<e_stem, e_other>`` per band (module docstring), and what
    those leave of it.  ``models`` maps a label to anything ``stemcli.api.separate`` takes as
    ``model``."""
    from stemcli import api
    from stemcli.evaluate import find_tracks, read_track

    folders = find_tracks(data, split, tracks)
    out: dict[str, Any] = {"bands": [list(b) for b in zip(EDGES[:-1], EDGES[1:])], "tracks": [f.name for f in folders],
                           "reference": {}, "error": {m: {} for m in models}}
    if exchange:
        out["exchange"] = {m: {} for m in models}
    for folder in folders:
        mix, rate, refs = read_track(folder)
        names = [s for s in (stems or list(refs)) if s in refs]
        if not names:
            raise ValueError(f"{folder}: none of the stems {', '.join(stems or [])} is among its references "
                             f"({', '.join(refs)})")
        for s in names:
            out["reference"][s] = out["reference"].get(s, 0) + band_energy(refs[s], rate)
        for label, model in models.items():
            est = api.separate(mix, rate, model=model)
            for s in names:
                if s not in est:
                    raise ValueError(f"{label}: the model gives no '{s}' stem (it gives {', '.join(est)})")
            errors = [est[s][..., : refs[s].shape[-1]] - refs[s] for s in names]
            # with --exchange one STFT of all the errors gives their energies too (its diagonal)
            cross = band_cross(errors, rate) if exchange else None
            for i, s in enumerate(names):
                err = cross[i, i] if cross is not None else band_energy(errors[i], rate)
                out["error"][label][s] = out["error"][label].get(s, 0) + err
            if cross is not None:
                for s, row in exchange_terms(names, cross).items():
                    acc = out["exchange"][label].setdefault(s, {})
                    for x, e in row.items():
                        acc[x] = acc.get(x, 0) + e
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


def report_exchange(res: dict[str, Any]) -> str:
    """Per model and stem: the share of the stem's error energy traded with each other stem, per
    band (percent of the stem's total error; a row's shares add up to that band's share)."""
    lines = []
    for label, per_stem in res["exchange"].items():
        for s, row in per_stem.items():
            total = float(np.sum(res["error"][label][s]))
            ref = float(np.sum(res["reference"][s]))
            lines.append(f"{label} {s}: error {_db(total, ref)} dB against the reference's energy; traded with")
            cols = list(row)
            lines.append(f"  {'band (Hz)':>13}" + "".join(f"  {c:>8}" for c in cols) + f"  {'total':>8}")
            for k, (lo, hi) in enumerate(res["bands"]):
                shares = [100 * row[c][k] / max(total, 1e-30) for c in cols]
                lines.append(f"  {f'{lo}-{hi}':>13}" + "".join(f"  {v:7.1f}%" for v in shares)
                             + f"  {100 * res['error'][label][s][k] / max(total, 1e-30):7.1f}%")
            lines.append(f"  {'all':>13}" + "".join(f"  {100 * float(np.sum(row[c])) / max(total, 1e-30):7.1f}%"
                                                    for c in cols) + f"  {100.0:7.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", metavar="LABEL=MODEL", help="two or more (one with --exchange): a label and a model name or card")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--tracks", default=None,
                    help="the first N tracks, or a comma-separated list of track names (default: all)")
    ap.add_argument("--stems", default=None, help="comma-separated stems (default: all the reference has)")
    ap.add_argument("--exchange", action="store_true",
                    help="also: which stem each stem's error is traded with, per band (one model is enough)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    models = {}
    for spec in args.models:
        label, sep, model = spec.partition("=")
        if not sep or not label or not model:
            ap.error(f"expected LABEL=MODEL, got '{spec}'")
        models[label] = model
    if len(models) < 2 and not args.exchange:
        ap.error("give at least two models to compare (or one with --exchange)")
    tracks: int | list[str] | None = None
    if args.tracks:
        tracks = int(args.tracks) if args.tracks.isdigit() else args.tracks.split(",")
    sys.path.insert(0, str(REPO))
    try:
        res = band_errors(models, args.data, args.split, tracks, args.stems.split(",") if args.stems else None,
                          exchange=args.exchange)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(res))
    if args.exchange:
        print(report_exchange(res))
    if args.json:
        from stemcli.evaluate import write_json

        write_json({"command": " ".join([Path(sys.executable).name, *sys.argv]), **res}, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
