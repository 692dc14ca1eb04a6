"""Paired comparison of two evaluation results on the same tracks.

A stem's score in :mod:`stemcli.evaluate` is a median over tracks, and with a test split of 16
tracks that median is decided by the two middle tracks: two systems can differ by 0.3 dB on the
medians while one of them wins 14 of the 16 tracks.  This module puts the numbers a reader needs
beside the difference of the medians, track by track:

* ``delta``: median of A minus median of B (what a "+1 dB median SDR" target is judged on),
  over the tracks both scored;
* ``mean_diff`` / ``median_diff``: mean and median of the per-track differences (one near-silent
  stem that both systems all but miss, -77 against -87 dB say, moves the mean of 16 tracks by
  more than half a dB: the median of the differences is the robust one); equal scores, +inf
  (a perfect estimate) on both sides included, differ by 0;
* ``won``: tracks where A scores higher;
* ``interval``: a paired bootstrap interval of ``delta`` (tracks resampled with replacement,
  both systems together, ``resamples`` times, fixed seed): how far the delta could move with
  another draw of test tracks of the same kind;
* ``share_at_target``: with a ``target``, the share of resamples where ``delta >= target``.

Inputs are the results :func:`stemcli.evaluate.evaluate` returns or writes with ``--json``
(``per_track[track][stem][metric]``), or the ``default`` / ``baseline`` entry of a
``benchmarks/quality.py --json`` file (:func:`load_result`).

A side may also be the mean of several results on the same tracks (:func:`mean_result`), e.g.
the runs of one recipe with different seeds: two runs of the same recipe differed by up to 0.22
dB in the median per-track difference and by 0.6 dB in a difference of medians (export/README,
sessions 31-32), so a comparison of single runs can measure the seeds more than the recipes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

INTERVAL = 0.90  # two-sided coverage of the bootstrap interval
RESAMPLES = 4000
SELECTORS = ("default", "baseline")  # entries of a benchmarks/quality.py --json file


def _number(x: Any) -> float:
    """A score as written by ``stemcli.evaluate.write_json``: null -> NaN, "inf"/"-inf" -> +-inf."""
    if x is None:
        return float("nan")
    if isinstance(x, str) and x in ("inf", "-inf"):
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        raise ValueError(f"not a score: {x!r}")
    return float(x)


def _score(res: Mapping[str, Any], side: str, scores: Mapping[str, Any], track: str, stem: str, metric: str) -> float:
    """``scores[metric]`` as a number, or a ValueError naming the result, track and stem."""
    where = f"{res.get('label', side)}: track {track}, stem {stem}"
    if metric not in scores:
        raise ValueError(f"{where}: no {metric} score")
    try:
        return _number(scores[metric])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _entry(text: str) -> tuple[Path, str | None]:
    """``FILE:default`` / ``FILE:baseline`` -> (FILE, the entry); anything else -> (the path, None)."""
    head, sep, tail = text.rpartition(":")
    return (Path(head), tail) if sep and tail in SELECTORS else (Path(text), None)


def load_result(spec: str | Path) -> dict[str, Any]:
    """An evaluation result from a JSON file: ``stemcli evaluate --json`` output, or one entry of
    a ``benchmarks/quality.py --json`` file, named ``FILE:default`` (the default when the file is
    one of those) or ``FILE:baseline``.

    Raises:
        ValueError: naming the file: unreadable, no per-track scores, unknown entry.
    """
    text = str(spec)
    path, which = _entry(text)
    head, sep, tail = text.rpartition(":")
    if which is None and sep and not path.exists() and Path(head).is_file():
        raise ValueError(f"{head}: unknown entry ':{tail}' (choose :{' or :'.join(SELECTORS)})")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read evaluation results ({exc})") from None
    if isinstance(doc, dict) and "table" in doc and ("default" in doc or "baseline" in doc):
        which = which or "default"
        res = doc.get(which)
        if not isinstance(res, dict):
            raise ValueError(f"{path}: this benchmarks/quality.py file has no '{which}' results")
    elif which is not None:
        raise ValueError(f"{path}: ':{which}' names an entry of a benchmarks/quality.py file; this is not one")
    else:
        res = doc
    if not isinstance(res, dict) or not isinstance(res.get("per_track"), dict) or not res["per_track"]:
        raise ValueError(f"{path}: no per-track scores in it (expected a stemcli evaluate --json file)")
    bad = [t for t, v in res["per_track"].items()
           if not isinstance(v, dict) or not all(isinstance(m, dict) for m in v.values())]
    if bad:
        raise ValueError(f"{path}: malformed scores for track {bad[0]} (expected stem -> metric -> dB)")
    label = str(res.get("model") or path.stem)
    files = card_files(res)
    kind = next((k for k in ("onnx", "torch") if k in files), None)
    tag = f", {kind} {files[kind][:12]}" if kind else ""
    return {**res, "label": f"{label} ({path.name}{':' + which if which else ''}{tag})"}


def mean_result(results: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One result whose score for each track, stem and metric is the mean (in dB) of the given
    results' scores: the per-track mean over the seeds of one recipe.  A NaN in any of them makes
    the mean NaN (:func:`compare` then leaves that track out of the stem); ``inf`` with finite
    scores stays ``inf``, ``inf`` with ``-inf`` gives NaN.  The per-frame values of
    ``stemcli evaluate`` (``frames``) are not carried over.

    Args:
        results: two or more results (as :func:`load_result` returns them) on the same tracks
            and audio, with the same stems and metrics per track.

    Returns:
        ``{"label", "per_track", "stems", "tracks", "members"}``, ``tracks`` holding every
        mixture sha256 any of them recorded; no ``card`` (the mean is of several models' files).

    Raises:
        ValueError: fewer than two results, other tracks (:func:`paired_tracks`), a track whose
        mixture sha256 differs between any two of them, or a track whose stems or metrics
        differ (naming the results).
    """
    from stemcli.evaluate import METRICS

    if len(results) < 2:
        raise ValueError(f"a mean needs two or more results, got {len(results)}")
    labels = [str(r.get("label") or r.get("model") or f"result {i + 1}") for i, r in enumerate(results)]
    first = results[0]
    shas: dict[str, str] = {}
    for label, r in zip(labels, results):
        for track, sha in _fingerprints(r).items():
            if shas.setdefault(track, sha) != sha:
                raise ValueError(f"track {track} was scored on different audio in the averaged results (mixture "
                                 f"sha256 of {label} differs from an earlier one's)")
    for other in results[1:]:
        paired_tracks(first, other)  # the same track names (the audio is checked above, over all of them)
    per_track: dict[str, dict[str, dict[str, Any]]] = {}
    for track in sorted(first["per_track"]):
        stems = [r["per_track"][track] for r in results]
        if any(set(x) != set(stems[0]) for x in stems[1:]):
            raise ValueError(f"track {track}: the averaged results separated different stems ("
                             + "; ".join(f"{lab}: {','.join(sorted(x))}" for lab, x in zip(labels, stems)) + ")")
        per_track[track] = {}
        for stem in stems[0]:
            scores = [x[stem] for x in stems]
            named = [set(METRICS) & set(m) for m in scores]  # the per-frame values ("frames") are not averaged
            if any(n != named[0] for n in named[1:]):
                raise ValueError(f"track {track}, stem {stem}: the averaged results scored different metrics ("
                                 + "; ".join(f"{lab}: {','.join(sorted(n)) or 'none'}" for lab, n in zip(labels, named))
                                 + ")")
            with np.errstate(invalid="ignore"):  # inf with -inf: NaN, as documented
                per_track[track][stem] = {
                    metric: float(np.mean([_score(r, lab, m, track, stem, metric)
                                           for lab, r, m in zip(labels, results, scores)]))
                    for metric in sorted(named[0])}
    tracks = [{"name": t, **({"mixture_sha256": shas[t]} if t in shas else {})} for t in sorted(first["per_track"])]
    return {"label": f"mean of {len(results)}: {' + '.join(labels)}", "per_track": per_track,
            "stems": list(first.get("stems") or next(iter(first["per_track"].values()))),
            "tracks": tracks, "members": labels}


