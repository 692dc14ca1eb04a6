"""The heavy commands re-run under tcmalloc when it is installed (stemcli.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stemcli import allocator

LIB = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
INSTALLED = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(INSTALLED is None,
                                    reason="tcmalloc not installed (make setup installs libtcmalloc-minimal4)")


def test_plan_heavy_commands_only():
    for cmd in ("separate", "train", "evaluate", "export", "remix"):
        assert allocator.plan(cmd, {}, LIB) == (LIB, LIB)
    for cmd in (None, "list", "synth", "--help"):
        assert allocator.plan(cmd, {}, LIB) is None


def test_plan_choices_and_existing_preload(tmp_path):
    assert allocator.plan("train", {}, None) is None  # not installed: run as is
    assert allocator.plan("train", {"LD_PRELOAD": LIB}, LIB) is None  # already preloaded
    assert allocator.plan("train", {"LD_PRELOAD": "/opt/libtcmalloc.so"}, LIB) is None
    assert allocator.plan("train", {"LD_PRELOAD": "/x/libother.so"}, LIB) == (LIB, f"{LIB} /x/libother.so")
    assert allocator.plan("train", {allocator.MARK: LIB}, LIB) is None  # re-executed once: never again
    # system: nothing to do, unless tcmalloc was preloaded by the caller (then re-run without it)
    assert allocator.plan("train", {"STEMCLI_ALLOCATOR": "system"}, LIB) is None
    assert allocator.plan("train", {"STEMCLI_ALLOCATOR": "system", "LD_PRELOAD": f"{LIB}:/x/a.so"}, LIB) == \
        ("system", "/x/a.so")
    with pytest.raises(ValueError, match="STEMCLI_ALLOCATOR=tcmalloc: tcmalloc is not installed"):
        allocator.plan("train", {"STEMCLI_ALLOCATOR": "tcmalloc"}, None)
    lib = tmp_path / "libmine.so"
    lib.write_bytes(b"")
    assert allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(lib)}, LIB) == (str(lib), str(lib))
    # a custom library is preloaded even when tcmalloc already is (the caller's choice is explicit)
    assert allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(lib), "LD_PRELOAD": LIB}, LIB) == \
        (str(lib), f"{lib} {LIB}")
    assert allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(lib), "LD_PRELOAD": str(lib)}, LIB) is None
    with pytest.raises(ValueError, match="STEMCLI_ALLOCATOR=.*nope.so: no such library"):
        allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(tmp_path / "nope.so")}, LIB)
    spaced = tmp_path / "my libs" / "libx.so"
    spaced.parent.mkdir()
    spaced.write_bytes(b"")
    with pytest.raises(ValueError, match="space or a colon"):  # ld.so would split it: no loop, an error
        allocator.plan("separate", {"STEMCLI_ALLOCATOR": str(spaced)}, LIB)


def test_child_env():
    base = {"LD_PRELOAD": f"{LIB} /x/a.so", allocator.MARK: "tcmalloc", "STEMCLI_ALLOCATOR": "system", "K": "v"}
    env = allocator.child_env("system", base)
    assert env["LD_PRELOAD"] == "/x/a.so" and env["STEMCLI_ALLOCATOR"] == "system" and env["K"] == "v"
    assert allocator.MARK not in env  # a child decides afresh
    assert "LD_PRELOAD" not in allocator.child_env("system", {"LD_PRELOAD": LIB})
    with pytest.raises(ValueError, match="unknown allocator 'jemalloc'"):
        allocator.child_env("jemalloc", {})
    auto = allocator.child_env("auto", {})
    assert ("LD_PRELOAD" in auto) == (INSTALLED is not None)
    if INSTALLED is not None:
        env = allocator.child_env("tcmalloc", base)
        assert env["LD_PRELOAD"] == f"{INSTALLED} /x/a.so" and "STEMCLI_ALLOCATOR" not in env


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "STEMCLI_ALLOCATOR", allocator.MARK)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**full, **env})


@needs_tcmalloc
def test_ensure_reexecs_once_and_clears_its_mark(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import sys\nfrom stemcli import allocator\nprint('start', allocator.active())\n"
                      "print('ensured', allocator.ensure(sys.argv[1]))\n"
                      f"import os; print('mark', os.environ.get('{allocator.MARK}'))\n")
    r = _run([str(script), "tcmalloc"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["start system", "start tcmalloc", "ensured tcmalloc", "mark None"]
    r = _run([str(script), "system"], LD_PRELOAD=INSTALLED)
    assert r.stdout.splitlines() == ["start tcmalloc", "start system", "ensured system", "mark None"]


def test_ensure_refuses_to_loop():
    # a process that says it was re-executed for tcmalloc but is not running it: an error, not a loop
    code = "from stemcli import allocator; allocator.ensure('tcmalloc')"
    r = _run(["-c", code], **{allocator.MARK: "tcmalloc", "LD_PRELOAD": ""})
    if INSTALLED is None:
        assert "not installed" in r.stderr
    else:
        assert r.returncode != 0 and "but the allocator is still system" in r.stderr


def test_unloadable_library_warns_once_and_falls_back(tmp_path):
    bad = tmp_path / "libbroken.so"
    bad.write_bytes(b"not an ELF file")
    r = _run(["-m", "stemcli", "train", "--help"], STEMCLI_ALLOCATOR=str(bad))
    assert r.returncode == 0 and "Usage: stemcli train" in r.stdout  # re-executed, ran anyway
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {bad} could not be preloaded; running with the system allocator"]


def test_bad_allocator_is_one_line_error(tmp_path):
    r = _run(["-m", "stemcli", "separate", "x.wav"], STEMCLI_ALLOCATOR=str(tmp_path / "missing.so"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing.so: no such library" in r.stderr


def test_in_process_main_is_never_reexecuted(tmp_path):
    """A program calling stemcli.cli.main() with its own sys.argv keeps running as itself."""
    bad = tmp_path / "libbroken.so"
    bad.write_bytes(b"")
    code = ("import sys; sys.argv = ['stemcli', 'train', '--help']\nfrom stemcli import cli\n"
            "try:\n    cli.main()\nexcept SystemExit as e:\n    print('exit', e.code)")
    r = _run(["-c", code], STEMCLI_ALLOCATOR=str(bad))
    assert r.stdout.strip().endswith("exit 0") and "Usage: stemcli train" in r.stdout
    assert "warning" not in r.stderr and "ld.so" not in r.stderr  # no re-exec, so no preload attempt


@needs_tcmalloc
def test_light_commands_start_without_reexec(tmp_path):
    bad = tmp_path / "libbroken.so"
    bad.write_bytes(b"")
    r = _run(["-m", "stemcli", "list", "--help"], STEMCLI_ALLOCATOR=str(bad))
    assert r.returncode == 0 and "warning" not in r.stderr and "ld.so" not in r.stderr


def test_ensure_script_reexecs_the_script_with_its_arguments(monkeypatch, tmp_path):
    """A benchmark script's re-exec line: this interpreter, the script's absolute path, then
    the given arguments (or this process's own)."""
    seen = []
    monkeypatch.setattr(allocator, "ensure", lambda choice, argv=None: seen.append((choice, argv)) or choice)
    script = tmp_path / "bench.py"
    assert allocator.ensure_script("system", script, ["--x", "1"]) == "system"
    assert seen[-1] == ("system", [sys.executable, str(script.resolve()), "--x", "1"])
    monkeypatch.setattr(sys, "argv", ["bench.py", "--y"])
    allocator.ensure_script("auto", script)
    assert seen[-1] == ("auto", [sys.executable, str(script.resolve()), "--y"])
