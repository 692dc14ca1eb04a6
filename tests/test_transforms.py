"""STFT / ISTFT / CQT modules: round trips, agreement with torch.stft, ONNX parity."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from stemcli.transforms import CQT, ISTFT, STFT, Spectrogram, istft_frames, istft_native, stft_native

torch.set_num_threads(1)
CONFIGS = [(2048, 1024), (2048, 512), (1024, 256), (16, 4)]


@pytest.mark.parametrize("n_fft,hop", CONFIGS)
@pytest.mark.parametrize("length", [1, 777, 10_001])
def test_round_trip(n_fft: int, hop: int, length: int) -> None:
    x = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length))
    y = ISTFT(n_fft, hop)(*STFT(n_fft, hop)(x), length)
    assert y.shape == x.shape
    assert torch.max(torch.abs(y - x)) < 1e-5


@pytest.mark.parametrize("n_fft,hop", CONFIGS)
def test_matches_torch_stft(n_fft: int, hop: int) -> None:
    x = torch.randn(3, 2, 5000, generator=torch.Generator().manual_seed(1))
    re, im = STFT(n_fft, hop)(x)
    ref = torch.stft(x.reshape(6, -1), n_fft, hop, window=torch.hann_window(n_fft), center=True,
                     pad_mode="constant", return_complex=True)
    frames = ref.shape[-1]
    ref = ref.reshape(3, 2, n_fft // 2 + 1, frames)
    assert re.shape[:3] == ref.shape[:3] and re.shape[-1] in (frames, frames + 1)
    scale = ref.abs().max()
    assert torch.max(torch.abs(re[..., :frames] - ref.real)) < 1e-6 * scale * n_fft / 16
    assert torch.max(torch.abs(im[..., :frames] - ref.imag)) < 1e-6 * scale * n_fft / 16


def test_fewer_bins_equal_zero_padding() -> None:
    x = torch.randn(1, 2, 9000, generator=torch.Generator().manual_seed(2))
    full = STFT(512, 256).stacked(x)
    part = STFT(512, 256, bins=96).stacked(x)
    assert torch.allclose(part, full[:, :, :, :96], atol=1e-4)
    padded = full.clone()
    padded[:, :, :, 96:] = 0
    a = ISTFT(512, 256, bins=96).stacked(part, 9000)
    b = ISTFT(512, 256).stacked(padded, 9000)
    assert torch.max(torch.abs(a - b)) < 1e-5
    # and the low-passed signal differs from the input (the truncation is real)
    assert torch.max(torch.abs(a - x)) > 1e-2


def test_sine_peaks_at_its_bin() -> None:
    n_fft, rate = 2048, 44100
    k = 100
    t = np.arange(rate) / rate
    x = torch.from_numpy(np.sin(2 * np.pi * k * rate / n_fft * t).astype(np.float32))[None, None]
    mag = Spectrogram(n_fft, 512)(x)
    assert int(mag[0, 0, :, 10].argmax()) == k


class RoundTrip(torch.nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.stft, self.istft = STFT(n_fft, hop), ISTFT(n_fft, hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        re, im = self.stft(x)
        return self.istft(0.5 * re, 0.5 * im, x.shape[-1])


@pytest.mark.parametrize("n_fft,hop", [(2048, 1024), (1024, 256)])
def test_onnx_parity_dynamic_axes(tmp_path, n_fft: int, hop: int) -> None:
    model = RoundTrip(n_fft, hop)
    path = tmp_path / "rt.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 2, 4000),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 2: "t"}, "y": {0: "b", 2: "t"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in [(1, 2, 4000), (3, 2, 12_345), (2, 2, 44_100)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got = sess.run(None, {"x": x})[0]
        want = model(torch.from_numpy(x)).numpy()
        assert got.shape == x.shape
        assert np.max(np.abs(got - want)) < 1e-5
        assert np.max(np.abs(got - 0.5 * x)) < 1e-5


def test_onnx_dynamo_exporter(tmp_path) -> None:
    model = RoundTrip(64, 32)
    path = tmp_path / "rt_dynamo.onnx"
    t = torch.export.Dim("t", min=128, max=10**7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 2, 256),), str(path), dynamo=True,
                          dynamic_shapes={"x": {2: t}}, external_data=False, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 2, 9999)).astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.max(np.abs(got - 0.5 * x)) < 1e-5


def test_cqt_peak_and_onnx(tmp_path) -> None:
    rate = 22050
    t = np.arange(rate) / rate
    x = torch.from_numpy(np.sin(2 * np.pi * 440.0 * t).astype(np.float32))[None, None].repeat(1, 2, 1)
    cqt = CQT(sample_rate=rate, hop=512, fmin=32.70, n_bins=72, bins_per_octave=12)
    out = cqt(x)
    assert out.shape[:3] == (1, 2, 72)
    # A4 is 45 semitones above C1 (32.70 Hz)
    assert int(out[0, 0, :, out.shape[-1] // 2].argmax()) == 45
    path = tmp_path / "cqt.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cqt, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.max(np.abs(got - out.numpy())) < 1e-4 * float(out.abs().max())


@pytest.mark.parametrize("n_fft,hop", [(1000, 250), (2048, 2048), (2048, 3), (2048, 48)])
def test_bad_parameters(n_fft: int, hop: int) -> None:
    with pytest.raises(ValueError):
        STFT(n_fft, hop)
    with pytest.raises(ValueError):
        ISTFT(n_fft, hop)


@pytest.mark.parametrize("n_fft,hop", CONFIGS)
@pytest.mark.parametrize("length", [1, 777, 10_001])
def test_native_fft_pair_equals_the_modules(n_fft: int, hop: int, length: int) -> None:
    """stft_native / istft_native (torch's FFT, used in training) compute what STFT / ISTFT do."""
    x = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length + n_fft))
    bins = n_fft // 4 + 1
    for nbins in (None, bins):
        want = STFT(n_fft, hop, nbins).stacked(x)  # [2, B, C, bins, F]
        got = stft_native(x, n_fft, hop, nbins)
        assert got.shape == want.shape[1:] and got.is_complex()
        scale = want.abs().max()
        assert torch.max(torch.abs(got.real - want[0])) < 1e-6 * scale * n_fft / 16
        assert torch.max(torch.abs(got.imag - want[1])) < 1e-6 * scale * n_fft / 16
        y_want = ISTFT(n_fft, hop, nbins).stacked(want, length)
        y_got = istft_native(got, n_fft, hop, length)
        assert y_got.shape == x.shape
        assert torch.max(torch.abs(y_got - y_want)) < 1e-5
    assert torch.max(torch.abs(istft_native(stft_native(x, n_fft, hop), n_fft, hop, length) - x)) < 1e-5


