"""Multi-stem datasets read from MUSDB-layout folders, streamed in blocks (numpy only).

Layout (MUSDB18-HQ and everything ``stemcli synth`` writes)::

    root/<split>/<track>/mixture.wav
    root/<split>/<track>/<stem>.wav      (or .flac)

Nothing here loads a whole dataset: every example is a block read of ``seconds`` of audio
from each stem file via ``soundfile``. There is no torch import; a trainer wraps
:meth:`StemDataset.sample` in whatever loader it likes.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

__all__ = [
    "AUDIO_EXTENSIONS",
    "Track",
    "list_tracks",
    "StemDataset",
    "EnsembleDataset",
    "powerset_examples",
    "instrument_of",
]

AUDIO_EXTENSIONS = (".wav", ".flac")
MIXTURE = "mixture"
# An excerpt whose mean square is below this (-80 dBFS) counts as silent.
SILENCE_POWER = 1e-8


@dataclass
class Track:
    """One track folder: a mixture (optional) and its stems, all at one rate and channel count.

    Attributes:
        name: folder name of the track.
        path: the track folder.
        sources: stem names present (without ``mixture``), in the requested order.
        frames: length in samples (the shortest stem, when stems differ by a few samples).
        sample_rate: sample rate of every file.
        channels: channel count of every file.
    """

    name: str
    path: Path
    sources: tuple[str, ...]
    frames: int
    sample_rate: int
    channels: int
    files: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)

    def file(self, stem: str) -> Path:
        """Path of ``stem``'s audio file (``stem`` may be ``"mixture"``)."""
        if stem in self.files:
            return self.files[stem]
        for ext in AUDIO_EXTENSIONS:
            candidate = self.path / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
        raise ValueError(f"{self.path}: no {stem}.wav or {stem}.flac in this track folder")

    def read(self, stem: str, start: int = 0, frames: int = -1) -> np.ndarray:
        """Block-read ``frames`` samples of one stem from ``start``.

        Reading past the end zero-pads, so the result always has ``frames`` samples when
        ``frames >= 0``. ``stem="mixture"`` reads ``mixture.wav``, or sums the stems when the
        track has no mixture file.

        Args:
            stem: a name in :attr:`sources`, or ``"mixture"``.
            start: first sample.
            frames: number of samples, ``-1`` for everything from ``start``.

        Returns:
            audio: [shape=(channels, frames)] float32.
        """
        if start < 0:
            raise ValueError(f"{self.path}: start must be >= 0, got {start}")
        if stem == MIXTURE and MIXTURE not in self.files and not _has_file(self.path, MIXTURE):
            parts = [self.read(s, start, frames) for s in self.sources]
            return np.sum(parts, axis=0, dtype=np.float32)
        path = self.file(stem)
        want = self.frames - start if frames < 0 else frames
        want = max(want, 0)
        data, _ = sf.read(str(path), start=min(start, self.frames), frames=want, dtype="float32", always_2d=True)
        data = data.T
        if data.shape[1] < want:
            data = np.pad(data, ((0, 0), (0, want - data.shape[1])))
        return np.ascontiguousarray(data, dtype=np.float32)


def _has_file(folder: Path, stem: str) -> bool:
    return any((folder / f"{stem}{ext}").is_file() for ext in AUDIO_EXTENSIONS)


def _track_from_folder(folder: Path, sources: Sequence[str] | None) -> Track:
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS and not f.name.startswith("."):
            if f.stem in files:
                raise ValueError(f"{folder}: both {files[f.stem].name} and {f.name} present; keep one")
            files[f.stem] = f
    present = tuple(s for s in files if s != MIXTURE)
    if sources is None:
        names = present
    else:
        missing = [s for s in sources if s not in files]
        if missing:
            raise ValueError(
                f"{folder}: missing stem file(s) {', '.join(missing)} "
                f"(found: {', '.join(sorted(files)) or 'no .wav/.flac files'})"
            )
        names = tuple(sources)
    if not names:
        raise ValueError(f"{folder}: no stem files (.wav/.flac other than mixture) in this track folder")
    infos = {}
    for name in names + ((MIXTURE,) if MIXTURE in files else ()):
        try:
            infos[name] = sf.info(str(files[name]))
        except RuntimeError as exc:  # soundfile raises LibsndfileError(RuntimeError)
            raise ValueError(f"{files[name]}: cannot read audio file ({exc})") from exc
    rates = {i.samplerate for i in infos.values()}
    chans = {i.channels for i in infos.values()}
    if len(rates) != 1:
        raise ValueError(f"{folder}: stems have different sample rates {sorted(rates)}")
    if len(chans) != 1:
        raise ValueError(f"{folder}: stems have different channel counts {sorted(chans)}")
    frames = min(i.frames for i in infos.values())
    return Track(
        name=folder.name,
        path=folder,
        sources=names,
        frames=int(frames),
        sample_rate=int(rates.pop()),
        channels=int(chans.pop()),
        files={n: files[n] for n in infos},
    )


