"""Render MIDI parts to audio with the ``fluidsynth`` command line (stereo, unnormalised, float).

Several stems are rendered in one ``fluidsynth`` call (the SoundFont is loaded once): stem
``k`` is placed at ``k * (seconds + gap)`` in one MIDI file, each stem on its own channels,
and the output is cut back into stems. The gap lets reverb and release tails die out.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from stemcli.data.midi import Note, Part, write_smf

SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",
)
GAP_SECONDS = 4.0
FADE_SECONDS = 0.01


def fluidsynth_binary() -> str:
    """Path of the ``fluidsynth`` binary.

    Raises:
        RuntimeError: it is not installed (Debian: ``apt-get install fluidsynth``).
    """
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RuntimeError("fluidsynth not found on PATH (Debian/Ubuntu: apt-get install fluidsynth)")
    return exe


def available_soundfonts(extra: str | Path | None = None) -> list[str]:
    """SoundFonts to draw from: ``extra`` alone if given, else the installed Debian ones.

    Raises:
        ValueError: ``extra`` does not exist, or no SoundFont is installed.
    """
    if extra is not None:
        p = Path(extra)
        if not p.is_file():
            raise ValueError(f"{p}: SoundFont file does not exist")
        return [str(p)]
    fonts = [f for f in SOUNDFONTS if Path(f).is_file()]
    if not fonts:
        raise ValueError(
            "no SoundFont found (expected one of " + ", ".join(SOUNDFONTS) + "); install fluid-soundfont-gm "
            "or pass --soundfont PATH"
        )
    return fonts


def _clip_part(part: Part, end: float, offset: float) -> Part:
    notes = [
        Note(n.start + offset, min(n.duration, end - n.start), n.pitch, n.velocity)
        for n in part.notes
        if n.start < end and n.duration > 0
    ]
    return Part(notes=notes, program=part.program, channel=part.channel, controllers=dict(part.controllers), bank=part.bank)


def render_stems(
    stems: dict[str, list[Part]],
    bpm: float,
    seconds: float,
    soundfont: str | Path,
    sample_rate: int = 44100,
    gain: float = 0.4,
    reverb: tuple[float, float, float] | None = (0.3, 0.3, 0.8),
    chorus: bool = True,
    workdir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Render each stem's parts with one SoundFont.

    Args:
        stems: stem name -> parts; channels must not repeat across stems.
        bpm: tempo of the note times.
        seconds: output length of each stem (notes are cut there; a 10 ms fade ends each stem).
        soundfont: .sf2/.sf3 file.
        sample_rate: output rate.
        gain: fluidsynth master gain.
        reverb: (room size, damping, level) of the global reverb, or None to turn reverb off.
        chorus: global chorus on/off (per-part amount is CC93).
        workdir: folder for the temporary MIDI/WAV files (a fresh temp folder if None).

    Returns:
        stem name -> [shape=(2, round(seconds * sample_rate))] float32.
    """
    exe = fluidsynth_binary()
    frames = int(round(seconds * sample_rate))
    beat = 60.0 / bpm
    window_beats = seconds / beat
    seg_beats = math.ceil((seconds + GAP_SECONDS) / beat)
    names = list(stems)
    midi_parts: list[Part] = []
    used: set[int] = set()
    for k, name in enumerate(names):
        for part in stems[name]:
            if part.channel in used:
                raise ValueError(f"channel {part.channel} used by two parts (stem {name})")
            used.add(part.channel)
            midi_parts.append(_clip_part(part, window_beats, k * seg_beats))
    end_beats = len(names) * seg_beats
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        mid = write_smf(Path(tmp) / "song.mid", midi_parts, bpm, end_beats)
        wav = Path(tmp) / "out.wav"
        cmd = [exe, "-ni", "-q", "-g", f"{gain:.4f}", "-r", str(sample_rate), "-T", "wav", "-O", "float"]
        # dynamic sample loading reads only the samples the song uses (the .sf3 loads ~10x faster;
        # the audio is identical, measured).
        cmd += ["-o", "synth.cpu-cores=1", "-o", "synth.dynamic-sample-loading=1"]
        if reverb is None:
            cmd += ["-R", "0"]
        else:
            room, damp, level = reverb
            cmd += ["-R", "1", "-o", f"synth.reverb.room-size={room:.3f}", "-o", f"synth.reverb.damp={damp:.3f}"]
            cmd += ["-o", f"synth.reverb.level={level:.3f}"]
        cmd += ["-C", "1" if chorus else "0"]
        cmd += ["-F", str(wav), str(soundfont), str(mid)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate} Hz")
    audio = audio.T
    fade = np.linspace(1.0, 0.0, int(FADE_SECONDS * sample_rate), dtype=np.float32)
    out = {}
    for k, name in enumerate(names):
        start = int(round(k * seg_beats * beat * sample_rate))
        seg = audio[:, start : start + frames]
        if seg.shape[1] < frames:
            seg = np.pad(seg, ((0, 0), (0, frames - seg.shape[1])))
        seg = np.ascontiguousarray(seg, dtype=np.float32)
        seg[:, -fade.size :] *= fade
        out[name] = seg
    return out
