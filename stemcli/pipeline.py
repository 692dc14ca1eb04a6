"""The streaming engine: source -> chunk plan -> separator -> overlap-add -> sink.

One loop, used by the in-memory API, the file writer and the MPI fan-out alike.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from stemcli.audio import ArraySource
from stemcli.chunking import Chunk, OrderedJoin, plan_chunks
from stemcli.plugins import Separator, SeparatorError


class Source(Protocol):
    frames: int

    def read(self, start: int, stop: int) -> np.ndarray: ...


def plan_for(separator: Separator, frames: int, segment: float | None, overlap: float | None) -> list[Chunk]:
    """The chunk plan for ``frames`` samples at the separator's rate (``segment``, ``overlap``:
    ``None`` takes the separator's own).

    Raises:
        ValueError: bad segment/overlap.
    """
    seg_s = separator.segment if segment is None else segment
    if not seg_s > 0:
        raise ValueError(f"--segment must be positive seconds, got {seg_s}")
    seg = max(1, int(round(seg_s * separator.sample_rate)))
    if overlap is None:
        overlap = float(getattr(separator, "overlap", Separator.overlap))
    ctx = int(round(separator.context * separator.sample_rate))
    return plan_chunks(frames, seg, overlap, ctx)


def run_chunk(separator: Separator, source: Source, chunk: Chunk) -> np.ndarray:
    """Separate one chunk and trim its context.

    Returns:
        [shape=(sources, channels, chunk.length)] float32.
    """
    x = source.read(chunk.in_start, chunk.in_stop)
    y = np.asarray(separator.separate(x[None]))
    want = (1, len(separator.sources), separator.channels, x.shape[-1])
    if y.shape != want:
        raise SeparatorError(
            f"model '{separator.name}': separate() returned shape {tuple(y.shape)}, expected {want}"
        )
    lead = chunk.start - chunk.in_start
    return y[0, :, :, lead : lead + chunk.length].astype(np.float32, copy=False)


def stream(
    separator: Separator,
    source: Source,
    sink: Callable[[np.ndarray], None],
    chunks: Sequence[Chunk],
    on_chunk: Callable[[int], None] | None = None,
    lo: int = 0,
    hi: int | None = None,
) -> None:
    """Run ``chunks`` through ``separator`` and feed finished samples to ``sink`` in order.

    Args:
        sink: receives [shape=(sources, channels, n)] float32 blocks covering ``[lo, hi)``
            in order.
        on_chunk: called with the number of samples each finished chunk covered (progress).
    """
    hi = source.frames if hi is None else hi
    join = OrderedJoin(len(separator.sources), separator.channels, chunks, lo, hi)
    for chunk in chunks:
        for _, block in join.push(run_chunk(separator, source, chunk)):
            sink(block)
        if on_chunk is not None:
            on_chunk(chunk.length)
    for _, block in join.finish():
        sink(block)


def separate_array(
    separator: Separator,
    audio: np.ndarray,
    segment: float | None = None,
    overlap: float | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Separate an in-memory array already at the separator's rate and channel count.

    Args:
        audio: [shape=(channels, time)] float32.

    Returns:
        [shape=(sources, channels, time)] float32.
    """
    src = ArraySource(audio)
    blocks: list[np.ndarray] = []
    stream(separator, src, blocks.append, plan_for(separator, src.frames, segment, overlap), on_chunk)
    if len(blocks) == 1:  # one chunk (a song up to a segment long): its output as it is, not a 42 MB copy per 30 s
        out = np.ascontiguousarray(blocks[0])
        return out if out.flags.writeable else out.copy()  # the caller gets a writeable array, as from concatenate
    return np.concatenate(blocks, axis=-1)