def load_side(spec: str) -> dict[str, Any]:
    """One side of a comparison: a result (:func:`load_result`), or ``FILE1,FILE2,...`` for the
    per-track mean of several (:func:`mean_result`; each name may carry a ``:default`` or
    ``:baseline`` entry).  A name that exists as a file (or is one with an entry) is read as one
    result even if it holds a comma; a name in a list cannot hold one.

    Raises:
        ValueError: as :func:`load_result` and :func:`mean_result`, an empty name in the list,
        or one file (and entry) named twice (it would count one seed twice).
    """
    text = str(spec)
    if "," not in text or Path(text).is_file() or _entry(text)[0].is_file():
        return load_result(text)
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise ValueError(f"{text}: an empty file name in the list (FILE1,FILE2,... averages results)")
    seen: dict[str, str] = {}
    for p in parts:
        path, which = _entry(p)
        key = f"{path.resolve()}:{which or ''}"
        if key in seen:
            raise ValueError(f"{p}: named twice in {text} (as {seen[key]}): the mean would count one result twice")
        seen[key] = p
    return mean_result([load_result(p) for p in parts])


def card_files(res: Mapping[str, Any]) -> dict[str, str]:
    """File kind -> sha256 of the model files a result scored (``stemcli evaluate``'s ``card``:
    the files its backend loaded), empty for results without one (older results, estimates
    folders, plugins without a card); entries that are not a sha256 string are left out."""
    card = res.get("card")
    files = card.get("files") if isinstance(card, Mapping) else None
    if not isinstance(files, Mapping):
        return {}
    return {str(k): v for k, v in files.items() if isinstance(v, str) and v}


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Both results scored the same model files on the same backend (the comparison is then of
    settings or audio path, not of models)."""
    fa = card_files(a)
    if not fa or fa != card_files(b):
        return False
    return a["card"].get("backend") == b["card"].get("backend")  # both cards are mappings here


def _fingerprints(res: Mapping[str, Any]) -> dict[str, str]:
    return {t["name"]: t["mixture_sha256"] for t in res.get("tracks") or []
            if isinstance(t, dict) and "name" in t and t.get("mixture_sha256")}


def paired_tracks(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The tracks of ``a`` (sorted by name: the bootstrap's draws do not depend on the files'
    order), after checking that ``b`` scored the same ones on the
    same audio (mixture sha256 where both results recorded it).

    Raises:
        ValueError: tracks only one side has, or a track whose mixture differs.
    """
    ta, tb = sorted(a["per_track"]), set(b["per_track"])
    only_a = [t for t in ta if t not in tb]
    only_b = sorted(tb - set(ta))
    if only_a or only_b:
        parts = [f"only in {r.get('label', side)}: {', '.join(names[:5])}"
                 + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
                 for r, side, names in ((a, "A", only_a), (b, "B", only_b)) if names]
        raise ValueError(f"the results are not on the same tracks ({'; '.join(parts)})")
    fa, fb = _fingerprints(a), _fingerprints(b)
    other = [t for t in ta if t in fa and t in fb and fa[t] != fb[t]]
    if other:
        raise ValueError(f"track {other[0]} was scored on different audio in the two results (mixture sha256 differs)")
    return ta


