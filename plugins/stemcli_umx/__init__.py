"""Open-Unmix baseline (the ``openunmix`` package's architecture) trained by stemcli's trainer.

Trained runs are exported like any other (``stemcli export RUN -o NAME.onnx``) and run through
``stemcli.runtime.OnnxSeparator`` (``-m path/to/card.json``); :class:`UMXSeparator` loads
``models/umx.json`` (or ``$STEMCLI_MODELS/umx.json``).
"""

from typing import Any

__all__ = ["UMXSeparator"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import onnxruntime
    if name == "UMXSeparator":
        from stemcli_umx.separator import UMXSeparator

        return UMXSeparator
    raise AttributeError(name)
