"""A waveform post graph after the inverse STFT: a zero-sum correction between two stems at a
decimated rate (``stemcli_mmdense``'s ``"wave"`` branch), run on onnxruntime.

A card with a ``post`` entry has a second ONNX graph (``files.post``, sha256-checked like the
first).  After the stems of the mask graph are inverted, the mixture and the two stems of the
``pair`` are low-passed and decimated by ``decimate`` here (numpy), the graph maps them to a
correction at that rate, which is interpolated back here with the same low-pass and **added
to the first stem and subtracted from the second**: the stems still sum to the mixture::

    "post": {"type": "wave-pair", "pair": ["drums", "bass"], "decimate": 32}

* graph input ``low [batch, 3 * channels, frames]`` float32: the decimated mixture, first and
  second stem, stacked along the channels in that order; ``frames = ceil(time / decimate)``,
  sample ``k`` centred on input sample ``k * decimate``;
* graph output ``delta [batch, channels, frames]`` float32.

The low-pass (:func:`lowpass_fir`) is the one the torch module trains with (it takes its taps
from here), applied in polyphase form: decimation is one matrix product of blocks of
``decimate`` samples with the 9 phase filters and a shifted sum, interpolation a 9-tap filter
per output phase.  Both match the torch module's ``down`` / ``up`` to float32 rounding (export
checks the whole path against torch to 1e-4).

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


def decimate(x: np.ndarray, factor: int, phases: np.ndarray | None = None) -> np.ndarray:
    """Low-pass and keep every ``factor``-th sample (sample ``k`` centred on input sample
    ``k * factor``).

    Args:
        x: [shape=(..., time)] float32.
        phases: :func:`polyphase` of ``factor`` (computed if not given).

    Returns:
        [shape=(..., ceil(time / factor))] float32.
    """
    d = factor
    fir = polyphase(d) if phases is None else phases
    *lead, t = x.shape
    frames = -(-t // d)
    flat = np.zeros((int(np.prod(lead, dtype=np.int64)), (frames + 8) * d), np.float32)
    flat[:, 4 * d : 4 * d + t] = x.reshape(-1, t)  # the filter's half length of zeros before
    z = flat.reshape(-1, frames + 8, d) @ fir  # [N, frames + 8, 9]
    y = z[:, 0:frames, 0].copy()
    for q in range(1, TAPS_PER_PHASE):
        y += z[:, q : q + frames, q]
    return y.reshape(*lead, frames)


def interpolate(x: np.ndarray, factor: int, length: int, phases: np.ndarray | None = None) -> np.ndarray:
    """Interpolate by ``factor`` with the same low-pass (gain ``factor``), the inverse
    direction of :func:`decimate`.

    Args:
        x: [shape=(..., frames)] float32.
        length: output samples, at most ``frames * factor``.
        phases: :func:`polyphase` of ``factor`` (computed if not given).

    Returns:
        [shape=(..., length)] float32.
    """
    d = factor
    fir = polyphase(d) if phases is None else phases
    *lead, frames = x.shape
    if length > frames * d:
        raise ValueError(f"interpolate: {length} samples asked from {frames} frames x {d}")
    padded = np.pad(x.reshape(-1, frames), ((0, 0), (4, 4)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, TAPS_PER_PHASE, axis=-1)  # [N, frames, 9]
    # output phase p of frame l: sum over q of (D * taps reversed)[p, q] * padded[l + q]
    taps = (d * fir[:, ::-1]).T.astype(np.float32)  # [9, D]
    y = windows @ taps  # [N, frames, D]
    return y.reshape(*lead, frames * d)[..., :length]


def check_post(post: Any, sources: Sequence[str], where: str = "model card") -> dict[str, Any]:
    """Validate a card's ``post`` entry; return it normalised.

    Raises:
        ValueError: naming ``where`` and the bad field.
    """
    if not isinstance(post, dict) or post.get("type") != POST_TYPE:
        raise ValueError(f"{where}: post type must be '{POST_TYPE}', got {post!r:.80}")
    pair, factor = post.get("pair"), post.get("decimate")
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or pair[0] == pair[1]
            or any(p not in sources for p in pair)):
        raise ValueError(f"{where}: post pair must name two different sources of {list(sources)}, got {pair!r:.80}")
    if not isinstance(factor, int) or isinstance(factor, bool) or not 1 <= factor <= MAX_DECIMATE:
        raise ValueError(f"{where}: post decimate must be an integer in [1, {MAX_DECIMATE}], got {factor!r:.40}")
    return {"type": POST_TYPE, "pair": [str(pair[0]), str(pair[1])], "decimate": factor}


def apply_post(post: dict[str, Any], graph: Callable[[np.ndarray], np.ndarray], mix: np.ndarray, est: np.ndarray,
               sources: Sequence[str]) -> np.ndarray:
    """Correct the pair of ``est`` in place with the post graph.

    Args:
        post: a checked ``post`` entry (:func:`check_post`).
        graph: maps ``low [batch, 3 * channels, frames]`` to ``delta [batch, channels, frames]``.
        mix: [shape=(batch, channels, time)] float32.
        est: [shape=(batch, sources, channels, time)] float32, the stems before the correction.

    Returns:
        ``est``, the first stem of the pair plus the interpolated delta and the second minus it.

    Raises:
        ValueError: the graph's output is not ``[batch, channels, frames]``.
    """
    i, j = (list(sources).index(p) for p in post["pair"])
    d = post["decimate"]
    b, c, t = mix.shape
    phases = polyphase(d)
    low = decimate(np.concatenate([mix, est[:, i], est[:, j]], axis=1), d, phases)  # [B, 3C, L]
    out = np.asarray(graph(np.ascontiguousarray(low)), np.float32)
    if out.shape != (b, c, low.shape[-1]):
        raise ValueError(f"post graph returned shape {out.shape}, expected {(b, c, low.shape[-1])}")
    delta = interpolate(out, d, t, phases)
    est[:, i] += delta
    est[:, j] -= delta
    return est
