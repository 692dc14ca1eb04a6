"""Evaluation with museval (BSS Eval v4): SDR/SIR/SAR/ISR per stem, tables, box plots.

The data is any MUSDB-layout folder::

    DATA/<split>/<track>/mixture.wav      (or DATA pointing straight at a split folder)
    DATA/<split>/<track>/<stem>.wav       e.g. vocals, drums, bass, other

For every track the estimates come from a model (:func:`stemcli.api.separate`), from a folder
of existing estimates laid out ``DIR/<track>/<stem>.wav`` (what ``stemcli separate`` writes),
or from the ideal-ratio-mask oracle (:mod:`stemcli.oracle`).  museval scores 1-second frames
(``win = hop = 1 s``, as in SiSEC 2018); a track's score is the median over its frames (frames
where the reference is silent give NaN and are ignored), a stem's score the median over tracks.
Only the stems both the estimates and the data have are scored (museval scores them jointly:
a stem's SIR counts the other scored stems as interference).

Nothing here imports torch: a model separator brings its own backend.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import soundfile as sf

from stemcli import oracle as oracle_mod
from stemcli.audio import fit_length

METRICS = ("SDR", "SIR", "SAR", "ISR")
MUSDB_ORDER = ("vocals", "drums", "bass", "other", "accompaniment")
MIXTURE = "mixture"
AUDIO_SUFFIXES = (".wav", ".flac")
ORACLE = "oracle"


class EvaluationError(ValueError):
    """A user-facing problem with the data, the estimates or the stems; names the path."""


# --------------------------------------------------------------------------- data layout


def find_tracks(data: str | Path, split: str = "test", tracks: Sequence[str] | int | None = None) -> list[Path]:
    """List the track folders of a MUSDB-layout dataset.

    Args:
        data: the dataset root (holding ``split/``) or a split folder itself.
        split: split name, used when ``data/split`` exists.
        tracks: keep only these track names, or the first N tracks when an int.

    Returns:
        Track folders (each with a ``mixture`` file), sorted by name.

    Raises:
        EvaluationError: no such folder, no track in it, or a requested track is missing.
    """
    root = Path(data)
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such data folder")
    folder = root / split if (root / split).is_dir() else root
    found = sorted(p for p in folder.iterdir() if p.is_dir() and _audio_file(p, MIXTURE) is not None)
    if not found:
        raise EvaluationError(
            f"{folder}: no track found (expected {folder}/<track>/mixture.wav"
            + ("" if folder != root else f" or {root}/{split}/<track>/mixture.wav")
            + ")"
        )
    if isinstance(tracks, int) and not isinstance(tracks, bool):
        if tracks <= 0:
            raise EvaluationError(f"tracks must be a positive count, got {tracks}")
        found = found[:tracks]
    elif tracks is not None:
        names = {p.name: p for p in found}
        missing = [t for t in tracks if t not in names]
        if missing:
            raise EvaluationError(f"{folder}: no track named {', '.join(missing)} (have {', '.join(names)})")
        found = [names[t] for t in tracks]
    return found


def _audio_file(folder: Path, stem: str) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _stem_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    known = [s for s in MUSDB_ORDER if s in names]
    return known + sorted(names - set(known))


def list_stems(folder: Path) -> list[str]:
    """Stem names in a track folder (every audio file but the mixture), MUSDB order first."""
    return _stem_order(p.stem for p in folder.iterdir() if p.suffix in AUDIO_SUFFIXES and p.stem != MIXTURE)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read a whole file as [shape=(channels, time)] float32 and its rate."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types; name the file
        raise EvaluationError(f"{path}: cannot read audio: {exc}") from exc
    if data.shape[0] == 0:
        raise EvaluationError(f"{path}: empty audio file")
    return np.ascontiguousarray(data.T), int(rate)


def _match(x: np.ndarray, ref_rate: int, rate: int, channels: int, n: int, path: Path, what: str) -> np.ndarray:
    """Check an estimate/reference against the mixture's rate and layout; fit its length."""
    if rate != ref_rate:
        raise EvaluationError(f"{path}: {what} is at {rate} Hz but the mixture is at {ref_rate} Hz")
    if x.shape[0] != channels:
        if x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        else:
            raise EvaluationError(f"{path}: {what} has {x.shape[0]} channels but the mixture has {channels}")
    return fit_length(x, n)


