"""Training: a generic loop over waveform-to-stems torch models (see :mod:`stemcli.train.loop`).

``train("mmdense", data=..., out=...)`` is what ``stemcli train`` wraps; architectures are
looked up in :mod:`stemcli.train.archs`.  Importing this package does not import torch.
"""

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from stemcli.train.loop import train

        return train
    raise AttributeError(name)
