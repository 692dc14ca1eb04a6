"""The ``ensemble`` kind: real multi-part scores (music21 corpus) re-orchestrated for 2-5 players.

Parts come from Bach chorales (S/A/T/B), Monteverdi madrigals (5 voices) and string quartets
(Haydn, Mozart, Beethoven) shipped with music21. Each part is given one of 13 instruments
whose range holds it (after octave shifts), the piece is transposed by a few semitones, and
every instrument is rendered to its own stem (``violin``, ``violin2``, ``cello`` ...).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stemcli.data.midi import Note, Part


@dataclass(frozen=True)
class Instrument:
    """An orchestral instrument: stem name, GM program, sounding MIDI range, family."""

    name: str
    program: int
    low: int
    high: int
    family: str


INSTRUMENTS = (
    Instrument("violin", 40, 55, 96, "strings"),
    Instrument("viola", 41, 48, 86, "strings"),
    Instrument("cello", 42, 36, 76, "strings"),
    Instrument("double_bass", 43, 28, 64, "strings"),
    Instrument("flute", 73, 60, 96, "woodwinds"),
    Instrument("oboe", 68, 58, 91, "woodwinds"),
    Instrument("clarinet", 71, 50, 91, "woodwinds"),
    Instrument("saxophone", 65, 49, 81, "woodwinds"),
    Instrument("bassoon", 70, 34, 72, "woodwinds"),
    Instrument("trumpet", 56, 55, 82, "brass"),
    Instrument("horn", 60, 41, 77, "brass"),
    Instrument("trombone", 57, 40, 72, "brass"),
    Instrument("tuba", 58, 28, 58, "brass"),
)
INSTRUMENT_NAMES = tuple(i.name for i in INSTRUMENTS)
# Alternative GM programs per instrument (sax: soprano/alto/tenor; strings: tremolo-free only).
ALT_PROGRAMS = {"saxophone": (64, 65, 66), "trumpet": (56, 59), "violin": (40, 40, 110)}

CORPUS_COMPOSERS = ("bach", "monteverdi", "haydn", "mozart", "beethoven")
MAX_SCORE_BYTES = 40_000


@dataclass
class Piece:
    """Parts of a score as note lists in quarter notes: part -> [(start, duration, pitch)]."""

    path: str
    parts: list[list[tuple[float, float, int]]]
    length: float  # quarter notes


@functools.lru_cache(maxsize=1)
def corpus_paths() -> tuple[str, ...]:
    """MusicXML files of multi-part pieces in the music21 corpus (sorted, deterministic)."""
    from music21 import corpus

    paths: list[str] = []
    for composer in CORPUS_COMPOSERS:
        for p in corpus.getComposer(composer):
            p = str(p)
            # Large files (long Beethoven movements) take minutes to parse: skip them.
            if not p.endswith(".mxl") or Path(p).stat().st_size > MAX_SCORE_BYTES:
                continue
            paths.append(p)
    if not paths:
        raise RuntimeError("music21 corpus has no multi-part MusicXML pieces (is music21 installed with its corpus?)")
    return tuple(sorted(paths))


@functools.lru_cache(maxsize=64)
def load_piece(path: str) -> Piece:
    """Parse a score into monophonic part note lists (chords keep their top note)."""
    from music21 import converter

    score = converter.parse(path)
    parts = []
    for part in score.parts:
        notes = []
        for el in part.stripTies().flatten().notes:
            dur = float(el.duration.quarterLength)
            if dur <= 0:
                continue
            if el.isChord:
                pitch = max(p.midi for p in el.pitches)
            else:
                pitch = el.pitch.midi
            notes.append((float(el.offset), dur, int(pitch)))
        if len(notes) >= 8:
            parts.append(sorted(notes))
    length = max((n[0] + n[1] for p in parts for n in p), default=0.0)
    return Piece(path=path, parts=parts, length=float(length))


def _fits(pitches: np.ndarray, inst: Instrument) -> int | None:
    """Octave shift (semitones) that puts the part inside the instrument's range, or None."""
    lo, hi = int(pitches.min()), int(pitches.max())
    for shift in (0, -12, 12, -24, 24):
        if lo + shift >= inst.low and hi + shift <= inst.high:
            return shift
    return None