def read_track(folder: Path) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """Read one track: the mixture, its rate and the reference stems.

    Returns:
        mixture [shape=(channels, time)], sample rate, stem -> [shape=(channels, time)].
    """
    mix_path = _audio_file(folder, MIXTURE)
    if mix_path is None:
        raise EvaluationError(f"{folder}: no mixture.wav")
    mixture, rate = read_audio(mix_path)
    stems = list_stems(folder)
    if not stems:
        raise EvaluationError(f"{folder}: no reference stem next to the mixture (e.g. vocals.wav)")
    refs = {}
    for stem in stems:
        path = _audio_file(folder, stem)
        assert path is not None  # listed above
        audio, r = read_audio(path)
        refs[stem] = _match(audio, rate, r, mixture.shape[0], mixture.shape[-1], path, "reference")
    return mixture, rate, refs


def read_estimates(folder: Path, stems: Sequence[str], rate: int, channels: int, n: int) -> dict[str, np.ndarray]:
    """Read ``folder/<stem>.wav`` for the given stems (those present), fitted to the mixture."""
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no estimates for this track (expected {folder}/<stem>.wav)")
    out = {}
    for stem in stems:
        path = _audio_file(folder, stem)
        if path is not None:
            audio, r = read_audio(path)
            out[stem] = _match(audio, rate, r, channels, n, path, "estimate")
    return out


# --------------------------------------------------------------------------- scoring


@contextmanager
def _factor_once(enabled: bool = True) -> Iterator[None]:
    """Make museval factor its reference correlation matrix once per track instead of once per stem.

    museval v4 (``metrics._compute_projection_filters``) calls ``np.linalg.solve`` with the same
    ``(sources*channels*512)^2`` matrix for every estimated stem: 4 stereo stems = 4 LU
    factorisations of a 4096x4096 matrix, most of the cost on short tracks.  Inside this context
    that function reuses one LU factorisation (same LAPACK getrf/getrs as ``np.linalg.solve``);
    the cross-correlations are computed exactly as museval 0.4 does (MIT licence).  The test
    suite checks the scores equal plain museval's.
    """
    from museval import metrics

    original = metrics._compute_projection_filters
    if not enabled:
        yield
        return
    import itertools

    import scipy.fftpack
    import scipy.linalg

    cache: dict[str, Any] = {}

    def projection_filters(G: np.ndarray, sf: np.ndarray, estimated_source: np.ndarray) -> np.ndarray:
        if G.ndim != 6:  # the single-source call: small matrix, leave it to museval
            return original(G, sf, estimated_source)
        eps = np.finfo(float).eps
        nsampl, nchan = estimated_source.shape
        nsrc, filters_len = G.shape[0], G.shape[-1]
        est = metrics._zeropad(estimated_source.T, filters_len - 1, axis=1)
        n_fft = int(2 ** np.ceil(np.log2(nsampl + filters_len - 1.0)))
        sef = scipy.fftpack.fft(est, n=n_fft)
        D = np.zeros((nsrc, nchan, filters_len, nchan))
        for j, cj, c in itertools.product(range(nsrc), range(nchan), range(nchan)):
            ssef = np.real(scipy.fftpack.ifft(sf[j, cj] * np.conj(sef[c])))
            D[j, cj, :, c] = np.hstack((ssef[0], ssef[-1:-filters_len:-1]))
        D = D.reshape(nsrc * nchan * filters_len, nchan)
        if cache.get("G") is not G:  # holding G keeps its id from being reused
            Gm = metrics._reshape_G(G)
            cache["G"] = G
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache["lu"] = scipy.linalg.lu_factor(Gm + eps * np.eye(Gm.shape[0]), check_finite=False)
        C = scipy.linalg.lu_solve(cache["lu"], D, check_finite=False)
        if not np.isfinite(C).all():  # singular: museval's own fallback (lstsq)
            return original(G, sf, estimated_source)
        return C.reshape(nsrc, nchan, filters_len, nchan)

    metrics._compute_projection_filters = projection_filters
    try:
        yield
    finally:
        metrics._compute_projection_filters = original
        cache.clear()