def _bootstrap(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``median(x[i]) - median(y[i])`` for ``resamples`` index draws ``i`` with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    return _diff(np.median(x[idx], axis=1), np.median(y[idx], axis=1))


def _diff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x - y`` with equal values (``inf`` and ``inf`` too) differing by 0."""
    with np.errstate(invalid="ignore"):
        return np.where(x == y, 0.0, x - y)


def compare(a: Mapping[str, Any], b: Mapping[str, Any], metric: str = "SDR", target: float | None = None,
            resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per stem, A against B on the tracks both scored (see the module docstring for the keys).

    Args:
        a, b: evaluation results (``per_track[track][stem][metric]``) on the same tracks.
        metric: ``SDR``, ``SIR``, ``SAR`` or ``ISR``.
        target: a margin for ``share_at_target`` (e.g. 1.0 for "+1 dB"), or None.
        resamples: bootstrap draws (0: no interval).
        seed: the bootstrap's seed (the same inputs give the same interval).

    Returns:
        stem -> ``{"tracks", "a", "b", "delta", "mean_diff", "median_diff", "won", "interval",
        "share_at_target"}``; stems only one side has are left out; a stem no track scored on
        both sides has ``tracks`` 0 and NaN numbers.

    Raises:
        ValueError: other tracks or audio (:func:`paired_tracks`), an unknown metric, a negative
        ``resamples``.
    """
    from stemcli.evaluate import METRICS

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    if target is not None and not math.isfinite(target):
        raise ValueError(f"target must be a finite number of dB, got {target}")
    names = paired_tracks(a, b)
    stems = list(a.get("stems") or next(iter(a["per_track"].values())))
    out: dict[str, dict[str, Any]] = {}
    for k, stem in enumerate(stems):
        both = [(t, a["per_track"][t].get(stem), b["per_track"][t].get(stem)) for t in names]
        both = [(t, sa, sb) for t, sa, sb in both if isinstance(sa, Mapping) and isinstance(sb, Mapping)]
        if not both:
            continue  # one side never separated this stem
        pairs = []
        for t, sa, sb in both:
            x, y = (_score(r, side, sc, t, stem, metric) for r, side, sc in ((a, "A", sa), (b, "B", sb)))
            if not (math.isnan(x) or math.isnan(y)):
                pairs.append((x, y))
        nan = float("nan")
        row: dict[str, Any] = {"tracks": len(pairs), "a": nan, "b": nan, "delta": nan, "mean_diff": nan,
                               "median_diff": nan, "won": 0, "interval": [nan, nan], "share_at_target": None}
        if pairs:
            x, y = (np.array(v, dtype=np.float64) for v in zip(*pairs))
            d = _diff(x, y)
            row.update(a=float(np.median(x)), b=float(np.median(y)), delta=float(_diff(np.median(x), np.median(y))),
                       mean_diff=float(np.mean(d)), median_diff=float(np.median(d)), won=int(np.sum(d > 0)))
            if resamples:
                boot = _bootstrap(x, y, resamples, seed + k)
                tail = (1.0 - INTERVAL) / 2 * 100
                row["interval"] = [float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))]
                if target is not None:
                    row["share_at_target"] = float(np.mean(boot >= target))
        out[stem] = row
    return out


