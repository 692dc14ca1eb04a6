"""The NumPy STFT front end of mask models: same numbers as the torch transforms, exact
round trip, residual source, card validation, export of a mask graph and of a waveform graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stemcli import spectral
from stemcli.transforms import ISTFT, STFT

torch.set_num_threads(1)


@pytest.mark.parametrize("n_fft,hop,bins,length", [(2048, 1024, 768, 44_100), (256, 64, None, 3_001), (512, 128, 100, 128 * 9)])
def test_matches_torch_transforms(n_fft: int, hop: int, bins: int | None, length: int) -> None:
    x = np.random.default_rng(1).standard_normal((2, 2, length)).astype(np.float32)
    spec = spectral.stft(x, n_fft, hop, bins)
    ref = STFT(n_fft, hop, bins=bins).frames_major(torch.from_numpy(x)).numpy()
    assert spec.shape == ref.shape[1:] and spec.shape[-2] == -(-length // hop) + 1
    scale = np.abs(ref).max()
    assert np.abs(spec.real - ref[0]).max() < 1e-5 * scale
    assert np.abs(spec.imag - ref[1]).max() < 1e-5 * scale
    # the inverse agrees with the torch inverse on a spectrogram that is not an STFT of anything
    noise = np.random.default_rng(2).standard_normal((2,) + spec.shape).astype(np.float32)
    got = spectral.istft(noise[0] + 1j * noise[1], n_fft, hop, length)
    want = ISTFT(n_fft, hop, bins=spec.shape[-1]).frames_major(torch.from_numpy(noise), length).numpy()
    assert got.shape == (2, 2, length)
    assert np.abs(got - want).max() < 1e-4


def test_round_trip_is_exact() -> None:
    x = np.random.default_rng(3).standard_normal((3, 12_345)).astype(np.float32)
    y = spectral.istft(spectral.stft(x, 1024, 256), 1024, 256, x.shape[-1])
    assert y.dtype == np.float32 and np.abs(y - x).max() < 1e-5
    # more frames than the envelope cache keeps: computed afresh, the same inverse
    long = np.random.default_rng(4).standard_normal((1, 40_000)).astype(np.float32)
    spec = spectral.stft(long, 64, 16)
    assert spec.shape[-2] > spectral.CACHED_FRAMES
    assert np.abs(spectral.istft(spec, 64, 16, long.shape[-1]) - long).max() < 1e-5


@pytest.mark.parametrize("chunk", [None, 1, 5, 32, 500])
@pytest.mark.parametrize("log1p", [False, True])
@pytest.mark.parametrize("shape,n_fft,hop", [((2, 2, 9_000), 512, 128), ((3_001,), 256, 128), ((1, 50), 512, 64)])
def test_stft_magnitude_is_stft_then_magnitude_bit_for_bit(chunk: int | None, log1p: bool, shape: tuple,
                                                           n_fft: int, hop: int) -> None:
    """The fused front end gives exactly the numbers of ``stft`` and then the magnitude, whatever
    the step (1 frame, a step that does not divide the 72 frames, more frames than there are),
    the hop (n_fft / 4, / 2, / 8) and the leading axes (batch and channels, a mono 1-D signal,
    one shorter than a hop)."""
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    spec, mag = spectral.stft_magnitude(x, n_fft, hop, 100, 1e-10, log1p=log1p, chunk=chunk)
    want = spectral.stft(x, n_fft, hop, 100)
    want_mag = np.sqrt(want.real**2 + want.imag**2 + np.float32(1e-10))
    if log1p:
        want_mag = np.log(1.0 + want_mag)
    assert spec.shape == mag.shape == (*shape[:-1], -(-shape[-1] // hop) + 1, 100)
    assert spec.dtype == np.complex64 and mag.dtype == np.float32 and mag.flags.c_contiguous
    np.testing.assert_array_equal(spec, want)
    np.testing.assert_array_equal(mag, want_mag)
    for bad, match in (({"chunk": 0}, "chunk must be >= 1"), ({"bins": n_fft // 2 + 2}, "bins=")):
        with pytest.raises(ValueError, match=match):
            spectral.stft_magnitude(x, n_fft, hop, **{"bins": 100, "eps": 0.0, **bad})


@pytest.mark.parametrize("chunk", [None, 1, 5, 32, 500])
def test_masked_istft_is_the_inverse_of_the_masked_spectrum(chunk: int | None) -> None:
    """Two bands, the upper one a single mask broadcast over both channels: the same stems as
    masking the whole spectrogram and inverting it with ``istft``, for any step."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 9_000)).astype(np.float32)
    spec = spectral.stft(x, 512, 128, 200)  # 72 frames
    low = rng.random((2, 2, 72, 64), dtype=np.float32)
    high = rng.random((2, 1, 72, 136), dtype=np.float32)
    want = spectral.istft(np.concatenate([low, np.broadcast_to(high, (2, 2, 72, 136))], -1) * spec, 512, 128, 9_000)
    out = np.full((2, 2, 9_000), np.nan, np.float32)
    got = spectral.masked_istft(spec, [(low, 0, 64), (high, 64, 200)], 512, 128, out=out, chunk=chunk)
    assert got is out and not np.isnan(out).any()
    assert np.abs(out - want).max() < 1e-6
    ones = spectral.masked_istft(spectral.stft(x, 512, 128), [(np.ones((1, 1, 72, 257), np.float32), 0, 257)],
                                 512, 128, out=np.empty_like(x), chunk=chunk)
    assert np.abs(ones - x).max() < 1e-5  # every bin, no mask: the round trip
    for bad in ([(low, 0, 64)], [(high, 64, 200), (low, 0, 64)], [(low, 0, 60), (high, 64, 200)]):
        with pytest.raises(ValueError, match="do not cover bins 0..200"):
            spectral.masked_istft(spec, bad, 512, 128, out=np.empty_like(x), chunk=chunk)
    for bad in ([(low[..., :71, :], 0, 64), (high, 64, 200)], [(low, 0, 64), (high[..., :1, :], 64, 200)]):
        with pytest.raises(ValueError, match=r"do not end in \(frames 72, band width\)"):
            spectral.masked_istft(spec, bad, 512, 128, out=np.empty_like(x), chunk=chunk)