def orchestrate(
    rng: np.random.Generator, part_pitches: Sequence[np.ndarray]
) -> list[tuple[Instrument, int]]:
    """Choose an instrument and octave shift per part (ordered as given).

    A family (strings / woodwinds / brass / mixed) is drawn first; within it each part takes
    a random instrument whose range holds it, preferring no octave shift.
    """
    family = str(rng.choice(["strings", "woodwinds", "brass", "mixed", "mixed"]))
    out: list[tuple[Instrument, int]] = []
    used: dict[str, int] = {}
    for pitches in part_pitches:
        pool = [i for i in INSTRUMENTS if family == "mixed" or i.family == family]
        cands = [(i, _fits(pitches, i)) for i in pool]
        cands = [(i, s) for i, s in cands if s is not None]
        if not cands:
            cands = [(i, _fits(pitches, i)) for i in INSTRUMENTS]
            cands = [(i, s) for i, s in cands if s is not None]
        if not cands:  # very wide part: the instrument with the closest range, clamped later
            cands = [(INSTRUMENTS[0], 0)]
        median = float(np.median(pitches))
        w = []
        for inst, shift in cands:
            centre, half = (inst.low + inst.high) / 2.0, (inst.high - inst.low) / 2.0
            tessitura = np.exp(-2.0 * ((median + shift - centre) / half) ** 2)  # prefer the middle of the range
            w.append((3.0 if shift == 0 else 1.0) * (0.25 ** used.get(inst.name, 0)) * (0.05 + tessitura))
        w_arr = np.asarray(w)
        k = int(rng.choice(len(cands), p=w_arr / w_arr.sum()))
        out.append(cands[k])
        used[cands[k][0].name] = used.get(cands[k][0].name, 0) + 1
    return out


def stem_names(instruments: Sequence[str]) -> list[str]:
    """``violin, violin, cello`` -> ``violin, violin2, cello``."""
    seen: dict[str, int] = {}
    out = []
    for name in instruments:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}{seen[name]}")
    return out


def _window(part, start: float, end: float, length: float) -> list[tuple[float, float, int]]:
    """Notes of a part inside [start, end) quarter notes, looping the piece if it is short."""
    out = []
    rep = 0
    while rep * length < end:
        base = rep * length
        for s, d, p in part:
            t = s + base
            if t + d <= start or t >= end:
                continue
            t0 = max(t, start)
            out.append((t0 - start, min(t + d, end) - t0, p))
        rep += 1
        if length <= 0:
            break
    return out


