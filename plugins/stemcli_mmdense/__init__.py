"""MMDenseNet-family separator (multi-scale multi-band DenseNet mask estimation).

``model.py`` holds the torch architecture (imports torch); ``separator.py`` the
:class:`MMDenseSeparator` that runs the exported ONNX model (imports neither torch nor
onnxruntime until constructed).  Entry point: ``mmdense = "stemcli_mmdense:MMDenseSeparator"``.
"""

from stemcli_mmdense.separator import MMDenseSeparator

__all__ = ["MMDenseSeparator"]
