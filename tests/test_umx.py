"""The Open-Unmix baseline wrapper (plugins/stemcli_umx): the openunmix package's network
between stemcli's STFT pair, trained by stemcli's trainer and exported to one ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemcli.export import export_model
from stemcli_umx.model import UMXWaveform, openunmix_model

from conftest import onnx_and_torch

try:  # `make test` installs openunmix (--no-deps); the wrapper stands in for its torchaudio import
    openunmix_model()
except ImportError as exc:  # pragma: no cover - only without the package
    pytest.skip(str(exc), allow_module_level=True)

TINY = {"n_fft": 256, "hop": 64, "hidden_size": 16, "nb_layers": 1, "bandwidth": 16000}


def tiny_umx() -> UMXWaveform:
    torch.manual_seed(0)
    return UMXWaveform(TINY).eval()


def test_shapes_and_gradients_flow() -> None:
    model = tiny_umx().train()
    x = 0.3 * torch.randn(2, 2, 4_000, generator=torch.Generator().manual_seed(1))
    y = model(x)
    assert y.shape == (2, 4, 2, 4_000)
    assert torch.isfinite(y).all() and y.abs().max() > 0
    y.abs().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_onnx_export_matches_the_torch_fft_forward(tmp_path) -> None:
    """The exported graph (matmul STFT pair) equals forward() (torch.stft/istft) at any length."""
    model = tiny_umx()
    path = tmp_path / "umx.onnx"
    export_model(model, path, channels=2)  # what `stemcli export` writes (dynamic batch and time)
    shapes = [(1, 2, 3_000), (2, 2, 7_777)]
    for shape, (got, want) in zip(shapes, onnx_and_torch(path, model, shapes)):
        assert got.shape == (shape[0], 4, 2, shape[2])
        assert np.max(np.abs(got - want)) < 1e-4