def make_ensemble(rng: np.random.Generator, seconds: float) -> tuple[float, dict[str, list[Part]], dict[str, Any]]:
    """Pick a piece, 2-5 of its parts, instruments, tempo and an excerpt.

    Returns:
        (bpm, stem -> parts, info).
    """
    paths = corpus_paths()
    for _attempt in range(20):
        path = paths[int(rng.integers(len(paths)))]
        piece = load_piece(path)
        if len(piece.parts) >= 2 and piece.length > 4:
            break
    else:
        raise RuntimeError("no usable multi-part piece found in the music21 corpus")
    bpm = float(int(rng.integers(60, 121)))
    span = seconds * bpm / 60.0  # quarter notes
    n_avail = len(piece.parts)
    n_players = int(rng.integers(2, min(5, n_avail) + 1))
    # Optionally a fifth player doubling the lowest part an octave down (double bass / tuba).
    chosen = sorted(rng.choice(n_avail, size=n_players, replace=False).tolist())
    start = 0.0
    windows = []
    for _attempt in range(10):
        start = float(rng.uniform(0, max(0.0, piece.length - span))) if piece.length > span else 0.0
        start = float(np.floor(start))
        windows = [_window(piece.parts[k], start, start + span, piece.length) for k in chosen]
        if all(len(w) >= 3 for w in windows):
            break
    keep = [k for k, w in zip(chosen, windows) if len(w) >= 3]
    windows = [w for w in windows if len(w) >= 3]
    if len(windows) < 2:  # fall back to the first bars of the two busiest parts
        busiest = sorted(range(n_avail), key=lambda k: -len(piece.parts[k]))[:2]
        keep = sorted(busiest)
        start = 0.0
        windows = [_window(piece.parts[k], 0.0, span, piece.length) for k in keep]
    transpose = int(rng.integers(-5, 6))
    pitch_sets = [np.array([p + transpose for _, _, p in w]) for w in windows]
    assignment = orchestrate(rng, pitch_sets)
    if len(windows) < 5 and rng.random() < 0.2:
        low_part = windows[-1]
        low = np.array([p + transpose - 12 for _, _, p in low_part])
        cands = [i for i in INSTRUMENTS if i.name in ("double_bass", "tuba", "bassoon") and _fits(low, i) is not None]
        if cands:
            inst = cands[int(rng.integers(len(cands)))]
            windows.append(low_part)
            pitch_sets.append(low)
            assignment.append((inst, _fits(low, inst) - 12))  # type: ignore[operator]
            keep.append(keep[-1])
    names = stem_names([inst.name for inst, _ in assignment])
    base_vel = float(rng.uniform(60, 105))
    stems: dict[str, list[Part]] = {}
    channels = [c for c in range(16) if c != 9]
    pans = np.linspace(20, 108, len(names)) if rng.random() < 0.7 else rng.uniform(10, 118, len(names))
    for k, (name, (inst, shift), window) in enumerate(zip(names, assignment, windows)):
        program = int(rng.choice(ALT_PROGRAMS[inst.name])) if inst.name in ALT_PROGRAMS else inst.program
        vel = base_vel + rng.normal(0, 8)
        notes = []
        for s, d, p in window:
            pitch = int(np.clip(p + transpose + shift, inst.low, inst.high))
            legato = 0.97 if rng.random() < 0.8 else 0.75
            notes.append(Note(s, d * legato, pitch, int(np.clip(vel + rng.normal(0, 6), 20, 127))))
        cc = {7: 100, 10: int(pans[k]), 91: int(rng.integers(20, 90)), 93: int(rng.integers(0, 20))}
        stems[name] = [Part(notes, program=program, channel=channels[k], controllers=cc)]
    info = {
        "piece": "/".join(Path(piece.path).parts[-2:]),
        "parts": [int(k) for k in keep],
        "bpm": bpm,
        "transpose": transpose,
        "start_quarters": start,
        "programs": {n: p[0].program for n, p in stems.items()},
    }
    return bpm, stems, info


def render_ensemble_track(
    rng: np.random.Generator, seconds: float, fonts: Sequence[str], sample_rate: int = 44100
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Render one ensemble track: one stem per instrument.

    Returns:
        stems: instrument stem name -> [shape=(2, time)] float32.
        info: metadata for the card.
    """
    from stemcli.data.render import render_stems
    from stemcli.data.synth import SILENT_DBFS, _peak_limit, _scale_to, rms_dbfs

    bpm, parts, info = make_ensemble(rng, seconds)
    font_of = {s: str(fonts[int(rng.integers(len(fonts)))]) for s in parts}
    reverb = (float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.4, 0.9)))
    rendered: dict[str, np.ndarray] = {}
    for font in sorted(set(font_of.values())):
        group = {s: parts[s] for s in parts if font_of[s] == font}
        rendered.update(render_stems(group, bpm, seconds, font, sample_rate, reverb=reverb, chorus=False))
    for s in parts:
        if rms_dbfs(rendered[s]) < SILENT_DBFS and font_of[s] != fonts[0]:
            font_of[s] = str(fonts[0])
            rendered.update(render_stems({s: parts[s]}, bpm, seconds, fonts[0], sample_rate, reverb=reverb, chorus=False))
    stems = {s: _scale_to(rendered[s], float(rng.uniform(-26.0, -18.0))) for s in parts}
    stems = _peak_limit(stems)
    info.update(soundfonts={s: Path(f).name for s, f in font_of.items()}, reverb=[round(v, 3) for v in reverb])
    return stems, info
