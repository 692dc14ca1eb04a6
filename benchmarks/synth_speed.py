"""Rendering speed of `stemcli synth`: seconds of (mixture) audio per second of wall time, per kind.

    python benchmarks/synth_speed.py [--tracks 3] [--seconds 10] [--jobs 1] [--kinds pop,ensemble,speech]

Each kind renders ``tracks`` tracks of ``seconds`` into a temporary folder (deleted after).
"Audio s" counts mixture seconds; every track also writes one file per stem.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from stemcli.data.synth import KINDS, render_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    rows = []
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            card = render_dataset(tmp, kind=kind, tracks=args.tracks, seconds=args.seconds, seed=args.seed,
                                  jobs=args.jobs, progress=False, command="benchmark")
            wall = time.perf_counter() - t0
        audio = args.tracks * args.seconds
        stems = sum(len(t["stems"]) for t in card["track_list"]) / args.tracks
        rows.append((kind, args.tracks, audio, stems, wall, audio / wall))
    print(f"{'kind':<10}{'tracks':>7}{'audio s':>9}{'stems/trk':>10}{'wall s':>9}{'audio s / wall s':>18}")
    for kind, n, audio, stems, wall, speed in rows:
        print(f"{kind:<10}{n:>7}{audio:>9.1f}{stems:>10.1f}{wall:>9.2f}{speed:>18.2f}")


if __name__ == "__main__":
    main()
