"""Training data: MUSDB-layout datasets with augmentation (numpy only) and the MIDI/SoundFont renderer.

``stemcli.data.datasets`` is torch-free and cheap to import; the renderer lives in
``stemcli.data.synth`` (imported lazily, it shells out to ``fluidsynth`` and ``espeak-ng``).
"""

from stemcli.data.datasets import (
    EnsembleDataset,
    StemDataset,
    Track,
    instrument_of,
    list_tracks,
    powerset_examples,
)

__all__ = ["EnsembleDataset", "StemDataset", "Track", "instrument_of", "list_tracks", "powerset_examples"]
