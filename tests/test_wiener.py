"""Multichannel Wiener post-filter: keeps the mixture sum, uses spatial cues the first
estimates lack, wraps any separator, and is reachable from the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from stemcli.cli import cli
from stemcli.wiener import WienerSeparator, wiener

from conftest import GainSeparator, tone, write


def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2)))


def panned_pair(n: int = 3 * 44100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two noise sources with the same spectrum, one mostly left, one mostly right."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    sa = np.stack([0.95 * a, 0.3 * a])
    sb = np.stack([0.3 * b, 0.95 * b])
    return (0.2 * np.stack([sa, sb])).astype(np.float32), (0.2 * (sa + sb)).astype(np.float32)


def test_spatial_cues_improve_leaky_estimates() -> None:
    """First estimates that leak 40% of the other source: the filter, seeing that the two
    sources sit at different places in the stereo field, removes most of the leak."""
    refs, mix = panned_pair()
    leaky = np.stack([refs[0] + 0.4 * (refs[1] - refs[0]), refs[1] + 0.4 * (refs[0] - refs[1])])
    before = [sdr(refs[j], leaky[j]) for j in range(2)]
    out = wiener(mix[None], leaky[None], iterations=2, n_fft=1024, hop=256)[0]
    after = [sdr(refs[j], out[j]) for j in range(2)]
    assert out.shape == refs.shape and out.dtype == np.float32
    assert all(a > b + 4.0 for a, b in zip(after, before)), (before, after)
    assert np.max(np.abs(out.sum(0) - mix)) < 1e-5


@pytest.mark.parametrize("iterations", [1, 2])
def test_identical_channels_stay_finite(iterations: int) -> None:
    """A mono file through a stereo model: both channels equal, every spatial covariance rank
    one, the mixture model singular without diagonal loading.  Spectral cues still work."""
    rng = np.random.default_rng(5)
    n = 2 * 44100
    t = np.arange(n) / 44100
    a = 0.3 * np.sin(2 * np.pi * 330 * t)
    b = 0.05 * rng.standard_normal(n)
    refs = np.stack([np.stack([a, a]), np.stack([b, b])]).astype(np.float32)
    mix = refs.sum(0)
    leaky = np.stack([refs[0] + 0.3 * refs[1], refs[1] + 0.3 * (refs[0] - refs[1])]).astype(np.float32)
    leaky[1] = mix - leaky[0]
    out = wiener(mix[None], leaky[None], iterations=iterations, n_fft=1024, hop=256)[0]
    assert np.isfinite(out).all()
    assert np.max(np.abs(out[:, 0] - out[:, 1])) < 1e-5  # still dual mono
    assert sdr(refs[1], out[1]) > sdr(refs[1], leaky[1]) + 3.0
    assert np.max(np.abs(out.sum(0) - mix)) < 1e-5


def test_zero_iterations_and_bad_input() -> None:
    refs, mix = panned_pair(4096)
    est = refs[None]
    np.testing.assert_array_equal(wiener(mix[None], est, iterations=0), est)
    with pytest.raises(ValueError, match=">= 0"):
        wiener(mix[None], est, iterations=-1)
    with pytest.raises(ValueError, match=">= 1"):
        WienerSeparator(GainSeparator(), 0)
    with pytest.raises(ValueError, match="must divide"):
        WienerSeparator(GainSeparator(), 1, n_fft=1000, hop=300)


@pytest.mark.parametrize("channels", [1, 2])
def test_wraps_any_separator(channels: int) -> None:
    sep = WienerSeparator(GainSeparator(), 1, n_fft=512, hop=128)
    sep.channels = channels
    x = tone(1.0, channels=channels, seed=2)[None]
    out = sep.separate(x)
    assert out.shape == (1, len(sep.sources), channels, x.shape[-1])
    assert np.max(np.abs(out.sum(1) - x)) < 1e-5
    # sources that are fixed fractions g_j of the mixture share its spectrum and stereo image:
    # the filter's gain is then the power ratio g_j^2 / sum g^2
    g = np.array([0.5, 0.3, 0.2])
    want = (g**2 / np.sum(g**2))[None, :, None, None] * x[:, None]
    assert np.max(np.abs(out - want)) < 1e-3
    assert sep.name.endswith("+wiener1") and sep.context > GainSeparator().context


def test_cli_wiener_option(tmp_path: Path) -> None:
    song = write(tmp_path / "song.wav", tone(2.0, seed=1))
    r = CliRunner().invoke(cli, ["separate", str(song), "-m", "hpss", "-o", str(tmp_path / "out"), "--wiener", "1", "-q"])
    assert r.exit_code == 0, r.output
    h, sr = sf.read(tmp_path / "out" / "song" / "harmonic.wav")
    p, _ = sf.read(tmp_path / "out" / "song" / "percussive.wav")
    x, _ = sf.read(song)
    assert h.shape == x.shape and np.max(np.abs(h + p - x)) < 2e-4  # 16-bit files
    from stemcli import api

    mono = tone(1.0, channels=1, seed=3)[0]
    stems = api.separate(mono, 44100, model="hpss", wiener=1)  # mono through a stereo model
    assert all(np.isfinite(v).all() and v.shape == mono.shape for v in stems.values())
    r = CliRunner().invoke(cli, ["separate", str(song), "-m", "hpss", "-o", str(tmp_path / "bad"), "--wiener", "-2"])
    assert r.exit_code != 0 and "--wiener must be >= 0" in r.output
    assert len([l for l in r.output.splitlines() if l.strip()]) == 1
