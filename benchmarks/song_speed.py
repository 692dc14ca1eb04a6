"""End-to-end speed on a whole song file: `stemcli.api.separate_file`, side by side.

``speed.py`` times 30 s in memory; a user separates songs from disk, where the chunk plan
(segment, context, overlap), reading, resampling and writing count too.  This script writes a
synthetic stereo 44.1 kHz song (``memory.make_song``), then separates it in fresh processes,
alternating between the configurations given, and prints the median wall time and real-time
factor of each and their ratios to the first.

A configuration is ``LABEL=MODEL`` (a model name or card path) or ``LABEL=MODEL@TREE``, where
``TREE`` is another checkout of this repository (e.g. ``git worktree add /tmp/old HEAD~1``):
its ``stemcli`` and plugins are imported instead of this one's, so an engine change can be
measured against the code before it on the same machine in the same run.  A ``%system`` or
``%tcmalloc`` suffix picks the memory allocator of that configuration's processes (default
``--allocator``, auto: tcmalloc if installed, what ``stemcli separate`` runs with).

    .venv/bin/python benchmarks/song_speed.py --minutes 3 --repeats 5 \\
        before=/tmp/old/models/mmdense.json@/tmp/old  engine=/tmp/old/models/mmdense.json  now=mmdense

Each process uses 2 threads (the separator's default on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import make_song  # noqa: E402

from stemcli import allocator  # noqa: E402  (stdlib only at import)

CHILD = r"""
import sys, time
from pathlib import Path
from stemcli.api import get_separator, separate_file
sep = get_separator(sys.argv[2] or None)
out = Path(sys.argv[3])
t0 = time.perf_counter()
separate_file(sys.argv[1], sep, {s: out / f"{s}.wav" for s in sep.sources})
print(time.perf_counter() - t0)
"""


def run_one(song: Path, model: str, tree: str | None, out: Path, alloc: str = "tcmalloc") -> float:
    env = allocator.child_env(alloc)
    if tree:
        root = Path(tree).resolve()
        if not (root / "stemcli" / "__init__.py").is_file():
            sys.exit(f"error: {root}: not a stemcli checkout (no stemcli/__init__.py)")
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins"), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", CHILD, str(song), model, str(out)], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"error: separating with {model}{' from ' + tree if tree else ''} failed:\n{r.stderr.strip()[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="+", help="LABEL=MODEL[@TREE][%%ALLOCATOR]")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--allocator", choices=allocator.CHOICES, default="auto",
                   help="allocator of configurations without a %%suffix (default auto: tcmalloc if installed)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    configs = []
    for c in a.configs:
        label, sep, rest = c.partition("=")
        if not sep or not label:
            sys.exit(f"error: configuration '{c}': expected LABEL=MODEL[@TREE][%ALLOCATOR]")
        if "%" in rest and rest.rpartition("%")[2] in allocator.CHOICES:
            rest, _, alloc = rest.rpartition("%")
        else:
            alloc = a.allocator
        try:
            alloc = allocator.resolve(alloc)
        except ValueError as exc:
            sys.exit(f"error: configuration '{c}': {exc}")
        model, _, tree = rest.partition("@")
        configs.append((label, model, tree or None, alloc))
    times: dict[str, list[float]] = {c[0]: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        song = Path(tmp) / "song.wav"
        make_song(song, a.minutes)
        for label, model, tree, alloc in configs:  # warm-up (file cache, first onnxruntime load)
            run_one(song, model, tree, Path(tmp) / "warm", alloc)
        for _ in range(a.repeats):
            for label, model, tree, alloc in configs:
                times[label].append(run_one(song, model, tree, Path(tmp) / label, alloc))
    seconds = a.minutes * 60.0
    first = statistics.median(times[configs[0][0]])
    print(f"\n{a.minutes:g}-min stereo song, separate_file, median of {a.repeats} (alternating, fresh processes)")
    print(f"{'config':>10s} {'wall s':>8s} {'x real time':>12s} {'vs ' + configs[0][0]:>12s}")
    rows = {}
    for label, model, tree, alloc in configs:
        med = statistics.median(times[label])
        rows[label] = {"model": model, "tree": tree, "allocator": alloc, "seconds": med, "all": times[label], "rtf": seconds / med,
                       "speedup_vs_first": first / med}
        print(f"{label:>10s} {med:8.2f} {seconds / med:12.1f} {first / med:11.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"minutes": a.minutes, "repeats": a.repeats, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