def _f(x: float, signed: bool = True) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def format_comparison(rows: Mapping[str, Mapping[str, Any]], label_a: str = "A", label_b: str = "B",
                      metric: str = "SDR", target: float | None = None) -> str:
    """The table :func:`compare` computed, one line per stem."""
    head = ["stem", "A", "B", "delta", f"{int(INTERVAL * 100)}% interval", "mean diff", "median diff", "won"]
    if target is not None:
        head.append(f">= {target:+g} dB")
    lines_ = []
    for stem, r in rows.items():
        line = [stem, _f(r["a"], False), _f(r["b"], False), _f(r["delta"]),
                f"[{_f(r['interval'][0])}, {_f(r['interval'][1])}]", _f(r["mean_diff"]), _f(r["median_diff"]),
                f"{r['won']}/{r['tracks']}"]
        if target is not None:
            share = r["share_at_target"]
            line.append("n/a" if share is None else f"{100 * share:.0f}%")
        lines_.append(line)
    widths = [max(len(x[i]) for x in [head, *lines_]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    n = max((r["tracks"] for r in rows.values()), default=0)
    intro = [f"A = {label_a}", f"B = {label_b}",
             f"{metric} (dB) on the {n} track(s) both scored: medians over tracks, delta = A - B, its paired bootstrap "
             f"interval (tracks resampled), per-track differences, tracks A wins"
             + (f", share of resamples with delta {target:+g} dB or more" if target is not None else "")]
    return "\n".join([*intro, fmt(head), *(fmt(x) for x in lines_)])
