"""Open-Unmix baseline separator: ``umx.json`` (default in the models folder) on onnxruntime."""

from __future__ import annotations

from stemcli.runtime import OnnxSeparator


class UMXSeparator(OnnxSeparator):
    """Open-Unmix (umxhq size) trained by stemcli's trainer on the same data as ``mmdense``.

    Args:
        model: card path / model name; default ``umx`` in the models folder.
        backend: ``"onnx"`` or ``"torch"``.
        threads: intra-op threads.
    """

    description = "Open-Unmix baseline (umxhq size), trained by stemcli's trainer; ONNX"
    default_model = "umx"
