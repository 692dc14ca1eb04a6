"""Peak memory of `stemcli separate` must not grow with song length.

Generates a short and a long stereo 44.1 kHz file (streamed to disk, never held in memory),
separates each in a fresh process and prints the peak RSS of each and their ratio.

    python benchmarks/memory.py                      # 3 min vs 60 min, default model
    python benchmarks/memory.py --model hpss --long 20

Target: long / short peak RSS <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100

CHILD = r"""
import resource, sys, time
from stemcli.api import get_separator, separate_file
from pathlib import Path
sep = get_separator(sys.argv[2] or None)
out = Path(sys.argv[3])
t0 = time.perf_counter()
separate_file(sys.argv[1], sep, {s: out / f"{s}.wav" for s in sep.sources})
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_song(path: Path, minutes: float, seed: int = 0) -> None:
    """Write a synthetic song block by block: chords, a bass line and noise-burst drums."""
    rng = np.random.default_rng(seed)
    n_total, block = int(minutes * 60 * SR), SR * 10
    with sf.SoundFile(str(path), "w", SR, 2, subtype="PCM_16") as f:
        for start in range(0, n_total, block):
            n = min(block, n_total - start)
            t = (start + np.arange(n)) / SR
            root = 110 * 2 ** (rng.integers(0, 12) / 12)
            x = 0.15 * np.sin(2 * np.pi * root * t) + 0.1 * np.sin(2 * np.pi * 2.5 * root * t)
            hits = np.zeros(n)
            for k in range(0, n, SR // 2):
                m = min(2000, n - k)
                hits[k : k + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / 300) * 0.3
            f.write(np.stack([x + hits, 0.9 * x + hits], axis=1).astype(np.float32))


def measure(path: Path, model: str, outdir: Path, alloc: str = "tcmalloc") -> tuple[float, float]:
    from stemcli.allocator import child_env

    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), model, str(outdir)], capture_output=True, text=True, check=True,
        env=child_env(alloc),
    ).stdout.split()
    return float(out[0]), int(out[1]) / 1024.0  # seconds, MiB (ru_maxrss is KiB on Linux)


def main() -> None:
    from stemcli.allocator import CHOICES, resolve

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="separator (default: the default model)")
    ap.add_argument("--short", type=float, default=3.0, help="minutes")
    ap.add_argument("--long", type=float, default=60.0, help="minutes")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--allocator", choices=CHOICES, default="auto",
                    help="memory allocator of the separating processes (default auto: tcmalloc if "
                         "installed, as `stemcli separate`)")
    args = ap.parse_args()
    try:
        args.allocator = resolve(args.allocator)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"allocator: {args.allocator}")
    with tempfile.TemporaryDirectory(prefix="stemcli-mem-") as tmp:
        rows = []
        for label, minutes in (("short", args.short), ("long", args.long)):
            song = Path(tmp) / f"{label}.wav"
            t0 = time.perf_counter()
            make_song(song, minutes)
            gen = time.perf_counter() - t0
            secs, rss = measure(song, args.model, Path(tmp) / label, args.allocator)
            song.unlink()
            rows.append({"label": label, "minutes": minutes, "seconds": secs, "peak_rss_mib": rss, "generate_s": gen})
            print(f"{label:>5}: {minutes:6.1f} min audio  separated in {secs:7.1f} s  peak RSS {rss:8.1f} MiB", flush=True)
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    verdict = "PASS" if ratio <= 1.2 else "FAIL"
    print(f"peak RSS ratio long/short = {ratio:.3f} (target <= 1.2): {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model or "default", "allocator": args.allocator, "rows": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