def bss_eval(
    references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray],
    sample_rate: int,
    window: float = 1.0,
    fast: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """museval BSS Eval v4 on one track.

    Args:
        references: stem -> [shape=(channels, time)].
        estimates: stem -> [shape=(channels, time)], same keys.
        sample_rate: Hz; the frame window and hop are ``window`` seconds.
        fast: factor museval's correlation matrix once per track (:func:`_factor_once`).

    Returns:
        stem -> metric -> [shape=(frames,)] dB (NaN for silent-reference frames, +inf for a
        perfect estimate).
    """
    import museval  # imports musdb/stempeg, which need the ffmpeg binary: keep it lazy

    stems = list(references)
    if set(stems) != set(estimates):
        raise EvaluationError(f"bss_eval: stems differ: references {stems}, estimates {list(estimates)}")
    refs = np.stack([references[s].T for s in stems]).astype(np.float64)  # (sources, time, channels)
    ests = np.stack([estimates[s].T for s in stems]).astype(np.float64)
    win = int(round(window * sample_rate))
    with np.errstate(divide="ignore", invalid="ignore"), _factor_once(fast):
        sdr, isr, sir, sar = museval.evaluate(refs, ests, win=win, hop=win)
    values = {"SDR": sdr, "SIR": sir, "SAR": sar, "ISR": isr}
    return {s: {m: np.asarray(values[m][i], dtype=np.float64) for m in METRICS} for i, s in enumerate(stems)}


def audio_fingerprint(audio: np.ndarray) -> str:
    """sha256 of the decoded samples as little-endian float32 (the same for a WAV and a FLAC of
    the same audio): identifies a track's mixture in saved results, see ``benchmarks/quality.py``."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype="<f4").tobytes()).hexdigest()


def nanmedian(values: Iterable[float]) -> float:
    """Median ignoring NaN (inf kept); NaN when nothing is left."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(np.median(arr)) if arr.size else float("nan")


