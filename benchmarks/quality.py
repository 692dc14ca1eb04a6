"""Quality: median SDR per stem of the default model vs the Open-Unmix baseline vs the oracle.

On the test split of the rendered pop data (MUSDB layout), museval BSS Eval v4 (1 s frames,
median over frames then over tracks, see ``stemcli.evaluate``):

* the default model (``--model``, default ``mmdense``);
* the Open-Unmix architecture trained by the same trainer on the same data for the same
  wall-clock time, exported to ONNX (``--baseline path/to/card.json`` or a registered name);
* the ideal-ratio-mask oracle at the default model's STFT (``stemcli.oracle``).

Prints the SDR table with the deltas (target: default >= baseline + 1 dB on every stem) and
the gap to the oracle, then the same comparison track by track (:mod:`stemcli.compare`: mean and
median of the per-track differences, tracks won, and a paired bootstrap interval of each delta,
which on 16 tracks is 1-2 dB wide); ``--json`` writes everything (the track-by-track rows as
``paired``), ``--plot`` the box plots of the default model.

    .venv/bin/python benchmarks/quality.py --baseline /work/runs/umx/umx.json --json benchmarks/results/quality.json
    .venv/bin/python benchmarks/quality.py --tracks 2 ...      # a quick look (not the quoted numbers)

The baseline is a 140 MB run that a fresh machine does not have: ``--baseline-results FILE``
reuses its per-track scores from an earlier run's ``--json`` (or a ``stemcli evaluate --json``
file of the baseline) instead of separating again, after checking that they were taken on the
same tracks (names, lengths, and the mixtures' sha256 where both runs recorded it) with the same
``--wiener``; the medians are taken again over the tracks of this run.

    .venv/bin/python benchmarks/quality.py --baseline-results benchmarks/results/quality.json ...
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


def _wiener_of(res: dict[str, Any], command: str | None) -> int:
    """The ``--wiener`` a saved result was scored with: its ``settings`` (recorded since the
    key exists, 0 included), else the ``--wiener N`` of the command that wrote the file, else 0."""
    settings = res.get("settings") or {}
    if "wiener" in settings:
        return int(settings["wiener"])
    words = (command or "").split()
    for i, w in enumerate(words):
        if w == "--wiener" and i + 1 < len(words):
            return int(words[i + 1])
        if w.startswith("--wiener="):
            return int(w.split("=", 1)[1])
    return 0


def load_baseline(path: Path, wiener: int) -> dict[str, Any]:
    """A baseline's saved scores: the ``baseline`` of a ``quality.py --json`` file or a whole
    ``stemcli evaluate --json`` file, checked to be scored with ``wiener`` post-filter iterations.
    Read before the default model runs, so a wrong file fails at once.

    Raises:
        ValueError: naming ``path``: unreadable, no baseline in it, malformed, another ``--wiener``.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read baseline results ({exc})") from None
    res = doc.get("baseline") if isinstance(doc, dict) and "table" in doc else doc
    if not isinstance(res, dict) or not isinstance(res.get("per_track"), dict) or not res["per_track"]:
        raise ValueError(f"{path}: no baseline results in it (expected a quality.py --json file with a "
                         "baseline, or a stemcli evaluate --json file)")
    if not isinstance(res.get("tracks"), list) or not all(isinstance(t, dict) and "name" in t for t in res["tracks"]):
        raise ValueError(f"{path}: the baseline results have no list of tracks")
    command = doc.get("command") if isinstance(doc.get("command"), str) else None
    try:
        used = _wiener_of(res, command)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{path}: unreadable --wiener setting in the baseline results") from None
    if used != int(wiener):
        raise ValueError(f"{path}: the baseline was scored with --wiener {used}, this run uses --wiener {wiener}")
    # a file that itself reused scores names the run that measured them
    source = res.get("reused_from") or {"file": str(path), **({"command": command} if command else {})}
    return {**res, "reused_from": source}


