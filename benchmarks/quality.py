"""Quality: median SDR per stem of the default model vs the Open-Unmix baseline vs the oracle.

On the test split of the rendered pop data (MUSDB layout), museval BSS Eval v4 (1 s frames,
median over frames then over tracks, see ``stemcli.evaluate``):

* the default model (``--model``, default ``mmdense``);
* the Open-Unmix architecture trained by the same trainer on the same data for the same
  wall-clock time, exported to ONNX (``--baseline path/to/card.json`` or a registered name);
* the ideal-ratio-mask oracle at the default model's STFT (``stemcli.oracle``).

Prints the SDR table with the deltas (target: default >= baseline + 1 dB on every stem) and
the gap to the oracle; ``--json`` writes everything, ``--plot`` the box plots of the default model.

    .venv/bin/python benchmarks/quality.py --baseline /work/runs/umx/umx.json --json benchmarks/results/quality.json
    .venv/bin/python benchmarks/quality.py --tracks 2 ...      # a quick look (not the quoted numbers)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

TARGET_DELTA = 1.0
REPO = Path(__file__).resolve().parents[1]


def card_for(model: str) -> dict[str, Any] | None:
    """The model card of a name (``models/<name>.json``) or a ``.json``/``.onnx`` path, if any."""
    path = Path(model)
    candidates = [path] if path.suffix == ".json" else [path.with_suffix(".json")] if path.suffix == ".onnx" else []
    candidates.append(REPO / "models" / f"{model}.json")
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except (OSError, ValueError):
                return None
    return None


def training_summary(card: dict[str, Any] | None) -> str:
    """Training time and steps as the export recorded them (``card["training"]``)."""
    if not card:
        return "no model card found"
    training = card.get("training", {}) or {}
    parts = []
    if training.get("minutes") is not None:
        parts.append(f"{training['minutes']} min")
    if training.get("steps") is not None:
        parts.append(f"{training['steps']} steps")
    budget = (training.get("hyperparameters") or {}).get("minutes")
    if budget is not None:
        parts.append(f"budget {budget} min")
    return ", ".join(parts) or "card has no training time"


def _fmt(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data/pop"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="mmdense", help="default model: name, card .json or .onnx")
    ap.add_argument("--baseline", default=None, help="Open-Unmix baseline: card .json / .onnx path or registered name")
    ap.add_argument("--backend", default=None, help="onnx (default) or torch")
    ap.add_argument("--tracks", type=int, default=None, help="only the first N tracks (quick look)")
    ap.add_argument("--wiener", type=int, default=0,
                    help="multichannel Wiener post-filter iterations, applied to the default model and the baseline alike")
    ap.add_argument("--n-fft", type=int, default=None, help="oracle STFT size (default: the model's, else 4096)")
    ap.add_argument("--hop", type=int, default=None, help="oracle STFT hop (default: the model's, else 1024)")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--plot", type=Path, help="box plots of the default model (with the oracle)")
    ap.add_argument("--update-card", type=Path, help="merge the SDR table into this model card's 'metrics.sdr'")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from stemcli.evaluate import evaluate

    card = card_for(args.model)
    config = (card or {}).get("config", {})
    n_fft = args.n_fft or config.get("n_fft")  # else evaluate() asks the separator, else 4096/1024
    hop = args.hop or config.get("hop") or config.get("hop_length")
    common = dict(data=args.data, split=args.split, backend=args.backend, tracks=args.tracks, wiener=args.wiener)

    print(f"== default model: {args.model} (+ oracle at its STFT) ==", flush=True)
    main_res = evaluate(args.model, oracle=True, n_fft=n_fft, hop=hop, plot_out=args.plot, **common)
    base_res = None
    if args.baseline:
        print(f"\n== baseline: {args.baseline} ==", flush=True)
        base_res = evaluate(args.baseline, **common)
    else:
        print("\nno --baseline given: the Open-Unmix comparison is skipped", file=sys.stderr)

    stems = main_res["stems"]
    rows: dict[str, dict[str, Any]] = {}
    print()
    print(f"median SDR (dB) on {len(main_res['tracks'])} track(s) of {args.data}/{args.split}; "
          f"oracle = ideal ratio mask, {main_res['settings']['oracle']}")
    head = f"{'stem':<8} {'default':>8} {'baseline':>9} {'delta':>7} {'>= +1 dB':>9} {'oracle':>7} {'gap':>6}"
    print(head)
    for s in stems:
        sdr = main_res["per_stem"][s]["SDR"]
        base = base_res["per_stem"][s]["SDR"] if base_res and s in base_res["per_stem"] else float("nan")
        delta = sdr - base
        ok = None if math.isnan(delta) else bool(delta >= TARGET_DELTA)
        ora = main_res["oracle"]["per_stem"][s]["SDR"]
        rows[s] = {"default": sdr, "baseline": base, "delta": delta, "pass": ok, "oracle": ora, "gap": ora - sdr}
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{s:<8} {_fmt(sdr):>8} {_fmt(base):>9} {_fmt(delta, True):>7} {verdict:>9} {_fmt(ora):>7} "
              f"{_fmt(ora - sdr):>6}")
    print(f"\ntraining: default: {training_summary(card)}; baseline: "
          f"{training_summary(card_for(args.baseline)) if args.baseline else 'n/a'}")

    if args.json:
        from stemcli.evaluate import write_json

        write_json(
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "data": str(args.data),
                "split": args.split,
                "target": f"default >= baseline + {TARGET_DELTA} dB median SDR on every stem",
                "table": rows,
                "default": main_res,
                "baseline": base_res,
            },
            args.json,
        )
        print(f"wrote {args.json}")
    if args.update_card:
        from stemcli.export import update_metrics

        update_metrics(args.update_card, {"sdr": {
            "data": f"{args.data}/{args.split}, {len(main_res['tracks'])} tracks",
            "method": "museval v4, 1 s frames, median over frames then tracks (dB)",
            "per_stem": {s: {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 2))
                             for k, v in r.items() if k != "pass"} for s, r in rows.items()},
            "baseline": str(args.baseline) if args.baseline else None,
            "oracle": main_res["settings"]["oracle"],
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }})
        print(f"updated {args.update_card} (metrics.sdr)")
    verdicts = [r["pass"] for r in rows.values()]
    return 0 if verdicts and all(v is True for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
