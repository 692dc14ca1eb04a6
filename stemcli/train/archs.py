"""Trainable architectures: name -> module with ``DEFAULT_CONFIG`` and ``build(config)``.

Built in: ``mmdense`` (``stemcli_mmdense.model``) and ``umx`` (``stemcli_umx.model``, the
``openunmix`` package's architecture).  Any other importable module that defines
``DEFAULT_CONFIG`` (a JSON-serialisable dict with ``architecture``, ``sources``,
``sample_rate``, ``channels``) and ``build(config) -> nn.Module`` mapping
``[batch, channels, time] -> [batch, sources, channels, time]`` can be named as
``"package.module"``.

A model may also define ``training_estimates(mix) -> [(estimate, weight), ...]`` (e.g.
``mmdense`` with ``"wave": {"mask_loss": W}``): the trainer's loss is then the weighted mean of
the estimates' L1 losses (:func:`stemcli.train.loop.training_loss`); without it the loss is
that of ``model(mix)``.
"""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ARCHITECTURES = {
    "mmdense": "stemcli_mmdense.model",
    "umx": "stemcli_umx.model",
}
REQUIRED = ("architecture", "sources", "sample_rate", "channels")


def arch_module(name: str) -> ModuleType:
    """Import the module of architecture ``name`` (a known name or a dotted module path)."""
    target = ARCHITECTURES.get(name, name)
    if name not in ARCHITECTURES and "." not in name:
        raise ValueError(f"unknown architecture '{name}' (known: {', '.join(ARCHITECTURES)}, or a module path)")
    try:
        mod = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        # running from a source tree whose editable install predates the plugin package:
        # the built-in plugins live in <repo>/plugins
        plugins = Path(__file__).resolve().parents[2] / "plugins"
        if exc.name != target.split(".")[0] or not plugins.is_dir() or str(plugins) in sys.path:
            raise ValueError(f"architecture '{name}': cannot import {target}: {exc}") from exc
        sys.path.append(str(plugins))
        try:
            mod = importlib.import_module(target)
        except ImportError as exc2:
            raise ValueError(f"architecture '{name}': cannot import {target}: {exc2}") from exc2
    except ImportError as exc:
        raise ValueError(f"architecture '{name}': cannot import {target}: {exc}") from exc
    if not hasattr(mod, "DEFAULT_CONFIG") or not hasattr(mod, "build"):
        raise ValueError(f"architecture '{name}': {target} must define DEFAULT_CONFIG and build(config)")
    return mod


def default_config(name: str) -> dict[str, Any]:
    """A copy of the architecture's default config, with ``architecture`` set to ``name``."""
    cfg = copy.deepcopy(arch_module(name).DEFAULT_CONFIG)
    cfg["architecture"] = name
    return cfg


def build(config: dict[str, Any]) -> Any:
    """Build the torch module described by ``config`` (its ``architecture`` key picks the code)."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ValueError(f"model config lacks {', '.join(missing)}")
    return arch_module(str(config["architecture"])).build(config)
