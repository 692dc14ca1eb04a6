"""The shipped MMDenseNet separator: ``models/mmdense.json`` on onnxruntime (or torch)."""

from __future__ import annotations

from stemcli.runtime import OnnxSeparator


class MMDenseSeparator(OnnxSeparator):
    """MMDenseNet-family mask estimator trained on stemcli's rendered pop data (4 stems).

    Args:
        model: card path / model name; default ``mmdense`` in the models folder
            (``<repo>/models`` or ``$STEMCLI_MODELS``).
        backend: ``"onnx"`` (onnxruntime, default) or ``"torch"`` (the same weights in torch).
        threads: intra-op threads (default: all cores).

    Raises:
        stemcli.modelcard.ModelFileError: missing card/model, or a model file whose sha256
            differs from the card's.
    """

    description = "MMDenseNet 4 stems (vocals, drums, bass, other), ONNX, trained on rendered pop"
    default_model = "mmdense"