@pytest.mark.parametrize("chunk", [None, 1, 3])
@pytest.mark.parametrize("length,n_fft,hop", [(3_001, 256, 128), (50, 256, 128), (2_000, 512, 64), (40_000, 64, 16)])
def test_masked_istft_other_hops_and_lengths(chunk: int | None, length: int, n_fft: int, hop: int) -> None:
    """Mono 1-D signals: hop n_fft / 2 and / 8, a signal shorter than a hop, and more frames than
    the envelope cache keeps: the inverse of the masked spectrum, as ``istft`` gives it."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(length).astype(np.float32)
    spec = spectral.stft(x, n_fft, hop)
    mask = rng.random(spec.shape, dtype=np.float32)
    want = spectral.istft(mask * spec, n_fft, hop, length)
    got = spectral.masked_istft(spec, [(mask, 0, spec.shape[-1])], n_fft, hop, out=np.empty(length, np.float32),
                                chunk=chunk)
    assert np.abs(got - want).max() < 1e-6


def test_separate_with_masks_residual_and_band_limit() -> None:
    fe = spectral.check_frontend({"type": "stft-masks", "n_fft": 512, "hop": 256, "bins": 100, "eps": 0.0, "residual": True})
    t = np.arange(20_000) / 44_100
    low = 0.5 * np.sin(2 * np.pi * 440 * t)  # bin ~5 of 512 at 44.1 kHz
    high = 0.3 * np.sin(2 * np.pi * 15_000 * t)  # bin ~174, above ``bins``
    mix = np.stack([low + high, low - high])[None].astype(np.float32)

    def masks(mag: np.ndarray) -> np.ndarray:  # source 0 takes everything below ``bins``
        b, c, f, k = mag.shape
        return np.concatenate([np.ones((b, 1, c, f, k)), np.zeros((b, 1, c, f, k))], axis=1)

    out = spectral.separate_with_masks(fe, masks, mix, 3)
    assert out.shape == (1, 3, 2, 20_000) and out.dtype == np.float32
    assert np.abs(out.sum(1) - mix).max() < 1e-5  # the residual makes the stems sum to the mix
    assert np.abs(out[0, 1]).max() < 1e-7
    inner = slice(2_000, 18_000)
    assert np.abs(out[0, 0, 0, inner] - low[inner]).max() < 1e-3  # band below ``bins``
    assert np.abs(out[0, 2, 0, inner] - high[inner]).max() < 1e-3  # residual gets the rest
    with pytest.raises(ValueError, match="expected"):
        spectral.separate_with_masks(fe, lambda m: m[:, None], mix, 3)


@pytest.mark.parametrize("residual", [False, True])
def test_separate_with_masks_equals_one_inverse_per_source(residual: bool) -> None:
    """Batch of 2, random masks: every estimate is the inverse STFT of its own mask times the
    mixture's spectrum (bins above ``bins`` zero), whether or not the last source is the residual;
    the sources are inverted one at a time, so none may leak into another or another batch item."""
    rng = np.random.default_rng(11)
    fe = spectral.check_frontend({"type": "stft-masks", "n_fft": 512, "hop": 128, "bins": 200, "eps": 0.0,
                                  "residual": residual})
    mix = rng.standard_normal((2, 2, 9_000)).astype(np.float32)
    n_src = 3
    given = rng.random((2, n_src - residual, 2, 72, 200), dtype=np.float32)
    out = spectral.separate_with_masks(fe, lambda mag: given, mix, n_src)
    spec = spectral.stft(mix, 512, 128, 200)
    assert out.shape == (2, n_src, 2, 9_000) and out.dtype == np.float32 and spec.shape[-2] == 72
    for j in range(given.shape[1]):
        want = spectral.istft(given[:, j] * spec, 512, 128, 9_000)
        assert np.abs(out[:, j] - want).max() < 1e-6, j
    if residual:
        assert np.abs(out[:, -1] - (mix - out[:, :-1].sum(1))).max() < 1e-6


def test_split_masks_equal_the_joined_masks() -> None:
    """With ``split`` K the graph's two outputs (below K per channel, above K once for all
    channels) give the stems the joined masks give; shapes are checked per output."""
    rng = np.random.default_rng(12)
    base = {"type": "stft-masks", "n_fft": 512, "hop": 128, "bins": 200, "eps": 0.0, "residual": True}
    fe, fe_split = spectral.check_frontend(base), spectral.check_frontend({**base, "split": 64})
    assert spectral.graph_outputs(fe_split, 4, 2, 2, 72) == {"masks": (2, 3, 2, 72, 64), "masks_high": (2, 3, 1, 72, 136)}
    assert spectral.graph_outputs(fe, 4, 2, 2, 72) == {"masks": (2, 3, 2, 72, 200)}
    mix = rng.standard_normal((2, 2, 9_000)).astype(np.float32)
    low = rng.random((2, 3, 2, 72, 64), dtype=np.float32)
    high = rng.random((2, 3, 1, 72, 136), dtype=np.float32)
    joined = np.concatenate([low, np.broadcast_to(high, (2, 3, 2, 72, 136))], axis=-1)
    want = spectral.separate_with_masks(fe, lambda mag: joined, mix, 4)
    got = spectral.separate_with_masks(fe_split, lambda mag: (low, high), mix, 4)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got[:, 0] - want[:, 1]).max() > 1e-3  # the sources differ
    with pytest.raises(ValueError, match=r"returned shapes \(2, 3, 2, 72, 64\), \(2, 3, 2, 72, 136\), expected"):
        spectral.separate_with_masks(fe_split, lambda mag: (low, joined[..., 64:]), mix, 4)
    with pytest.raises(ValueError, match="returned shape"):
        spectral.separate_with_masks(fe_split, lambda mag: joined, mix, 4)


@pytest.mark.parametrize("bad", [{"type": "cqt"}, {"n_fft": 1000, "hop": 300}, {"bins": 0}, {"hop": None},
                                 {"split": 0}, {"split": 100}, {"split": "low"}, {"split": 12.5}, {"split": True}])
def test_bad_frontend_is_refused(bad: dict) -> None:
    good = {"type": "stft-masks", "n_fft": 512, "hop": 256, "bins": 100}
    with pytest.raises(ValueError, match="card.json"):
        spectral.check_frontend({**good, **bad}, "card.json")


def test_waveform_model_without_frontend_exports_whole_graph(tmp_path: Path) -> None:
    """A model with no ``frontend()`` is exported as one waveform graph, and runs as one."""
    import onnxruntime as ort

    from stemcli.export import export_run
    from stemcli.runtime import OnnxSeparator
    from stemcli_mmdense.model import DEFAULT_CONFIG

    from conftest import TINY_MMDENSE

    run = tmp_path / "run"
    run.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY_MMDENSE, "architecture": "stemcli_wavetest.model"}
    (tmp_path / "stemcli_wavetest").mkdir()
    (tmp_path / "stemcli_wavetest" / "__init__.py").write_text("")
    (tmp_path / "stemcli_wavetest" / "model.py").write_text(
        "from stemcli_mmdense.model import DEFAULT_CONFIG, MMDenseNet\n"
        "class Wave(MMDenseNet):\n    frontend = None\n"
        "def build(config):\n    return Wave(config)\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        from stemcli.train import archs

        model = archs.build(cfg)
        (run / "config.json").write_text(json.dumps({"model": cfg, "data": {}, "hyperparameters": {}}))
        torch.save({"model": model.state_dict(), "step": 0}, run / "best.pt")
        card = export_run(run, tmp_path / "models" / "wave.onnx")
    finally:
        sys.path.remove(str(tmp_path))
    assert "frontend" not in card and card["io"]["input"].startswith("mix")
    sess = ort.InferenceSession(str(tmp_path / "models" / "wave.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["mix"]
    x = (0.2 * np.random.default_rng(4).standard_normal((1, 2, 5_000))).astype(np.float32)
    out = OnnxSeparator(tmp_path / "models" / "wave.json", threads=1).separate(x)
    assert out.shape == (1, 4, 2, 5_000) and np.abs(out.sum(1) - x).max() < 1e-5


def test_frontend_input_log1p_feeds_the_logarithm() -> None:
    """``"input": "log1p"`` hands the mask function ``log1p(mag)``; cards without the key get
    magnitudes, and an unknown input is refused naming the card."""
    base = {"type": "stft-masks", "n_fft": 512, "hop": 256, "bins": 64, "eps": 0.0, "residual": True}
    assert "input" not in spectral.check_frontend(base)
    fe_log = spectral.check_frontend({**base, "input": "log1p"})
    mix = np.random.default_rng(5).standard_normal((1, 2, 9_000)).astype(np.float32)
    seen: dict[str, np.ndarray] = {}

    def record(label: str):
        def masks(x: np.ndarray) -> np.ndarray:
            seen[label] = x
            return np.full((x.shape[0], 2, *x.shape[1:]), 0.25, np.float32)
        return masks

    a = spectral.separate_with_masks(spectral.check_frontend(base), record("mag"), mix, 3)
    b = spectral.separate_with_masks(fe_log, record("log"), mix, 3)
    # log(1 + mag) in float32 (faster than numpy's log1p without AVX-512): absolute error,
    # what the network sees, within a float32 rounding or two of the exact value, quiet or loud
    np.testing.assert_allclose(seen["log"], np.log1p(seen["mag"].astype(np.float64)), rtol=0, atol=3e-7)
    assert seen["log"].dtype == np.float32
    spectral.separate_with_masks(spectral.check_frontend({**base, "eps": 1e-10}), record("quiet"), 1e-4 * mix, 3)
    spectral.separate_with_masks(fe_log, record("loud"), 40.0 * mix, 3)
    spectral.separate_with_masks(spectral.check_frontend({**fe_log, "eps": 1e-10}), record("quiet_log"), 1e-4 * mix, 3)
    assert seen["loud"].max() > np.log1p(1000.0) and seen["quiet"].min() < 1e-3
    loud_mag = np.abs(spectral.stft(40.0 * mix, 512, 256, 64))
    np.testing.assert_allclose(seen["loud"], np.log1p(loud_mag.astype(np.float64)), rtol=0, atol=6e-7)
    np.testing.assert_allclose(seen["quiet_log"], np.log1p(seen["quiet"].astype(np.float64)), rtol=0, atol=3e-7)
    np.testing.assert_array_equal(a, b)  # same masks -> same stems
    with pytest.raises(ValueError, match="card.json: frontend input"):
        spectral.check_frontend({**base, "input": "db"}, "card.json")
    # the exported graph's input is named after what it is fed
    assert spectral.graph_input(fe_log) == ("logmag", "logmag = log1p(mag)")
    assert spectral.graph_input(spectral.check_frontend(base)) == ("mag", "mag")
