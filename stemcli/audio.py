"""Audio I/O: probing, block reading at the separator's rate/layout, atomic stem writing.

Reading never loads a whole file: :class:`FileSource` seeks and reads blocks with soundfile.
When the file's rate differs from the separator's, the file is first streamed through a
resampler into a temporary float32 WAV (disk, not memory), which is then read in blocks.
:class:`StemWriter` writes every stem to a temporary file next to its destination and renames
it only when the whole stem is written, so an interrupted run never leaves a half-written
stem under its final name.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import soundfile as sf

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc", ".w64", ".caf")
FORMATS = {"wav": "WAV", "flac": "FLAC"}
SUBTYPES = {
    ("wav", 16): "PCM_16",
    ("wav", 24): "PCM_24",
    ("wav", 32): "FLOAT",
    ("flac", 16): "PCM_16",
    ("flac", 24): "PCM_24",
}
BLOCK = 1 << 16
RESAMPLE_QUALITY = "HQ"


class AudioError(Exception):
    """A problem with one audio file; the message names the file and the cause."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (libsndfile's are one line), else its type name."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _check_wav_truncation(path: Path) -> None:
    """Raise if a RIFF/WAVE file's data chunk claims more bytes than the file holds."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                have = size - pos - 8
                if clen != 0xFFFFFFFF and clen > have:
                    raise AudioError(
                        f"{path}: truncated WAV: header declares {clen} bytes of audio, file holds {have}"
                    )
                return
            pos += 8 + clen + (clen & 1)


def probe(path: str | Path) -> AudioInfo:
    """Check that ``path`` is a readable, non-empty audio file and describe it.

    Raises:
        AudioError: missing, empty, not audio, truncated, or zero-length.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    try:
        info = sf.info(str(p))
    except Exception as exc:  # libsndfile says why in one line
        raise AudioError(f"{p}: not a readable audio file ({first_line(exc)})") from None
    _check_wav_truncation(p)
    if info.frames <= 0:
        raise AudioError(f"{p}: contains no audio (0 samples)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"{p}: invalid header ({info.samplerate} Hz, {info.channels} channels)")
    return AudioInfo(p, int(info.samplerate), int(info.channels), int(info.frames), str(info.subtype))


def check_finite(block: np.ndarray, where: str, offset: int, sample_rate: int) -> None:
    if not np.isfinite(block).all():
        bad = int(np.argwhere(~np.isfinite(block))[0][-1]) + offset
        raise AudioError(f"{where}: contains NaN or Inf samples (first at {bad / sample_rate:.3f} s)")


def convert_channels(block: np.ndarray, channels: int, where: str = "audio") -> np.ndarray:
    """Map ``(c, n)`` audio to ``channels`` (1 or 2): mono is duplicated, stereo averaged.

    Raises:
        AudioError: for more than two channels (stemcli separates mono or stereo).
    """
    c = block.shape[0]
    if c == channels:
        return block
    if c > 2:
        raise AudioError(
            f"{where}: has {c} channels; stemcli separates mono or stereo audio, downmix it first"
        )
    if c == 1:
        return np.repeat(block, channels, axis=0)
    return block.mean(axis=0, keepdims=True)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``(channels, n)`` float32 audio, keeping time alignment and exact length.

    Returns:
        [shape=(channels, round(n * rate_out / rate_in))] float32.
    """
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    import soxr

    n_out = int(round(audio.shape[-1] * rate_out / rate_in))
    out = soxr.resample(np.ascontiguousarray(audio.T, np.float32), rate_in, rate_out, quality=RESAMPLE_QUALITY)
    return fit_length(np.ascontiguousarray(out.reshape(-1, audio.shape[0]).T), n_out)


class Resampler:
    """Streaming resampler for ``(channels, n)`` blocks (soxr); output is time-aligned.

    Feeding a signal block by block gives the same samples as :func:`resample` on the whole.
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        import soxr

        self._rs = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality=RESAMPLE_QUALITY)
        self.channels = channels

    def process(self, block: np.ndarray | None) -> np.ndarray:
        """Resample the next block; ``None`` flushes the tail. Returns (channels, m) float32."""
        last = block is None
        x = np.zeros((0, self.channels), np.float32) if last else np.ascontiguousarray(block.T, np.float32)
        y = self._rs.resample_chunk(x, last=last)
        return np.ascontiguousarray(y.reshape(-1, self.channels).T)


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the last axis to ``n`` samples."""
    if audio.shape[-1] >= n:
        return audio[..., :n]
    pad = np.zeros(audio.shape[:-1] + (n - audio.shape[-1],), audio.dtype)
    return np.concatenate([audio, pad], axis=-1)


class ArraySource:
    """Block access to an in-memory ``(channels, n)`` array, zero outside ``[0, n)``."""

    def __init__(self, audio: np.ndarray, where: str = "audio"):
        self.audio, self.where = audio, where
        self.frames = audio.shape[-1]

    def read(self, start: int, stop: int) -> np.ndarray:
        return _padded(self.audio, start, stop, self.frames)

    def close(self) -> None:
        pass


def _padded(audio: np.ndarray, start: int, stop: int, frames: int) -> np.ndarray:
    a, b = max(start, 0), min(stop, frames)
    out = np.zeros((audio.shape[0], stop - start), np.float32)
    if b > a:
        out[:, a - start : b - start] = audio[:, a:b]
    return out


class FileSource:
    """Block reads of an audio file at ``sample_rate`` with ``channels`` channels.

    Args:
        info: from :func:`probe`.
        sample_rate: the rate blocks are delivered at (the separator's).
        channels: channels delivered (1 or 2).
        tmpdir: where a resampled copy goes if the rates differ (default: system temp).
    """

    def __init__(self, info: AudioInfo, sample_rate: int, channels: int, tmpdir: str | None = None):
        self.info, self.channels, self.sample_rate = info, channels, sample_rate
        self.where = str(info.path)
        if info.channels > 2:
            convert_channels(np.zeros((info.channels, 1)), channels, self.where)  # raises
        self._tmp: str | None = None
        path = str(info.path)
        if info.sample_rate != sample_rate:
            path = self._tmp = self._resample_to_temp(info, sample_rate, tmpdir)
        self._f = sf.SoundFile(path)
        self.frames = self._f.frames

    def _resample_to_temp(self, info: AudioInfo, rate: int, tmpdir: str | None) -> str:
        fd, tmp = tempfile.mkstemp(suffix=".wav", prefix="stemcli-resampled-", dir=tmpdir)
        os.close(fd)
        n_out = int(round(info.frames * rate / info.sample_rate))
        written = 0
        try:
            r = Resampler(info.sample_rate, rate, info.channels)
            with sf.SoundFile(str(info.path)) as src, sf.SoundFile(
                tmp, "w", rate, info.channels, subtype="FLOAT", format="WAV"
            ) as dst:
                offset = 0
                while True:
                    block = src.read(BLOCK, dtype="float32", always_2d=True).T
                    done = block.shape[1] == 0
                    if not done:
                        check_finite(block, self.where, offset, info.sample_rate)
                        offset += block.shape[1]
                    out = r.process(None if done else np.ascontiguousarray(block))
                    out = out[:, : max(0, n_out - written)]
                    if out.shape[1]:
                        dst.write(out.T)
                        written += out.shape[1]
                    if done:
                        break
                if written < n_out:
                    dst.write(np.zeros((n_out - written, info.channels), np.float32))
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)``, zero-padded outside the file.

        Returns:
            [shape=(channels, stop - start)] float32.
        """
        a, b = max(start, 0), min(stop, self.frames)
        out = np.zeros((self.channels, stop - start), np.float32)
        if b > a:
            self._f.seek(a)
            block = self._f.read(b - a, dtype="float32", always_2d=True).T
            if block.shape[1] != b - a:
                raise AudioError(f"{self.where}: file ended early at sample {a + block.shape[1]} (truncated?)")
            check_finite(block, self.where, a, self.sample_rate)
            out[:, a - start : b - start] = convert_channels(block, self.channels, self.where)
        return out

    def close(self) -> None:
        self._f.close()
        if self._tmp:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_dirs(folder: Path, made: list[Path]) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, appending each folder this call creates
    to ``made`` (outermost first) as it goes, so that a failed write can remove them again,
    also when a deeper ``mkdir`` fails.  A folder another process creates meanwhile is not
    recorded."""
    missing: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        made.append(p)


def temp_path_for(final: Path) -> Path:
    """A hidden temporary name next to ``final`` (same filesystem, so the rename is atomic)."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}{final.suffix}")


SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile's sndfile.h


def no_peak_chunk(f: sf.SoundFile) -> None:
    """Ask libsndfile not to write a float WAV's ``PEAK`` chunk (it holds a timestamp, and the
    peaks of whatever this handle wrote): the same stems then make the same bytes, whether
    written in one pass or in ranges by several processes.  Call before the first write."""
    sf._snd.sf_command(f._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)


class StemWriter:
    """Write stems incrementally to temporary files, then rename them all at :meth:`commit`.

    Blocks arrive at ``rate_in`` with ``channels_in`` channels and are written at
    ``rate_out`` with ``channels_out`` channels, exactly ``frames_out`` samples long.

    Args:
        outputs: stem name -> final path.
        fmt: "wav" or "flac".
        bit_depth: 16, 24 or 32 (32 = float, wav only).
    """

    def __init__(
        self,
        outputs: Mapping[str, Path],
        rate_in: int,
        rate_out: int,
        channels_in: int,
        channels_out: int,
        frames_out: int,
        fmt: str = "wav",
        bit_depth: int = 16,
    ):
        if (fmt, bit_depth) not in SUBTYPES:
            raise ValueError(f"unsupported output: {fmt} at {bit_depth} bit (flac has 16 or 24)")
        self.outputs = {s: Path(p) for s, p in outputs.items()}
        self.rate_in, self.rate_out = rate_in, rate_out
        self.channels_in, self.channels_out = channels_in, channels_out
        self.frames_out = frames_out
        self.written = {s: 0 for s in self.outputs}
        self._files: dict[str, sf.SoundFile] = {}
        self._temps: dict[str, Path] = {}
        self._resamplers: dict[str, Resampler] = {}
        self.fmt = fmt
        self.preallocated = False
        self._made_dirs: list[Path] = []  # folders this writer created, removed again by abort()
        try:
            for stem, final in self.outputs.items():
                tmp = temp_path_for(final)
                self._files[stem] = self._open(tmp, rate_out, channels_out, SUBTYPES[(fmt, bit_depth)], FORMATS[fmt])
                self._temps[stem] = tmp
                no_peak_chunk(self._files[stem])
                if rate_in != rate_out:
                    self._resamplers[stem] = Resampler(rate_in, rate_out, channels_out)
        except (OSError, RuntimeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            self.abort()
            where = getattr(exc, "filename", None) or final
            raise AudioError(f"{where}: cannot write ({getattr(exc, 'strerror', None) or first_line(exc)})") from None

    def _open(self, tmp: Path, rate: int, channels: int, subtype: str, fmt: str) -> sf.SoundFile:
        """Open ``tmp`` for writing, making its folder first.  If the open fails because the
        folder is gone (another writer's :meth:`abort` removed it after it was found, empty,
        and before this file was in it), the folder is made again and the open retried once.
        A failed open leaves no file behind."""
        for attempt in (0, 1):
            make_dirs(tmp.parent, self._made_dirs)
            try:
                return sf.SoundFile(str(tmp), "w", rate, channels, subtype=subtype, format=fmt)
            except (OSError, RuntimeError):
                try:  # libsndfile may have created the file before failing (writing its header)
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if attempt or tmp.parent.is_dir():
                    raise
        raise RuntimeError(f"{tmp}: not opened")  # not reached: the second attempt returns or raises

    def _put(self, stem: str, block: np.ndarray) -> None:
        room = self.frames_out - self.written[stem]
        block = block[:, :room]
        if block.shape[1]:
            self._files[stem].write(np.ascontiguousarray(block.T))
            self.written[stem] += block.shape[1]

    def write(self, stems: Mapping[str, np.ndarray]) -> None:
        """Append one block per stem.

        Args:
            stems: stem -> [shape=(channels_in, n)] float32 at ``rate_in``.
        """
        for stem in self.outputs:
            block = convert_channels(stems[stem], self.channels_out)
            r = self._resamplers.get(stem)
            if r is not None:
                block = r.process(block)
            self._put(stem, block)

    def preallocate(self) -> dict[str, Path]:
        """Give every temporary file its final length (silence) and close it, so that other
        processes can fill sample ranges in place (:class:`RangeWriter`) before :meth:`commit`.

        Only for WAV output at the input rate (no resampler state to carry across blocks).

        Returns:
            stem -> temporary path.
        """
        if self.fmt != "wav" or self.rate_in != self.rate_out:
            raise ValueError("preallocate needs WAV output at the separation sample rate")
        if any(self.written.values()):
            raise ValueError("preallocate must come before any write")
        for stem, f in self._files.items():
            if self.frames_out:
                f.seek(self.frames_out - 1)
                f.write(np.zeros((1, self.channels_out), np.float32))
                self.written[stem] = self.frames_out
            f.close()
        self.preallocated = True
        return dict(self._temps)

    def commit(self) -> dict[str, Path]:
        """Flush, pad to the exact length, close and rename every stem to its final name."""
        for stem, f in ({} if self.preallocated else self._files).items():
            r = self._resamplers.get(stem)
            if r is not None:
                self._put(stem, r.process(None))
            missing = self.frames_out - self.written[stem]
            if missing > 0:
                self._put(stem, np.zeros((self.channels_out, missing), np.float32))
            f.close()
        for stem, tmp in self._temps.items():
            os.replace(tmp, self.outputs[stem])
        self._temps.clear()
        return dict(self.outputs)

    def abort(self) -> None:
        """Close and delete every temporary file, and the folders this writer created if they are
        empty again; final names are untouched."""
        for f in self._files.values():
            try:
                f.close()
            except Exception:
                pass
        for tmp in self._temps.values():
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        self._temps.clear()
        for folder in reversed(self._made_dirs):  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (another writer's files), or gone
                pass
        self._made_dirs.clear()


class RangeWriter:
    """Fill sample ranges of files made by :meth:`StemWriter.preallocate`, in place.

    Byte-for-byte the same file as appending the same blocks in order with :class:`StemWriter`
    (the sample conversion is per sample).  Used by MPI ranks to write their own parts.

    Args:
        temps: stem -> preallocated temporary file.
        channels_out: channels of the files; blocks are converted to it.
        frames_out: length of the files; samples beyond it are dropped.
    """

    def __init__(self, temps: Mapping[str, Path], channels_out: int, frames_out: int) -> None:
        self.channels_out, self.frames_out = channels_out, frames_out
        self._files: dict[str, sf.SoundFile] = {}
        try:
            for stem, path in temps.items():
                self._files[stem] = sf.SoundFile(str(path), "r+")
                no_peak_chunk(self._files[stem])
        except (OSError, RuntimeError) as exc:
            self.close()
            raise AudioError(f"{path}: cannot open for writing in place ({exc})") from None

    def write_at(self, start: int, stems: Mapping[str, np.ndarray]) -> None:
        """Args:
            start: first sample of the blocks.
            stems: stem -> [shape=(channels, n)] float32.
        """
        for stem, f in self._files.items():
            block = convert_channels(stems[stem], self.channels_out)[:, : max(0, self.frames_out - start)]
            if block.shape[1]:
                f.seek(start)
                f.write(np.ascontiguousarray(block.T))

    def close(self) -> None:
        """Close every handle (all of them, even if one fails; the first error is raised)."""
        files, self._files = self._files, {}
        first: Exception | None = None
        for f in files.values():
            try:
                f.close()
            except Exception as exc:  # libsndfile rewrites the header on close: disk full etc.
                first = first or exc
        if first is not None:
            raise AudioError(f"cannot finish writing in place ({first})") from None


def find_audio_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, audio extensions only), keeping order, no duplicates.

    A path that does not exist is kept so the caller reports it per file.
    """
    seen: set[Path] = set()
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        found = (
            sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_EXTENSIONS and not q.name.startswith("."))
            if p.is_dir()
            else [p]
        )
        for q in found:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                out.append(q)
    return out
