"""``stemcli synth``: render multi-stem training data in MUSDB layout.

::

    OUTDIR/dataset.json
    OUTDIR/{train,valid,test}/<track>/{mixture.wav, <stem>.wav ...}

Every file is 32-bit float WAV, stereo, 44.1 kHz; ``mixture`` is the float32 sum of the stems
in the order of the card's ``stems`` (exact, not re-quantised). A track is a pure function of
``(seed, kind, index)``, so the output is byte-identical for a given seed whatever ``jobs`` is.

Kinds:
    pop: ``vocals, drums, bass, other`` from a generated arrangement rendered by fluidsynth.
    ensemble: 2-5 instruments (13 orchestral instruments) playing parts of real scores from the
        music21 corpus; one stem per instrument (``violin``, ``violin2``, ``cello`` ...).
    speech: two ``espeak-ng`` speakers at 0 dB, stems ``speaker1, speaker2``.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stemcli.modelcard import command_line

KINDS = ("pop", "ensemble", "speech")
KIND_CODE = {"pop": 1, "ensemble": 2, "speech": 3}
SAMPLE_RATE = 44100
SPLITS = ("train", "valid", "test")
CARD_FORMAT = "stemcli-synth/1"
# Target loudness (RMS dBFS over the whole stem) drawn per stem.
POP_LEVELS = {"vocals": (-21.0, -14.0), "drums": (-22.0, -14.0), "bass": (-24.0, -16.0), "other": (-24.0, -15.0)}
SILENT_DBFS = -60.0


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level of ``x`` in dBFS (-inf for digital silence)."""
    p = float(np.mean(np.square(x, dtype=np.float64)))
    return 10.0 * np.log10(p) if p > 0 else float("-inf")


def track_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator of track ``index``: independent of job count and of other tracks."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), KIND_CODE[kind], int(index)]))


def assign_splits(tracks: int, splits: Sequence[float], seed: int) -> list[str]:
    """Split name of each track index (a seeded shuffle, then cut by the fractions).

    ``valid`` and ``test`` get at least one track each when there are enough tracks for
    ``train`` to keep one too and their fraction is non-zero.
    """
    if len(splits) != 3 or not all(math.isfinite(f) and f >= 0 for f in splits) or sum(splits) <= 0:
        raise ValueError(f"splits must be three non-negative fractions (train, valid, test), got {tuple(splits)}")
    fr = np.asarray(splits, float) / float(sum(splits))
    counts = [int(round(tracks * f)) for f in fr]
    for k in (1, 2):
        if fr[k] > 0 and counts[k] == 0 and tracks - sum(counts[1:]) > 1:
            counts[k] = 1
    counts[0] = tracks - counts[1] - counts[2]
    if counts[0] < 0:
        counts[2] += counts[0]
        counts[0] = 0
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 99])).permutation(tracks)
    names = [SPLITS[0]] * counts[0] + [SPLITS[1]] * counts[1] + [SPLITS[2]] * counts[2]
    out = [""] * tracks
    for pos, idx in enumerate(order):
        out[int(idx)] = names[pos]
    return out


def _scale_to(x: np.ndarray, dbfs: float) -> np.ndarray:
    level = rms_dbfs(x)
    if not np.isfinite(level):
        return x
    return (x * np.float32(10 ** ((dbfs - level) / 20.0))).astype(np.float32)


def _peak_limit(stems: dict[str, np.ndarray], peak: float = 0.95) -> dict[str, np.ndarray]:
    mix = _mix(stems)
    top = float(np.abs(mix).max())
    if top > peak:
        g = np.float32(peak / top)
        stems = {k: (v * g).astype(np.float32) for k, v in stems.items()}
    return stems


def _mix(stems: dict[str, np.ndarray]) -> np.ndarray:
    """float32 sum in stem order (the reader sums the same way)."""
    it = iter(stems.values())
    mix = next(it).astype(np.float32).copy()
    for v in it:
        mix += v
    return mix


# ----------------------------------------------------------------------------- pop


