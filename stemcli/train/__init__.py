"""Training: a generic loop over waveform-to-stems torch models (see :mod:`stemcli.train.loop`).

``train("mmdense", data=..., out=...)`` is what ``stemcli train`` wraps; architectures are
looked up in :mod:`stemcli.train.archs`.  Importing this package does not import torch.
"""

from typing import Any

__all__ = ["PRECISIONS", "RESUMABLE", "train"]

PRECISIONS = ("float32", "bfloat16")  # of the training forward pass (autocast), see stemcli.train.loop
# settings a resumed run keeps unless given again; a different value given on resume applies
# from the resumed step on and is recorded in the run's config ("changes").  Defined here, not
# in the loop module, so that the CLI can show them without importing torch.
RESUMABLE: dict[str, Any] = {"batch": 4, "seconds": 3.0, "lr": 1e-3, "precision": "float32"}


def __getattr__(name: str) -> Any:
    if name == "train":
        from stemcli.train.loop import train

        return train
    raise AttributeError(name)
