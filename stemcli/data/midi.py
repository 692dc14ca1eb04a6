"""A minimal Standard MIDI File (format 0) writer: notes, program, controllers, tempo.

Enough for the renderer; no dependency. Times are in beats (quarter notes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_BEAT = 480


@dataclass(frozen=True)
class Note:
    """One note: ``start`` and ``duration`` in beats, MIDI ``pitch`` 0-127, ``velocity`` 1-127."""

    start: float
    duration: float
    pitch: int
    velocity: int


@dataclass
class Part:
    """One instrument on one MIDI channel (channel 9 is the GM drum kit).

    Attributes:
        notes: the notes.
        program: GM program 0-127 (ignored on the drum channel unless ``bank`` is 128).
        channel: MIDI channel 0-15.
        controllers: initial controller values, e.g. ``{7: 100, 10: 64, 91: 40, 93: 0}``.
        bank: bank select (CC0), 128 selects drum kits on some fonts; None leaves it.
    """

    notes: list[Note] = field(default_factory=list)
    program: int = 0
    channel: int = 0
    controllers: dict[int, int] = field(default_factory=dict)
    bank: int | None = None


def _varlen(value: int) -> bytes:
    buf = [value & 0x7F]
    value >>= 7
    while value:
        buf.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(buf))


def _clip7(v: int) -> int:
    return max(0, min(127, int(v)))


def smf_bytes(parts: list[Part], bpm: float, end_beats: float) -> bytes:
    """Encode ``parts`` as a format-0 SMF.

    Args:
        parts: instruments; several parts may share a file if their channels differ.
        bpm: tempo.
        end_beats: time of the end-of-track event (notes past it are cut).

    Returns:
        the file's bytes.
    """
    events: list[tuple[int, int, bytes]] = []  # (tick, order, data); order puts offs before ons
    tempo = int(round(60_000_000 / bpm))
    events.append((0, 0, b"\xff\x51\x03" + tempo.to_bytes(3, "big")))
    end_tick = int(round(end_beats * TICKS_PER_BEAT))
    for part in parts:
        ch = part.channel & 0x0F
        if part.bank is not None:
            events.append((0, 1, bytes([0xB0 | ch, 0, _clip7(part.bank)])))
        events.append((0, 2, bytes([0xC0 | ch, _clip7(part.program)])))
        for cc, val in sorted(part.controllers.items()):
            events.append((0, 3, bytes([0xB0 | ch, _clip7(cc), _clip7(val)])))
        for n in part.notes:
            on = int(round(n.start * TICKS_PER_BEAT))
            off = int(round((n.start + n.duration) * TICKS_PER_BEAT))
            if on >= end_tick or off <= on:
                continue
            off = min(off, end_tick)
            events.append((on, 5, bytes([0x90 | ch, _clip7(n.pitch), max(1, _clip7(n.velocity))])))
            events.append((off, 4, bytes([0x80 | ch, _clip7(n.pitch), 0])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    track = bytearray()
    last = 0
    for tick, _, data in events:
        track += _varlen(tick - last) + data
        last = tick
    track += _varlen(max(0, end_tick - last)) + b"\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    header += TICKS_PER_BEAT.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def write_smf(path: str | Path, parts: list[Part], bpm: float, end_beats: float) -> Path:
    """Write :func:`smf_bytes` to ``path``."""
    path = Path(path)
    path.write_bytes(smf_bytes(parts, bpm, end_beats))
    return path
