"""The ``speech`` kind: two ``espeak-ng`` talkers at 0 dB, stems ``speaker1`` and ``speaker2``.

Each speaker has its own voice (English accent + variant), pitch and speed, and says
generated sentences separated by short pauses until the track is full. Audio is resampled
from espeak-ng's 22050 Hz to 44.1 kHz, made stereo with a small random pan, and the two
stems are set to the same active-speech level (0 dB speaker ratio).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SPEECH_STEMS = ("speaker1", "speaker2")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS_M = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt4", "david", "john", "paul", "robert")
VARIANTS_F = ("f1", "f2", "f3", "f4", "f5", "anika", "linda", "belinda", "steph", "shelby", "grandma")

_DET = ("the", "a", "every", "one", "that", "my", "our", "her", "his", "this")
_ADJ = ("small", "bright", "old", "quiet", "heavy", "green", "silver", "careful", "sudden", "narrow", "warm", "distant",
        "broken", "gentle", "empty", "tall", "yellow", "strange", "clever", "rough")
_NOUN = ("river", "teacher", "engine", "garden", "letter", "window", "farmer", "island", "machine", "bridge", "painter",
         "kitten", "market", "signal", "mountain", "doctor", "station", "candle", "sailor", "violin", "harbor", "wagon")
_VERB = ("found", "carried", "painted", "followed", "opened", "watched", "repaired", "counted", "crossed", "visited",
         "measured", "dropped", "answered", "borrowed", "described", "collected")
_ADV = ("slowly", "quickly", "again", "at noon", "before dawn", "every morning", "without a word", "in the rain",
        "last winter", "near the gate", "twice", "after lunch")
_OPEN = ("", "", "", "Yesterday ", "Then ", "Of course ", "Suddenly ", "Later that day ", "Honestly, ", "Meanwhile ")


def espeak_binary() -> str:
    """Path of ``espeak-ng``.

    Raises:
        RuntimeError: not installed (Debian/Ubuntu: ``apt-get install espeak-ng``).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found on PATH (Debian/Ubuntu: apt-get install espeak-ng)")
    return exe


def make_sentence(rng: np.random.Generator) -> str:
    """A random grammatical English sentence."""

    def pick(words):
        return str(words[int(rng.integers(len(words)))])

    def phrase(adjective: bool) -> str:
        det, noun = pick(_DET), pick(_NOUN)
        word = pick(_ADJ) if adjective else noun
        if det == "a" and word[0] in "aeiou":
            det = "an"
        return f"{det} {word} {noun}" if adjective else f"{det} {noun}"

    s = f"{pick(_OPEN)}{phrase(True)} {pick(_VERB)} {phrase(rng.random() < 0.5)} {pick(_ADV)}"
    s = s[0].upper() + s[1:]
    return s + ("?" if rng.random() < 0.15 else ".")


def speak(text: str, voice: str, pitch: int, speed: int, workdir: str | None = None) -> tuple[np.ndarray, int]:
    """Synthesize ``text``.

    Returns:
        (mono float32 audio, sample rate).
    """
    exe = espeak_binary()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        wav = Path(tmp) / "s.wav"
        cmd = [exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(wav), text]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-1000:]}")
        audio, rate = sf.read(str(wav), dtype="float32")
    return audio, int(rate)


def _speaker(rng: np.random.Generator, seconds: float, sample_rate: int, avoid: str | None) -> tuple[np.ndarray, dict]:
    female = rng.random() < 0.5
    for _ in range(10):
        voice = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS_F if female else VARIANTS_M)}"
        if voice != avoid:
            break
    pitch = int(rng.integers(25, 80))
    speed = int(rng.integers(130, 190))
    frames = int(round(seconds * sample_rate))
    out = np.zeros(frames, np.float32)
    pos = int(rng.uniform(0.0, min(0.6, 0.1 * seconds)) * sample_rate)
    sentences = []
    while pos < frames:
        text = make_sentence(rng)
        audio, rate = speak(text, voice, pitch, speed)
        if rate != sample_rate:
            from math import gcd

            g = gcd(sample_rate, rate)
            audio = resample_poly(audio, sample_rate // g, rate // g).astype(np.float32)
        n = min(audio.size, frames - pos)
        out[pos : pos + n] = audio[:n]
        sentences.append(text)
        pos += audio.size + int(rng.uniform(0.15, 0.8) * sample_rate)
    return out, {"voice": voice, "pitch": pitch, "speed": speed, "sentences": sentences}


def _active_rms(x: np.ndarray, sample_rate: int) -> float:
    """RMS over 50 ms frames louder than -40 dB below the loudest frame (speech activity)."""
    hop = max(1, sample_rate // 20)
    n = x.size // hop
    if n == 0:
        return float(np.sqrt(np.mean(x**2)))
    p = np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1)
    active = p[p > p.max() * 1e-4]
    return float(np.sqrt(active.mean())) if active.size else 0.0


def render_speech_track(
    rng: np.random.Generator, seconds: float, sample_rate: int = 44100
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Render one two-speaker track at 0 dB speaker-to-speaker ratio.

    Returns:
        stems: ``speaker1, speaker2`` -> [shape=(2, time)] float32.
        info: voices, pitch, speed, sentences.
    """
    a, info_a = _speaker(rng, seconds, sample_rate, None)
    b, info_b = _speaker(rng, seconds, sample_rate, info_a["voice"])
    level = 10 ** (float(rng.uniform(-26.0, -18.0)) / 20.0)
    stems = {}
    for name, x in zip(SPEECH_STEMS, (a, b)):
        r = _active_rms(x, sample_rate)
        x = x * np.float32(level / r) if r > 0 else x
        pan = float(rng.uniform(0.35, 0.65))  # 0 = left, 1 = right; equal-power
        gains = np.array([np.cos(pan * np.pi / 2), np.sin(pan * np.pi / 2)], np.float32) * np.float32(np.sqrt(2))
        stems[name] = np.ascontiguousarray(gains[:, None] * x[None, :], dtype=np.float32)
    peak = float(np.abs(stems["speaker1"] + stems["speaker2"]).max())
    if peak > 0.95:
        stems = {k: (v * np.float32(0.95 / peak)).astype(np.float32) for k, v in stems.items()}
    return stems, {"speakers": [info_a, info_b]}