def list_tracks(
    root: str | Path, split: str | None = "train", sources: Sequence[str] | None = None
) -> list[Track]:
    """List the track folders of a MUSDB-layout dataset.

    Args:
        root: dataset folder holding ``train/``, ``valid/``, ``test/`` (or the track folders
            themselves when ``split`` is None).
        split: sub-folder to read, or None.
        sources: stems every track must have; None takes every non-mixture audio file present.

    Returns:
        tracks sorted by name.

    Raises:
        ValueError: the folder is missing or empty, or a track lacks a requested stem or mixes
            sample rates / channel counts.
    """
    root = Path(root)
    folder = root if split is None else root / split
    if not folder.is_dir():
        raise ValueError(f"{folder}: dataset folder does not exist")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        hint = "" if split is None else f" (expected {folder}/<track>/mixture.wav, <stem>.wav ...)"
        raise ValueError(f"{folder}: no track folders{hint}")
    return [_track_from_folder(d, sources) for d in subdirs]


def powerset_examples(parts: Sequence[str], target: str) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``parts`` that contains ``target`` (a solo maps onto itself).

    Subsets keep the order of ``parts`` and are listed by size, then by position.

    Args:
        parts: distinct part names of one piece.
        target: the part to extract.

    Returns:
        ``2 ** (len(parts) - 1)`` tuples.
    """
    parts = tuple(parts)
    if len(set(parts)) != len(parts):
        raise ValueError(f"part names must be distinct, got {parts}")
    if target not in parts:
        raise ValueError(f"target {target!r} is not one of the parts {parts}")
    others = [p for p in parts if p != target]
    out = []
    for k in range(len(others) + 1):
        for combo in itertools.combinations(others, k):
            chosen = set(combo) | {target}
            out.append(tuple(p for p in parts if p in chosen))
    return out


def instrument_of(stem: str) -> str:
    """Instrument name of an ensemble stem: ``violin2`` -> ``violin``, ``double_bass`` -> itself."""
    return re.sub(r"\d+$", "", stem)


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[0] == channels:
        return x
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    if channels == 1:
        return x.mean(axis=0, keepdims=True)
    return x[:channels] if x.shape[0] > channels else np.concatenate([x, x[-1:].repeat(channels - x.shape[0], 0)])


def _silent(x: np.ndarray) -> bool:
    return float(np.mean(np.square(x, dtype=np.float64))) < SILENCE_POWER


class StemDataset:
    """Random excerpts of a MUSDB-layout dataset with on-the-fly augmentation.

    ``sample(rng)`` returns ``(mix, stems)`` with ``mix == stems.sum(0)`` (the mixture file is
    not read: augmentation changes the mix, so it is always the sum of the returned stems).

    Augmentation (``augment=True``): an independent random excerpt per stem; each stem taken
    from a random other track with probability ``remix_prob``; random gain per stem in
    ``gain_range``; random channel swap and polarity per stem. Silent excerpts of a stem are
    re-drawn a few times and then accepted; an all-silent mix is never returned if any
    non-silent excerpt can be found.  With probability ``coherent_prob`` an example is instead
    one excerpt of one track, every stem read at the same start (the song's own alignment of
    beats, chords and notes, as in a real mixture), still with the random gain, channel swap
    and polarity per stem; a stem silent there stays silent (an example silent in every stem is
    drawn again, coherence included, so the share of coherent examples returned is ``coherent_prob``
    only up to such rare re-draws).

    Args:
        root: dataset folder (see :func:`list_tracks`).
        split: sub-folder, or None.
        sources: stems to return, in this order.
        seconds: excerpt length.
        sample_rate: required sample rate of every track (no resampling on the fly).
        augment: apply the augmentations above.
        remix_prob: probability that a stem comes from a different random track.
        coherent_prob: probability that an augmented example keeps its track's alignment (all
            stems from one track and one start); 0 (the default) draws exactly what it drew
            before this option, from the same random numbers.
        seed: seed for :meth:`__getitem__`-style deterministic draws (``example(i)``).
        channels: output channel count (mono files are duplicated).
        gain_range: (low, high) linear gain per stem.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        sources: Sequence[str] = ("vocals", "drums", "bass", "other"),
        seconds: float = 6.0,
        sample_rate: int = 44100,
        augment: bool = True,
        remix_prob: float = 0.5,
        seed: int = 0,
        channels: int = 2,
        gain_range: tuple[float, float] = (0.25, 1.25),
        coherent_prob: float = 0.0,
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if not 0.0 <= remix_prob <= 1.0:
            raise ValueError(f"remix_prob must be in [0, 1], got {remix_prob}")
        if not 0.0 <= coherent_prob <= 1.0:
            raise ValueError(f"coherent_prob must be in [0, 1], got {coherent_prob}")
        self.root = Path(root)
        self.split = split
        self.sources = tuple(sources)
        self.seconds = float(seconds)
        self.sample_rate = int(sample_rate)
        self.frames = int(round(self.seconds * self.sample_rate))
        self.augment = augment
        self.remix_prob = float(remix_prob)
        self.coherent_prob = float(coherent_prob)
        self.seed = seed
        self.channels = channels
        self.gain_range = gain_range
        self.tracks = list_tracks(self.root, split, self.sources)
        for t in self.tracks:
            if t.sample_rate != self.sample_rate:
                raise ValueError(
                    f"{t.path}: sample rate {t.sample_rate} Hz, dataset expects {self.sample_rate} Hz "
                    "(resample the files first)"
                )

    def __len__(self) -> int:
        return len(self.tracks)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """A deterministic random example: ``sample`` with a generator seeded by (seed, index)."""
        return self.sample(np.random.default_rng([self.seed, index]))

    def _start(self, track: Track, rng: np.random.Generator) -> int:
        return int(rng.integers(0, track.frames - self.frames + 1)) if track.frames > self.frames else 0

    def _read(self, track: Track, stem: str, start: int) -> np.ndarray:
        return _to_channels(track.read(stem, start, self.frames), self.channels)

    def _draw_stem(self, stem: str, anchor: Track, rng: np.random.Generator, tries: int = 4) -> np.ndarray:
        audio = None
        for _ in range(tries):
            track = anchor
            if self.remix_prob > 0 and rng.random() < self.remix_prob:
                track = self.tracks[int(rng.integers(len(self.tracks)))]
            audio = self._read(track, stem, self._start(track, rng))
            if not _silent(audio):
                break
        assert audio is not None
        return audio

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw one training example.

        Args:
            rng: the random generator (one per worker; pass seeded generators for repeatability).

        Returns:
            mix: [shape=(channels, time)] float32.
            stems: [shape=(len(sources), channels, time)] float32, ``mix == stems.sum(0)``.
        """
        stems = np.zeros((len(self.sources), self.channels, self.frames), np.float32)
        for _attempt in range(8):
            anchor = self.tracks[int(rng.integers(len(self.tracks)))]
            if self.augment:
                # the draw for coherence only when the option is on: runs without it keep their numbers
                coherent = self.coherent_prob > 0 and rng.random() < self.coherent_prob
                start = self._start(anchor, rng) if coherent else 0
                for i, stem in enumerate(self.sources):
                    x = self._read(anchor, stem, start) if coherent else self._draw_stem(stem, anchor, rng)
                    gain = rng.uniform(*self.gain_range)
                    if rng.random() < 0.5:
                        gain = -gain
                    if self.channels > 1 and rng.random() < 0.5:
                        x = x[::-1]
                    stems[i] = x * np.float32(gain)
            else:
                start = self._start(anchor, rng)
                for i, stem in enumerate(self.sources):
                    stems[i] = self._read(anchor, stem, start)
            if not _silent(stems):
                break
        mix = stems.sum(axis=0, dtype=np.float32)
        return mix, stems

    def fixed_excerpts(self, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Deterministic, unaugmented excerpts for validation: track ``i % len``, seeded start.

        Args:
            n: number of excerpts.
            seed: picks the start of each excerpt (same seed -> same excerpts).

        Returns:
            ``n`` pairs ``(mix [channels, time], stems [sources, channels, time])``.
        """
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            track = self.tracks[i % len(self.tracks)]
            stems = np.zeros((len(self.sources), self.channels, self.frames), np.float32)
            for _attempt in range(4):
                start = self._start(track, rng)
                for k, stem in enumerate(self.sources):
                    stems[k] = self._read(track, stem, start)
                if not _silent(stems):
                    break
            out.append((stems.sum(axis=0, dtype=np.float32), stems.copy()))
        return out


