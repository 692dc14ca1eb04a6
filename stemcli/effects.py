"""Pedalboard-compatible effects built on source separation: karaoke, stem gain/pan, per-stem chains.

Every effect here has pedalboard's call shape::

    out = effect(input_array, sample_rate, buffer_size=8192, reset=True)
    out = effect.process(input_array, sample_rate, buffer_size=8192, reset=True)

and returns float32 audio in the layout it was given, so it drops into code written for
pedalboard.  Example::

    from pedalboard import Compressor, Gain, Pedalboard, Reverb
    from stemcli.effects import EffectChain, Karaoke, StemChain, StemGain

    board = EffectChain([
        Gain(-3),
        StemChain({"vocals": Pedalboard([Reverb(room_size=0.6)]), "drums": Compressor()}),
        StemGain(bass=+4),
    ])
    out = board(audio, 44100)          # audio: (channels, samples) float32

**Offline, not real-time.**  Each call separates the *whole buffer it is given* (the separator
looks ahead by up to a chunk plus its context), so latency is the buffer length.  Calling an
effect on consecutive blocks works but every block is separated on its own (no context across
calls), which is worse at block edges: give whole tracks.  ``buffer_size`` and ``reset`` are
passed on to the pedalboard plugins run inside (``reset=False`` keeps their reverb tails and
delay lines between calls, as in pedalboard).

**Why not pedalboard.Plugin subclasses.**  Python classes cannot subclass ``pedalboard.Plugin``
(its constructor raises "Plugin is an abstract base class"), and a Python subclass of a
concrete plugin or of ``Pedalboard`` whose ``process`` is overridden is silently *ignored*
when nested in ``Pedalboard([...])`` (the native chain calls the C++ process; measured with
pedalboard 0.9.26).  So these effects cannot go inside a native ``Pedalboard``; use
:class:`EffectChain`, a list-like chain with the same call signature that runs native plugins
and stemcli effects in order.  Native plugins, ``Pedalboard`` objects, stemcli effects and
:class:`EffectChain` can all be used as per-stem chains of :class:`StemChain`.

**Array layout, as pedalboard does it** (``detectChannelLayout`` in pedalboard's
``BufferUtils.h``): a 1-D array is mono; for a 2-D array the *smaller* dimension is the channel
axis (``(2, n)`` is channels-first, ``(n, 2)`` channels-last); when the two are equal the layout
cannot be told apart and a :class:`LayoutError` is raised, unless an earlier call on the same
effect fixed the channel count (pedalboard caches it per plugin, and so do these effects).
``float32`` and ``float64`` are accepted, any other dtype raises ``TypeError``; the output is
always ``float32`` (as pedalboard's).

**Residual.**  A separator's stems may not add up exactly to the mixture (a mask-based model's
do, up to rounding; a waveform model's need not).  With ``residual=True`` (the default) the
stem effects only *change* the stems they touch and leave everything else of the mixture as it
was: ``out = mix + sum_s (f_s(stem_s) - stem_s)``.  With ``residual=False`` the output is
rebuilt from the stems only: ``out = sum_s f_s(stem_s)`` (unprocessed stems pass unchanged).
For a mask-based separator the two agree to rounding.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableSequence
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union, overload

import numpy as np

from stemcli.plugins import Separator

DEFAULT_BUFFER_SIZE = 8192

ModelSpec = Union[str, Path, Separator, None]
"""A separator name, a model file, a ready :class:`~stemcli.plugins.Separator`, or None (default model)."""


class LayoutError(ValueError, RuntimeError):
    """The channel layout of an array cannot be determined (pedalboard raises RuntimeError here)."""


# ----------------------------------------------------------------------------- layout


MONO, CHANNELS_FIRST, CHANNELS_LAST = "mono", "channels_first", "channels_last"


def detect_layout(shape: Sequence[int], channel_hint: int | None = None) -> str:
    """Which axis holds the channels, decided exactly like pedalboard's ``detectChannelLayout``.

    Args:
        shape: the array's shape, ``(samples,)`` or 2-D.
        channel_hint: the channel count of an earlier call, if any.

    Returns:
        ``"mono"`` for 1-D, ``"channels_first"`` for ``(channels, samples)``,
        ``"channels_last"`` for ``(samples, channels)``.

    Raises:
        LayoutError: a square ``(k, k)`` shape with ``k > 1``, or not 1-D/2-D.
    """
    if len(shape) == 1:
        return MONO
    if len(shape) != 2:
        raise LayoutError(f"audio must have 1 or 2 dimensions, got shape {tuple(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    if channel_hint:
        if rows == cols and rows > 1:
            raise LayoutError(f"unable to determine the channel layout from shape ({rows}, {cols})")
        if rows == channel_hint:
            return CHANNELS_FIRST
        if cols == channel_hint:
            return CHANNELS_LAST
    if rows == 0 and cols > 0:
        return CHANNELS_LAST
    if cols == 0 and rows > 0:
        return CHANNELS_FIRST
    if cols < rows:
        return CHANNELS_LAST
    if rows < cols:
        return CHANNELS_FIRST
    if rows == 1:  # a single sample: the layout does not matter
        return CHANNELS_FIRST
    raise LayoutError(
        f"unable to determine the channel layout from shape ({rows}, {cols}); pass a non-square "
        "array first (the effect then remembers the channel count), or transpose to (channels, samples)"
    )


class _LayoutCache:
    """Per-effect memory of the last channel count and layout (pedalboard's ``parseAndCacheChannelLayout``)."""

    def __init__(self) -> None:
        self.channels = 0
        self.layout: str | None = None

    def parse(self, shape: Sequence[int]) -> str:
        hint = self.channels or None
        if self.layout is not None:
            try:
                return detect_layout(shape, hint)
            except LayoutError:
                if len(shape) != 2:
                    raise
                return self.layout  # square array after a non-square one: reuse the layout
        return detect_layout(shape, hint)

    def remember(self, layout: str, channels: int) -> None:
        self.layout, self.channels = layout, channels


def as_float32(input_array: Any) -> np.ndarray:
    """float32/float64 -> float32 (copy-free for float32); other dtypes raise ``TypeError`` like pedalboard."""
    x = np.asarray(input_array)
    if x.dtype == np.float32:
        return x
    if x.dtype == np.float64:
        return x.astype(np.float32)
    raise TypeError(
        f"stemcli effects (like pedalboard) only support 32-bit and 64-bit floating point audio, got {x.dtype}"
    )


def to_channels_first(x: np.ndarray, layout: str) -> np.ndarray:
    """[shape=(samples,)], (channels, samples) or (samples, channels) -> [shape=(channels, samples)]."""
    if layout == MONO:
        return x[None, :]
    if layout == CHANNELS_LAST:
        return np.ascontiguousarray(x.T)
    return x


def from_channels_first(y: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of :func:`to_channels_first`; the result is a float32 array in ``layout``."""
    y = np.asarray(y, dtype=np.float32)
    if layout == MONO:
        return np.ascontiguousarray(y[0])
    if layout == CHANNELS_LAST:
        return np.ascontiguousarray(y.T)
    return np.ascontiguousarray(y)


def _native_plugin_type() -> type | None:
    try:
        from pedalboard import Plugin
    except ImportError:  # pragma: no cover - pedalboard is a dependency
        return None
    return Plugin


def is_native_plugin(obj: Any) -> bool:
    """True for pedalboard's own plugins and chains (``Gain()``, ``Pedalboard([...])``)."""
    plugin = _native_plugin_type()
    return plugin is not None and isinstance(obj, plugin)


def check_processor(step: Any, where: str) -> Any:
    """Accept a pedalboard plugin/chain, a stemcli effect, an object with ``process``, or a callable."""
    if isinstance(step, OfflineEffect) or is_native_plugin(step) or callable(getattr(step, "process", None)) or callable(step):
        return step
    raise TypeError(
        f"{where}: {type(step).__name__} is not an effect: expected a pedalboard plugin, a stemcli effect "
        "or a callable f(audio, sample_rate)"
    )


def apply(step: Any, audio: np.ndarray, sample_rate: float, buffer_size: int = DEFAULT_BUFFER_SIZE, reset: bool = True) -> np.ndarray:
    """Run one processor on channels-first audio and return channels-first float32 of the same shape.

    stemcli effects are run without layout guessing.  Native pedalboard plugins and other
    pedalboard-like objects get ``(channels, samples)``; when ``samples <= channels`` (a
    buffer of one or two samples, which pedalboard would read the other way round) the signal
    is zero-padded at the end for the call and trimmed after, which is exact for causal
    effects.  Plain callables are called as ``f(audio, sample_rate)``.

    Args:
        step: the processor.
        audio: [shape=(channels, samples)] float32.

    Raises:
        ValueError: the processor changed the shape (e.g. a plugin with latency and ``reset=False``).
    """
    if isinstance(step, OfflineEffect):
        return step._run(audio, sample_rate, buffer_size, reset)
    c, n = audio.shape
    x = audio
    if c > 1 and 0 < n <= c:
        x = np.concatenate([audio, np.zeros((c, c + 1 - n), np.float32)], axis=1)
    if is_native_plugin(step) or callable(getattr(step, "process", None)):
        y = step.process(x, sample_rate, buffer_size=buffer_size, reset=reset)
    else:
        y = step(x, sample_rate)
    y = np.asarray(y)
    if y.shape != x.shape:
        raise ValueError(
            f"{_describe(step)} returned shape {y.shape} for input {x.shape} (channels, samples); stem "
            "effects need the same length back (plugins with latency need reset=True)"
        )
    return as_float32(y)[:, :n]


def _describe(step: Any) -> str:
    return type(step).__name__ if not isinstance(step, type) else step.__name__


def check_stems(separator: Separator, names: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` that ``separator`` has no stem for, and its stems."""
    from stemcli.plugins import suggest

    sources = tuple(separator.sources)
    for name in names:
        if name not in sources:
            model = separator.name or type(separator).__name__
            raise ValueError(
                f"{what}: model '{model}' has no stem '{name}'{suggest(name, sources)} (stems: {', '.join(sources)})"
            )


# ----------------------------------------------------------------------------- base classes


class OfflineEffect:
    """Base of every stemcli effect: pedalboard's call shape over a whole-buffer ``_process``.

    Subclasses implement ``_process(audio, sample_rate, buffer_size, reset)`` on
    ``(channels, samples)`` float32 and return the same shape.  Layout detection, dtype
    conversion and the empty-buffer case are handled here.

    Attributes:
        is_effect: True (like pedalboard's effect plugins).
        is_instrument: False.
    """

    is_effect = True
    is_instrument = False

    def __init__(self) -> None:
        self._layout = _LayoutCache()

    def process(
        self, input_array: np.ndarray, sample_rate: float, buffer_size: int = DEFAULT_BUFFER_SIZE, reset: bool = True
    ) -> np.ndarray:
        """Process a whole buffer, offline.

        Args:
            input_array: [shape=(channels, samples)], [shape=(samples, channels)] or
                [shape=(samples,)] float32/float64 (the layout is detected like pedalboard does).
            sample_rate: Hz.
            buffer_size: block size for the pedalboard plugins run inside.
            reset: reset the internal pedalboard plugins first (``False`` keeps their tails).

        Returns:
            float32, same shape and layout as ``input_array``.
        """
        x = as_float32(input_array)
        layout = self._layout.parse(x.shape)
        audio = to_channels_first(x, layout)
        out = self._run(audio, sample_rate, buffer_size, reset)
        self._layout.remember(layout, audio.shape[0])
        return from_channels_first(out, layout)

    def __call__(
        self, input_array: np.ndarray, sample_rate: float, buffer_size: int = DEFAULT_BUFFER_SIZE, reset: bool = True
    ) -> np.ndarray:
        """Alias of :meth:`process` (as in pedalboard)."""
        return self.process(input_array, sample_rate, buffer_size=buffer_size, reset=reset)

    def reset(self) -> None:
        """Clear internal state (tails of the pedalboard plugins inside); stemcli effects hold none."""

    def _run(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        if not (isinstance(sample_rate, (int, float, np.integer, np.floating)) and sample_rate > 0):
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
        if int(buffer_size) < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        audio = as_float32(audio)
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            return audio.copy()
        out = self._process(audio, float(sample_rate), int(buffer_size), bool(reset))
        return as_float32(out)

    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        raise NotImplementedError


class SeparatingEffect(OfflineEffect):
    """An effect that separates its input with a separator loaded once, at construction.

    Args:
        model: separator name (``stemcli list``), model file, a ready
            :class:`~stemcli.plugins.Separator` (shared, not copied), or None for the default
            model (the shipped 4-stem model when installed, else ``hpss``).
        residual: see the module docstring.
    """

    def __init__(self, model: ModelSpec = None, residual: bool = True) -> None:
        super().__init__()
        from stemcli.api import get_separator

        self.separator: Separator = get_separator(model)
        self.residual = bool(residual)

    @property
    def sources(self) -> tuple[str, ...]:
        """The separator's stem names."""
        return tuple(self.separator.sources)

    def _check_stems(self, names: Iterable[str], what: str) -> None:
        check_stems(self.separator, names, what)

    def separate(self, audio: np.ndarray, sample_rate: float, stems: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Separate channels-first audio with this effect's separator.

        Args:
            audio: [shape=(channels, samples)] float32, 1 or 2 channels.
            stems: the stems wanted (default: all).

        Returns:
            stem -> [shape=audio.shape] float32.
        """
        from stemcli.api import separate

        if audio.shape[0] > 2:
            raise ValueError(
                f"{type(self).__name__}: separation works on mono or stereo audio, got {audio.shape[0]} channels"
            )
        rate = int(round(sample_rate))
        return separate(audio, rate, model=self.separator, stems=list(stems) if stems is not None else None)

    def _remix(
        self,
        audio: np.ndarray,
        sample_rate: float,
        changes: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    ) -> np.ndarray:
        """``mix + sum(f(stem) - stem)`` (residual) or ``sum(f(stem))`` over all stems."""
        if self.residual:
            if not changes:
                return audio.copy()
            stems = self.separate(audio, sample_rate, list(changes))
            out = audio.astype(np.float64)
            for name, f in changes.items():
                out += f(stems[name]).astype(np.float64) - stems[name]
            return out.astype(np.float32)
        stems = self.separate(audio, sample_rate)
        out = np.zeros(audio.shape, np.float64)
        for name in self.sources:
            out += changes[name](stems[name]) if name in changes else stems[name]
        return out.astype(np.float32)

    def _repr_model(self) -> str:
        return self.separator.name or type(self.separator).__name__


# ----------------------------------------------------------------------------- effects


def _db_to_gain(db: float) -> float:
    return 0.0 if db == -math.inf else float(10.0 ** (db / 20.0))


class StemGain(SeparatingEffect):
    """Change the level of stems, in dB: ``StemGain(vocals=+6, drums=-60)``.

    Offline (separates the whole buffer it is given, see the module docstring).  Stems not
    named stay at 0 dB; ``-inf`` mutes a stem.

    Args:
        model: see :class:`SeparatingEffect`.
        residual: see the module docstring.
        **gains_db: stem name -> gain in dB.

    Raises:
        ValueError: a name that is not a stem of the model (the message lists the stems), or a
            gain that is NaN or +inf.
    """

    def __init__(self, model: ModelSpec = None, *, residual: bool = True, **gains_db: float) -> None:
        super().__init__(model, residual)
        self._check_stems(gains_db, "StemGain")
        for name, db in gains_db.items():
            if not isinstance(db, (int, float, np.integer, np.floating)) or math.isnan(db) or db == math.inf:
                raise ValueError(f"StemGain: gain for '{name}' must be a finite number of dB or -inf, got {db!r}")
        self.gains_db = {name: float(db) for name, db in gains_db.items()}

    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        changes = {
            name: (lambda s, g=_db_to_gain(db): s * np.float32(g))
            for name, db in self.gains_db.items()
            if db != 0.0 or not self.residual
        }
        return self._remix(audio, sample_rate, changes)

    def __repr__(self) -> str:
        gains = ", ".join(f"{k}={v:+g}" for k, v in self.gains_db.items())
        return f"<stemcli.effects.StemGain model={self._repr_model()!r} {gains} dB>"


def pan_stereo(audio: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan of the centre (mid) of a stereo signal, keeping its width (side).

    ``M = (L + R) / 2``, ``S = (L - R) / 2``, ``theta = (pan + 1) * pi / 4``::

        L' = sqrt(2) cos(theta) M + S,   R' = sqrt(2) sin(theta) M - S

    ``pan = 0`` is the identity, ``-1`` puts the centre fully left, ``+1`` fully right; the
    power of the centre, ``L'^2 + R'^2`` of the mid part, is the same at every position.

    Args:
        audio: [shape=(2, samples)].
        pan: in [-1, 1].

    Returns:
        [shape=(2, samples)] float32.
    """
    if audio.shape[0] != 2:
        raise ValueError(f"panning needs stereo (2-channel) audio, got {audio.shape[0]} channel(s)")
    theta = (float(pan) + 1.0) * math.pi / 4.0
    mid = 0.5 * (audio[0] + audio[1])
    side = 0.5 * (audio[0] - audio[1])
    left = math.sqrt(2.0) * math.cos(theta) * mid + side
    right = math.sqrt(2.0) * math.sin(theta) * mid - side
    return np.stack([left, right]).astype(np.float32)


def _check_pan(value: Any, where: str) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or not (-1.0 <= float(value) <= 1.0):
        raise ValueError(f"{where}: pan must be a number in [-1, 1] (-1 left, 0 centre, +1 right), got {value!r}")
    return float(value)


class Pan(OfflineEffect):
    """Constant-power pan of a stereo signal's centre (see :func:`pan_stereo`); no separation.

    Useful inside :class:`StemChain` or :class:`EffectChain`.  Needs stereo input.

    Args:
        pan: -1 (left) .. 0 (unchanged) .. +1 (right).
    """

    def __init__(self, pan: float = 0.0) -> None:
        super().__init__()
        self.pan = _check_pan(pan, "Pan")

    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        return pan_stereo(audio, self.pan)

    def __repr__(self) -> str:
        return f"<stemcli.effects.Pan pan={self.pan:+g}>"


class StemPan(SeparatingEffect):
    """Move stems in the stereo field: ``StemPan(vocals=-0.3, drums=0.2)``.

    Each named stem's centre is panned with a constant-power law (:func:`pan_stereo`); its
    stereo width is kept.  Stereo input only.  Offline (whole buffer, see the module docstring).

    Args:
        model: see :class:`SeparatingEffect`.
        residual: see the module docstring.
        **pans: stem name -> pan in [-1, 1].

    Raises:
        ValueError: unknown stem (the message lists the stems) or a pan outside [-1, 1].
    """

    def __init__(self, model: ModelSpec = None, *, residual: bool = True, **pans: float) -> None:
        super().__init__(model, residual)
        self._check_stems(pans, "StemPan")
        self.pans = {name: _check_pan(p, f"StemPan '{name}'") for name, p in pans.items()}

    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        if audio.shape[0] != 2:
            raise ValueError(f"StemPan needs stereo input, got {audio.shape[0]} channel(s)")
        changes = {
            name: (lambda s, p=p: pan_stereo(s, p)) for name, p in self.pans.items() if p != 0.0 or not self.residual
        }
        return self._remix(audio, sample_rate, changes)

    def __repr__(self) -> str:
        pans = ", ".join(f"{k}={v:+g}" for k, v in self.pans.items())
        return f"<stemcli.effects.StemPan model={self._repr_model()!r} {pans}>"


class Karaoke(SeparatingEffect):
    """Remove the vocals (or any stems): the mixture minus the separator's estimate of them.

    ``out = mix - sum(stems in suppress)``.  For a mask-based separator (masks summing to
    one) this equals the sum of the other stems; for any other separator it keeps whatever the
    model did not call vocals (instruments it has no stem for, its residual) instead of
    dropping it, and it only needs the suppressed stems, so a separator may skip the others.
    With ``keep`` the output is instead built from the kept stems only: ``sum(stems in keep)``.

    Offline (whole buffer, see the module docstring).

    Args:
        model: see :class:`SeparatingEffect`.  ``Karaoke(model="hpss", suppress="percussive")``
            removes drums with the training-free HPSS separator.
        keep: stems to keep (the output is their sum); ``suppress`` is then ignored.
        suppress: stem name or names to remove (default ``"vocals"``).

    Raises:
        ValueError: a stem the model does not have (the message lists the stems).
    """

    def __init__(
        self, model: ModelSpec = None, keep: str | Sequence[str] | None = None, suppress: str | Sequence[str] = "vocals"
    ) -> None:
        super().__init__(model, residual=keep is None)
        self.keep = None if keep is None else ([keep] if isinstance(keep, str) else list(keep))
        self.suppress = [suppress] if isinstance(suppress, str) else list(suppress)
        if self.keep is not None:
            if not self.keep:
                raise ValueError("Karaoke: keep must name at least one stem")
            self._check_stems(self.keep, "Karaoke keep")
        else:
            if not self.suppress:
                raise ValueError("Karaoke: suppress must name at least one stem")
            self._check_stems(self.suppress, "Karaoke suppress")

    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        if self.keep is not None:
            stems = self.separate(audio, sample_rate, self.keep)
            return np.sum([stems[s].astype(np.float64) for s in self.keep], axis=0).astype(np.float32)
        stems = self.separate(audio, sample_rate, self.suppress)
        out = audio.astype(np.float64)
        for name in self.suppress:
            out -= stems[name]
        return out.astype(np.float32)

    def __repr__(self) -> str:
        what = f"keep={self.keep}" if self.keep is not None else f"suppress={self.suppress}"
        return f"<stemcli.effects.Karaoke model={self._repr_model()!r} {what}>"


class StemChain(SeparatingEffect):
    """Separate, run a chain per stem, remix: ``StemChain({"vocals": Pedalboard([Reverb()])})``.

    Each processor gets its stem as ``(channels, samples)`` float32 at the call's sample rate
    and must return the same shape.  A processor may be a pedalboard plugin or
    ``Pedalboard``, a stemcli effect (even another separating one, e.g. a :class:`StemGain`
    that re-separates the stem), an :class:`EffectChain`, or a callable ``f(audio, sample_rate)``.
    Stems without a processor pass through unchanged.  Offline (whole buffer, see the module
    docstring); reverb tails that would ring past the end of the buffer are cut, as in
    pedalboard with ``reset=True``.

    Args:
        chains: stem name -> processor.
        model: see :class:`SeparatingEffect`.
        residual: see the module docstring.

    Raises:
        ValueError: unknown stem (the message lists the stems).
        TypeError: a processor that is not an effect.
    """

    def __init__(self, chains: Mapping[str, Any], model: ModelSpec = None, *, residual: bool = True) -> None:
        super().__init__(model, residual)
        if not isinstance(chains, Mapping):
            raise TypeError(f"StemChain: chains must be a mapping stem -> effect, got {type(chains).__name__}")
        self._check_stems(chains, "StemChain")
        self.chains = {name: check_processor(step, f"StemChain '{name}'") for name, step in chains.items()}

    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        changes = {
            name: (lambda s, step=step: apply(step, s, sample_rate, buffer_size, reset))
            for name, step in self.chains.items()
        }
        return self._remix(audio, sample_rate, changes)

    def reset(self) -> None:
        for step in self.chains.values():
            if callable(getattr(step, "reset", None)):
                step.reset()

    def __repr__(self) -> str:
        return f"<stemcli.effects.StemChain model={self._repr_model()!r} {self.chains!r}>"


class EffectChain(OfflineEffect, MutableSequence):
    """A list of effects run in order: native pedalboard plugins and stemcli effects mixed.

    ``EffectChain([Gain(-3), StemChain({...}), Reverb()])(audio, 44100)``.  It behaves like
    ``pedalboard.Pedalboard`` (list methods, ``process``/``__call__`` with the same signature,
    ``reset``, ``is_effect``) but is *not* a ``Pedalboard`` subclass, on purpose: a native
    ``Pedalboard`` stores only native plugins, so it could not hold stemcli effects, and a
    ``Pedalboard`` subclass nested in another ``Pedalboard`` has its Python ``process``
    silently skipped.  ``isinstance(chain, pedalboard.Pedalboard)`` is therefore False;
    an ``EffectChain`` can be nested in another ``EffectChain`` or used in a :class:`StemChain`,
    and a ``Pedalboard`` can be one of its steps.

    The layout of the input is detected once (as pedalboard does) and every step runs on
    ``(channels, samples)``.  Running the native plugins one call each is what pedalboard does
    internally too (it runs each plugin over the whole buffer before the next), so a chain of
    only native plugins gives the same samples as ``Pedalboard`` with the same plugins.

    Args:
        plugins: the steps.
    """

    def __init__(self, plugins: Iterable[Any] | None = None) -> None:
        OfflineEffect.__init__(self)
        self._steps: list[Any] = []
        for step in plugins or []:
            self.append(step)

    # list behaviour -------------------------------------------------------------
    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._steps[index]

    def __setitem__(self, index, value) -> None:  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            self._steps[index] = [check_processor(v, "EffectChain") for v in value]
        else:
            self._steps[index] = check_processor(value, "EffectChain")

    def __delitem__(self, index) -> None:  # type: ignore[no-untyped-def]
        del self._steps[index]

    def __len__(self) -> int:
        return len(self._steps)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._steps)

    def insert(self, index: int, value: Any) -> None:
        self._steps.insert(index, check_processor(value, "EffectChain"))

    # processing -----------------------------------------------------------------
    def _process(self, audio: np.ndarray, sample_rate: float, buffer_size: int, reset: bool) -> np.ndarray:
        for step in self._steps:
            audio = apply(step, audio, sample_rate, buffer_size, reset)
        return audio

    def reset(self) -> None:
        for step in self._steps:
            if callable(getattr(step, "reset", None)):
                step.reset()

    def __repr__(self) -> str:
        n = len(self._steps)
        return f"<EffectChain with {n} plugin{'' if n == 1 else 's'}: {self._steps!r}>"


# ----------------------------------------------------------------------------- files


BIT_DEPTH_OF_SUBTYPE = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 32, "PCM_U8": 16, "PCM_S8": 16}
MAX_BIT_DEPTH = {".wav": 32, ".flac": 24, ".aiff": 24, ".aif": 24}
LOSSY = (".mp3", ".ogg", ".oga", ".opus")


def output_bit_depth(input_subtype: str, output: Path, requested: int | None = None) -> int:
    """The bit depth to write: ``requested``, else the input's (PCM 16/24, float -> 32); lossy -> 16.

    Clamped to what the output format can hold (FLAC/AIFF: 24).  For lossy outputs (mp3, ogg)
    the value is ignored by the encoder.

    Raises:
        ValueError: ``requested`` is not possible for the output format.
    """
    suffix = output.suffix.lower()
    if suffix in LOSSY:
        return 16  # ignored by the encoder
    top = MAX_BIT_DEPTH.get(suffix, 32)
    if requested is not None:
        if requested not in (16, 24, 32):
            raise ValueError(f"{output}: bit depth must be 16, 24 or 32, got {requested}")
        if requested > top:
            raise ValueError(f"{output}: {suffix} files cannot hold {requested}-bit audio (up to {top})")
        return requested
    return min(BIT_DEPTH_OF_SUBTYPE.get(input_subtype.upper(), 16), top)


def process_file(
    effect: Any,
    input_path: str | Path,
    output_path: str | Path,
    force: bool = False,
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """Run ``effect`` over a whole audio file and write the result atomically.

    Reads and writes with ``pedalboard.io.AudioFile`` (wav, flac, aiff, ogg, mp3 by
    extension) at the input's sample rate and channel count; the output goes to a hidden
    temporary file next to ``output_path`` and is renamed only when complete.

    Args:
        effect: anything with pedalboard's call shape.
        bit_depth: 16, 24 or 32 (float); default: keep the input's (see :func:`output_bit_depth`).

    Returns:
        ``{"path", "sample_rate", "channels", "frames", "bit_depth", "lossy", "peak"}`` (peak
        linear, before any clipping by the file format).

    Raises:
        stemcli.audio.AudioError: missing/unreadable input; FileExistsError: output exists
        without ``force``; ValueError: same file for input and output, bad bit depth.
    """
    from pedalboard.io import AudioFile

    from stemcli.audio import AudioError, first_line, probe, temp_path_for

    src, dst = Path(input_path), Path(output_path)
    info = probe(src)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: output is the input file; choose another output")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst}: output exists (use --force to overwrite)")
    if dst.is_dir():
        raise ValueError(f"{dst}: is a directory; give an output file name")
    depth = output_bit_depth(info.subtype, dst, bit_depth)
    try:
        with AudioFile(str(src)) as f:
            audio = f.read(f.frames)
            rate, channels = int(f.samplerate), int(f.num_channels)
    except Exception as exc:
        raise AudioError(f"{src}: cannot read ({first_line(exc)})") from None
    if not np.isfinite(audio).all():
        raise AudioError(f"{src}: contains NaN or Inf samples")
    out = np.asarray(effect(audio, rate), dtype=np.float32)
    if out.shape != audio.shape:
        raise ValueError(f"{src}: the effect returned shape {out.shape} for {audio.shape}")
    peak = float(np.abs(out).max()) if out.size else 0.0
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dst)
    try:
        with AudioFile(str(tmp), "w", rate, channels, bit_depth=depth) as f:
            f.write(out)
        os.replace(tmp, dst)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OSError):
            raise ValueError(f"{dst}: cannot write ({str(exc).splitlines()[0]})") from None
        raise
    return {"path": dst, "sample_rate": rate, "channels": channels, "frames": out.shape[-1], "bit_depth": depth,
            "lossy": dst.suffix.lower() in LOSSY, "peak": peak}


def build_remix(
    model: ModelSpec = None,
    gains: Mapping[str, float] | None = None,
    pans: Mapping[str, float] | None = None,
    fx: Mapping[str | None, Sequence[Any]] | None = None,
    karaoke: bool = False,
    backend: str | None = None,
) -> EffectChain:
    """The effect behind ``stemcli remix``: one separation, then per stem fx -> gain -> pan.

    Args:
        model: see :class:`SeparatingEffect`.
        gains: stem -> dB.
        pans: stem -> [-1, 1].
        fx: stem -> plugins run on that stem, in order; the key ``None`` holds plugins run on
            the whole remixed output afterwards.
        karaoke: remove the ``vocals`` stem (mixture minus vocals).
        backend: ``"onnx"``/``"torch"`` for model-based separators.

    Raises:
        ValueError: unknown stem (listing the stems), nothing to do, or karaoke together with
            a gain/pan/fx on the vocals.
    """
    gains, pans, fx = dict(gains or {}), dict(pans or {}), dict(fx or {})
    mix_fx = list(fx.pop(None, []))
    stems = set(gains) | set(pans) | set(fx)
    if not (stems or karaoke or mix_fx):
        raise ValueError("nothing to do: give --gain, --pan, --fx or --karaoke")
    chain = EffectChain()
    if stems or karaoke:
        from pedalboard import Gain

        from stemcli.api import get_separator

        separator = get_separator(model, backend)
        for what, names in (("--gain", gains), ("--pan", pans), ("--fx", fx)):
            check_stems(separator, names, what)
        if karaoke:
            check_stems(separator, ["vocals"], "--karaoke")
            if "vocals" in stems:
                raise ValueError("--karaoke removes the vocals: drop the --gain/--pan/--fx given for 'vocals'")
        per_stem: dict[str, Any] = {}
        for name in [s for s in separator.sources if s in stems]:
            steps: list[Any] = list(fx.get(name, []))
            if gains.get(name, 0.0) != 0.0:
                steps.append(Gain(gain_db=float(gains[name])))
            if pans.get(name, 0.0) != 0.0:
                steps.append(Pan(_check_pan(pans[name], f"--pan {name}")))
            if steps:
                per_stem[name] = EffectChain(steps)
        if karaoke:
            per_stem["vocals"] = Gain(gain_db=-math.inf)
        if per_stem:
            chain.append(StemChain(per_stem, separator))
    chain.extend(mix_fx)
    return chain


__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "EffectChain",
    "Karaoke",
    "LayoutError",
    "OfflineEffect",
    "Pan",
    "SeparatingEffect",
    "StemChain",
    "StemGain",
    "StemPan",
    "apply",
    "build_remix",
    "check_stems",
    "detect_layout",
    "pan_stereo",
    "process_file",
]
