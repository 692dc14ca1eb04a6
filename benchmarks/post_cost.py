"""What a model's post graph (``stemcli.wavepost``) costs: the same card with and without it, one run.

The card's model is loaded twice with :class:`stemcli.runtime.OnnxSeparator`: as it is, and from
a copy of its card without the ``post`` entry (the mask graph alone, the same files otherwise).
Both separate the same generated stereo input (``speed.py``'s) in ``--repeats`` interleaved rounds
after one warm-up each; the median wall times, their ratio and the post graph's share are printed.
A ``--breakdown`` also times the three steps of the post path on the mask graph's stems of the
whole input: the blocks of the graph's input (numpy), the graph (one thread: resampling and
convolutions), the update of the pair (numpy).

    .venv/bin/python benchmarks/post_cost.py --model /work/runs/mmdense32/mmdense.json --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import make_input  # noqa: E402

from stemcli import allocator  # noqa: E402  (stdlib only at import)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model card (.json) with a post entry")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--allocator", choices=allocator.CHOICES, default="auto",
                    help="memory allocator of this process (default auto: tcmalloc if installed, as `stemcli "
                         "separate` runs; with glibc's, each separator's worker threads keep their own arena "
                         "history and the order of the two systems showed in their times)")
    args = ap.parse_args(argv)
    try:  # re-runs this script under it if needed
        allocator.ensure_script(args.allocator, __file__, argv)
    except (ValueError, RuntimeError) as exc:
        ap.error(str(exc))

    from stemcli.modelcard import find_card, load_card
    from stemcli.runtime import OnnxSeparator

    try:
        card_path = find_card(args.model, "mmdense")
        card = load_card(card_path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not card.get("post"):
        print(f"error: {card_path}: the card has no post entry", file=sys.stderr)
        return 1
    plain = {k: v for k, v in card.items() if k not in ("post", "_path")}
    plain["files"] = {k: v for k, v in card["files"].items() if k != "post"}
    with tempfile.NamedTemporaryFile("w", prefix=".post_cost_", suffix=".json", dir=Path(card["_path"]).parent,
                                     delete=False) as f:
        json.dump(plain, f)  # next to the card: the file paths in it are relative to it
        plain_path = Path(f.name)
    try:
        systems = {"with post": OnnxSeparator(card_path, threads=args.threads),
                   "masks alone": OnnxSeparator(plain_path, threads=args.threads)}
    finally:
        plain_path.unlink()
    mix = make_input(args.seconds)[None]
    times: dict[str, list[float]] = {k: [] for k in systems}
    for sep in systems.values():
        sep.separate(mix)  # warm-up
    for _ in range(args.repeats):
        for name, sep in systems.items():
            t0 = time.perf_counter()
            sep.separate(mix)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["with post"] / med["masks alone"]
    print(f"{args.seconds:g} s stereo, {args.threads} threads, median of {args.repeats} interleaved rounds, "
          f"allocator {allocator.active()}")
    for name, t in med.items():
        print(f"  {name:12s} {t * 1000:8.1f} ms  ({args.seconds / t:6.1f} x real time)")
    print(f"  ratio {ratio:.3f}: the post path adds {100 * (ratio - 1):.1f}% to the separation")
    result = {"card": str(card_path), "seconds": args.seconds, "threads": args.threads, "repeats": args.repeats,
              "allocator": allocator.active(), "median_s": med, "ratio": ratio}
    if args.breakdown:
        result["breakdown_ms"] = breakdown(card, systems["masks alone"], mix, args.repeats)
        for k, v in result["breakdown_ms"].items():
            print(f"  post step {k:16s} {v:7.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def breakdown(card: dict, plain, mix: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms of the post path's steps on the whole input, one thread for the graph."""
    import onnxruntime as ort

    from stemcli import wavepost
    from stemcli.modelcard import model_file
    from stemcli.runtime import session_options

    post = wavepost.check_post(card["post"], card["sources"])
    sess = ort.InferenceSession(str(model_file(card, "post")), session_options(1), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    est = plain.separate(mix)
    idx = wavepost.pair_indices(post, card["sources"])
    t = mix.shape[-1]
    steps: dict[str, list[float]] = {"blocks (numpy)": [], "graph": [], "add (numpy)": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        blocks = wavepost.blocks([mix, *(est[:, i] for i in idx)], post["decimate"])
        t1 = time.perf_counter()
        delta = sess.run(None, {name: blocks})[0][..., :t]
        t2 = time.perf_counter()
        wavepost.add_corrections(est, idx, delta)
        t3 = time.perf_counter()
        for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
            steps[k].append(1000 * v)
    return {k: statistics.median(v) for k, v in steps.items()}


if __name__ == "__main__":
    sys.exit(main())