class EnsembleDataset:
    """Powerset examples for one target instrument out of multi-part pieces.

    For every track holding the target instrument, every subset of its instruments that
    contains the target is one example (``powerset_examples``). Stems of one instrument
    (``violin``, ``violin2``) are grouped: the target is the sum of all its parts. Parts of a
    piece stay time-aligned (same excerpt start).

    ``sample(rng)`` returns ``(mix, stems)`` with ``stems`` of shape ``(1, channels, time)``
    holding the target and ``mix == stems.sum(0) + the other chosen parts``.

    Args:
        root: dataset folder (see :func:`list_tracks`).
        target: instrument to extract (e.g. ``"violin"``).
        split: sub-folder, or None.
        seconds: excerpt length.
        sample_rate: required sample rate.
        augment: random gain per part, channel swap and polarity of the whole example.
        seed: seed for ``example(i)``.
        channels: output channel count.
        gain_range: (low, high) linear gain per part.
    """

    def __init__(
        self,
        root: str | Path,
        target: str,
        split: str | None = "train",
        seconds: float = 6.0,
        sample_rate: int = 44100,
        augment: bool = True,
        seed: int = 0,
        channels: int = 2,
        gain_range: tuple[float, float] = (0.5, 1.25),
    ) -> None:
        self.root = Path(root)
        self.target = target
        self.sources = (target,)
        self.seconds = float(seconds)
        self.sample_rate = int(sample_rate)
        self.frames = int(round(self.seconds * self.sample_rate))
        self.augment = augment
        self.seed = seed
        self.channels = channels
        self.gain_range = gain_range
        tracks = list_tracks(self.root, split, None)
        self.tracks: list[Track] = []
        self.groups: list[dict[str, tuple[str, ...]]] = []
        self.examples: list[tuple[int, tuple[str, ...]]] = []
        for t in tracks:
            groups: dict[str, list[str]] = {}
            for s in t.sources:
                groups.setdefault(instrument_of(s), []).append(s)
            if target not in groups:
                continue
            if t.sample_rate != self.sample_rate:
                raise ValueError(f"{t.path}: sample rate {t.sample_rate} Hz, dataset expects {self.sample_rate} Hz")
            k = len(self.tracks)
            self.tracks.append(t)
            self.groups.append({g: tuple(v) for g, v in groups.items()})
            for subset in powerset_examples(list(groups), target):
                self.examples.append((k, subset))
        if not self.examples:
            where = self.root if split is None else self.root / split
            raise ValueError(f"{where}: no track has a {target!r} stem")

    def __len__(self) -> int:
        """Number of (track, subset) examples."""
        return len(self.examples)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``index`` (a fixed track and subset) with a seeded random excerpt."""
        return self._render(index, np.random.default_rng([self.seed, index]))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random example: random (track, subset), random excerpt.

        Returns:
            mix: [shape=(channels, time)] float32.
            stems: [shape=(1, channels, time)] float32, the target.
        """
        return self._render(int(rng.integers(len(self.examples))), rng)

    def _render(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k, subset = self.examples[index]
        track, groups = self.tracks[k], self.groups[k]
        for _attempt in range(4):
            start = int(rng.integers(0, track.frames - self.frames + 1)) if track.frames > self.frames else 0
            parts = {}
            for g in subset:
                x = np.zeros((self.channels, self.frames), np.float32)
                for stem in groups[g]:
                    x += _to_channels(track.read(stem, start, self.frames), self.channels)
                if self.augment:
                    x *= np.float32(rng.uniform(*self.gain_range))
                parts[g] = x
            if not _silent(parts[self.target]):
                break
        target = parts[self.target]
        mix = np.sum(list(parts.values()), axis=0, dtype=np.float32)
        if self.augment:
            sign = np.float32(-1.0 if rng.random() < 0.5 else 1.0)
            swap = self.channels > 1 and rng.random() < 0.5
            target, mix = target * sign, mix * sign
            if swap:
                target, mix = target[::-1], mix[::-1]
        return np.ascontiguousarray(mix), np.ascontiguousarray(target[None])
