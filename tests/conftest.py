"""Shared fixtures: synthetic audio whose right answer is known, and tiny test separators."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from stemcli.plugins import Separator


class IdentitySeparator(Separator):
    """Returns the input as the single stem 'all' (plus a zero stem): the engine must reproduce it."""

    sources = ("all", "zero")
    sample_rate = 44100
    channels = 2
    segment = 1.0
    context = 0.05

    def __init__(self, segment: float = 1.0, context: float = 0.05, sample_rate: int = 44100):
        self.segment, self.context, self.sample_rate = segment, context, sample_rate
        self.calls = 0

    def separate(self, mix: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.stack([mix, np.zeros_like(mix)], axis=1)


class GainSeparator(Separator):
    """A mask-based separator: stems are fixed fractions of the mix (they sum to the mix)."""

    sources = ("a", "b", "c")
    sample_rate = 44100
    channels = 2
    segment = 0.5
    context = 0.0

    def separate(self, mix: np.ndarray) -> np.ndarray:
        return np.stack([0.5 * mix, 0.3 * mix, 0.2 * mix], axis=1)


# A tiny MMDenseNet configuration for fast export/training tests.
TINY_MMDENSE = {
    "n_fft": 256, "hop": 128, "max_bin": 64, "split_bin": 32, "stem_channels": 4,
    "low": {"growth": 4, "layers": [1, 1], "pool": [1, 1]},
    "high": {"growth": 4, "layers": [1, 1], "pool": [1, 2]},
    "full": {"growth": 4, "layers": [1, 1], "pool": [2, 2], "lstm": 4},
    "final": {"channels": 8, "growth": 4, "layers": 1},
}


def load_script(relative: str) -> ModuleType:
    """A repository script that is not a package module (``benchmarks/quality.py``,
    ``export/finetune_wave.py``, ...), imported from its path."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_") + "_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tone(seconds: float, sr: int = 44100, channels: int = 2, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """[shape=(channels, n)] float32: a chord plus a little white noise, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    chans = [
        0.2 * np.sin(2 * np.pi * (220 + 55 * c) * t) + 0.1 * np.sin(2 * np.pi * 330 * t) + noise * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(chans).astype(np.float32)


def onnx_and_torch(path: Path, model, shapes: list[tuple[int, int, int]], seed: int = 0):
    """Yield ``(onnxruntime output, torch output)`` of a waveform model exported to ``path``
    (input ``mix``) for random inputs of each ``[batch, channels, time]`` shape."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    for shape in shapes:
        x = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        with torch.no_grad():
            yield sess.run(None, {"mix": x})[0], model(torch.from_numpy(x)).numpy()


def write(path: Path, audio: np.ndarray, sr: int = 44100, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T, sr, subtype=subtype)
    return path


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write(tmp_path / "in" / "song.wav", tone(2.5), subtype="FLOAT")
