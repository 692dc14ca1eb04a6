"""The memory allocator of stemcli's heavy commands: tcmalloc when it is installed.

Training steps and separated chunks allocate and free arrays of tens to hundreds of MB each
time (complex spectrograms, masks, their gradients, stems).  glibc's ``malloc`` serves every
block above its 32 MiB ceiling for heap reuse with a fresh ``mmap`` and unmaps it on ``free``,
so the kernel faults in and zeroes those pages again on every step.  tcmalloc keeps freed
memory and hands it out again.  Measured on a 2-core AMD EPYC (export/README.md, "Session 17"):
an ``mmdense`` training step (batch 8 x 3 s, one thread) 1.4x faster, an Open-Unmix step 1.25x,
a 30 s separation about 1.1x; the results are the same, only the allocator differs.

The library cannot be swapped inside a running process, so the ``stemcli`` command re-executes
itself once with ``LD_PRELOAD`` naming it, before any heavy import, for the commands in
:data:`HEAVY` (``stemcli --help`` and ``stemcli list`` start as before).  The set-up installs
Debian's ``libtcmalloc-minimal4``; without it nothing changes.  ``STEMCLI_ALLOCATOR``:
``system`` (glibc, also when tcmalloc was preloaded by the caller), ``tcmalloc`` (required:
an error if it is not installed), a path to another preloadable allocator, or unset (tcmalloc
if installed).  A re-executed process never re-executes again (:data:`MARK`); a library that
does not load gives one warning and the system allocator.  A Python program that imports
:mod:`stemcli` keeps its own allocator (start it with ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
import sysconfig
from pathlib import Path
from typing import Mapping, Sequence

HEAVY = frozenset({"separate", "train", "evaluate", "export", "remix"})
NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
KNOWN = ("tcmalloc", "jemalloc", "mimalloc")  # allocators active() recognises by name
CHOICES = ("auto", "tcmalloc", "system")  # a benchmark's --allocator choices (resolve)
ENV = "STEMCLI_ALLOCATOR"
MARK = "STEMCLI_ALLOCATOR_REEXEC"  # set across a re-exec: the new process does not re-exec again
# tcmalloc reports every single allocation above 1 GiB on stderr: keep the commands' output clean
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc() -> str | None:
    """Path (or, from the linker's cache, file name) of an installed tcmalloc library, or None."""
    dirs = [Path("/usr/lib") / str(sysconfig.get_config_var("MULTIARCH") or ""), Path("/usr/lib64"),
            Path("/usr/lib"), Path("/usr/local/lib")]
    for d in dirs:
        for name in NAMES:
            if (d / name).is_file():
                return str(d / name)
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def _maps() -> str | None:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return None


def active() -> str:
    """The allocator of this process: ``"tcmalloc"``, ``"jemalloc"`` or ``"mimalloc"`` when such
    a library is mapped, the file name of a library ``STEMCLI_ALLOCATOR`` names when it is,
    else ``"system"``."""
    maps = _maps() or ""
    for name in KNOWN:
        if f"lib{name}" in maps:
            return name
    custom = os.environ.get(ENV, "").strip()
    if custom not in ("", "system", "tcmalloc") and _is_mapped(custom, maps):
        return Path(custom).name
    return "system"


def _is_mapped(lib: str, maps: str | None = None) -> bool:
    maps = _maps() if maps is None else maps
    if maps is None:
        return True  # no /proc: cannot tell
    return os.path.realpath(lib) in maps or Path(lib).name in maps


def _entries(preload: str) -> list[str]:
    return preload.replace(":", " ").split()


def plan(command: str | None, env: Mapping[str, str], found: str | None) -> tuple[str, str] | None:
    """What to re-execute with, or None to run as is.

    Args:
        command: the subcommand about to run (None: none given).
        env: the environment (``STEMCLI_ALLOCATOR``, ``LD_PRELOAD``, :data:`MARK`).
        found: what :func:`find_tcmalloc` returned.

    Returns:
        ``(choice, LD_PRELOAD value)`` for the new process, or None.

    Raises:
        ValueError: ``STEMCLI_ALLOCATOR`` asks for what cannot be had (a missing file, a path
            LD_PRELOAD cannot hold, tcmalloc when it is not installed).
    """
    if command not in HEAVY or MARK in env:
        return None
    choice = env.get(ENV, "").strip()
    entries = _entries(env.get("LD_PRELOAD", ""))
    if choice == "system":
        kept = [p for p in entries if "libtcmalloc" not in p]
        return ("system", " ".join(kept)) if kept != entries else None
    if choice in ("", "tcmalloc"):
        if choice == "tcmalloc" and found is None:
            raise ValueError(f"{ENV}=tcmalloc: tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
        if found is None or any("libtcmalloc" in p for p in entries):
            return None  # not installed, or already preloaded (by the caller)
        lib = found
    else:
        if any(c in choice for c in " \t\n:"):
            raise ValueError(f"{ENV}={choice}: LD_PRELOAD cannot hold a path with a space or a colon")
        if not Path(choice).is_file():
            raise ValueError(f"{ENV}={choice}: no such library (use 'system', 'tcmalloc' or a path to a .so)")
        if choice in entries:
            return None
        lib = choice
    return lib, " ".join([lib, *entries])


def resolve(choice: str) -> str:
    """``"tcmalloc"`` or ``"system"`` for a benchmark's ``--allocator`` choice (``"auto"``:
    tcmalloc if installed).

    Raises:
        ValueError: unknown choice, or tcmalloc asked for and not installed.
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown allocator '{choice}' (choose tcmalloc, system or auto)")
    installed = find_tcmalloc() is not None
    if choice == "tcmalloc" and not installed:
        raise ValueError("tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
    return choice if choice != "auto" else ("tcmalloc" if installed else "system")


def child_env(choice: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that should run with ``choice`` (see
    :func:`resolve`), from ``base`` (default ``os.environ``); for benchmarks comparing the two.

    Raises:
        ValueError: as :func:`resolve`.
    """
    env = dict(os.environ if base is None else base)
    env.pop(MARK, None)
    kept = [p for p in _entries(env.get("LD_PRELOAD", "")) if "libtcmalloc" not in p]
    if resolve(choice) == "system":
        env[ENV] = "system"
    else:
        kept.insert(0, str(find_tcmalloc()))
        env.pop(ENV, None)
        for key, value in QUIET.items():
            env.setdefault(key, value)
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def _exec(argv: Sequence[str] | None, env: Mapping[str, str]) -> None:
    """Replace this process by ``argv`` (default: this interpreter's own command line)."""
    args = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(args[0], args, dict(env))


def ensure_script(choice: str, script: str | Path, argv: Sequence[str] | None = None) -> str:
    """:func:`ensure` for a Python script run as ``python SCRIPT ARGS``: re-executes ``script``
    with ``argv`` (default: this process's arguments) under ``choice`` if needed.

    Raises:
        ValueError, RuntimeError: as :func:`ensure`.
    """
    return ensure(choice, [sys.executable, str(Path(script).resolve()), *(sys.argv[1:] if argv is None else argv)])


def ensure(choice: str, argv: Sequence[str] | None = None) -> str:
    """Make this process run with ``choice`` (see :func:`resolve`): return the allocator in
    use if it does, else re-execute ``argv`` (default: this interpreter's command line) under
    it, once.

    Raises:
        ValueError: as :func:`resolve`.
        RuntimeError: the re-executed process still runs with the other allocator.
    """
    choice = resolve(choice)
    if active() == choice:
        os.environ.pop(MARK, None)  # not inherited by this process's children
        return choice
    if os.environ.get(MARK) == choice:
        raise RuntimeError(f"started again with LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
                           f"but the allocator is still {active()}")
    env = child_env(choice)
    env[MARK] = choice
    _exec(argv, env)
    return choice  # not reached


def maybe_reexec(command: str | None, argv: Sequence[str] | None = None) -> None:
    """Re-execute this process once with the allocator :func:`plan` picks (returns only if
    none is needed, or in the re-executed process, or if the exec fails: then with a warning).

    In the re-executed process (:data:`MARK` set), a library that did not load is reported in
    one line and dropped from ``LD_PRELOAD`` (so child processes do not repeat ld.so's error).

    Raises:
        ValueError: as :func:`plan`.
    """
    done = os.environ.pop(MARK, None)
    if done is not None:
        if done != "system" and not _is_mapped(done):
            kept = [p for p in _entries(os.environ.get("LD_PRELOAD", "")) if p != done]
            os.environ["LD_PRELOAD"] = " ".join(kept)
            print(f"warning: {done} could not be preloaded; running with the system allocator", file=sys.stderr)
        return
    todo = plan(command, os.environ, find_tcmalloc())
    if todo is None:
        return
    lib, preload = todo
    env = dict(os.environ)
    env[MARK] = lib
    if preload:
        env["LD_PRELOAD"] = preload
    else:
        env.pop("LD_PRELOAD", None)
    if lib != "system":
        for key, value in QUIET.items():
            env.setdefault(key, value)
    try:
        _exec(argv, env)
    except OSError as exc:
        print(f"warning: could not restart under {lib} ({exc}); running with the current allocator", file=sys.stderr)


def own_command_line() -> bool:
    """Whether ``sys.argv`` is this interpreter's own command line (a console script or
    ``python -m``), not one set by a program calling :func:`stemcli.cli.main` in-process:
    only then may the process be re-executed."""
    tail = sys.argv[1:]
    orig = getattr(sys, "orig_argv", [])
    return len(orig) > len(tail) and orig[len(orig) - len(tail):] == tail and \
        Path(orig[len(orig) - len(tail) - 1]).name in (Path(sys.argv[0]).name, "stemcli", "-m")
