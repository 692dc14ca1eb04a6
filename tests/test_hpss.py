"""HPSS on a mixture whose answer is known: a sustained chord plus clicks."""

from __future__ import annotations

import numpy as np
import pytest

import stemcli.api as api

SR = 44100


def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2)))


@pytest.fixture(scope="module")
def chord_and_clicks() -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(SR * 4) / SR
    chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63))
    clicks = np.zeros_like(t)
    rng = np.random.default_rng(0)
    for k in range(0, t.size, SR // 4):
        clicks[k : k + 200] += rng.standard_normal(200) * np.exp(-np.arange(200) / 30) * 0.8
    harmonic = np.stack([chord, 0.8 * chord])
    percussive = np.stack([clicks, clicks])
    return harmonic.astype(np.float32), percussive.astype(np.float32)


def test_hpss_separates_chord_from_clicks(chord_and_clicks) -> None:
    h, p = chord_and_clicks
    stems = api.separate(h + p, SR, model="hpss")
    # measured: harmonic 30.1 dB, percussive 12.7 dB; stated floors leave a margin
    assert sdr(h, stems["harmonic"]) > 25.0
    assert sdr(p, stems["percussive"]) > 10.0
    # and the inverse assignment is far worse: the stems really are separated
    assert sdr(p, stems["harmonic"]) < 0.0


def test_hpss_stems_sum_to_mixture_through_chunking(chord_and_clicks) -> None:
    h, p = chord_and_clicks
    stems = api.separate(h + p, SR, model="hpss", segment=1.3, overlap=0.3)
    np.testing.assert_allclose(stems["harmonic"] + stems["percussive"], h + p, atol=1e-5)


def test_api_mono_1d_and_other_rate(chord_and_clicks) -> None:
    h, p = chord_and_clicks
    mono = (h + p)[0, : SR * 2]
    stems = api.separate(mono, SR, model="hpss", stems=["harmonic"])
    assert list(stems) == ["harmonic"] and stems["harmonic"].shape == mono.shape
    x48 = np.zeros((2, 4800), np.float32)
    assert api.separate(x48, 48000, model="hpss")["percussive"].shape == (2, 4800)


@pytest.mark.parametrize(
    "audio,needle",
    [(np.zeros((2, 0), np.float32), "empty"), (np.full((2, 10), np.nan, np.float32), "NaN"), (np.zeros((2, 10), np.int16), "float"), (np.zeros((1, 2, 3), np.float32), "shape")],
)
def test_api_rejects_bad_arrays(audio: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        api.separate(audio, SR, model="hpss")


@pytest.mark.parametrize("n", [1, 100, 1023, 2047])
def test_hpss_inputs_shorter_than_its_window(n: int) -> None:
    """Inputs shorter than the STFT window (a tiny file, a short last chunk) are zero-padded
    inside the separator: the stems still have the input's length and sum to it."""
    from stemcli.plugins import load_separator

    x = np.random.default_rng(n).standard_normal((1, 2, n)).astype(np.float32)
    out = load_separator("hpss").separate(x)
    assert out.shape == (1, 2, 2, n)
    np.testing.assert_allclose(out.sum(axis=1), x, atol=1e-5)
