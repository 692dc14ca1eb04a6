"""Separator interface and entry-point discovery.

A separator is any class that subclasses :class:`Separator` and is registered under the
entry-point group ``stemcli.separators``.  The built-in ones in ``plugins/`` are registered
exactly like a third-party package would register its own: by an entry point in a
``pyproject.toml``.  Nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Sequence

import numpy as np

GROUP = "stemcli.separators"


class SeparatorError(Exception):
    """A user-facing problem with a separator: unknown name, bad stem, broken plugin."""


class Separator:
    """Base class of every separator.

    Subclasses set the class attributes (or instance attributes in ``__init__``) and implement
    :meth:`separate`.  Files, chunking, resampling and writing stay outside the plugin: the
    engine hands ``separate`` float32 audio at ``sample_rate`` with ``channels`` channels and
    about ``segment`` seconds long (plus context), and expects the stems back sample-aligned.

    Attributes:
        name: registry name, filled in by discovery.
        sources: stem names, in the order of the ``sources`` axis of :meth:`separate`.
        sample_rate: rate the separator works at (Hz).
        channels: channel count the separator expects (1 or 2).
        segment: preferred chunk length in seconds.
        context: seconds of real neighbouring audio the engine adds on each side of a chunk
            (where the track has them: none is invented at its edges).
        overlap: default fraction of a chunk shared with its neighbour, cross-faded
            (``--overlap`` overrides it).  A separator fed enough ``context`` gives the same
            output at a chunk's edge as inside it and needs little more than a short fade.
        description: one line for ``stemcli list``.
    """

    name: str = ""
    sources: tuple[str, ...] = ()
    sample_rate: int = 44100
    channels: int = 2
    segment: float = 10.0
    context: float = 0.0
    overlap: float = 0.25
    description: ClassVar[str] = ""

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Separate a batch of mixtures.

        Args:
            mix: [shape=(batch, channels, time)] float32 at ``sample_rate``.

        Returns:
            [shape=(batch, len(sources), channels, time)] float32, a new array on every call:
            stemcli keeps it (or views of it) after the next call and may hand it to the
            caller, so a separator must not reuse its output buffer.
        """
        raise NotImplementedError

    def select_sources(self, sources: Sequence[str]) -> None:
        """Hint that only ``sources`` are needed; a separator may skip work for the others.

        :meth:`separate` still returns every source (unneeded ones may be zeros).
        """

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sources": list(self.sources),
            "sample_rate": int(self.sample_rate),
            "channels": int(self.channels),
            "segment": float(self.segment),
            "overlap": float(self.overlap),
        }


def check_separator(sep: Any, where: str) -> Separator:
    """Validate that ``sep`` honours the interface; raise :class:`SeparatorError` otherwise."""
    if not isinstance(sep, Separator):
        raise SeparatorError(f"{where}: {type(sep).__name__} is not a stemcli.plugins.Separator")
    problems = []
    if not sep.sources or not all(isinstance(s, str) and s for s in sep.sources):
        problems.append("'sources' must be a non-empty tuple of names")
    elif len(set(sep.sources)) != len(sep.sources):
        problems.append("'sources' has duplicate names")
    if not isinstance(sep.sample_rate, (int, np.integer)) or sep.sample_rate <= 0:
        problems.append("'sample_rate' must be a positive integer")
    if sep.channels not in (1, 2):
        problems.append("'channels' must be 1 or 2")
    if not (sep.segment > 0):
        problems.append("'segment' must be positive seconds")
    if sep.context < 0:
        problems.append("'context' must be >= 0")
    if type(sep).separate is Separator.separate:
        problems.append("does not implement separate()")
    if problems:
        raise SeparatorError(f"{where}: broken separator: " + "; ".join(problems))
    return sep


@dataclass(frozen=True)
class Registered:
    """One discovered separator: its name, entry point and the distribution providing it."""

    name: str
    entry_point: EntryPoint
    distribution: str

    @property
    def origin(self) -> str:
        return f"{self.distribution} ({self.entry_point.value})"


def _distribution_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "unknown"


@lru_cache(maxsize=1)
def registry() -> dict[str, Registered]:
    """Map separator name -> :class:`Registered`, from the ``stemcli.separators`` group.

    Raises:
        SeparatorError: when two distributions claim the same name.
    """
    found: dict[str, Registered] = {}
    for ep in entry_points(group=GROUP):
        reg = Registered(ep.name, ep, _distribution_name(ep))
        if ep.name in found and found[ep.name].entry_point.value != ep.value:
            other = found[ep.name]
            raise SeparatorError(
                f"separator name '{ep.name}' is claimed by two packages: "
                f"{other.origin} and {reg.origin}; uninstall one of them"
            )
        found[ep.name] = reg
    return dict(sorted(found.items()))


def suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.4)
    return f"; did you mean '{close[0]}'?" if close else ""


def load_separator(name: str, **options: Any) -> Separator:
    """Instantiate the separator registered as ``name``.

    Args:
        name: entry-point name (see ``stemcli list``).
        **options: passed to the separator's constructor (e.g. ``backend="torch"``).

    Raises:
        SeparatorError: unknown name (with the closest suggestion) or a broken plugin.
    """
    reg = registry()
    if name not in reg:
        known = ", ".join(reg) or "none installed"
        raise SeparatorError(f"unknown model '{name}'{suggest(name, list(reg))} (known: {known})")
    ep = reg[name].entry_point
    try:
        cls = ep.load()
    except Exception as exc:  # a plugin failing to import is a plugin problem, say so
        raise SeparatorError(f"model '{name}': cannot load {ep.value}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Separator)):
        raise SeparatorError(f"model '{name}': {ep.value} is not a stemcli.plugins.Separator subclass")
    try:
        sep = cls(**options)
    except TypeError as exc:
        raise SeparatorError(f"model '{name}': bad options {sorted(options)}: {exc}") from exc
    sep.name = name
    return check_separator(sep, f"model '{name}'")