def render_pop_track(
    rng: np.random.Generator, seconds: float, fonts: Sequence[str], sample_rate: int = SAMPLE_RATE
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Render one pop track.

    Returns:
        stems: ``vocals, drums, bass, other`` -> [shape=(2, time)] float32.
        info: metadata for the card.
    """
    from stemcli.data.arrange import POP_STEMS, make_pop_song
    from stemcli.data.render import render_stems

    song = make_pop_song(rng, seconds)
    font_of = {s: str(fonts[int(rng.integers(len(fonts)))]) for s in POP_STEMS}
    reverb = (float(rng.uniform(0.1, 0.7)), float(rng.uniform(0.0, 0.6)), float(rng.uniform(0.3, 0.9)))
    chorus = bool(rng.random() < 0.7)
    levels = {s: float(rng.uniform(*POP_LEVELS[s])) for s in POP_STEMS}
    rendered: dict[str, np.ndarray] = {}
    for font in sorted(set(font_of.values())):
        group = {s: song.parts[s] for s in POP_STEMS if font_of[s] == font}
        rendered.update(render_stems(group, song.bpm, seconds, font, sample_rate, reverb=reverb, chorus=chorus))
    for s in POP_STEMS:  # a font without the program renders silence: fall back to the first font
        if rms_dbfs(rendered[s]) < SILENT_DBFS and font_of[s] != fonts[0]:
            font_of[s] = str(fonts[0])
            rendered.update(render_stems({s: song.parts[s]}, song.bpm, seconds, fonts[0], sample_rate, reverb=reverb, chorus=chorus))
    # Vocals: the GM voice patch, espeak-ng lyrics sung to the melody, or both (drawn last so the
    # rest of the track does not depend on this choice).
    vocal_mode = str(rng.choice(["gm", "sung", "both"], p=[0.35, 0.45, 0.2]))
    sung_info: dict[str, Any] = {}
    if vocal_mode != "gm":
        from stemcli.data.render import FADE_SECONDS
        from stemcli.data.sing import simple_reverb, sing

        melody = [n for p in song.parts["vocals"][:1] for n in p.notes]
        mono, sung_info = sing(melody, song.bpm, seconds, rng, sample_rate)
        sung = simple_reverb(mono, rng, sample_rate)
        fade = np.linspace(1.0, 0.0, int(FADE_SECONDS * sample_rate), dtype=np.float32)
        sung[:, -fade.size :] *= fade
        if vocal_mode == "sung" or rms_dbfs(sung) < SILENT_DBFS:
            rendered["vocals"] = sung
        else:
            gm = rendered["vocals"]
            rendered["vocals"] = (_scale_to(gm, rms_dbfs(sung) - float(rng.uniform(3.0, 12.0))) + sung).astype(np.float32)
    stems = {s: _scale_to(rendered[s], levels[s]) for s in POP_STEMS}
    stems = _peak_limit(stems)
    info = dict(song.info)
    info["vocal_mode"] = vocal_mode
    if sung_info:
        info["sung"] = sung_info
    info.update(soundfonts={s: Path(f).name for s, f in font_of.items()}, reverb=[round(v, 3) for v in reverb], chorus=chorus)
    return stems, info


# ----------------------------------------------------------------------------- workers


def _render_track(kind: str, rng: np.random.Generator, seconds: float, fonts: Sequence[str]):
    if kind == "pop":
        return render_pop_track(rng, seconds, fonts)
    if kind == "ensemble":
        from stemcli.data.ensemble import render_ensemble_track

        return render_ensemble_track(rng, seconds, fonts)
    if kind == "speech":
        from stemcli.data.speech import render_speech_track

        return render_speech_track(rng, seconds)
    raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def write_float_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write a 32-bit float WAV byte-for-byte reproducibly.

    libsndfile (soundfile) adds a PEAK chunk holding a timestamp to float WAVs, so two writes of
    the same audio differ; this writer emits only ``fmt``, ``fact`` and ``data`` chunks.

    Args:
        path: output file.
        audio: [shape=(channels, time)] float32.
        sample_rate: rate in Hz.
    """
    audio = np.asarray(audio, dtype="<f4")
    channels, frames = audio.shape
    data = np.ascontiguousarray(audio.T).tobytes()
    block = 4 * channels
    fmt = struct.pack("<HHIIHHH", 3, channels, sample_rate, sample_rate * block, block, 32, 0)
    fact = struct.pack("<I", frames)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
    body += b"data" + struct.pack("<I", len(data))
    with open(path, "wb") as fh:
        fh.write(b"RIFF" + struct.pack("<I", len(body) + len(data)) + body)
        fh.write(data)


def write_track(folder: Path, stems: dict[str, np.ndarray], sample_rate: int = SAMPLE_RATE) -> None:
    """Write ``<stem>.wav`` files and ``mixture.wav`` (their float32 sum) as float WAV."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in stems.items():
        write_float_wav(folder / f"{name}.wav", audio, sample_rate)
    write_float_wav(folder / "mixture.wav", _mix(stems), sample_rate)


def _worker(job: tuple[str, int, int, float, tuple[str, ...], str, str]) -> dict[str, Any]:
    kind, seed, index, seconds, fonts, outdir, split = job
    rng = track_rng(seed, kind, index)
    stems, info = _render_track(kind, rng, seconds, fonts)
    for name, audio in stems.items():
        if rms_dbfs(audio) < SILENT_DBFS:
            raise RuntimeError(f"{kind} track {index}: stem {name} rendered silent ({rms_dbfs(audio):.1f} dBFS)")
    name = f"{kind}{index:05d}"
    write_track(Path(outdir) / split / name, stems)
    return {
        "name": name,
        "split": split,
        "index": index,
        "stems": list(stems),
        "rms_dbfs": {k: round(float(rms_dbfs(v)), 2) for k, v in stems.items()},
        **info,
    }


def _tool_version(exe: str) -> str | None:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    return out.splitlines()[0].strip() if out else None


def _prepare_outdir(outdir: Path, overwrite: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"{outdir}: exists and is not a folder")
    if outdir.is_dir() and any(outdir.iterdir()):
        card_path = outdir / "dataset.json"
        if not overwrite:
            raise ValueError(f"{outdir}: folder is not empty; choose a new folder or pass --overwrite")
        if not card_path.is_file():
            raise ValueError(f"{outdir}: not empty and has no dataset.json, so it is not a stemcli synth dataset; refusing to overwrite")
        try:
            old = json.loads(card_path.read_text())
            listed = [(t["split"], t["name"]) for t in old.get("track_list", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{card_path}: unreadable dataset card ({exc}); refusing to overwrite") from exc
        for split, name in listed:
            folder = outdir / str(split) / str(name)
            if split in SPLITS and folder.is_dir() and folder.resolve().parent.parent == outdir.resolve():
                shutil.rmtree(folder)
        for split in SPLITS:
            if (outdir / split).is_dir() and not any((outdir / split).iterdir()):
                (outdir / split).rmdir()
        card_path.unlink()
    outdir.mkdir(parents=True, exist_ok=True)


def render_dataset(
    outdir: str | Path,
    kind: str = "pop",
    tracks: int = 100,
    seconds: float = 30.0,
    seed: int = 0,
    soundfont: str | Path | None = None,
    jobs: int = 1,
    progress: bool = True,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    command: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render a synthetic multi-stem dataset in MUSDB layout.

    Args:
        outdir: output folder (created; must be empty unless ``overwrite``).
        kind: ``"pop"``, ``"ensemble"`` or ``"speech"``.
        tracks: number of tracks.
        seconds: length of each track.
        seed: dataset seed; same seed -> same bytes.
        soundfont: use only this .sf2/.sf3 (default: vary among the installed Debian fonts).
        jobs: worker processes.
        progress: show a tqdm bar on stderr.
        splits: (train, valid, test) fractions.
        command: command line recorded in the card (default: this process's command line as
            :func:`stemcli.modelcard.command_line` writes it, e.g. ``stemcli synth ...``).
        overwrite: allow a non-empty ``outdir`` holding an earlier ``stemcli synth`` dataset; its
            track folders (as listed in its ``dataset.json``) are deleted first.

    Returns:
        the dataset card (also written to ``OUTDIR/dataset.json``).

    Raises:
        ValueError: bad arguments or no SoundFont; RuntimeError: a renderer failed.
    """
    from stemcli.data.render import available_soundfonts, fluidsynth_binary

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if tracks < 1:
        raise ValueError(f"tracks must be >= 1, got {tracks}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    fonts: tuple[str, ...] = ()
    if kind in ("pop", "ensemble"):
        fluidsynth_binary()
        fonts = tuple(available_soundfonts(soundfont))
    if kind == "speech":
        from stemcli.data.speech import espeak_binary

        espeak_binary()
    split_of = assign_splits(tracks, splits, seed)  # before anything is created: bad fractions leave no folder
    outdir = Path(outdir)
    _prepare_outdir(outdir, overwrite)
    work = [(kind, int(seed), i, float(seconds), fonts, str(outdir), split_of[i]) for i in range(tracks)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tracks, desc=f"synth {kind}", unit="track", file=sys.stderr)
    results: list[dict[str, Any]] = []
    try:
        if jobs == 1:
            for job in work:
                results.append(_worker(job))
                if bar is not None:
                    bar.update(1)
        else:
            with mp.get_context("spawn").Pool(jobs) as pool:
                for res in pool.imap(_worker, work, chunksize=1):
                    results.append(res)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    counts = {s: sum(1 for r in results if r["split"] == s) for s in SPLITS}
    stems = sorted({tuple(r["stems"]) for r in results})
    card = {
        "format": CARD_FORMAT,
        "kinds": [kind],
        "seed": int(seed),
        "sample_rate": SAMPLE_RATE,
        "channels": 2,
        "subtype": "FLOAT",
        "seconds_per_track": float(seconds),
        "tracks": tracks,
        "counts": {s: n for s, n in counts.items() if n},
        "durations_seconds": {s: round(n * float(seconds), 3) for s, n in counts.items() if n},
        "stems": list(stems[0]) if len(stems) == 1 else sorted({s for t in stems for s in t}),
        "soundfonts": [Path(f).name for f in fonts],
        "renderer": {
            **({"fluidsynth": _tool_version("fluidsynth")} if fonts else {}),
            **({"espeak-ng": _tool_version("espeak-ng")} if kind in ("pop", "speech") else {}),
        },
        "command": command if command is not None else command_line(),
        "layout": "OUTDIR/{train,valid,test}/<track>/{mixture.wav, <stem>.wav}; mixture = float32 sum of stems",
        "track_list": results,
    }
    (outdir / "dataset.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return card
