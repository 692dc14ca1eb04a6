"""NumPy STFT front end for mask models: spectrogram in, masks out of onnxruntime, stems back.

A model exported with a ``frontend`` in its card (see :func:`check_frontend`) is an ONNX graph
from STFT magnitudes to soft masks; the transforms around it run here, here
(``scipy.fft``, an O(n log n) FFT: the matmul FFT that an ONNX graph needs costs about twice the whole
network on the shipped model).  The conventions are those of :class:`stemcli.transforms.STFT`
/ :class:`~stemcli.transforms.ISTFT` (periodic Hann window, ``center=True`` with zero padding,
``frames = ceil(time / hop) + 1``, inverse by weighted overlap-add divided by the window-square
envelope), so a torch model built on those transforms and its exported mask graph give the
same stems (checked at export to 1e-4).

Card entry::

    "frontend": {"type": "stft-masks", "n_fft": 2048, "hop": 1024, "bins": 768,
                 "eps": 1e-10, "residual": true, "input": "log1p"}

* ONNX input ``[batch, channels, frames, bins]``: ``mag = sqrt(re^2 + im^2 + eps)`` of the
  lowest ``bins`` bins (``"input": "mag"``, the default for cards without the key), or
  ``log1p(mag)`` (``"input": "log1p"``: computed here by numpy, where it was an ``Add`` and a
  ``Log`` node in the graph; with the expanded frame add of ``stemcli_mmdense`` the shipped
  graph went from 0.124 to 0.122 s on 16 s, one thread); output
  ``masks [batch, M, channels, frames, bins]``.  numpy computes it as ``log(1 + mag)``: its
  float32 ``log1p`` has no SIMD code on CPUs without AVX-512 (this 2-core machine: 35-45 ms
  for the 2.6M magnitudes of a 15 s part at 4096/1024, about a quarter of the front end's time,
  against 7-9 ms).  The result stays within a float32 rounding or two of the exact value: with
  ``mag >= sqrt(eps)``, absolute error 1.9e-7 below ``mag`` 50 (``np.log1p``'s own: 1.4e-7)
  and 5.4e-7 above, where results near 4-9 are 4.8e-7 apart (``np.log1p``'s: 5.0e-7).
* ``residual: true``: ``M = sources - 1``; the last source is ``mix - sum(others)`` (it also
  receives every bin above ``bins``).  ``false``: ``M = sources``, bins above ``bins`` dropped.
* ``split: K`` (optional, ``0 < K < bins``): the graph has two outputs, ``masks [batch, M,
  channels, frames, K]`` for the lowest ``K`` bins and ``masks_high [batch, M, 1, frames,
  bins - K]`` above, one mask shared by every channel (a model whose masks there do not depend
  on the channel: ``stemcli_mmdense``'s frame branch above ``conv_bin``).  The graph then skips
  expanding those masks over the channels and joining the two bands (16-20 ms of the shipped
  graph's ~400 on a 17 s part, one thread, on this machine with training beside it); the
  products with the spectrum here take about 1 ms more per source (two broadcasts: 9.2 ms
  against 8.0 on a 15 s part).
* Fused steps: :func:`separate_with_masks` runs the transform and the magnitudes
  (:func:`stft_magnitude`), and each source's masking and inverse (:func:`masked_istft`), 32
  frames at a time at 4096 for one stereo signal (:func:`frame_chunk`), so the windowed frames, the masked
  spectrum and the inverse FFT's output of a step are still in the core's cache when the next
  operation reads them.  On a 16 s stereo part, one thread, the shipped card: the whole part
  took 240 against 261 ms (interleaved, training on the other core), the same stems to 6e-8.

No torch import here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np
from scipy import fft as _fft

FRONTEND_TYPE = "stft-masks"
INPUTS = ("mag", "log1p")  # what the ONNX graph is fed: magnitudes or log1p(magnitudes)


def check_frontend(frontend: dict[str, Any], where: str = "model card") -> dict[str, Any]:
    """Validate a card's ``frontend`` entry; return it with types normalised.

    Raises:
        ValueError: naming ``where`` and the bad field.
    """
    if not isinstance(frontend, dict) or frontend.get("type") != FRONTEND_TYPE:
        raise ValueError(f"{where}: frontend type must be '{FRONTEND_TYPE}', got {frontend!r:.80}")
    try:
        n_fft, hop, bins = int(frontend["n_fft"]), int(frontend["hop"]), int(frontend["bins"])
        eps = float(frontend.get("eps", 0.0))
        residual = bool(frontend.get("residual", False))
        feature = str(frontend.get("input", "mag"))
        split = frontend.get("split")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: frontend needs integer n_fft, hop, bins ({exc})") from exc
    if split is not None and (not isinstance(split, int) or isinstance(split, bool)):
        raise ValueError(f"{where}: frontend split must be an integer number of bins, got {split!r:.40}")
    if n_fft < 2 or hop < 1 or n_fft % hop or n_fft // hop < 2:
        raise ValueError(f"{where}: frontend hop={hop} must divide n_fft={n_fft} at least twice")
    if not 0 < bins <= n_fft // 2 + 1:
        raise ValueError(f"{where}: frontend bins={bins} must be in [1, {n_fft // 2 + 1}]")
    if feature not in INPUTS:
        raise ValueError(f"{where}: frontend input must be one of {', '.join(INPUTS)}, got {feature!r:.40}")
    if split is not None and not 0 < split < bins:
        raise ValueError(f"{where}: frontend split={split} must be in [1, bins - 1 = {bins - 1}]")
    out = {"type": FRONTEND_TYPE, "n_fft": n_fft, "hop": hop, "bins": bins, "eps": eps, "residual": residual}
    if feature != "mag":  # cards written before the key existed stay as they were
        out["input"] = feature
    if split is not None:
        out["split"] = split
    return out


def graph_input(frontend: dict[str, Any]) -> tuple[str, str]:
    """The exported mask graph's input for a checked ``frontend``: ``(name, meaning)``, e.g.
    ``("logmag", "logmag = log1p(mag)")`` for ``input: log1p``, ``("mag", "mag")`` otherwise."""
    if frontend.get("input") == "log1p":
        return "logmag", "logmag = log1p(mag)"
    return "mag", "mag"


def hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window ``[shape=(n_fft,)]`` float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def analysis_frames(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The analysis frames of :func:`stft`, unwindowed: ``wave`` zero-padded by ``n_fft / 2``
    before and by ``n_fft / 2`` plus up to ``hop - 1`` after, as a strided view.

    Args:
        wave: [shape=(..., time)].

    Returns:
        [shape=(..., frames, n_fft)] float32 view, ``frames = ceil(time / hop) + 1``.
    """
    half = n_fft // 2
    t = wave.shape[-1]
    extra = (hop - t % hop) % hop
    x = np.pad(np.asarray(wave, np.float32), [(0, 0)] * (wave.ndim - 1) + [(half, half + extra)])
    return np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]


