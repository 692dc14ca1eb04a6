"""Plugin discovery: fake entry points, name clashes, broken plugins, the installed example plugin."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import stemcli.plugins as plugins
from stemcli.plugins import Separator, SeparatorError, load_separator, registry

ROOT = Path(__file__).resolve().parents[1]


class FakeDist:
    def __init__(self, name: str):
        self.name = name


def fake_ep(name: str, value: str, dist: str) -> EntryPoint:
    ep = EntryPoint(name, value, plugins.GROUP)
    return ep._for(FakeDist(dist)) if hasattr(ep, "_for") else ep


class Good(Separator):
    sources = ("x", "y")
    description = "test"

    def separate(self, mix):
        return np.stack([mix, 0 * mix], axis=1)


class NoSeparate(Separator):
    sources = ("x",)


class BadSources(Separator):
    sources = ()

    def separate(self, mix):
        return mix[:, None]


class NotASeparator:
    pass


@pytest.fixture
def fake_registry(monkeypatch):
    def install(*eps: EntryPoint) -> None:
        monkeypatch.setattr(plugins, "entry_points", lambda group: [e for e in eps if e.group == group])
        registry.cache_clear()

    yield install
    registry.cache_clear()


def test_fake_entry_point_is_discovered_and_loaded(fake_registry) -> None:
    fake_registry(fake_ep("good", f"{__name__}:Good", "goodpkg"))
    reg = registry()
    assert list(reg) == ["good"] and reg["good"].distribution == "goodpkg"
    sep = load_separator("good")
    assert isinstance(sep, Good) and sep.name == "good" and sep.sources == ("x", "y")


def test_two_packages_claiming_one_name_is_an_error_naming_both(fake_registry) -> None:
    fake_registry(fake_ep("dup", f"{__name__}:Good", "pkg-one"), fake_ep("dup", f"{__name__}:BadSources", "pkg-two"))
    with pytest.raises(SeparatorError) as err:
        registry()
    assert "pkg-one" in str(err.value) and "pkg-two" in str(err.value) and "'dup'" in str(err.value)


@pytest.mark.parametrize(
    "target,needle",
    [("NoSeparate", "does not implement separate"), ("BadSources", "'sources' must be"), ("NotASeparator", "not a stemcli.plugins.Separator"), ("Missing", "cannot load")],
)
def test_broken_plugins_are_refused_clearly(fake_registry, target: str, needle: str) -> None:
    fake_registry(fake_ep("broken", f"{__name__}:{target}", "brokenpkg"))
    with pytest.raises(SeparatorError, match=needle):
        load_separator("broken")


def test_unknown_name_suggests_closest(fake_registry) -> None:
    fake_registry(fake_ep("karaoke", f"{__name__}:Good", "p"))
    with pytest.raises(SeparatorError, match="did you mean 'karaoke'"):
        load_separator("karoke")


def test_builtin_hpss_is_registered_through_an_entry_point() -> None:
    reg = registry()
    assert "hpss" in reg and reg["hpss"].distribution == "stemcli"
    assert reg["hpss"].entry_point.value == "stemcli_hpss:HPSSSeparator"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True, text=True)


def test_installed_example_plugin_is_listed_and_runs(tmp_path: Path) -> None:
    """Install plugins/example-plugin like a third-party package, find it, run it, remove it."""
    from conftest import tone, write

    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(ROOT / "plugins" / "example-plugin"))
    try:
        stemcli = [sys.executable, "-m", "stemcli"]
        listing = subprocess.run([*stemcli, "list"], capture_output=True, text=True, check=True).stdout
        assert "midside" in listing and "stemcli-midside" in listing and "mid, side" in listing
        song = write(tmp_path / "s.wav", tone(1.0), subtype="FLOAT")
        subprocess.run([*stemcli, "separate", str(song), "-m", "midside", "-o", str(tmp_path / "o"), "--bit-depth", "32", "-q"], check=True)
        import soundfile as sf

        mid, _ = sf.read(tmp_path / "o" / "s" / "mid.wav")
        side, _ = sf.read(tmp_path / "o" / "s" / "side.wav")
        x, _ = sf.read(song)
        np.testing.assert_allclose(mid[:, 0], x.mean(axis=1), atol=1e-6)
        np.testing.assert_allclose(mid + side, x, atol=1e-6)
    finally:
        _pip("uninstall", "-y", "stemcli-midside")
    listing = subprocess.run([sys.executable, "-m", "stemcli", "list"], capture_output=True, text=True, check=True).stdout
    assert "midside" not in listing