def aggregate(per_track: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median over tracks of the per-track medians: stem -> metric -> dB."""
    stems = _stem_order({s for t in per_track.values() for s in t})
    return {
        s: {m: nanmedian(t[s][m] for t in per_track.values() if s in t) for m in METRICS} for s in stems
    }


def _track_scores(frames: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {
        s: {**{m: nanmedian(v[m]) for m in METRICS}, "frames": {m: v[m].tolist() for m in METRICS}}
        for s, v in frames.items()
    }


# --------------------------------------------------------------------------- the run


def card_record(separator: Any) -> dict[str, Any] | None:
    """Which model files were scored: the card's path, name and backend, and the sha256 of the
    files that backend loads (``onnx`` and ``post`` on onnxruntime, ``torch`` on torch), of a
    card-backed separator (through a post-filter), or None.  Two cards exported under one name
    (every export of a run as ``mmdense``) are then told apart by their results."""
    separator = getattr(separator, "inner", separator)
    card = getattr(separator, "card", None)
    if not isinstance(card, Mapping):
        return None
    backend = str(getattr(separator, "backend", None) or "onnx")
    loaded = ("torch",) if backend == "torch" else ("onnx", "post")
    files = card.get("files") if isinstance(card.get("files"), Mapping) else {}
    return {"path": str(card["_path"]) if card.get("_path") else None, "name": card.get("name"), "backend": backend,
            "files": {k: str(v["sha256"]) for k, v in files.items()
                      if k in loaded and isinstance(v, Mapping) and v.get("sha256")}}


def _stft_of(separator: Any, n_fft: int | None, hop: int | None) -> tuple[int, int]:
    """The oracle's STFT: explicit values, else the separator's (attributes ``n_fft``/``hop`` or its
    model card's ``config``), else 4096/1024."""
    separator = getattr(separator, "inner", separator)  # a post-filter's model, not the filter
    card = getattr(separator, "card", None)
    config = card.get("config", {}) if isinstance(card, Mapping) else {}
    n = n_fft or getattr(separator, "n_fft", None) or config.get("n_fft") or oracle_mod.DEFAULT_N_FFT
    h = (
        hop
        or getattr(separator, "hop", None)
        or getattr(separator, "hop_length", None)
        or config.get("hop")
        or config.get("hop_length")
        or oracle_mod.DEFAULT_HOP
    )
    return int(n), int(h)


def _common(produced: Sequence[str], available: Sequence[str], who: str, where: Path, note: Callable[[str], None]) -> list[str]:
    common = [s for s in available if s in set(produced)]
    if not common:
        raise EvaluationError(
            f"{where}: no stem in common: {who} gives {', '.join(produced) or 'nothing'}, "
            f"the data has {', '.join(available)}"
        )
    extra = [s for s in produced if s not in set(available)]
    missing = [s for s in available if s not in set(produced)]
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"{who} has no {', '.join(missing)}")
        if extra:
            parts.append(f"the data has no reference for {', '.join(extra)}")
        note(f"{where.name}: {'; '.join(parts)}: scoring {', '.join(common)} only")
    return common


def evaluate(
    model: str | Path | Any | None,
    data: str | Path,
    split: str = "test",
    estimates: str | Path | None = None,
    json_out: str | Path | None = None,
    plot_out: str | Path | None = None,
    backend: str | None = None,
    progress: bool = True,
    tracks: Sequence[str] | int | None = None,
    *,
    oracle: bool = False,
    wiener: int = 0,
    n_fft: int | None = None,
    hop: int | None = None,
    power: float = oracle_mod.DEFAULT_POWER,
    oracle_mask: str | None = None,
    window: float = 1.0,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Separate (or read) every track of a split and score it with museval.

    Args:
        model: a separator name / model file / :class:`~stemcli.plugins.Separator` for
            :func:`stemcli.api.separate`; ``"oracle"`` for the ideal-ratio-mask oracle; ``None``
            with ``estimates`` to score existing files (``None`` alone means the default model).
        data: MUSDB-layout root or split folder.
        split: split name under ``data``.
        estimates: a folder ``DIR/<track>/<stem>.wav`` to score instead of running a model.
        json_out: write the full result (per-frame values included) here.
        plot_out: write box plots (one panel per metric, one box per stem) here (PNG/PDF/SVG).
        backend: ``"onnx"`` or ``"torch"`` for model-based separators.
        wiener: multichannel Wiener post-filter iterations after the model (0 = none).
        progress: show a progress bar (stderr).
        tracks: only these track names, or the first N tracks.
        oracle: also score the ideal-ratio-mask oracle and report the gap to it.
        n_fft, hop: the oracle's STFT (default: the model's ``n_fft``/``hop`` attributes or its
            card's ``config``, else 4096/1024).
        power: the oracle mask exponent (1: magnitude ratio, 2: power ratio).
        oracle_mask: ``"irm"`` (ideal ratio mask with ``power``; ``None``: this) or ``"psm"``
            (clipped phase-sensitive mask: the best any real mask in [0, 1] does on the
            spectrogram; see :mod:`stemcli.oracle`).
        window: museval frame window and hop in seconds.
        echo: where the table and notes go (default: print to stdout).

    Returns:
        ``{"model", "data", "split", "tracks", "stems", "settings", "per_track", "per_stem"}``,
        plus ``"oracle"`` (same layout), ``"oracle_gap"`` (stem -> oracle SDR - SDR, medians
        over tracks) and ``"oracle_gap_per_track"`` (track -> stem -> the same per track) when
        the oracle ran alongside a model.  ``per_track[track][stem]`` holds the frame medians
        and ``"frames"`` (metric -> list of per-frame dB); ``per_stem[stem][metric]`` the
        median over tracks.

    Raises:
        EvaluationError: bad folders, unreadable or mismatching audio, no common stem.
    """
    say = echo or print
    start = time.perf_counter()
    use_oracle_only = isinstance(model, str) and model == ORACLE
    run_oracle = oracle or use_oracle_only
    if (n_fft is not None or hop is not None) and not run_oracle:
        raise EvaluationError("n_fft/hop set the oracle's STFT: add --oracle (or -m oracle)")
    if oracle_mask is not None and not run_oracle:
        raise EvaluationError("the oracle mask applies to the oracle: add --oracle (or -m oracle)")
    oracle_mask = oracle_mask or "irm"
    try:
        oracle_mod.check_mask(oracle_mask)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    if oracle_mask == "psm" and power != oracle_mod.DEFAULT_POWER:
        raise EvaluationError(f"power={power} applies to the ratio mask; the phase-sensitive oracle has none")
    folders = find_tracks(data, split, tracks)
    separator = None
    label: str
    if estimates is not None:
        est_root = Path(estimates)
        if not est_root.is_dir():
            raise EvaluationError(f"{est_root}: no such estimates folder")
        label = f"estimates:{est_root}"
        if model is not None:
            raise EvaluationError("give either a model or an estimates folder, not both")
    elif use_oracle_only:
        label = ORACLE
    else:
        from stemcli import api  # loads the separator stack only when a model runs

        separator = api.get_separator(model, backend, wiener)
        label = separator.name or str(model)
    o_fft, o_hop = _stft_of(separator, n_fft, hop)
    if run_oracle:  # the resolved STFT (the model's fills what was not given), before any track
        try:
            oracle_mod.check_stft(o_fft, o_hop)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None

    per_track: dict[str, dict[str, Any]] = {}
    oracle_track: dict[str, dict[str, Any]] = {}
    track_info = []
    bar = _progress(folders, progress)
    for folder in bar:
        mixture, rate, refs = read_track(folder)
        channels, n = mixture.shape
        available = list(refs)
        track_info.append({"name": folder.name, "seconds": n / rate, "sample_rate": rate, "channels": channels,
                           "mixture_sha256": audio_fingerprint(mixture)})
        if not use_oracle_only:
            if estimates is not None:
                est_dir = Path(estimates) / folder.name
                produced = list_stems(est_dir) if est_dir.is_dir() else []
                if not est_dir.is_dir():
                    raise EvaluationError(f"{est_dir}: no estimates for track '{folder.name}'")
                common = _common(produced, available, f"{est_dir}", folder, say)
                ests = read_estimates(est_dir, common, rate, channels, n)
            else:
                from stemcli import api

                assert separator is not None
                common = _common(list(separator.sources), available, f"model '{label}'", folder, say)
                raw = api.separate(mixture, rate, model=separator, stems=common)
                ests = {s: fit_length(np.asarray(raw[s], dtype=np.float32).reshape(channels, -1), n) for s in common}
            per_track[folder.name] = _track_scores(bss_eval({s: refs[s] for s in common}, ests, rate, window))
        if run_oracle:
            ora = oracle_mod.oracle_separate(mixture, refs, n_fft=o_fft, hop=o_hop, power=power, mask=oracle_mask)
            stems_o = available if use_oracle_only else list(per_track[folder.name])
            oracle_track[folder.name] = _track_scores(
                bss_eval({s: refs[s] for s in stems_o}, {s: ora[s] for s in stems_o}, rate, window)
            )
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(folder.name)

    # IRM results keep the layout they always had; psm has a mask name instead of a power
    kind = {"power": power} if oracle_mask == "irm" else {"mask": oracle_mask}
    oracle_settings = {"n_fft": o_fft, "hop": o_hop, **kind}
    if use_oracle_only:
        per_track, oracle_track = oracle_track, {}
    result: dict[str, Any] = {
        "model": label,
        **({"card": record} if (record := card_record(separator)) is not None else {}),
        "backend": backend,
        "data": str(Path(data)),
        "split": split,
        "tracks": track_info,
        "settings": {
            "bss_eval": "museval v4",
            "window_seconds": window,
            "hop_seconds": window,
            "aggregate": "median over frames (NaN ignored), then median over tracks",
            **({"wiener": int(wiener or 0)} if not use_oracle_only and estimates is None else {}),
            **({"oracle": oracle_settings} if run_oracle else {}),
        },
        "per_track": per_track,
        "per_stem": aggregate(per_track),
    }
    result["stems"] = list(result["per_stem"])
    if oracle_track:
        result["oracle"] = {"per_track": oracle_track, "per_stem": aggregate(oracle_track)}
        result["oracle_gap"] = {
            s: result["oracle"]["per_stem"][s]["SDR"] - result["per_stem"][s]["SDR"] for s in result["stems"]
        }
        result["oracle_gap_per_track"] = {
            t: {s: oracle_track[t][s]["SDR"] - per_track[t][s]["SDR"] for s in per_track[t]} for t in per_track
        }
    result["seconds"] = time.perf_counter() - start
    say(format_table(result))
    if json_out is not None:
        write_json(result, json_out)
    if plot_out is not None:
        plot(result, plot_out)
    return result


def _progress(folders: list[Path], enabled: bool) -> Any:
    if not enabled:
        return folders
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return folders
    return tqdm(folders, desc="evaluate", unit="track", file=sys.stderr)


# --------------------------------------------------------------------------- output


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


def format_table(result: Mapping[str, Any]) -> str:
    """A per-stem table of the medians (and the oracle columns when present)."""
    has_oracle = "oracle" in result
    head = ["stem", *METRICS] + (["oracle SDR", "gap"] if has_oracle else [])
    rows = []
    for s in result["stems"]:
        row = [s] + [_fmt(result["per_stem"][s][m]) for m in METRICS]
        if has_oracle:
            row += [_fmt(result["oracle"]["per_stem"][s]["SDR"]), _fmt(result["oracle_gap"][s])]
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    ora = result.get("settings", {}).get("oracle")
    which = ""
    if ora:
        kind = "clipped phase-sensitive mask" if ora.get("mask") == "psm" else f"ratio mask, power {ora.get('power')}"
        which = f"; oracle: {kind}, STFT {ora.get('n_fft')}/{ora.get('hop')}"
    lines = [
        f"{result['model']} on {len(result['tracks'])} track(s) of {result['data']} "
        f"(dB, median over frames then tracks{which})",
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))),
    ]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    """NaN -> null, +-inf -> "inf"/"-inf" so the file is strict JSON."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``result`` as strict JSON (NaN -> null, inf -> "inf")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")
    return path


def plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """Box plots: one panel per metric, one box per stem over all frames of all tracks.

    With oracle results, each stem gets a second (hatched) box for the oracle.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def frames(per_track: Mapping[str, Any], stem: str, metric: str) -> np.ndarray:
        vals = [v for t in per_track.values() if stem in t for v in t[stem]["frames"][metric]]
        arr = np.asarray(vals, dtype=np.float64)
        return arr[np.isfinite(arr)]

    stems = list(result["stems"])
    runs = [(result["model"], result["per_track"])]
    if "oracle" in result:
        runs.append((ORACLE, result["oracle"]["per_track"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6), squeeze=False)
    width = 0.8 / len(runs)
    for ax, metric in zip(axes[0], METRICS):
        for k, (name, per_track) in enumerate(runs):
            data = [frames(per_track, s, metric) for s in stems]
            pos = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(stems))]
            keep = [(d, p) for d, p in zip(data, pos) if d.size]
            if keep:
                box = ax.boxplot(
                    [d for d, _ in keep], positions=[p for _, p in keep], widths=width * 0.9,
                    patch_artist=True, showfliers=False,
                )
                for patch in box["boxes"]:
                    patch.set_facecolor("C0" if k == 0 else "C1")
                    patch.set_alpha(0.6)
                ax.plot([], [], color="C0" if k == 0 else "C1", lw=6, alpha=0.6, label=name)
        ax.set_xticks(range(len(stems)))
        ax.set_xticklabels(stems, rotation=30)
        ax.set_title(f"{metric} (dB)")
        ax.grid(axis="y", alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result['model']}: {len(result['tracks'])} track(s), 1 s frames", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "EvaluationError",
    "METRICS",
    "aggregate",
    "audio_fingerprint",
    "bss_eval",
    "evaluate",
    "find_tracks",
    "format_table",
    "plot",
    "read_track",
    "write_json",
]
