"""Open-Unmix (``openunmix.model.OpenUnmix``, umxhq size) wrapped as waveform -> stems.

The baseline of the quality and speed comparisons: the ``openunmix`` package's own
architecture (one BLSTM network per target, hidden 512, ``n_fft=4096, hop=1024``, 16 kHz
bandwidth), fed by stemcli's exportable STFT and inverted with soft ratio masks of the
estimated magnitudes applied to the mixture (Open-Unmix's ``softmask`` filtering with
``niter=0``), so it trains with stemcli's trainer on the same data and loss as MMDenseNet.

``openunmix/__init__.py`` imports ``torchaudio`` (only used there for file I/O). stemcli does
not install torchaudio (it would pull another torch build), so :func:`openunmix_model`
registers an empty stand-in module named ``torchaudio`` when the real one is missing, right
before importing ``openunmix``; nothing of it is ever called by the code used here.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import torch
from torch import nn

from stemcli.transforms import ISTFT, STFT, istft_native, stft_native

DEFAULT_CONFIG: dict[str, Any] = {
    "architecture": "umx",
    "sources": ["vocals", "drums", "bass", "other"],
    "sample_rate": 44100,
    "channels": 2,
    "n_fft": 4096,
    "hop": 1024,
    "hidden_size": 512,
    "nb_layers": 3,
    "bandwidth": 16000,
}


def openunmix_model() -> type:
    """Return ``openunmix.model.OpenUnmix``, with a torchaudio stand-in if needed."""
    if "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        stand_in = types.ModuleType("torchaudio")
        stand_in.__doc__ = "stemcli stand-in: openunmix imports torchaudio for file I/O only"
        sys.modules["torchaudio"] = stand_in
    try:
        from openunmix.model import OpenUnmix
    except ImportError as exc:
        raise ImportError(
            "the 'umx' architecture needs the openunmix package: pip install --no-deps openunmix"
        ) from exc
    return OpenUnmix


def umx_forward(net: nn.Module, mag: torch.Tensor) -> torch.Tensor:
    """``OpenUnmix.forward`` with the same modules and arithmetic, written trace-friendly.

    ``OpenUnmix.forward`` reads its shapes from ``x.data.shape``, which the ONNX tracer records
    as constants (the exported model then only runs at the traced length); here every reshape
    takes its sizes from the traced tensor, so the export has dynamic batch and time axes.

    Args:
        net: an ``openunmix.model.OpenUnmix``.
        mag: [shape=(batch, channels, bins, frames)] magnitude spectrogram.

    Returns:
        [shape=(batch, channels, bins, frames)] estimated magnitude.
    """
    x = mag.permute(3, 0, 1, 2)  # [frames, batch, channels, bins]
    batch, channels = x.shape[1], x.shape[2]
    h = (x[..., : net.nb_bins] + net.input_mean) * net.input_scale
    h = net.bn1(net.fc1(h.reshape(-1, channels * net.nb_bins)))
    h = torch.tanh(h.reshape(-1, batch, net.hidden_size))
    h = torch.cat([h, net.lstm(h)[0]], -1)
    h = torch.relu(net.bn2(net.fc2(h.reshape(-1, h.shape[-1]))))
    h = net.bn3(net.fc3(h)).reshape(-1, batch, channels, net.nb_output_bins)
    h = torch.relu(h * net.output_scale + net.output_mean) * x
    return h.permute(1, 2, 3, 0)


class UMXWaveform(nn.Module):
    """One ``OpenUnmix`` per source, waveform in, stems out.

    Input ``[shape=(batch, channels, time)]``, output ``[shape=(batch, sources, channels, time)]``.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        cfg = {**DEFAULT_CONFIG, **(config or {})}
        self.config = cfg
        n_fft, hop = int(cfg["n_fft"]), int(cfg["hop"])
        self.bins = n_fft // 2 + 1
        max_bin = int(round(cfg["bandwidth"] / (cfg["sample_rate"] / n_fft))) + 1
        self.max_bin = min(max_bin, self.bins)
        OpenUnmix = openunmix_model()
        self.targets = nn.ModuleList(
            OpenUnmix(
                nb_bins=self.bins, nb_channels=int(cfg["channels"]), hidden_size=int(cfg["hidden_size"]),
                nb_layers=int(cfg["nb_layers"]), max_bin=self.max_bin,
            )
            for _ in cfg["sources"]
        )
        self.stft = STFT(n_fft, hop)
        self.istft = ISTFT(n_fft, hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(batch, sources, channels, time)]; the sources sum to ``wave`` except in
            bins where every target's estimate is zero (Open-Unmix's soft masks are 0 there).
        """
        if torch.onnx.is_in_onnx_export():
            return self._forward_exportable(wave)
        t = wave.shape[-1]
        z = stft_native(wave, self.stft.n_fft, self.stft.hop)  # [B, C, bins, F] complex
        masks = self._masks(torch.sqrt(z.real.square() + z.imag.square() + 1e-10))
        return istft_native(z.unsqueeze(1) * masks, self.stft.n_fft, self.stft.hop, t)

    def _forward_exportable(self, wave: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the matmul STFT modules, for a one-graph ONNX export."""
        b, c, t = wave.shape
        spec = self.stft.stacked(wave)  # [2, B, C, bins, F]
        masks = self._masks(torch.sqrt((spec * spec).sum(0) + 1e-10))
        s = len(self.targets)
        masked = (spec.unsqueeze(2) * masks.unsqueeze(0)).reshape((2, b * s) + spec.shape[2:])
        return self.istft.stacked(masked, t).reshape(b, s, c, t)

    def _masks(self, mag: torch.Tensor) -> torch.Tensor:
        """Soft masks ``[B, S, C, bins, F]`` from the mixture magnitude ``[B, C, bins, F]``: each
        target's estimated magnitude over their sum (Open-Unmix's ``softmask``, ``niter=0``)."""
        est = torch.stack([umx_forward(net, mag) for net in self.targets], dim=1)
        return est / (est.sum(dim=1, keepdim=True) + 1e-8)


def build(config: dict[str, Any]) -> UMXWaveform:
    """Construct the model from its JSON config."""
    return UMXWaveform(config)
