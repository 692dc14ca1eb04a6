"""Reference systems for the speed benchmark: Open-Unmix (umxhq size) and HTDemucs, random weights.

Speed does not depend on the weights, so nothing is downloaded: the architectures come from the
``openunmix`` and ``demucs`` packages (a benchmark extra, installed with ``pip install --no-deps
openunmix demucs einops julius``) and are built with random weights.

Both packages import ``torchaudio`` at module level, only for file I/O and resampling, which this
benchmark never calls.  When torchaudio is not installed, :func:`torchaudio_stand_in` puts a
minimal stand-in module on ``sys.path`` for this process only (it lives in a temporary folder,
never in the venv, never imported by stemcli); any call into it raises.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

STEMS = ["vocals", "drums", "bass", "other"]

_STAND_IN = '''"""Stand-in for torchaudio, written by stemcli's benchmarks/_baselines.py for one benchmark run.

openunmix and demucs import torchaudio at module level for file I/O only; the benchmark feeds
them tensors, so every function here raises.
"""
__version__ = "0.0.0+stemcli-benchmark-stand-in"
STAND_IN = True


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchaudio stand-in (stemcli benchmark): no audio I/O available")


load = save = info = set_audio_backend = get_audio_backend = _unavailable


class transforms:  # noqa: N801 - mimics the torchaudio.transforms namespace
    Resample = _unavailable
'''


_stand_in_dir: Path | None = None


def torchaudio_stand_in() -> str:
    """Make ``import torchaudio`` work for this process; return what was used (for the report)."""
    global _stand_in_dir
    if _stand_in_dir is not None:
        return f"stand-in module ({_stand_in_dir}/torchaudio, this process only)"
    if "torchaudio" in sys.modules:
        mod = sys.modules["torchaudio"]
        if getattr(mod, "STAND_IN", False) or getattr(mod, "__file__", None) is None:
            return f"stand-in module already imported in this process ({(mod.__doc__ or '').strip()[:80]})"
        return f"torchaudio {getattr(mod, '__version__', '?')} ({mod.__file__})"
    if importlib.util.find_spec("torchaudio") is not None:
        import torchaudio

        return f"torchaudio {torchaudio.__version__} (installed)"
    folder = Path(tempfile.mkdtemp(prefix="stemcli-bench-torchaudio-"))
    (folder / "torchaudio").mkdir()
    (folder / "torchaudio" / "__init__.py").write_text(_STAND_IN)
    sys.path.insert(0, str(folder))
    atexit.register(shutil.rmtree, folder, True)
    _stand_in_dir = folder
    return f"stand-in module ({folder}/torchaudio, this process only)"


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise SystemExit(
            f"the speed benchmark needs the '{package}' package (a benchmark extra): "
            f"pip install --no-deps openunmix demucs einops julius"
        )


def openunmix_umxhq(niter: int = 1, seed: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Open-Unmix at umxhq size with random weights, inside ``openunmix.model.Separator``.

    umxhq: one OpenUnmix per target (4 targets), ``hidden_size=512``, ``nb_bins=2049``
    (n_fft 4096, hop 1024), ``max_bin=1487`` (16 kHz bandwidth), stereo; the Separator runs the
    STFT, the 4 models, ``niter`` multichannel Wiener iterations and the inverse STFT on the
    whole track, as ``umx`` does.

    Returns:
        ``run(mix [shape=(channels, time)]) -> [shape=(sources, channels, time)]`` and a description.
    """
    _require("openunmix")
    torchaudio_stand_in()
    import torch
    from openunmix import utils
    from openunmix.model import OpenUnmix, Separator

    torch.manual_seed(seed)
    max_bin = int(utils.bandwidth_to_max_bin(rate=44100.0, n_fft=4096, bandwidth=16000))
    targets = {
        t: OpenUnmix(nb_bins=4096 // 2 + 1, nb_channels=2, hidden_size=512, max_bin=max_bin).eval() for t in STEMS
    }
    sep = Separator(
        target_models=targets, niter=niter, residual=False, n_fft=4096, n_hop=1024, nb_channels=2,
        sample_rate=44100.0, wiener_win_len=300, filterbank="torch",
    ).eval()
    params = sum(p.numel() for p in sep.parameters())

    def run(mix: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = sep(torch.from_numpy(mix)[None])
        return out[0].numpy()

    info = {
        "system": "Open-Unmix umxhq (random weights)",
        "package": f"openunmix {_version('openunmix')}",
        "config": {"targets": STEMS, "hidden_size": 512, "nb_bins": 2049, "max_bin": max_bin, "n_fft": 4096,
                   "n_hop": 1024, "niter": niter, "wiener_win_len": 300},
        "parameters": int(params),
    }
    return run, info


def htdemucs(
    segment: float = 7.8, overlap: float = 0.25, shifts: int = 1, seed: int = 0
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """HTDemucs (the released ``htdemucs`` configuration: the class defaults) with random weights.

    Run through ``demucs.apply.apply_model(model, mix, segment=7.8, overlap=0.25, split=True,
    shifts=1)``; ``shifts=1`` is the demucs CLI/API default.  The input is normalised by the
    mixture's std as ``demucs.separate`` does.

    Returns:
        ``run(mix [shape=(channels, time)]) -> [shape=(sources, channels, time)]`` and a description.
    """
    _require("demucs")
    torchaudio_stand_in()
    import torch
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    seg = Fraction(segment).limit_denominator(100)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], segment=seg).eval()
    params = sum(p.numel() for p in model.parameters())

    def run(mix: np.ndarray) -> np.ndarray:
        wav = torch.from_numpy(mix)
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with torch.inference_mode():
            out = apply_model(
                model, ((wav - mean) / std)[None], shifts=shifts, split=True, overlap=overlap,
                segment=float(seg), progress=False,
            )
        return (out[0] * std + mean).numpy()

    info = {
        "system": "HTDemucs (random weights)",
        "package": f"demucs {_version('demucs')}",
        "config": {"sources": 4, "segment": float(seg), "overlap": overlap, "shifts": shifts, "split": True,
                   "class defaults": "channels 48, depth 4, t_layers 5, nfft 4096 (the released htdemucs)"},
        "parameters": int(params),
    }
    return run, info


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
