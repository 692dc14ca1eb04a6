"""The heavy commands re-run under tcmalloc when it is installed (stemcli.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stemcli import allocator

LIB = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_plan_heavy_commands_only():
    for cmd in ("separate", "train", "evaluate", "export", "remix"):
        assert allocator.plan(cmd, {}, LIB) == LIB
    for cmd in (None, "list", "synth", "--help"):
        assert allocator.plan(cmd, {}, LIB) is None


def test_plan_respects_choice_and_existing_preload(tmp_path):
    assert allocator.plan("train", {"STEMCLI_ALLOCATOR": "system"}, LIB) is None
    assert allocator.plan("train", {}, None) is None  # not installed: run as is
    assert allocator.plan("train", {"LD_PRELOAD": LIB}, LIB) is None  # already preloaded: no loop
    assert allocator.plan("train", {"LD_PRELOAD": "/opt/libtcmalloc.so"}, LIB) is None
    assert allocator.plan("train", {"LD_PRELOAD": "/x/libother.so"}, LIB) == LIB
    lib = tmp_path / "libmine.so"
    lib.write_bytes(b"")
    assert allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(lib)}, LIB) == str(lib)
    assert allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(lib), "LD_PRELOAD": str(lib)}, LIB) is None
    with pytest.raises(ValueError, match="STEMCLI_ALLOCATOR=.*nope.so: no such library"):
        allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(tmp_path / "nope.so")}, LIB)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "STEMCLI_ALLOCATOR")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**full, **env})


needs_tcmalloc = pytest.mark.skipif(allocator.find_tcmalloc() is None,
                                    reason="tcmalloc not installed (make setup installs libtcmalloc-minimal4)")

# the console entry point on `stemcli train --help`: main() re-executes this very program (this
# -c code) with tcmalloc preloaded, the second run prints; without a re-exec the first one does
MAIN = ("import sys; sys.argv = ['stemcli', 'train', '--help']\n"
        "from stemcli import allocator, cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    print('allocator', allocator.active())\n    raise")


@needs_tcmalloc
def test_console_command_reexecs_under_tcmalloc():
    r = _run(MAIN)
    assert r.returncode == 0, r.stderr
    assert "Usage: stemcli train" in r.stdout
    assert r.stdout.count("allocator") == 1 and "allocator tcmalloc" in r.stdout


def test_console_command_system_allocator_on_request():
    r = _run(MAIN, STEMCLI_ALLOCATOR="system")
    assert r.returncode == 0, r.stderr
    assert "allocator system" in r.stdout


def test_console_command_bad_allocator_is_one_line_error(tmp_path):
    r = _run(MAIN, STEMCLI_ALLOCATOR=str(tmp_path / "missing.so"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing.so: no such library" in r.stderr
    assert "Usage" not in r.stdout and "allocator system" in r.stdout  # refused before any re-exec


@needs_tcmalloc
def test_light_commands_start_without_reexec():
    r = _run(MAIN.replace("'train', '--help'", "'list', '--help'"))
    assert r.returncode == 0, r.stderr
    assert "allocator system" in r.stdout
