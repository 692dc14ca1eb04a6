"""Model cards: the JSON file that describes a shipped model, and sha256 verification.

A card ``models/NAME.json`` sits next to ``models/NAME.onnx`` (and ``models/NAME.pt``, the
torch ``state_dict``).  It names the files relative to itself and records their sha256, so a
loader refuses a file that was changed or truncated after export::

    {"name": "mmdense", "architecture": "mmdense", "sources": [...], "sample_rate": 44100,
     "channels": 2, "segment": 10.0, "context": 0.5,
     "files": {"onnx": {"path": "mmdense.onnx", "sha256": "..."},
               "torch": {"path": "mmdense.pt", "sha256": "..."}},
               # and "post": {"path": "NAME.post.onnx", ...} with a "post" entry (stemcli.wavepost)
     "config": {...architecture config...}, "training": {...}, "metrics": {...}, "command": "..."}

No torch or onnxruntime import here (``stemcli list`` reads cards).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

CARD_FORMAT = "stemcli-model/1"
REQUIRED = ("name", "architecture", "sources", "sample_rate", "channels", "segment", "files")


class ModelFileError(ValueError):
    """A model file or card is missing, malformed, or fails its sha256 check."""


def models_dir() -> Path:
    """Where shipped models live: ``$STEMCLI_MODELS`` or ``<repo>/models``."""
    env = os.environ.get("STEMCLI_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_card(path: str | Path) -> dict[str, Any]:
    """Read and check a model card.

    Raises:
        ModelFileError: missing file, invalid JSON, or missing keys (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model card not found")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a valid JSON model card ({exc})") from exc
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: a model card must be a JSON object")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise ModelFileError(f"{path}: model card lacks {', '.join(missing)}")
    card["_path"] = str(path.resolve())
    return card


def save_card(card: dict[str, Any], path: str | Path) -> Path:
    """Write ``card`` as pretty JSON (atomically); keys starting with ``_`` are dropped."""
    path = Path(path)
    clean = {k: v for k, v in card.items() if not k.startswith("_")}
    clean.setdefault("format", CARD_FORMAT)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(clean, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def model_file(card: dict[str, Any], kind: str = "onnx", verify: bool = True) -> Path:
    """Path of the card's ``kind`` file (``onnx``, ``torch``, or ``post``: the second graph of a
    card with a ``post`` entry, :mod:`stemcli.wavepost`), sha256-verified.

    Raises:
        ModelFileError: the card has no such file, the file is missing, or its sha256 differs
            from the card's (a tampered or truncated file is refused, naming the file).
    """
    where = card.get("_path", "model card")
    entry = card.get("files", {}).get(kind)
    if not entry or "path" not in entry:
        raise ModelFileError(f"{where}: no '{kind}' file listed in the card")
    f = Path(entry["path"])
    if not f.is_absolute():
        f = Path(where).parent / f
    if not f.is_file():
        raise ModelFileError(f"{f}: model file not found (listed in {where})")
    if verify:
        want = str(entry.get("sha256", "")).lower()
        if not want:
            raise ModelFileError(f"{where}: no sha256 for {f.name}; refusing to load an unverified model")
        got = sha256_file(f)
        if got != want:
            raise ModelFileError(
                f"{f}: sha256 mismatch (file {got[:12]}..., card {want[:12]}...): the model file was "
                f"modified or corrupted after export; refusing to load it (re-export or restore it)"
            )
    return f


POST_SUFFIX = ".post.onnx"  # a model's second graph, NAME.post.onnx beside NAME.onnx (stemcli.wavepost)


def post_path(onnx_path: Path) -> Path:
    """Where the post graph of the model at ``onnx_path`` goes: ``NAME.post.onnx`` beside ``NAME.onnx``."""
    return onnx_path.with_name(onnx_path.stem + POST_SUFFIX)


def find_card(model: str | Path | None, default: str) -> Path:
    """Resolve a card: a path to ``.json``, a path to ``.onnx`` (its sibling card), a model name
    in :func:`models_dir`, or ``None`` for ``default``."""
    if model is None:
        return models_dir() / f"{default}.json"
    p = Path(model)
    if p.name.endswith(POST_SUFFIX):  # a model's second graph: the model's card
        return p.with_name(p.name[: -len(POST_SUFFIX)] + ".json")
    if p.suffix == ".onnx":
        return p.with_suffix(".json")
    if p.suffix == ".json" or p.exists():
        return p
    return models_dir() / f"{p.name}.json"


PROGRAM_NAMES = {"__main__.py": "stemcli", "loop.py": "python -m stemcli.train.loop", "export.py": "python -m stemcli.export"}


def command_line(argv: list[str] | None = None) -> str:
    """The command that made an artifact, as a user would retype it: ``stemcli export ...``.

    ``python -m stemcli`` runs as ``.../stemcli/__main__.py`` and is recorded as ``stemcli``.
    """
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv and argv[0] else "python"
    prog = PROGRAM_NAMES.get(prog, prog)
    return " ".join([prog, *(shlex.quote(a) for a in argv[1:])])