def stft(wave: np.ndarray, n_fft: int, hop: int, bins: int | None = None) -> np.ndarray:
    """Args:
        wave: [shape=(..., time)] float32.
        bins: lowest bins to keep (default all ``n_fft / 2 + 1``).

    Returns:
        [shape=(..., frames, bins)] complex64, ``frames = ceil(time / hop) + 1``.
    """
    spec = _fft.rfft(analysis_frames(wave, n_fft, hop) * hann(n_fft).astype(np.float32), axis=-1)
    return spec[..., :bins] if bins is not None else spec


def istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Inverse of :func:`stft` (bins missing above ``spec.shape[-1]`` count as zero).

    Args:
        spec: [shape=(..., frames, bins)] complex.
        length: output samples (the ``time`` given to :func:`stft`).

    Returns:
        [shape=(..., length)] float32.
    """
    half, ratio = n_fft // 2, n_fft // hop
    *lead, nf, nb = spec.shape
    frames = np.asarray(_fft.irfft(spec, n=n_fft, axis=-1), np.float32)  # zero-pads missing bins
    win = hann(n_fft)
    frames *= win.astype(np.float32)
    out = np.empty((*lead, nf + ratio - 1, hop), np.float32)
    parts = frames.reshape(*lead, nf, ratio, hop)
    out[..., :nf, :] = parts[..., 0, :]  # overlap-add: the first quarter of each frame, then the rest
    out[..., nf:, :] = 0.0
    for j in range(1, ratio):
        out[..., j : j + nf, :] += parts[..., j, :]
    out /= _cached_envelope(n_fft, hop, nf) if nf <= CACHED_FRAMES else _envelope(n_fft, hop, nf)
    return out.reshape(*lead, -1)[..., half : half + length]


CHUNK_VALUES = 1 << 18  # samples of windowed frames per step of the fused transforms below (1 MiB as float32)


def frame_chunk(lead: int, n_fft: int) -> int:
    """Frames per step of :func:`stft_magnitude` and :func:`masked_istft` for ``lead`` signals
    (batch x channels) at ``n_fft``: 32 at 4096 for one stereo signal, so a step's frames and spectra stay
    in the core's cache between the steps that read them."""
    return max(1, CHUNK_VALUES // max(1, lead * n_fft))


def _step(chunk: int | None, lead: list[int], n_fft: int) -> int:
    """``chunk``, or :func:`frame_chunk` when it is ``None``.

    Raises:
        ValueError: ``chunk`` < 1.
    """
    if chunk is None:
        return frame_chunk(int(np.prod(lead)), n_fft)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 frame, got {chunk}")
    return int(chunk)


def stft_magnitude(wave: np.ndarray, n_fft: int, hop: int, bins: int, eps: float, log1p: bool = False,
                   chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stft` and the magnitudes a mask graph is fed, computed ``chunk`` frames at a time
    (the same numbers, bit for bit, as ``stft`` followed by ``sqrt(re^2 + im^2 + eps)``; the
    windowed frames never exist all at once).

    Args:
        wave: [shape=(..., time)] float32.
        bins: lowest bins to keep (<= ``n_fft / 2 + 1``).
        eps: added to the squared magnitude (as float32).
        log1p: return ``log(1 + mag)`` instead (see the module docstring for why not ``np.log1p``).
        chunk: frames per step (default :func:`frame_chunk`).

    Returns:
        ``(spec, mag)``: [shape=(..., frames, bins)] complex64 and float32 (C-contiguous).

    Raises:
        ValueError: ``bins`` not in ``1..n_fft / 2 + 1``, or ``chunk`` < 1.
    """
    if not 0 < bins <= n_fft // 2 + 1:
        raise ValueError(f"bins={bins} must be in [1, {n_fft // 2 + 1}]")
    framed = analysis_frames(wave, n_fft, hop)
    *lead, nf, _ = framed.shape
    step = _step(chunk, lead, n_fft)
    win = hann(n_fft).astype(np.float32)
    spec = np.empty((*lead, nf, bins), np.complex64)
    mag = np.empty((*lead, nf, bins), np.float32)
    windowed = np.empty((*lead, min(step, nf), n_fft), np.float32)
    square = np.empty((*lead, min(step, nf), bins), np.float32)
    for a in range(0, nf, step):
        b = min(nf, a + step)
        w = windowed[..., : b - a, :]
        np.multiply(framed[..., a:b, :], win, out=w)
        s = spec[..., a:b, :]
        s[...] = _fft.rfft(w, axis=-1)[..., :bins]
        m, sq = mag[..., a:b, :], square[..., : b - a, :]
        np.multiply(s.real, s.real, out=m)
        m += np.multiply(s.imag, s.imag, out=sq)
        m += np.float32(eps)
        np.sqrt(m, out=m)
        if log1p:
            np.log(np.add(m, 1.0, out=m), out=m)
    return spec, mag


def masked_istft(spec: np.ndarray, bands: list[tuple[np.ndarray, int, int]], n_fft: int, hop: int,
                 out: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """The inverse STFT (:func:`istft`) of ``spec`` times masks, ``chunk`` frames at a time: each
    step's masked spectrum, its inverse FFT and its windowed frames stay in the core's cache until
    they are overlap-added (against a masked spectrogram and an inverse of the whole: 50 against
    79 ms for three sources of a 16 s stereo part at 4096/1024, one thread, on this machine).

    Args:
        spec: [shape=(..., frames, bins)] complex64.
        bands: ``(mask, lo, hi)`` covering bins ``0..bins`` in order, each ``mask``
            [shape=(..., frames, hi - lo)] float32 (those two axes exactly), broadcast against ``spec[..., lo:hi]``
            (e.g. one channel's mask for every channel).  Bins above ``bins`` count as zero.
        out: [shape=(..., length)] float32, written (the ``time`` given to :func:`stft`).
        chunk: frames per step (default :func:`frame_chunk`).

    Returns:
        ``out``.

    Raises:
        ValueError: the bands do not cover ``0..bins`` in order, a mask's last two axes are not
            ``(frames, hi - lo)``, or ``chunk`` < 1.
    """
    half, ratio = n_fft // 2, n_fft // hop
    *lead, nf, nb = spec.shape
    edges = [0, *(hi for _, _, hi in bands)]
    if [lo for _, lo, _ in bands] != edges[:-1] or edges[-1] != nb:
        raise ValueError(f"mask bands {[(lo, hi) for _, lo, hi in bands]} do not cover bins 0..{nb} in order")
    if any(mask.shape[-2:] != (nf, hi - lo) for mask, lo, hi in bands):
        raise ValueError(f"mask shapes {[mask.shape for mask, _, _ in bands]} do not end in (frames {nf}, band width)")
    step = _step(chunk, lead, n_fft)
    win = hann(n_fft).astype(np.float32).reshape(ratio, hop)
    ola = np.zeros((*lead, nf + ratio - 1, hop), np.float32)
    full = np.empty((*lead, min(step, nf), n_fft // 2 + 1), np.complex64)
    full[..., nb:] = 0  # the bins above the model's; the loop writes the rest
    for a in range(0, nf, step):
        b = min(nf, a + step)
        f = full[..., : b - a, :]
        for mask, lo, hi in bands:
            np.multiply(mask[..., a:b, :], spec[..., a:b, lo:hi], out=f[..., lo:hi])
        frames = np.asarray(_fft.irfft(f, n=n_fft, axis=-1), np.float32).reshape(*lead, b - a, ratio, hop)
        frames *= win
        for j in range(ratio):  # overlap-add: hop block j of frame i lands in output block i + j
            ola[..., a + j : b + j, :] += frames[..., j, :]
    env = _cached_envelope(n_fft, hop, nf) if nf <= CACHED_FRAMES else _envelope(n_fft, hop, nf)
    length = out.shape[-1]
    np.divide(ola.reshape(*lead, -1)[..., half : half + length], env.reshape(-1)[half : half + length], out=out)
    return out


CACHED_FRAMES = 2048  # envelopes up to this many frames are kept (8 MB each at hop 1024; a part has ~800)


def ola_envelope(n_fft: int, hop: int, frames: int) -> np.ndarray:
    """The window-square overlap-add envelope of ``frames`` Hann frames, floored at 1e-8 (only
    the trimmed ends come near it): [shape=(frames + n_fft / hop - 1, hop)] float64.  Shared
    with training's inverse (:func:`stemcli.transforms.istft_frames`)."""
    ratio = n_fft // hop
    env = np.zeros((frames + ratio - 1, hop))
    wsq = (hann(n_fft) ** 2).reshape(ratio, hop)
    for j in range(ratio):
        env[j : j + frames] += wsq[j]
    return np.maximum(env, 1e-8)


def _envelope(n_fft: int, hop: int, frames: int) -> np.ndarray:
    """:func:`ola_envelope` as float32."""
    return ola_envelope(n_fft, hop, frames).astype(np.float32)


@lru_cache(maxsize=4)
def _cached_envelope(n_fft: int, hop: int, frames: int) -> np.ndarray:
    """:func:`_envelope`, kept for the next call of the same size (a song's parts share it); read-only."""
    out = _envelope(n_fft, hop, frames)
    out.flags.writeable = False
    return out


def graph_outputs(frontend: dict[str, Any], n_sources: int, batch: int | str = "batch", channels: int | str = "channels",
                  frames: int | str = "frames") -> dict[str, tuple]:
    """The mask graph's outputs for a checked ``frontend``, name -> shape: ``{"masks": (batch,
    M, channels, frames, bins)}``, or with ``split`` K ``{"masks": (..., K), "masks_high":
    (batch, M, 1, frames, bins - K)}``."""
    m, bins, k = mask_count(frontend, n_sources), frontend["bins"], frontend.get("split")
    if k is None:
        return {"masks": (batch, m, channels, frames, bins)}
    return {"masks": (batch, m, channels, frames, k), "masks_high": (batch, m, 1, frames, bins - k)}


def mask_count(frontend: dict[str, Any], n_sources: int) -> int:
    """Masks the graph of a checked ``frontend`` returns: ``n_sources - 1`` with a residual
    source, else ``n_sources``."""
    return n_sources - 1 if frontend["residual"] else n_sources


def separate_with_masks(frontend: dict[str, Any], masks: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]],
                        mix: np.ndarray, n_sources: int) -> np.ndarray:
    """Run a mask model through the STFT front end.

    Args:
        frontend: a checked ``frontend`` entry (:func:`check_frontend`).
        masks: maps ``mag [batch, channels, frames, bins]`` (or ``log1p(mag)``, see the module
            docstring) to ``[batch, M, channels, frames, bins]``, or with ``split`` to the pair
            of arrays :func:`graph_outputs` names.
        mix: [shape=(batch, channels, time)] float32.
        n_sources: number of sources of the model.

    Returns:
        [shape=(batch, n_sources, channels, time)] float32.
    """
    n_fft, hop, bins = frontend["n_fft"], frontend["hop"], frontend["bins"]
    spec, mag = stft_magnitude(mix, n_fft, hop, bins, frontend["eps"], log1p=frontend.get("input") == "log1p")
    got = masks(np.ascontiguousarray(mag))
    want = mask_count(frontend, n_sources)
    expected = graph_outputs(frontend, n_sources, *mag.shape[:3])
    parts = [np.asarray(a, np.float32) for a in (got if isinstance(got, (tuple, list)) else (got,))]
    shapes = tuple(a.shape for a in parts)
    if shapes != tuple(expected.values()):
        raise ValueError(f"mask model returned shape{'s' if len(shapes) > 1 else ''} "
                         f"{', '.join(map(str, shapes))}, expected {', '.join(map(str, expected.values()))}")
    cuts = np.cumsum([0, *(shape[-1] for shape in expected.values())])  # [0, bins] or [0, K, bins]
    est = np.empty((mix.shape[0], n_sources, *mix.shape[1:]), np.float32)  # [B, S, C, T]
    for j in range(want):  # masks_high broadcasts over the channels
        masked_istft(spec, [(m[:, j], lo, hi) for m, lo, hi in zip(parts, cuts[:-1], cuts[1:])], n_fft, hop,
                     out=est[:, j])
    if frontend["residual"]:
        np.subtract(mix, est[:, :want].sum(axis=1), out=est[:, want])
    return est
