"""The Python API: separate arrays and files.

>>> import numpy as np, stemcli.api as api
>>> stems = api.separate(np.zeros((2, 44100), np.float32), 44100, model="hpss")
>>> sorted(stems)
['harmonic', 'percussive']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from stemcli.audio import (
    AudioError,
    FileSource,
    StemWriter,
    convert_channels,
    fit_length,
    probe,
    resample,
)
from stemcli.pipeline import plan_for, separate_array, stream
from stemcli.plugins import Separator, SeparatorError, load_separator, registry

FALLBACK_MODEL = "hpss"
PREFERRED_DEFAULT = "mmdense"


def default_model() -> str:
    """The default separator: the shipped 4-stem model when installed, else HPSS."""
    return PREFERRED_DEFAULT if PREFERRED_DEFAULT in registry() else FALLBACK_MODEL


def get_separator(model: str | Path | Separator | None = None, backend: str | None = None, wiener: int = 0,
                  **options: Any) -> Separator:
    """Resolve ``model`` to a ready :class:`Separator`.

    Args:
        model: a registered name (``stemcli list``), a path to a model card (``.json``) or
            ``.onnx`` file exported by ``stemcli export``, or a Separator instance.
        backend: ``"onnx"`` or ``"torch"`` for model-based separators.
        wiener: iterations of the multichannel Wiener post-filter (:mod:`stemcli.wiener`);
            0 = none.
        **options: extra constructor options.
    """
    if wiener:
        from stemcli.wiener import WienerSeparator

        if int(wiener) < 0:
            raise ValueError(f"--wiener must be >= 0 iterations, got {wiener}")
        return WienerSeparator(get_separator(model, backend, 0, **options), int(wiener))
    if isinstance(model, Separator):
        return model
    if model is None:
        model = default_model()
    if backend is not None:
        options["backend"] = backend
    text = str(model)
    if text.endswith((".json", ".onnx")) or Path(text).is_file():
        from stemcli.runtime import OnnxSeparator  # model files need onnxruntime

        path = Path(text)
        if not path.exists():
            raise SeparatorError(f"{path}: no such model file")
        sep = OnnxSeparator(path, **options)
        sep.name = sep.name or path.stem
        return sep
    return load_separator(text, **options)


def check_stems(separator: Separator, stems: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a stem selection against the separator; ``None`` means all stems."""
    if not stems:
        return tuple(separator.sources)
    unknown = [s for s in stems if s not in separator.sources]
    if unknown:
        from stemcli.plugins import suggest

        raise SeparatorError(
            f"model '{separator.name}' has no stem '{unknown[0]}'{suggest(unknown[0], separator.sources)} "
            f"(stems: {', '.join(separator.sources)})"
        )
    return tuple(dict.fromkeys(stems))


def separate(
    audio: np.ndarray,
    sample_rate: int,
    model: str | Path | Separator | None = None,
    stems: Sequence[str] | None = None,
    segment: float | None = None,
    overlap: float | None = None,
    backend: str | None = None,
    wiener: int = 0,
) -> dict[str, np.ndarray]:
    """Separate an in-memory signal.

    Args:
        audio: [shape=(channels, samples)] or [shape=(samples,)] float audio in [-1, 1].
        sample_rate: its rate in Hz; resampled to the model's rate and back.
        model: see :func:`get_separator`.
        stems: the stems wanted (default: all).
        segment: chunk length in seconds (default: the model's).
        overlap: chunk overlap fraction in [0, 1) (default: the separator's, see
            :attr:`~stemcli.plugins.Separator.overlap`).
        backend: ``"onnx"`` or ``"torch"`` for model-based separators.
        wiener: multichannel Wiener post-filter iterations (0 = none).

    Returns:
        stem name -> [shape=audio.shape] float32, at ``sample_rate``.
    """
    sep = get_separator(model, backend, wiener)
    wanted = check_stems(sep, stems)
    sep.select_sources(wanted)
    x = np.asarray(audio)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"audio must be a float array, got {x.dtype}")
    mono_1d = x.ndim == 1
    if mono_1d:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio must have shape (channels, samples) or (samples,), got {x.shape}")
    if x.shape[-1] == 0:
        raise ValueError("audio is empty (0 samples)")
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or Inf samples")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    n, c = x.shape[-1], x.shape[0]
    y = resample(convert_channels(x.astype(np.float32, copy=False), sep.channels), int(sample_rate), sep.sample_rate)
    out = separate_array(sep, y, segment, overlap)
    result = {}
    for s in wanted:
        stem = resample(out[sep.sources.index(s)], sep.sample_rate, int(sample_rate))
        stem = convert_channels(stem, c)
        stem = fit_length(stem, n)
        result[s] = stem[0] if mono_1d else stem
    return result


def separate_file(
    path: str | Path,
    separator: Separator,
    outputs: Mapping[str, Path],
    fmt: str = "wav",
    bit_depth: int = 16,
    segment: float | None = None,
    overlap: float | None = None,
    on_chunk: Callable[[float], None] | None = None,
    on_start: Callable[[float], None] | None = None,
) -> dict[str, Path]:
    """Separate one file into ``outputs`` (stem -> path), streaming; atomic per stem.

    The stems are written at the input's sample rate and channel count.  Nothing is written
    under a final name unless the whole file succeeded.

    Args:
        on_start: called once with the duration (seconds) before work starts.
        on_chunk: called with the seconds of audio each finished chunk covered.

    Raises:
        AudioError: the file is unreadable, empty, non-finite, has > 2 channels, ...
    """
    info = probe(path)
    sep = separator
    wanted = [s for s in outputs]
    check_stems(sep, wanted)
    sep.select_sources(wanted)
    with FileSource(info, sep.sample_rate, sep.channels) as src:
        chunks = plan_for(sep, src.frames, segment, overlap)
        writer = StemWriter(
            outputs, sep.sample_rate, info.sample_rate, sep.channels, info.channels, info.frames, fmt, bit_depth
        )
        if on_start is not None:
            on_start(info.duration)
        try:
            index = {s: sep.sources.index(s) for s in outputs}

            def sink(block: np.ndarray) -> None:
                writer.write({s: block[i] for s, i in index.items()})

            tick = None if on_chunk is None else (lambda n: on_chunk(n / sep.sample_rate))
            stream(sep, src, sink, chunks, tick)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise


__all__ = [
    "AudioError",
    "SeparatorError",
    "default_model",
    "get_separator",
    "separate",
    "separate_file",
]
