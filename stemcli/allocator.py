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
Debian's ``libtcmalloc-minimal4``; without it nothing changes.  ``STEMCLI_ALLOCATOR=system``
turns this off, ``STEMCLI_ALLOCATOR=/path/to/lib.so`` picks another library.  A Python
program that imports :mod:`stemcli` keeps its own allocator (start it with ``LD_PRELOAD``).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Mapping, Sequence

HEAVY = frozenset({"separate", "train", "evaluate", "export", "remix"})
NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
ENV = "STEMCLI_ALLOCATOR"
MARK = "STEMCLI_ALLOCATOR_REEXEC"  # set by ensure(): a second mismatch is an error, not a loop
# tcmalloc reports every single allocation above 1 GiB on stderr: keep the commands' output clean
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc library, or None."""
    dirs = [Path("/usr/lib") / str(sysconfig.get_config_var("MULTIARCH") or ""), Path("/usr/lib64"),
            Path("/usr/lib"), Path("/usr/local/lib")]
    for d in dirs:
        for name in NAMES:
            if (d / name).is_file():
                return str(d / name)
    return None


def active() -> str:
    """The allocator of this process: ``"tcmalloc"`` when a tcmalloc library is mapped, else
    ``"system"``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if "libtcmalloc" in maps else "system"


def plan(command: str | None, env: Mapping[str, str], found: str | None) -> str | None:
    """The library to re-execute with, or None to run as is.

    Args:
        command: the subcommand about to run (None: none given).
        env: the environment (``STEMCLI_ALLOCATOR``, ``LD_PRELOAD``).
        found: what :func:`find_tcmalloc` returned.

    Raises:
        ValueError: ``STEMCLI_ALLOCATOR`` names a file that does not exist.
    """
    choice = env.get(ENV, "").strip()
    if command not in HEAVY or choice == "system":
        return None
    if choice and choice != "tcmalloc":
        if not Path(choice).is_file():
            raise ValueError(f"{ENV}={choice}: no such library (use 'system', 'tcmalloc' or a path to a .so)")
        lib = choice
    else:
        lib = found
    if lib is None:
        return None
    preload = env.get("LD_PRELOAD", "")
    if "libtcmalloc" in preload or lib in preload.replace(":", " ").split():
        return None  # already preloaded (by us, or by the user)
    return lib


def child_env(choice: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that should run with ``choice`` (``"tcmalloc"`` or
    ``"system"``), from ``base`` (default ``os.environ``); for benchmarks comparing the two.

    Raises:
        ValueError: unknown choice, or tcmalloc asked for and not installed.
    """
    env = dict(os.environ if base is None else base)
    kept = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if "libtcmalloc" not in p]
    if choice == "system":
        env[ENV] = "system"
    elif choice == "tcmalloc":
        lib = find_tcmalloc()
        if lib is None:
            raise ValueError("tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
        kept.insert(0, lib)
        env.pop(ENV, None)
        for key, value in QUIET.items():
            env.setdefault(key, value)
    else:
        raise ValueError(f"unknown allocator '{choice}' (choose tcmalloc or system)")
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def reexec(lib: str, argv: Sequence[str] | None = None) -> None:
    """Replace this process by ``argv`` (default: this interpreter's own command line) with
    ``lib`` preloaded; never returns."""
    args = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    for key, value in QUIET.items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(args[0], args, env)


def ensure(choice: str, argv: Sequence[str] | None = None) -> None:
    """Make this process run with ``choice`` (``"tcmalloc"`` or ``"system"``): return if it
    does, else re-execute ``argv`` (default: this interpreter's command line) under it, once.

    Raises:
        ValueError: as :func:`child_env`.
        RuntimeError: the re-executed process still runs with the other allocator.
    """
    if active() == choice:
        return
    if os.environ.get(MARK) == choice:
        raise RuntimeError(f"started again with LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
                           f"but the allocator is still {active()}")
    env = child_env(choice)
    env[MARK] = choice
    args = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(args[0], args, env)


def maybe_reexec(command: str | None, argv: Sequence[str] | None = None) -> None:
    """Re-execute with tcmalloc when :func:`plan` says so (returns only if not)."""
    lib = plan(command, os.environ, find_tcmalloc())
    if lib is not None:
        reexec(lib, argv)