def reuse_baseline(saved: dict[str, Any], tracks: list[dict[str, Any]], note: Any = None) -> dict[str, Any]:
    """The saved baseline (:func:`load_baseline`) on ``tracks`` (this run's ``result["tracks"]``),
    medians over tracks taken again over them.  Each track must be in the file with the same
    length, rate and channels, and the same mixture sha256 where both runs recorded one (files
    written before the key existed have none: ``note`` is told that only names and lengths were
    compared).

    Raises:
        ValueError: naming the file: a track missing, or different.
    """
    where = saved["reused_from"]["file"]
    info = {t["name"]: t for t in saved["tracks"]}
    missing = [t["name"] for t in tracks if t["name"] not in saved["per_track"] or t["name"] not in info]
    if missing:
        raise ValueError(f"{where}: no baseline scores for track(s) {', '.join(missing[:5])}")
    unhashed = []
    for t in tracks:
        old = info[t["name"]]
        differ = [k for k in ("seconds", "sample_rate", "channels", "mixture_sha256")
                  if (k in old or k in t) and (k != "mixture_sha256" or (k in old and k in t)) and old.get(k) != t.get(k)]
        if differ:
            raise ValueError(f"{where}: track {t['name']} differs from the data ({', '.join(differ)}): "
                             "these scores were taken on other audio")
        if "mixture_sha256" not in old or "mixture_sha256" not in t:
            unhashed.append(t["name"])
    if unhashed and note is not None:
        note(f"note: {where} records no mixture sha256 for {len(unhashed)} of {len(tracks)} track(s): "
             "checked names, lengths, rates and channels only")
    from stemcli.evaluate import METRICS, aggregate

    per_track = {t["name"]: saved["per_track"][t["name"]] for t in tracks}
    for name, scores in per_track.items():
        if not isinstance(scores, dict) or not all(isinstance(v, dict) and all(m in v for m in METRICS)
                                                   for v in scores.values()):
            raise ValueError(f"{where}: malformed scores for track {name} (expected stem -> {', '.join(METRICS)})")
    try:
        per_stem = aggregate(per_track)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: unreadable scores ({exc})") from None
    kept = {k: v for k, v in saved.items() if k not in ("oracle", "oracle_gap", "oracle_gap_per_track", "seconds")}
    return {**kept, "tracks": [info[t["name"]] for t in tracks], "per_track": per_track,
            "per_stem": per_stem, "stems": list(per_stem)}


def _reused(res: dict[str, Any] | None) -> str:
    """How a reused baseline was measured, for the summary line and the card."""
    src = (res or {}).get("reused_from")
    if not src:
        return "n/a"
    return (f"{res.get('model')}: scores reused from {src['file']}"
            + (f" (measured by: {src['command']})" if src.get("command") else ""))


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
    ap.add_argument("--baseline-results", type=Path, default=None,
                    help="reuse the baseline's scores from an earlier quality.py or stemcli evaluate --json "
                         "file instead of running it (checked to be on the same tracks)")
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
    if args.baseline and args.baseline_results:
        ap.error("give --baseline or --baseline-results, not both")
    saved = None
    if args.baseline_results:
        try:
            saved = load_baseline(args.baseline_results, args.wiener)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

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
    elif saved is not None:
        try:
            base_res = reuse_baseline(saved, main_res["tracks"], note=lambda m: print(m, file=sys.stderr))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"\n== baseline: {base_res.get('model')} (scores reused from {args.baseline_results}) ==", flush=True)
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
    paired = None
    if base_res is not None:
        from stemcli.compare import compare, format_comparison

        paired = compare(main_res, base_res, target=TARGET_DELTA)
        print("\ntrack by track (stemcli compare):")
        print(format_comparison(paired, f"default, {args.model}", f"baseline, {base_res.get('model')}",
                                target=TARGET_DELTA))
    print(f"\ntraining: default: {training_summary(card)}; baseline: "
          f"{training_summary(card_for(args.baseline)) if args.baseline else _reused(base_res)}")

    if args.json:
        from stemcli.evaluate import write_json

        write_json(
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "data": str(args.data),
                "split": args.split,
                "target": f"default >= baseline + {TARGET_DELTA} dB median SDR on every stem",
                "table": rows,
                "paired": paired,
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
            "baseline": str(args.baseline) if args.baseline else _reused(base_res) if base_res else None,
            "oracle": main_res["settings"]["oracle"],
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }})
        print(f"updated {args.update_card} (metrics.sdr)")
    verdicts = [r["pass"] for r in rows.values()]
    return 0 if verdicts and all(v is True for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