@pytest.mark.parametrize("n_fft,hop", [(4096, 1024), (2048, 512), (1024, 512)])
@pytest.mark.parametrize("nbins", [None, 300])
def test_istft_frames_equals_torch_istft_values_and_gradients(n_fft: int, hop: int, nbins: int | None) -> None:
    """istft_frames (frames-major, used in training) gives torch.istft's samples and gradients."""
    g = torch.Generator().manual_seed(n_fft + (nbins or 0))
    full, frames, length = n_fft // 2 + 1, 23, 20 * hop + 37
    nb = nbins or full
    spec = torch.complex(torch.randn(3, 2, frames, nb, generator=g, dtype=torch.float64),
                         torch.randn(3, 2, frames, nb, generator=g, dtype=torch.float64)).requires_grad_()
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    padded = torch.nn.functional.pad(spec, (0, full - nb)).transpose(-1, -2).reshape(6, full, frames)
    want = torch.istft(padded, n_fft, hop, window=window, center=True, length=length).reshape(3, 2, length)
    got = istft_frames(spec, n_fft, hop, length)
    assert got.shape == (3, 2, length) and got.dtype == torch.float64
    assert torch.max(torch.abs(got - want)) < 1e-12 * n_fft
    weights = torch.randn(3, 2, length, generator=g, dtype=torch.float64)
    g_want, = torch.autograd.grad((want * weights).sum(), spec)
    g_got, = torch.autograd.grad((got * weights).sum(), spec)
    assert torch.max(torch.abs(g_got - g_want)) < 1e-12 * n_fft
    # float32, as in training: within float32 rounding of the float64 reference
    got32 = istft_frames(spec.detach().to(torch.complex64), n_fft, hop, length)
    assert got32.dtype == torch.float32 and torch.max(torch.abs(got32.double() - want.detach())) < 1e-5
    with pytest.raises(ValueError, match="more than n_fft/2"):
        istft_frames(torch.zeros(1, 4, full + 1, dtype=torch.complex64), n_fft, hop, 100)
