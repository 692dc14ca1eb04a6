"""Chunk planning and overlap-add.

Two pure pieces, kept apart so the MPI fan-out can reuse them:

* :func:`plan_chunks` decides where chunks go (a list of :class:`Chunk`), nothing else.
* :class:`OverlapAdd` accumulates weighted chunk outputs and their weights over a range of
  samples and hands out finished samples as soon as no later chunk can touch them, so memory
  stays bounded by a couple of segments whatever the song length.
* :class:`OrderedJoin` drives an :class:`OverlapAdd` over a chunk sequence and passes samples
  that only one chunk covers straight through (the same float32 values, without the float64
  weighting), so only overlaps cost arithmetic.

The result at each sample is ``sum_k w_k * y_k / sum_k w_k`` with triangular weights that never
reach zero, so any overlap in ``[0, 1)`` works and the sums split cleanly across processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One chunk of the plan.

    Attributes:
        index: position in the plan.
        start, stop: the samples this chunk's output covers (``stop - start <= segment``).
        in_start, in_stop: the samples fed to the separator: ``[start - context, stop + context)``
            clipped to the track ``[0, total)`` (at the track edges there is no neighbouring audio
            to give, and separating zero padding would only cost time).
    """

    index: int
    start: int
    stop: int
    in_start: int
    in_stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def plan_chunks(total: int, segment: int, overlap: float = 0.25, context: int = 0) -> list[Chunk]:
    """Plan chunks of ``segment`` samples covering ``[0, total)``.

    Chunks are all exactly ``segment`` long (no tiny tail chunk): their offsets are spread
    evenly between 0 and ``total - segment`` with a stride of at most
    ``segment * (1 - overlap)``.  A track shorter than one segment is one chunk.

    Args:
        total: number of samples in the track (>= 1).
        segment: chunk length in samples (>= 1).
        overlap: fraction of a segment shared by neighbouring chunks, in ``[0, 1)``.
        context: extra samples of real neighbouring audio fed on each side (>= 0), where the
            track has them.

    Raises:
        ValueError: on any out-of-range argument.
    """
    if total < 1:
        raise ValueError(f"cannot plan chunks for {total} samples: the audio is empty")
    if segment < 1:
        raise ValueError(f"segment must be at least 1 sample, got {segment}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if context < 0:
        raise ValueError(f"context must be >= 0 samples, got {context}")
    if total <= segment:
        return [Chunk(0, 0, total, 0, total)]
    stride = max(1, int(segment * (1.0 - overlap)))
    n = math.ceil((total - segment) / stride) + 1
    offsets = np.round(np.linspace(0, total - segment, n)).astype(np.int64)
    return [
        Chunk(i, int(o), int(o) + segment, max(0, int(o) - context), min(total, int(o) + segment + context))
        for i, o in enumerate(offsets)
    ]


def chunk_weight(length: int, power: float = 1.0) -> np.ndarray:
    """Triangular weight of ``length`` samples that never reaches zero (peak 1).

    Returns:
        [shape=(length,)] float64.
    """
    half = length // 2
    w = np.concatenate([np.arange(1, half + 1), np.arange(length - half, 0, -1)]).astype(np.float64)
    w /= w.max()
    return w**power


class OverlapAdd:
    """Weighted overlap-add over the samples ``[lo, hi)``, emitted in order.

    Add chunk outputs in increasing ``start`` order; call :meth:`pop` with the start of the
    next chunk to receive every sample that is now final.  For a distributed run use
    :meth:`raw` to get the unnormalised sums of a range and reduce them across ranks.

    Args:
        sources: number of stems.
        channels: channels per stem.
        lo, hi: the sample range this accumulator is responsible for.
    """

    def __init__(self, sources: int, channels: int, lo: int, hi: int, power: float = 1.0):
        if hi <= lo:
            raise ValueError(f"empty range [{lo}, {hi})")
        self.sources, self.channels = sources, channels
        self.lo, self.hi, self.power = lo, hi, power
        self.base = lo  # first sample not yet emitted
        self._out = np.zeros((sources, channels, 0), np.float64)
        self._w = np.zeros(0, np.float64)
        self._weights: dict[int, np.ndarray] = {}

    def _grow(self, upto: int) -> None:
        need = upto - self.base
        have = self._w.shape[0]
        if need > have:
            self._out = np.concatenate(
                [self._out, np.zeros((self.sources, self.channels, need - have), np.float64)], axis=-1
            )
            self._w = np.concatenate([self._w, np.zeros(need - have, np.float64)])

    def add(self, chunk: Chunk, out: np.ndarray, start: int | None = None, stop: int | None = None) -> None:
        """Accumulate one chunk's output (only its samples ``[start, stop)`` if given).

        Args:
            chunk: the planned chunk.
            out: [shape=(sources, channels, chunk.length)] the separator output for
                ``[chunk.start, chunk.stop)`` (context already trimmed).
            start, stop: absolute sample range to accumulate (default: the whole chunk).
        """
        if out.shape != (self.sources, self.channels, chunk.length):
            raise ValueError(
                f"chunk {chunk.index}: expected output shape "
                f"{(self.sources, self.channels, chunk.length)}, got {tuple(out.shape)}"
            )
        a = max(chunk.start, self.lo, chunk.start if start is None else start)
        b = min(chunk.stop, self.hi, chunk.stop if stop is None else stop)
        if b <= a:
            return
        if a < self.base:
            raise ValueError(f"chunk {chunk.index} starts at {a}, before emitted sample {self.base}")
        w = self._weights.get(chunk.length)
        if w is None:
            w = self._weights[chunk.length] = chunk_weight(chunk.length, self.power)
        self._grow(b)
        sl = slice(a - self.base, b - self.base)
        wa = w[a - chunk.start : b - chunk.start]
        self._out[..., sl] += out[..., a - chunk.start : b - chunk.start] * wa
        self._w[sl] += wa

    def skip(self, upto: int) -> None:
        """Mark ``[base, upto)`` as emitted elsewhere (samples only one chunk covers, passed on
        unweighted: ``out * w / w`` in float64 rounds back to the same float32).

        Raises:
            ValueError: if something was already accumulated there.
        """
        n = min(upto, self.hi) - self.base
        if n <= 0:
            return
        have = min(n, self._w.shape[0])
        if have and np.any(self._w[:have] != 0):
            raise ValueError(f"overlap-add: cannot skip [{self.base}, {self.base + n}): it holds accumulated samples")
        self._out, self._w = self._out[..., have:], self._w[have:]
        self.base += n

    def raw(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Pop the unnormalised sums ``(out, weight)`` of ``[base, upto)``.

        Returns:
            out [shape=(sources, channels, n)] float64 and weight [shape=(n,)] float64.
        """
        upto = min(upto, self.hi)
        n = upto - self.base
        if n <= 0:
            return np.zeros((self.sources, self.channels, 0)), np.zeros(0)
        self._grow(upto)
        out, w = self._out[..., :n], self._w[:n]
        self._out, self._w = self._out[..., n:], self._w[n:]
        self.base = upto
        return out, w

    def pop(self, upto: int) -> np.ndarray:
        """Emit the normalised samples ``[base, upto)``.

        Returns:
            [shape=(sources, channels, n)] float32.
        """
        out, w = self.raw(upto)
        if out.shape[-1] and np.any(w <= 0):
            raise ValueError("overlap-add: some samples were covered by no chunk")
        return (out / np.maximum(w, 1e-300)).astype(np.float32)


class OrderedJoin:
    """Join the outputs of a chunk sequence into finished, ordered blocks over ``[lo, hi)``.

    Samples only one chunk covers are passed on as that chunk's output (their weighted average:
    float64 ``out * w / w`` rounds back to the same float32); only overlaps go through the
    weighted :class:`OverlapAdd`, in chunk order, exactly as a plain overlap-add would.

    Args:
        sources, channels: output layout.
        chunks: the planned chunks (sorted by start, equally long), pushed in this order.
        lo, hi: the sample range to emit (chunks may reach beyond it; those samples are dropped).
    """

    def __init__(self, sources: int, channels: int, chunks: Sequence[Chunk], lo: int, hi: int) -> None:
        self.ola = OverlapAdd(sources, channels, lo, hi)
        self.chunks, self.lo, self.hi = list(chunks), lo, hi
        self.reach = lo  # furthest stop of the chunks pushed so far
        self.pushed = 0

    def push(self, out: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add the next chunk's output; return the blocks now final.

        Args:
            out: [shape=(sources, channels, chunk.length)] float32, context trimmed.

        Returns:
            ``(start, block [shape=(sources, channels, n)] float32)`` in order (``block`` may be
            a view of ``out``).
        """
        i = self.pushed
        if i >= len(self.chunks):
            raise ValueError(f"overlap-add: {i + 1} chunk outputs pushed, but the plan has {len(self.chunks)}")
        chunk, ola = self.chunks[i], self.ola
        nxt = self.chunks[i + 1].start if i + 1 < len(self.chunks) else self.hi
        blocks: list[tuple[int, np.ndarray]] = []
        s0, s1 = max(chunk.start, self.reach, ola.base), min(chunk.stop, nxt, self.hi)
        if s1 > s0:  # [s0, s1): no other chunk covers these samples
            ola.add(chunk, out, stop=s0)
            start = ola.base
            head = ola.pop(s0)
            if head.shape[-1]:
                blocks.append((start, head))
            blocks.append((s0, out[..., s0 - chunk.start : s1 - chunk.start]))
            ola.skip(s1)
            ola.add(chunk, out, start=s1)
        else:
            ola.add(chunk, out)
        self.reach = max(self.reach, chunk.stop)
        self.pushed += 1
        start = ola.base
        block = ola.pop(nxt)
        if block.shape[-1]:
            blocks.append((start, block))
        return blocks

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The last blocks, up to ``hi`` (raises if a sample was covered by no chunk)."""
        start = self.ola.base
        rest = self.ola.pop(self.hi)
        return [(start, rest)] if rest.shape[-1] else []
