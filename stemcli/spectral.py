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


def stft(wave: np.ndarray, n_fft: int, hop: int, bins: int | None = None) -> np.ndarray:
    """Args:
        wave: [shape=(..., time)] float32.
        bins: lowest bins to keep (default all ``n_fft / 2 + 1``).

    Returns:
        [shape=(..., frames, bins)] complex64, ``frames = ceil(time / hop) + 1``.
    """
    half = n_fft // 2
    t = wave.shape[-1]
    extra = (hop - t % hop) % hop
    x = np.pad(np.asarray(wave, np.float32), [(0, 0)] * (wave.ndim - 1) + [(half, half + extra)])
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    spec = _fft.rfft(frames * hann(n_fft).astype(np.float32), axis=-1)
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
    t = mix.shape[-1]
    spec = stft(mix, n_fft, hop, bins)  # [B, C, F, bins]
    mag = np.sqrt(spec.real**2 + spec.imag**2 + np.float32(frontend["eps"])).astype(np.float32, copy=False)
    if frontend.get("input", "mag") == "log1p":
        np.log(np.add(mag, 1.0, out=mag), out=mag)  # not np.log1p: see the module docstring
    got = masks(np.ascontiguousarray(mag))
    want = mask_count(frontend, n_sources)
    expected = graph_outputs(frontend, n_sources, *mag.shape[:3])
    parts = [np.asarray(a, np.float32) for a in (got if isinstance(got, (tuple, list)) else (got,))]
    shapes = tuple(a.shape for a in parts)
    if shapes != tuple(expected.values()):
        raise ValueError(f"mask model returned shape{'s' if len(shapes) > 1 else ''} "
                         f"{', '.join(map(str, shapes))}, expected {', '.join(map(str, expected.values()))}")
    cuts = [0, *(shape[-1] for shape in expected.values())]  # [0, bins] or [0, K, bins - K]
    cuts = np.cumsum(cuts)
    # one source at a time, each masked spectrum written straight into a zero-padded full-band
    # buffer (the inverse FFT then takes all n_fft / 2 + 1 bins as they are: scipy pads a
    # shorter input more slowly).  Per source, the arrays of a 16 s part stay below glibc's
    # 32 MiB mmap threshold, so they are reused from the heap instead of being mapped and
    # zeroed afresh by the kernel on every call (all sources at once: 75 MiB arrays).
    est = np.empty((mix.shape[0], n_sources, *mix.shape[1:]), np.float32)  # [B, S, C, T]
    full = np.empty((*spec.shape[:-1], n_fft // 2 + 1), np.complex64)  # [B, C, F, n_fft/2+1]
    full[..., bins:] = 0  # only the bins above the model's are zeros: the loop writes the rest
    for j in range(want):
        for m, lo, hi in zip(parts, cuts[:-1], cuts[1:]):  # masks_high broadcasts over the channels
            np.multiply(m[:, j], spec[..., lo:hi], out=full[..., lo:hi])
        est[:, j] = istft(full, n_fft, hop, t)
    if frontend["residual"]:
        np.subtract(mix, est[:, :want].sum(axis=1), out=est[:, want])
    return est
