"""A waveform post graph after the inverse STFT: a zero-sum correction among two or more stems
at a decimated rate (``stemcli_mmdense``'s ``"wave"`` branch), run on onnxruntime.

A card with a ``post`` entry has a second ONNX graph (``files.post``, sha256-checked like the
first).  After the stems of the mask graph are inverted, the mixture and the ``K`` stems of the
``pair`` (two, or more) are zero-padded and cut in blocks of ``decimate`` samples here
(:func:`blocks`); the graph low-passes and decimates them, runs its convolutions at that rate
and interpolates ``K - 1`` corrections back with the same low-pass; correction ``k`` is **added
to stem ``k`` of the pair and all of them are subtracted from the last**: the stems still sum
to the mixture.  With two stems: the correction is added to the first and subtracted from the
second::

    "post": {"type": "wave-pair", "pair": ["drums", "bass"], "decimate": 32}

(The type and the key keep the name of the two-stem form, so cards written before stay valid.)

* graph input ``blocks [batch, (K + 1) * channels, frames + 8, decimate]`` float32: the mixture
  and the pair's stems stacked along the channels in that order, each with ``4 * decimate``
  zeros before and zeros after up to ``(frames + 8) * decimate`` samples, ``frames = ceil(time
  / decimate)``;
* graph output ``delta [batch, (K - 1) * channels, frames * decimate]`` float32 (the
  corrections of the first ``K - 1`` stems, stacked along the channels in that order), of which
  the first ``time`` samples are used.

The resampling is in the graph, not in numpy: a numpy matrix product goes through OpenBLAS,
whose own threads, beside the runtime's worker threads or other busy processes, made the
decimation of a 30 s song take 80-350 ms instead of 9 ms on this 2-core machine.  The low-pass
(:func:`lowpass_fir`) is the one the torch module trains with (it takes its taps from here).

No torch import here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

POST_TYPE = "wave-pair"
TAPS_PER_PHASE = 9  # the low-pass has 8 * decimate + 1 taps: 9 per polyphase branch
MAX_DECIMATE = 1024


def lowpass_fir(decimate: int) -> np.ndarray:
    """Hann-windowed sinc low-pass for decimating by ``decimate``: ``8 * decimate + 1`` taps,
    unit gain at 0 Hz, -6 dB at 0.45 of the decimated rate (0.9 of its Nyquist frequency):
    about -3 dB at 0.40, -10 dB at 0.5 and below -44 dB from 0.7 of it on, so a little of the
    band up to ~0.65 of the decimated rate aliases; fine for a learned correction.

    Returns:
        [shape=(8 * decimate + 1,)] float32 (computed in float64).
    """
    n = 8 * decimate + 1
    k = np.arange(n, dtype=np.float64) - n // 2
    fc = 0.45 / decimate  # cycles per input sample
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(1, n + 1) / (n + 1))  # symmetric Hann of n + 2, ends dropped
    h = 2 * fc * np.sinc(2 * fc * k) * window
    return (h / h.sum()).astype(np.float32)


def polyphase(decimate: int) -> np.ndarray:
    """The low-pass in polyphase form: tap ``q * D + p`` at ``[p, q]`` (zero past the last tap).

    Returns:
        [shape=(decimate, 9)] float32.
    """
    fir = np.concatenate([lowpass_fir(decimate), np.zeros(decimate - 1, np.float32)])
    return np.ascontiguousarray(fir.reshape(TAPS_PER_PHASE, decimate).T)


def blocks(parts: Sequence[np.ndarray], factor: int) -> np.ndarray:
    """The post graph's input layout: the parts stacked along the channels, each with ``4 *
    factor`` zeros before (the filter's half length) and zeros after, cut in blocks of
    ``factor`` samples.

    Args:
        parts: arrays [shape=(batch, channels_k, time)].

    Returns:
        [shape=(batch, sum of channels_k, ceil(time / factor) + 8, factor)] float32.
    """
    d = factor
    b, _, t = parts[0].shape
    frames = -(-t // d)
    out = np.zeros((b, sum(p.shape[1] for p in parts), (frames + 8) * d), np.float32)
    row = 0
    for p in parts:  # written straight into place: no concatenated copy first
        out[:, row : row + p.shape[1], 4 * d : 4 * d + t] = p
        row += p.shape[1]
    return out.reshape(b, row, frames + 8, d)


def check_graph(session: Any, channels: int, decimate: int, path: Any, stems: int = 2) -> str:
    """Check an onnxruntime session of a post graph against its card: one input of rank 4
    ``[batch, (stems + 1) * channels, frames + 8, decimate]`` and one output of rank 3 ``[batch,
    (stems - 1) * channels, samples]`` (a dimension the graph leaves symbolic is checked when it
    runs; ``stems`` the length of the card's ``pair``).  Returns the input's name.

    Raises:
        ValueError: naming ``path``, the graph's shape and the one the card needs.
    """
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(f"{path}: a post graph has one input and one output, this one {len(ins)} and {len(outs)}")
    c, d, k = channels, decimate, stems
    for what, shape, rank, want, text in (
            ("input", ins[0].shape, 4, {1: (k + 1) * c, 3: d}, f"[batch, {(k + 1) * c}, frames + 8, {d}]"),
            ("output", outs[0].shape, 3, {1: (k - 1) * c}, f"[batch, {(k - 1) * c}, frames x {d}]")):
        if len(shape) != rank or any(isinstance(shape[n], int) and shape[n] != v for n, v in want.items()):
            raise ValueError(f"{path}: the post graph's {what} has shape {shape}; the card ({c} channels, "
                             f"{k} stems, decimate {d}) needs {text} (re-export the model from its training run)")
    return ins[0].name


def check_post(post: Any, sources: Sequence[str], where: str = "model card") -> dict[str, Any]:
    """Validate a card's ``post`` entry; return it normalised.

    Raises:
        ValueError: naming ``where`` and the bad field.
    """
    if not isinstance(post, dict) or post.get("type") != POST_TYPE:
        raise ValueError(f"{where}: post type must be '{POST_TYPE}', got {post!r:.80}")
    pair, factor = post.get("pair"), post.get("decimate")
    if (not isinstance(pair, (list, tuple)) or len(pair) < 2 or not all(isinstance(p, str) for p in pair)
            or len(set(pair)) != len(pair) or any(p not in sources for p in pair)):
        raise ValueError(f"{where}: post pair must name two or more different sources of {list(sources)}, "
                         f"got {pair!r:.80}")
    if not isinstance(factor, int) or isinstance(factor, bool) or not 1 <= factor <= MAX_DECIMATE:
        raise ValueError(f"{where}: post decimate must be an integer in [1, {MAX_DECIMATE}], got {factor!r:.40}")
    return {"type": POST_TYPE, "pair": [str(p) for p in pair], "decimate": factor}


def apply_post(post: dict[str, Any], graph: Callable[[np.ndarray], np.ndarray], mix: np.ndarray, est: np.ndarray,
               sources: Sequence[str]) -> np.ndarray:
    """Correct the pair's stems of ``est`` in place with the post graph.

    Args:
        post: a checked ``post`` entry (:func:`check_post`), ``K`` stems in its ``pair``.
        graph: maps ``blocks [batch, (K + 1) * channels, frames + 8, decimate]`` to ``delta
            [batch, (K - 1) * channels, frames * decimate]`` (see the module docstring).
        mix: [shape=(batch, channels, time)] float32.
        est: [shape=(batch, sources, channels, time)] float32, the stems before the correction.

    Returns:
        ``est``, each of the pair's first ``K - 1`` stems plus its correction and the last minus
        their sum (two stems: the first plus the delta, the second minus it).

    Raises:
        ValueError: the graph's output is not ``[batch, (K - 1) * channels, frames * decimate]``.
    """
    idx = pair_indices(post, sources)
    d = post["decimate"]
    b, c, t = mix.shape
    inp = blocks([mix, *(est[:, i] for i in idx)], d)  # [B, (K + 1) C, L + 8, D]
    out = np.asarray(graph(inp), np.float32)
    want = (b, (len(idx) - 1) * c, (inp.shape[2] - 8) * d)
    if out.shape != want:
        raise ValueError(f"post graph returned shape {out.shape}, expected {want}")
    add_corrections(est, idx, out[..., :t])
    return est


def pair_indices(post: dict[str, Any], sources: Sequence[str]) -> list[int]:
    """The positions in ``sources`` of a checked ``post`` entry's ``pair``, in the pair's order."""
    return [list(sources).index(p) for p in post["pair"]]


def add_corrections(est: np.ndarray, idx: Sequence[int], delta: np.ndarray) -> None:
    """Add the graph's corrections to ``est`` in place: channel group ``n`` of ``delta`` to stem
    ``idx[n]``, and each of them, in that order, subtracted from stem ``idx[-1]``.

    Args:
        est: [shape=(batch, sources, channels, time)] float32.
        idx: the pair's stems (:func:`pair_indices`), ``K`` of them.
        delta: [shape=(batch, (K - 1) * channels, time)] float32, the graph's output cut to ``time``.
    """
    c = est.shape[2]
    for n, i in enumerate(idx[:-1]):
        part = delta[:, n * c : (n + 1) * c]
        est[:, i] += part
        est[:, idx[-1]] -= part
