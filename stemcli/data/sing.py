"""Sung vocals: ``espeak-ng`` lyrics re-pitched to a melody by LPC source-filter resynthesis.

espeak-ng speaks a lyric line; an LPC analysis (order 22, 5 ms hop) gives its spectral envelope
(vowels, consonants) frame by frame. The envelope track is stretched over each melody phrase
and re-excited with a band-limited glottal-like source at the melody's pitch (with vibrato),
plus noise where the speech was unvoiced. The result has speech formants and the exact
melody pitch: closer to a voice than a GM "choir aahs" patch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import fftconvolve, lfilter, resample_poly

from stemcli.data.midi import Note
from stemcli.data.speech import ACCENTS, VARIANTS_F, VARIANTS_M, speak

LYRIC_WORDS = (
    "oh", "love", "baby", "night", "tonight", "heart", "away", "forever", "yeah", "dream", "fire", "light", "home",
    "feel", "hold", "me", "you", "never", "again", "dance", "run", "sky", "alone", "together", "maybe", "shine",
    "remember", "falling", "higher", "stay", "tell", "why", "time", "world", "gone", "free", "wild", "so", "la",
)
ESPEAK_RATE = 22050
HOP = 110  # 5 ms at 22050 Hz
WIN = 551  # 25 ms
ORDER = 22
BANDWIDTH = 0.985  # LPC bandwidth expansion factor


def lyric_line(rng: np.random.Generator, syllables: int) -> str:
    """Random lyric words, roughly ``syllables`` long."""
    words = []
    count = 0
    while count < max(1, syllables):
        w = str(LYRIC_WORDS[int(rng.integers(len(LYRIC_WORDS)))])
        words.append(w)
        count += max(1, sum(c in "aeiouy" for c in w) - (1 if w.endswith("e") and len(w) > 3 else 0))
    return " ".join(words)


def lpc_frames(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame-wise LPC of ``x`` (22050 Hz mono).

    Returns:
        a: [shape=(frames, ORDER + 1)] filter denominators (bandwidth-expanded, so formant peaks
        are not razor sharp), gain: [shape=(frames,)] residual RMS, noisy: [shape=(frames,)] bool,
        True where the frame is unvoiced (high zero-crossing rate), level: [shape=(frames,)] RMS
        of the speech frame.
    """
    raw = x
    x = np.append(x[0], x[1:] - 0.94 * x[:-1])  # pre-emphasis: LPC models the envelope, not the tilt
    n = max(1, 1 + (x.size - WIN) // HOP)
    win = np.hanning(WIN)
    a = np.zeros((n, ORDER + 1))
    gain = np.zeros(n)
    noisy = np.zeros(n, bool)
    level = np.zeros(n)
    expand = BANDWIDTH ** np.arange(ORDER + 1)
    for i in range(n):
        fr = x[i * HOP : i * HOP + WIN]
        if fr.size < WIN:
            fr = np.pad(fr, (0, WIN - fr.size))
        fw = fr * win
        r = np.correlate(fw, fw, "full")[WIN - 1 : WIN + ORDER]
        if r[0] < 1e-9:
            a[i, 0] = 1.0
            continue
        r[0] *= 1.0 + 1e-4  # white-noise correction keeps the filter stable
        coef = solve_toeplitz(r[:ORDER], r[1 : ORDER + 1])
        a[i] = np.concatenate([[1.0], -coef]) * expand
        gain[i] = np.sqrt(max(r[0] - np.dot(coef, r[1 : ORDER + 1]), 1e-12) / WIN)
        rf = raw[i * HOP : i * HOP + WIN]
        zc = np.mean(np.abs(np.diff(np.sign(rf)))) / 2 if rf.size > 1 else 0.0
        noisy[i] = zc > 0.25
        level[i] = np.sqrt(np.mean(rf**2)) if rf.size else 0.0
    return a, gain, noisy, level


def _phrases(notes: Sequence[Note], max_gap: float = 0.3) -> list[list[Note]]:
    out: list[list[Note]] = []
    for n in sorted(notes, key=lambda n: n.start):
        if out and n.start - (out[-1][-1].start + out[-1][-1].duration) <= max_gap:
            out[-1].append(n)
        else:
            out.append([n])
    return out


def sing(
    notes: Sequence[Note],
    bpm: float,
    seconds: float,
    rng: np.random.Generator,
    sample_rate: int = 44100,
) -> tuple[np.ndarray, dict]:
    """Sing ``notes`` with espeak-ng lyrics.

    Args:
        notes: the melody (beats).
        bpm: tempo.
        seconds: output length.
        rng: generator for voice, lyrics, vibrato and breathiness.
        sample_rate: output rate (espeak-ng's 22050 Hz is resampled).

    Returns:
        audio: [shape=(time,)] float32 mono, peak about 0.5; info: voice and lyrics.
    """
    female = rng.random() < 0.5
    voice = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS_F if female else VARIANTS_M)}"
    vib_rate = float(rng.uniform(4.5, 6.5))
    vib_depth = float(rng.uniform(0.05, 0.35))  # semitones
    breath = float(rng.uniform(0.01, 0.08))
    beat = 60.0 / bpm
    total = int(round(seconds * ESPEAK_RATE))
    f0 = np.zeros(total)
    env = np.zeros(total)
    frame_map = np.full(total // HOP + 1, -1, np.int64)
    lyrics = []
    analyses = []
    for phrase in _phrases(notes):
        t0 = phrase[0].start * beat
        t1 = (phrase[-1].start + phrase[-1].duration) * beat
        if t0 >= seconds:
            break
        text = lyric_line(rng, len(phrase))
        speech, rate = speak(text, voice, pitch=50, speed=int(np.clip(len(phrase) / max(t1 - t0, 0.2) * 60 * 1.3, 90, 350)))
        if rate != ESPEAK_RATE:
            speech = resample_poly(speech, ESPEAK_RATE, rate)
        nz = np.flatnonzero(np.abs(speech) > 1e-3)
        if nz.size < WIN:
            continue
        speech = speech[nz[0] : nz[-1] + 1]
        a, gain, noisy, level = lpc_frames(speech.astype(np.float64))
        k = len(analyses)
        analyses.append((a, gain / (gain.max() + 1e-12), noisy, level / (level.max() + 1e-12)))
        lyrics.append(text)
        s0, s1 = int(t0 * ESPEAK_RATE), min(total, int(t1 * ESPEAK_RATE))
        # stretch the analysis frames over the phrase
        f_lo, f_hi = s0 // HOP, max(s0 // HOP + 1, s1 // HOP)
        idx = np.linspace(0, len(gain) - 1, f_hi - f_lo).round().astype(np.int64)
        frame_map[f_lo:f_hi] = k * 1_000_000 + idx
        for n in phrase:
            a_ = int(n.start * beat * ESPEAK_RATE)
            b_ = min(total, int((n.start + n.duration) * beat * ESPEAK_RATE))
            if b_ <= a_:
                continue
            t = np.arange(b_ - a_) / ESPEAK_RATE
            semis = n.pitch - 69 + vib_depth * np.sin(2 * np.pi * vib_rate * t) * np.clip(t / 0.3, 0, 1)
            f0[a_:b_] = 440.0 * 2.0 ** (semis / 12.0)
            att, rel = min(len(t), int(0.02 * ESPEAK_RATE)), min(len(t), int(0.06 * ESPEAK_RATE))
            e = np.ones(len(t))
            e[:att] = np.linspace(0, 1, att)
            e[len(t) - rel :] *= np.linspace(1, 0, rel)
            env[a_:b_] = np.maximum(env[a_:b_], e * (0.6 + 0.4 * n.velocity / 127))
    # source: band-limited sawtooth at f0 (sum of harmonics below Nyquist), cheap via phase + polyBLEP
    phase = np.cumsum(f0 / ESPEAK_RATE) % 1.0
    dt = f0 / ESPEAK_RATE
    saw = 2 * phase - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = (phase < dt) & (dt > 0)
        tt = np.where(m1, phase / np.where(dt > 0, dt, 1), 0)
        saw -= np.where(m1, tt + tt - tt * tt - 1, 0)
        m2 = (phase > 1 - dt) & (dt > 0)
        tt = np.where(m2, (phase - 1) / np.where(dt > 0, dt, 1), 0)
        saw -= np.where(m2, tt * tt + tt + tt + 1, 0)
    saw = lfilter([1.0], [1.0, -0.7], saw) * 0.3  # glottal roll-off
    noise = rng.standard_normal(total)
    out = np.zeros(total)
    n_frames = total // HOP + 1
    target = np.zeros(n_frames)
    zi = np.zeros(ORDER)
    for f in range(n_frames):
        lo, hi = f * HOP, min(total, (f + 1) * HOP)
        if lo >= hi:
            break
        code = frame_map[f]
        if code < 0 or not env[lo:hi].any():
            zi *= 0.0
            continue
        a, gain, noisy, level = analyses[code // 1_000_000]
        j = code % 1_000_000
        exc = noise[lo:hi] * (0.3 if noisy[j] else breath) + (0.0 if noisy[j] else 1.0) * saw[lo:hi]
        y, zi = lfilter([gain[j]], a[j], exc * env[lo:hi], zi=zi)
        out[lo:hi] = y
        target[f] = level[j] * float(np.mean(env[lo:hi]))
    out = lfilter([1.0], [1.0, -0.94], out)  # undo the pre-emphasis
    # Follow the speech loudness, not the filter's response at this pitch: a harmonic that lands
    # on a formant peak would otherwise be 20 dB louder than its neighbours.
    got = np.sqrt(np.mean(np.pad(out, (0, n_frames * HOP - total)).reshape(n_frames, HOP) ** 2, axis=1))
    ratio = np.where((got > 1e-9) & (target > 0), target / np.maximum(got, 1e-9), 0.0)
    if (ratio > 0).any():  # near-silent output frames (onsets) must not be blown up
        ratio = np.minimum(ratio, 3.0 * float(np.median(ratio[ratio > 0])))
    ratio = np.convolve(ratio, np.ones(5) / 5, mode="same")  # 25 ms smoothing
    out *= np.interp(np.arange(total), np.arange(n_frames) * HOP + HOP / 2, ratio)
    out = resample_poly(out, sample_rate, ESPEAK_RATE) if sample_rate != ESPEAK_RATE else out
    n_out = int(round(seconds * sample_rate))
    out = np.pad(out, (0, max(0, n_out - out.size)))[:n_out]
    peak = np.abs(out).max()
    if peak > 0:
        out = out * (0.5 / peak)
    return out.astype(np.float32), {"voice": voice, "lyrics": lyrics}


def simple_reverb(x: np.ndarray, rng: np.random.Generator, sample_rate: int = 44100) -> np.ndarray:
    """Stereo room: mono ``x`` [time] -> [2, time] with a decorrelated exponential-noise tail."""
    rt60 = float(rng.uniform(0.3, 1.8))
    wet = float(rng.uniform(0.05, 0.35))
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    decay = np.exp(-6.9 * t / rt60)
    out = np.empty((2, x.size), np.float32)
    pan = float(rng.uniform(0.4, 0.6))
    gains = (np.cos(pan * np.pi / 2) * np.sqrt(2), np.sin(pan * np.pi / 2) * np.sqrt(2))
    for c in range(2):
        ir = rng.standard_normal(n) * decay
        ir /= np.sqrt(np.sum(ir**2)) + 1e-12
        tail = fftconvolve(x, ir)[: x.size]
        out[c] = gains[c] * ((1 - wet) * x + wet * tail)
    return out
