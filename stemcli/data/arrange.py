"""Arrangement generator for the ``pop`` kind: drums, bass, chords (other) and a vocal melody.

Everything is drawn from one ``numpy.random.Generator`` so a track is a pure function of its
seed. Output is a :class:`Song`: tempo, key and one list of :class:`~stemcli.data.midi.Part`
per stem, in beats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stemcli.data.midi import Note, Part

POP_STEMS = ("vocals", "drums", "bass", "other")

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)

# Progressions as scale degrees (0-based), one chord per entry.
PROGRESSIONS_MAJOR = (
    (0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 5), (0, 5, 3, 4), (0, 3, 0, 4), (3, 0, 4, 5),
    (0, 2, 3, 4),
)
PROGRESSIONS_MINOR = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 0, 5, 6))

# GM programs (0-based) per role.
VOCAL_PROGRAMS = (52, 53, 54, 85)  # choir aahs, voice oohs, synth voice, lead 6 (voice)
BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39)
OTHER_FAMILIES = {
    "piano": (0, 1, 2, 4, 5),
    "organ": (16, 17, 18),
    "guitar": (24, 25, 26, 27, 28, 29, 30),
    "strings": (48, 49, 50, 51),
    "pad": (88, 89, 90, 91, 92, 94, 95),
    "brass": (61, 62, 63),
    "mallets": (11, 12, 8),
}

# GM drum keys.
KICK, SNARE, RIM, CLAP, HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 37, 39, 42, 44, 46, 49, 51
TOMS = (41, 43, 45, 47, 48, 50)

# 16-step patterns per style: (kick, snare, hat step, extra)
STYLES = {
    "rock": dict(kick=(0, 8, 10), snare=(4, 12), hat=2, swing=0.0, bpm=(95, 150)),
    "pop": dict(kick=(0, 6, 8), snare=(4, 12), hat=2, swing=0.0, bpm=(90, 130)),
    "funk": dict(kick=(0, 3, 7, 10), snare=(4, 12), hat=1, swing=0.0, bpm=(95, 120)),
    "disco": dict(kick=(0, 4, 8, 12), snare=(4, 12), hat=2, swing=0.0, bpm=(110, 130), open_hat=(2, 6, 10, 14)),
    "hiphop": dict(kick=(0, 7, 10), snare=(4, 12), hat=2, swing=0.15, bpm=(80, 100)),
    "ballad": dict(kick=(0, 10), snare=(8,), hat=2, swing=0.0, bpm=(80, 100), half_time=True),
    "shuffle": dict(kick=(0, 8), snare=(4, 12), hat=2, swing=0.33, bpm=(100, 160)),
    "punk": dict(kick=(0, 4, 8, 12), snare=(4, 12), hat=2, swing=0.0, bpm=(140, 160)),
}


@dataclass
class Song:
    """A generated arrangement.

    Attributes:
        bpm: tempo.
        key: tonic pitch class 0-11.
        mode: ``"major"`` or ``"minor"``.
        style: drum style name.
        bars: number of 4/4 bars.
        parts: stem name -> parts of that stem.
        info: extra metadata for the dataset card.
    """

    bpm: float
    key: int
    mode: str
    style: str
    bars: int
    parts: dict[str, list[Part]] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)


def _active_bars(rng: np.random.Generator, bars: int, drop_prob: float, block: int = 2) -> np.ndarray:
    """Per-bar on/off mask: blocks of ``block`` bars drop out with ``drop_prob``; never all off,
    and the first half-window always has some activity."""
    mask = np.ones(bars, bool)
    for b in range(0, bars, block):
        if rng.random() < drop_prob:
            mask[b : b + block] = False
    if mask.sum() < max(1, bars // 2):
        mask[:] = True
        start = int(rng.integers(0, max(1, bars - block)))
        if rng.random() < drop_prob:
            mask[start : start + block] = False
    if not mask.any():
        mask[:] = True
    return mask


def _swing(step: int, amount: float) -> float:
    """Beat position of a 16th step with swing applied to the off-8ths."""
    pos = step / 4.0
    if amount and step % 2 == 1:
        pos += amount * 0.25
    return pos


def _chord_pitches(key: int, scale: tuple[int, ...], degree: int, size: int = 3) -> list[int]:
    """Pitch classes (with octave offsets) of a diatonic chord built on ``degree``."""
    out = []
    for k in range(size):
        idx = degree + 2 * k
        out.append(key + scale[idx % 7] + 12 * (idx // 7))
    return out


def _fit(pitch: int, low: int, high: int) -> int:
    while pitch < low:
        pitch += 12
    while pitch > high:
        pitch -= 12
    return pitch


def _vel(rng: np.random.Generator, base: float, jitter: float = 8.0) -> int:
    return int(np.clip(round(base + rng.normal(0, jitter)), 1, 127))


def make_drums(rng, bars, style, density, base_vel, active) -> list[Note]:
    st = STYLES[style]
    notes: list[Note] = []
    ride = rng.random() < 0.2
    hat_key = RIDE if ride else (PEDAL_HAT if rng.random() < 0.1 else HAT)
    hat_step = st["hat"] if density < 0.7 else 1
    if density < 0.25:
        hat_step = 4
    snare_key = CLAP if (style in ("hiphop", "disco") and rng.random() < 0.5) else (RIM if rng.random() < 0.07 else SNARE)
    extra_kick = rng.random() < density * 0.6
    for bar in range(bars):
        if not active[bar]:
            continue
        t0 = 4.0 * bar
        fill = bar % 4 == 3 and rng.random() < 0.5 and density > 0.3
        if bar % 4 == 0 and (bar == 0 or not active[bar - 1] or rng.random() < 0.5):
            notes.append(Note(t0, 1.0, CRASH, _vel(rng, base_vel)))
        for step in range(16):
            pos = t0 + _swing(step, st["swing"])
            if fill and step >= 8:
                if step % (1 if density > 0.6 else 2) == 0:
                    notes.append(Note(pos, 0.2, int(TOMS[::-1][min(5, (step - 8) * 6 // 8)]), _vel(rng, base_vel)))
                continue
            if step in st["kick"] or (extra_kick and step in (14,) and rng.random() < 0.5):
                notes.append(Note(pos, 0.2, KICK, _vel(rng, base_vel + 5)))
            if step in st["snare"]:
                notes.append(Note(pos, 0.2, snare_key, _vel(rng, base_vel + 3)))
            elif density > 0.6 and step % 2 == 1 and rng.random() < 0.08:
                notes.append(Note(pos, 0.1, SNARE, _vel(rng, base_vel - 35)))  # ghost note
            if step % hat_step == 0:
                key = hat_key
                if "open_hat" in st and step in st["open_hat"]:
                    key = OPEN_HAT
                accent = 8 if step % 4 == 0 else -6
                notes.append(Note(pos, 0.1, key, _vel(rng, base_vel - 12 + accent)))
    return notes


def make_bass(rng, bars, chords, density, base_vel, active, kick_steps) -> list[Note]:
    pattern = rng.choice(["whole", "half", "eighths", "root_fifth", "kick", "octaves"], p=[0.1, 0.15, 0.25, 0.2, 0.2, 0.1])
    if density < 0.3 and pattern in ("eighths", "octaves"):
        pattern = "half"
    low = int(rng.integers(28, 36))
    notes: list[Note] = []
    for bar in range(bars):
        if not active[bar]:
            continue
        t0 = 4.0 * bar
        root = _fit(chords[bar][0], low, low + 11)
        fifth = root + 7
        if pattern == "whole":
            ev = [(0, 3.8, root)]
        elif pattern == "half":
            ev = [(0, 1.9, root), (2, 1.9, root if rng.random() < 0.6 else fifth)]
        elif pattern == "eighths":
            ev = [(0.5 * k, 0.45, root) for k in range(8)]
        elif pattern == "root_fifth":
            ev = [(0, 0.9, root), (1, 0.9, fifth), (2, 0.9, root + 12 if rng.random() < 0.5 else root), (3, 0.9, fifth)]
        elif pattern == "kick":
            ev = [(s / 4.0, 0.45, root) for s in kick_steps] + [(3.5, 0.4, fifth if rng.random() < 0.5 else root)]
        else:
            ev = [(0.5 * k, 0.4, root + (12 if k % 2 else 0)) for k in range(8)]
        for pos, dur, pitch in ev:
            notes.append(Note(t0 + pos, dur, pitch, _vel(rng, base_vel + (6 if pos == 0 else 0))))
    return notes


def make_chords(rng, bars, chords, density, base_vel, active, family) -> list[Note]:
    if family in ("pad", "strings"):
        style = "sustain"
    elif family == "guitar":
        style = rng.choice(["strum", "arp", "stabs"])
    elif family in ("piano", "mallets"):
        style = rng.choice(["comp", "arp", "sustain"])
    else:
        style = rng.choice(["sustain", "stabs"])
    if density < 0.3 and style in ("arp",):
        style = "sustain"
    low = int(rng.integers(50, 58))
    notes: list[Note] = []
    for bar in range(bars):
        if not active[bar]:
            continue
        t0 = 4.0 * bar
        voicing = sorted(_fit(p, low, low + 14) for p in chords[bar])
        if rng.random() < 0.3:
            voicing.append(voicing[0] + 12)
        if style == "sustain":
            for p in voicing:
                notes.append(Note(t0, 3.95, p, _vel(rng, base_vel - 5, 5)))
        elif style == "strum":
            hits = [0, 1, 1.5, 2.5, 3] if density > 0.5 else [0, 2]
            for h in hits:
                for k, p in enumerate(voicing):
                    notes.append(Note(t0 + h + 0.012 * k, 0.45 if density > 0.5 else 1.9, p, _vel(rng, base_vel)))
        elif style == "stabs":
            hits = [0.5, 1.5, 2.5, 3.5] if density > 0.5 else [1, 3]
            for h in hits:
                for p in voicing:
                    notes.append(Note(t0 + h, 0.3, p, _vel(rng, base_vel)))
        elif style == "comp":
            hits = [(0, 1.4), (1.5, 0.9), (2.5, 1.4)] if density > 0.4 else [(0, 1.9), (2, 1.9)]
            for h, d in hits:
                for p in voicing:
                    notes.append(Note(t0 + h, d, p, _vel(rng, base_vel)))
        else:  # arp
            seq = voicing + voicing[-2:0:-1]
            step = 0.25 if density > 0.7 else 0.5
            for k in range(int(4 / step)):
                notes.append(Note(t0 + k * step, step * 0.95, seq[k % len(seq)], _vel(rng, base_vel)))
    return notes


def make_melody(rng, bars, chords, scale_pcs, key, base_vel, active, low, high) -> list[Note]:
    notes: list[Note] = []
    scale_pitches = [p for p in range(low, high + 1) if (p - key) % 12 in scale_pcs]
    cur = scale_pitches[len(scale_pitches) // 2]
    phrase_len = int(rng.choice([1, 2, 2, 4]))
    rhythm_pool = [
        [1, 1, 1, 1], [0.5, 0.5, 1, 2], [1.5, 0.5, 1, 1], [2, 1, 1], [0.5, 0.5, 0.5, 0.5, 2], [1, 0.5, 0.5, 2],
        [3, 1], [4], [0.75, 0.75, 0.5, 2], [0.5, 1, 0.5, 2],
    ]
    motif = [rhythm_pool[int(rng.integers(len(rhythm_pool)))] for _ in range(2)]
    for bar in range(bars):
        if not active[bar]:
            continue
        t0 = 4.0 * bar
        # A rest at the end of each phrase.
        if bar % phrase_len == phrase_len - 1 and phrase_len > 1 and rng.random() < 0.7:
            rhythm = [2.0]
            rest_after = True
        else:
            rhythm = motif[bar % 2] if rng.random() < 0.7 else rhythm_pool[int(rng.integers(len(rhythm_pool)))]
            rest_after = False
        chord_pcs = {p % 12 for p in chords[bar]}
        pos = 0.0
        for k, dur in enumerate(rhythm):
            strong = pos in (0.0, 2.0)
            cands = [p for p in scale_pitches if abs(p - cur) <= 5]
            if strong:
                ct = [p for p in cands if p % 12 in chord_pcs]
                cands = ct or cands
            weights = np.array([1.0 / (1 + abs(p - cur)) for p in cands])
            cur = int(rng.choice(cands, p=weights / weights.sum()))
            legato = 0.95 if rng.random() < 0.8 else 0.6
            notes.append(Note(t0 + pos, dur * legato, cur, _vel(rng, base_vel + (6 if strong else 0), 6)))
            pos += dur
            if rest_after and pos >= 2.0:
                break
    return notes


def make_pop_song(rng: np.random.Generator, seconds: float) -> Song:
    """Generate a pop arrangement covering at least ``seconds``.

    Args:
        rng: the track's generator.
        seconds: length to cover.

    Returns:
        the song; ``parts`` has one entry per stem in :data:`POP_STEMS`.
    """
    style = str(rng.choice(list(STYLES)))
    lo, hi = STYLES[style]["bpm"]
    bpm = float(int(rng.integers(max(80, lo), min(160, hi) + 1)))
    key = int(rng.integers(12))
    mode = "major" if rng.random() < 0.6 else "minor"
    scale = MAJOR if mode == "major" else MINOR
    bars = int(math.ceil(seconds * bpm / 60.0 / 4.0)) + 1
    progs = PROGRESSIONS_MAJOR if mode == "major" else PROGRESSIONS_MINOR
    prog = progs[int(rng.integers(len(progs)))]
    bars_per_chord = 2 if (bpm < 100 and rng.random() < 0.3) else 1
    # Sections: the progression may change every 8 bars.
    chords = []
    for bar in range(bars):
        if bar % 8 == 0 and bar and rng.random() < 0.4:
            prog = progs[int(rng.integers(len(progs)))]
        deg = prog[(bar // bars_per_chord) % len(prog)]
        chords.append(_chord_pitches(key, scale, deg, 4 if rng.random() < 0.15 else 3))
    density = float(rng.uniform(0.1, 1.0))
    drop = float(rng.uniform(0.0, 0.3))

    drum_active = _active_bars(rng, bars, drop * 0.6)
    bass_active = _active_bars(rng, bars, drop)
    other_active = _active_bars(rng, bars, drop * 0.7)
    vocal_active = _active_bars(rng, bars, drop + 0.1)
    heard = max(1, int(math.ceil(seconds * bpm / 60.0 / 4.0)))  # bars inside the rendered window
    for mask in (drum_active, bass_active, other_active, vocal_active):
        if not mask[:heard].any():  # short tracks: a drop-out must not silence a whole stem
            mask[:heard] = True

    drums = make_drums(rng, bars, style, density, float(rng.uniform(70, 115)), drum_active)
    bass = make_bass(rng, bars, chords, density, float(rng.uniform(70, 115)), bass_active, STYLES[style]["kick"])
    n_layers = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    families = list(rng.choice(list(OTHER_FAMILIES), size=n_layers, replace=False))
    other_parts = []
    for k, fam in enumerate(families):
        act = other_active if k == 0 else _active_bars(rng, bars, drop + 0.2)
        notes = make_chords(rng, bars, chords, density, float(rng.uniform(55, 110)), act, fam)
        other_parts.append((fam, notes))
    register = rng.choice(["low", "high"])
    low, high = (53, 74) if register == "low" else (60, 81)
    melody = make_melody(rng, bars, chords, set(scale), key, float(rng.uniform(75, 120)), vocal_active, low, high)

    def cc(pan_lo: int, pan_hi: int, rev_hi: int = 70, cho_hi: int = 40) -> dict[int, int]:
        return {
            7: 100,
            10: int(rng.integers(pan_lo, pan_hi + 1)),
            91: int(rng.integers(0, rev_hi + 1)),
            93: int(rng.integers(0, cho_hi + 1)),
        }

    vocal_program = int(rng.choice(VOCAL_PROGRAMS))
    vocal_parts = [Part(melody, program=vocal_program, channel=0, controllers=cc(52, 76, 80, 40))]
    if rng.random() < 0.25:  # a backing "ooh" a third/sixth below, on another channel
        harmony = [Note(n.start, n.duration, _fit(n.pitch - int(rng.choice([3, 4, 8, 9])), low - 5, high), max(1, n.velocity - 20)) for n in melody]
        vocal_parts.append(Part(harmony, program=int(rng.choice((52, 53))), channel=1, controllers=cc(30, 98, 80, 40)))
    bass_program = int(rng.choice(BASS_PROGRAMS))
    parts = {
        "vocals": vocal_parts,
        "drums": [Part(drums, program=int(rng.choice([0, 0, 0, 8, 16, 24, 25, 32])), channel=9, controllers=cc(54, 74, 40, 10))],
        "bass": [Part(bass, program=bass_program, channel=2, controllers=cc(56, 72, 25, 20))],
        "other": [
            Part(notes, program=int(rng.choice(OTHER_FAMILIES[fam])), channel=3 + k, controllers=cc(14, 114, 80, 60))
            for k, (fam, notes) in enumerate(other_parts)
        ],
    }
    info = {
        "bpm": bpm,
        "key": key,
        "mode": mode,
        "style": style,
        "density": round(density, 3),
        "programs": {s: [p.program for p in ps] for s, ps in parts.items()},
        "other_families": [str(f) for f in families],
    }
    return Song(bpm=bpm, key=key, mode=mode, style=style, bars=bars, parts=parts, info=info)
