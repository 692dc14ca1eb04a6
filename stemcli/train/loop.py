"""Generic training loop for waveform-to-stems models, resumable, time- or step-bounded.

Run folder layout (``out``)::

    config.json      architecture config, data card, hyperparameters, command (written once)
    checkpoint.pt    {"model": state_dict, "optimizer": state_dict, "step", "elapsed", rng states}
    best.pt          {"model": state_dict, "step", "val_sdr"}: best mean validation SDR so far
    log.jsonl        one JSON object per line: training loss every ``log_every`` steps,
                     validation SDR per stem every ``val_every`` steps

Checkpoints hold tensors, numbers and strings only and are read with
``torch.load(..., weights_only=True)``; they are written to a temporary file and renamed, so
an interruption never leaves a half-written checkpoint.  ``resume=True`` continues the step
count, the optimizer, the random generators and the wall-clock budget (``minutes`` is the
total over all sessions; it counts training steps, data loading included, not validation
or checkpoint writing).

Loss: L1 between estimated and true stem waveforms, averaged over sources, channels and time
(``loss_weights``: a weighted mean over sources of the per-source averages).  A model with a
``training_estimates`` method (``mmdense`` with ``"wave": {"mask_loss": W}``) gives more than one
estimate, each with a weight; the loss is then the weighted mean of their L1 losses
(:func:`training_loss`).
The models end in an inverse STFT, so the loss sees what is delivered (phase included, the
stems summing to the mixture), costs no extra transform in the backward pass, and its scale is
independent of the spectrogram settings, so two architectures with different STFTs (MMDenseNet
2048/1024, Open-Unmix 4096/1024) are trained on exactly the same objective.

Precision: ``precision="bfloat16"`` runs the training forward pass under CPU autocast:
convolutions, matrix products and LSTMs compute in bfloat16, and the layers after them
(BatchNorm, pooling, the mask softmax) take their bfloat16 outputs as they come; the STFT, its
inverse and the loss are float32, as are the weights, gradients, optimizer state, validation
and the exported model.  On a CPU with AVX512-BF16 or AMX the forward and backward pass take
about 0.6 times as long (MMDenseNet 2.8 -> 1.8 s, Open-Unmix 4.2 -> 2.6 s at batch 8 x 3 s on one
thread here; whole steps with data loading about 0.8 times); elsewhere bfloat16 is emulated and
slower.

Weight averaging (``ema``, off by default): a copy of the model whose weights and float
buffers (BatchNorm statistics) follow the trained ones as an exponential moving average,
``avg <- d * avg + (1 - d) * w`` after every step with ``d = min(ema, 1 - 1 / n)`` at the n-th
update: the plain mean of all the weights so far for the first ``1 / (1 - ema)`` steps (so the
first validations do not score the initial weights), then the exponential average with that
horizon (0.999: 1000 steps; the shipped recipe makes about 14000 in 90 minutes, Open-Unmix's
about 3700).  With it, validation scores the averaged copy and ``best.pt`` holds its weights
(what is exported; ``checkpoint.pt`` carries it for ``resume``).  An averaged copy of the
weights is part of Hybrid Demucs's recipe (Défossez 2021).

Validation: plain SDR ``10 log10(|s|^2 / |s - s_hat|^2)`` per stem on fixed, unaugmented
excerpts of the ``valid`` split (``test`` if there is no ``valid``), median over excerpts;
excerpts where a stem is silent are skipped for that stem.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stemcli.allocator import active as active_allocator
from stemcli.data.datasets import StemDataset
from stemcli.modelcard import command_line
from stemcli.train import PRECISIONS, RESUMABLE, archs

SILENT = 1e-6  # mean-square below which a validation stem counts as silent
GRAD_CLIP = 5.0  # largest gradient norm of a training step (clip_grad_norm_)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def data_card(root: Path) -> dict[str, Any]:
    """The dataset's own card (``dataset.json``) summarised, or just its path."""
    card: dict[str, Any] = {"root": str(root)}
    f = root / "dataset.json"
    if f.is_file():
        try:
            full = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f}: not valid JSON ({exc})") from exc
        for key in ("format", "command", "counts", "durations_seconds", "kinds", "sample_rate",
                    "stems", "seed", "soundfonts", "renderer"):
            if key in full:
                card[key] = full[key]
    return card


def simple_sdr(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """SDR per leading index: ``ref, est [shape=(..., channels, time)]`` -> ``[shape=(...)]`` dB.

    NaN where the reference is silent (mean square below ``SILENT``).
    """
    num = np.sum(ref.astype(np.float64) ** 2, axis=(-2, -1))
    den = np.sum((ref.astype(np.float64) - est) ** 2, axis=(-2, -1))
    sdr = 10.0 * np.log10((num + 1e-12) / (den + 1e-12))
    power = num / (ref.shape[-1] * ref.shape[-2])
    return np.where(power < SILENT, np.nan, sdr)


def validate(model: torch.nn.Module, excerpts: list[tuple[np.ndarray, np.ndarray]], sources: list[str],
             batch: int = 4) -> dict[str, float]:
    """Median SDR per stem (and ``mean`` of the stems) of ``model`` on ``excerpts``."""
    was = model.training
    model.eval()
    sdrs = []
    with torch.no_grad():
        for i in range(0, len(excerpts), batch):
            part = excerpts[i : i + batch]
            mix = torch.from_numpy(np.stack([m for m, _ in part]))
            est = model(mix).numpy()
            sdrs.append(simple_sdr(np.stack([s for _, s in part]), est))
    model.train(was)
    table = np.concatenate(sdrs, axis=0)  # [excerpts, sources]
    out = {}
    for k, name in enumerate(sources):
        col = table[:, k]
        out[name] = float(np.nanmedian(col)) if np.isfinite(col).any() else float("nan")
    vals = [v for v in out.values() if math.isfinite(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


class WeightAverage:
    """Exponential moving average of a model's weights and float buffers (see the module
    docstring, "Weight averaging").

    Args:
        model: the trained model; a deep copy of it (in eval mode, no gradients) is the average.
        decay: ``d`` in (0, 1) once warmed up; the averaging horizon is about ``1 / (1 - d)`` steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def update(self, model: torch.nn.Module) -> None:
        """One step: float entries move toward ``model``'s, integer ones (BatchNorm's batch
        count) are copied."""
        self.updates += 1
        d = min(self.decay, 1.0 - 1.0 / self.updates)  # the mean so far, then exponential
        src = model.state_dict()
        with torch.no_grad():
            for name, avg in self.model.state_dict().items():
                if avg.dtype.is_floating_point:
                    avg.lerp_(src[name], 1.0 - d)
                else:
                    avg.copy_(src[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def merge_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied key by key, nested dicts merged (not replaced)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_overrides(path: str | Path) -> dict[str, Any]:
    """Architecture overrides from a JSON file (an object, e.g. ``{"low": {"lstm": 64}}``).

    Raises:
        ValueError: naming ``path``: unreadable, not JSON, or not an object.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the config file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: the config file must hold a JSON object, got {type(obj).__name__}")
    return obj


def _is_number(value: Any) -> bool:
    """An int or a float as read from JSON, not a bool (``True`` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def source_weights(sources: list[str], loss_weights: dict[str, float] | None) -> torch.Tensor | None:
    """The loss weight of each source ``[shape=(sources,)]`` (1 unless named), or None when no
    weights are given.

    Raises:
        ValueError: a name that is not a source, or a weight that is not a finite number > 0.
    """
    if not loss_weights:
        return None
    unknown = sorted(set(loss_weights) - set(sources))
    if unknown:
        raise ValueError(f"loss weight for unknown source(s) {', '.join(unknown)} (sources: {', '.join(sources)})")
    for name, w in loss_weights.items():
        if not (_is_number(w) and math.isfinite(w) and w > 0):
            raise ValueError(f"loss weight of {name} must be a finite number > 0, got {w!r}")
    return torch.tensor([float(loss_weights.get(s, 1.0)) for s in sources])


def same_weights(sources: list[str], a: dict[str, float] | None, b: dict[str, float] | None) -> bool:
    """Whether two loss-weight dicts give every source the same weight (None or ``{}``: all 1)."""
    ones = torch.ones(len(sources))
    wa, wb = source_weights(sources, a), source_weights(sources, b)
    return torch.equal(ones if wa is None else wa, ones if wb is None else wb)


def format_weights(loss_weights: dict[str, float] | None) -> str:
    """``{"drums": 2.0}`` -> ``"drums=2"``; ``"none"`` without weights."""
    if not loss_weights:
        return "none"
    return ", ".join(f"{k}={v:g}" for k, v in loss_weights.items())


def weighted_l1(est: torch.Tensor, ref: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """L1 loss of ``[batch, sources, channels, time]`` estimates, a weighted mean over sources
    (the plain mean absolute error when ``weights`` is None)."""
    if weights is None:
        return torch.nn.functional.l1_loss(est, ref)
    per_source = (est - ref).abs().mean(dim=(0, 2, 3))
    return (per_source * weights).sum() / weights.sum()


def training_loss(model: Any, mix: torch.Tensor, ref: torch.Tensor, weights: torch.Tensor | None,
                  precision: str = "float32") -> torch.Tensor:
    """The training loss of one batch: :func:`weighted_l1` of the model's output against ``ref``,
    or, for a model with ``training_estimates`` (e.g. ``mmdense`` with ``"wave": {"mask_loss":
    W}``), the weighted mean of :func:`weighted_l1` over the estimates it returns.

    Args:
        mix: [shape=(batch, channels, time)].
        ref: [shape=(batch, sources, channels, time)].
        weights: per-source weights (:func:`source_weights`) or None.
        precision: ``"bfloat16"`` runs the forward pass under CPU autocast; the loss is float32.

    The logged loss is this mean: with more than one estimate it is not comparable with the
    plain L1 loss of another run.

    Raises:
        ValueError: a ``training_estimates`` that returns no estimate or weights summing to 0.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        terms = model.training_estimates(mix) if hasattr(model, "training_estimates") else [(model(mix), 1.0)]
    total = sum(w for _, w in terms)
    if not terms or not total > 0:
        raise ValueError(f"{type(model).__name__}.training_estimates: needs at least one estimate and weights "
                         f"summing to more than 0, got {[w for _, w in terms]}")
    return sum(w * weighted_l1(est.float(), ref, weights) for est, w in terms) / total


def parse_loss_weights(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """``["drums=2", "bass=1.5"]`` -> ``{"drums": 2.0, "bass": 1.5}``.

    Raises:
        ValueError: an item without ``=``, a weight that is not a number, or a name given twice.
    """
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"loss weight '{item}': expected SOURCE=WEIGHT, e.g. drums=2")
        if name in out:
            raise ValueError(f"loss weight for {name} given twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"loss weight '{item}': {value!r} is not a number") from None
    return out


def bf16_native() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX).  (oneDNN's own
    ``_is_mkldnn_bf16_supported`` is true on any AVX512 CPU, where bfloat16 is emulated.)"""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def _lr_at(lr: float, progress: float, step: int, warmup: int = 20) -> float:
    """Linear warm-up, constant, then cosine decay to 10% over the last 40% of the budget."""
    scale = min(1.0, (step + 1) / warmup)
    if progress > 0.6:
        scale *= 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - 0.6) / 0.4)))
    return lr * scale


def train(
    plugin: str,
    data: str | Path,
    out: str | Path,
    steps: int | None = None,
    minutes: float | None = None,
    batch: int | None = None,
    resume: bool = False,
    seconds: float | None = None,
    lr: float | None = None,
    threads: int | None = None,
    seed: int | None = None,
    val_every: int = 100,
    val_excerpts: int = 12,
    val_seconds: float = 6.0,
    save_every: int = 25,
    log_every: int = 5,
    config: dict[str, Any] | None = None,
    loss_weights: dict[str, float] | None = None,
    precision: str | None = None,
    ema: float | None = None,
    coherent: float | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train architecture ``plugin`` on the MUSDB-layout folder ``data`` into run folder ``out``.

    Args:
        plugin: architecture name (``mmdense``, ``umx``) or module path (see :mod:`archs`).
        data: dataset root with ``train/`` and ``valid/`` (or ``test/``) track folders.
        out: run folder (created); see the module docstring for its files.
        steps: stop after this many optimizer steps (total, counting resumed ones).
        minutes: stop after this much training wall-clock time (total over sessions, validation
            and checkpoint writing excluded).
        batch: excerpts per step (default 4: on a CPU a smaller batch makes more steps per
            minute, and both architectures trained better in a fixed time at 4 than at 8;
            export/README.md, "Sessions 18-19").
        resume: continue from ``out/checkpoint.pt``; without it an existing checkpoint is an error.
            ``batch``, ``seconds``, ``lr`` and ``precision`` left at None keep the run's; a
            different value applies from the resumed step on and is logged and recorded in the
            run's config (``"changes"``: step, old and new value), e.g. to fine-tune.
        seconds: excerpt length (s, default 3).
        lr: Adam learning rate (default 1e-3; warm-up, then cosine decay over the last 40% of the
            budget).
        threads: torch intra-op threads (default: torch's choice).
        seed: seeds the model init, the data sampling and the validation excerpts (default 0;
            a resumed run keeps its seed, and a different one is an error: the validation
            excerpts would change).
        val_every: steps between validations (also at the end).
        val_excerpts, val_seconds: validation set size.
        save_every: steps between checkpoints (also at the end).
        log_every: steps between loss lines.
        config: overrides of the architecture's default config (e.g. a smaller model for tests;
            nested dicts are merged, see :func:`merge_config`).  With ``resume`` they must
            match the run's config.
        loss_weights: per-source weights of the L1 loss, e.g. ``{"drums": 2.0}`` (sources not
            named weigh 1; the loss is the weighted mean of the per-source L1 losses, so all
            weights 1 is the plain L1).  Stored in the run's config; a resumed run keeps its
            weights, and different ones are an error (equal ones written differently, e.g.
            ``{"bass": 1}`` for none, are not).
        precision: ``"float32"`` (default) or ``"bfloat16"`` (autocast forward pass, see the
            module docstring).  Stored in the run's config (runs from before this option:
            float32); on resume like ``batch``.
        ema: weight averaging decay in (0, 1), e.g. 0.999 (default: none; see the module
            docstring).  Validation and ``best.pt`` then use the averaged weights.  Stored in
            the run's config; a resumed run keeps its setting, and a different one is an error.
        coherent: probability in [0, 1] that a training example is one excerpt of one song with
            every stem at the same start (its own beats, chords and notes together), instead of
            an independent excerpt per stem (default 0: none, as before the option; see
            :class:`stemcli.data.datasets.StemDataset`).  Stored in the run's config; a resumed
            run keeps its setting, and a different one is an error.
        log: where progress lines go.

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: bad arguments, unreadable data, or a run folder that does not match.
    """
    if steps is None and minutes is None:
        raise ValueError("give steps or minutes (or both): training needs a stopping point")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {ema}")
    if coherent is not None and not 0.0 <= coherent <= 1.0:
        raise ValueError(f"coherent must be in [0, 1], got {coherent}")
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise ValueError(f"{data}: dataset folder not found")
    if threads:
        torch.set_num_threads(int(threads))
    ckpt_path, cfg_path = out / "checkpoint.pt", out / "config.json"
    if ckpt_path.exists() and not resume:
        raise ValueError(f"{ckpt_path} exists: pass resume=True (--resume) to continue, or use a new --out")

    given = {"batch": batch, "seconds": seconds, "lr": lr, "precision": precision}
    changed: dict[str, list[Any]] = {}  # setting -> [old, new], on resume
    if cfg_path.exists() and resume:
        run_cfg = json.loads(cfg_path.read_text())
        model_cfg = run_cfg["model"]
        stored = run_cfg["hyperparameters"].get("loss_weights")
        if loss_weights is not None and not same_weights(list(model_cfg["sources"]), loss_weights, stored):
            raise ValueError(f"{cfg_path}: the run was trained with loss weights {format_weights(stored)}, "
                             f"not {format_weights(loss_weights)}; resume without --loss-weight or use a new --out")
        loss_weights = stored
        hyper = run_cfg["hyperparameters"]
        if ema is not None and ema != hyper.get("ema"):
            was = "without weight averaging" if hyper.get("ema") is None else f"with --ema {hyper['ema']}"
            raise ValueError(f"{cfg_path}: the run was trained {was}, not --ema {ema}; "
                             "resume without --ema or use a new --out")
        ema = hyper.get("ema")
        if ema is not None and not (_is_number(ema) and 0.0 < ema < 1.0):
            raise ValueError(f"{cfg_path}: hyperparameters.ema must be a number in (0, 1), got {ema!r}")
        stored_coherent = hyper.get("coherent", 0.0)  # runs from before the option: none coherent
        if not (_is_number(stored_coherent) and 0.0 <= stored_coherent <= 1.0):
            raise ValueError(f"{cfg_path}: hyperparameters.coherent must be a number in [0, 1], got {stored_coherent!r}")
        if coherent is not None and coherent != stored_coherent:
            raise ValueError(f"{cfg_path}: the run was trained with --coherent {float(stored_coherent)!r}, "
                             f"not {float(coherent)!r}; resume without --coherent or use a new --out")
        coherent = float(stored_coherent)
        current = {k: hyper.get(k, v) for k, v in RESUMABLE.items()}  # precision: float32 before the option
        if current["precision"] not in PRECISIONS:
            raise ValueError(f"{cfg_path}: unknown precision {current['precision']!r} "
                             f"(expected one of {', '.join(PRECISIONS)})")
        if seed is not None and seed != hyper.get("seed", 0):
            raise ValueError(f"{cfg_path}: the run was trained with seed {hyper.get('seed', 0)}, not {seed} "
                             "(its validation excerpts depend on it); resume without --seed or use a new --out")
        seed = int(hyper.get("seed", 0))
        changed = {k: [current[k], v] for k, v in given.items() if v is not None and v != current[k]}
        settings = {**current, **{k: new for k, (_, new) in changed.items()}}
        hyper.update(settings)
        if model_cfg.get("architecture") != archs.default_config(plugin)["architecture"]:
            raise ValueError(f"{cfg_path}: run was trained as '{model_cfg.get('architecture')}', not '{plugin}'")
        if config and merge_config(model_cfg, config) != model_cfg:
            raise ValueError(f"{cfg_path}: the run's model config differs from the given overrides; "
                             "resume without them or use a new --out")
        run_cfg["hyperparameters"].update({"steps": steps, "minutes": minutes})
        used = hyper.get("allocator", "system")  # speed depends on it (runs from before it was recorded: glibc)
        hyper["allocator"] = used if active_allocator() in used.split("+") else f"{used}+{active_allocator()}"
        run_cfg.setdefault("commands", []).append(command_line())
        card = data_card(data)
        if card.get("root") != run_cfg["data"].get("root"):  # fine-tuning on other data: keep the history
            run_cfg.setdefault("data_history", [run_cfg["data"]]).append(card)
            run_cfg["data"] = card
    else:
        model_cfg = merge_config(archs.default_config(plugin), config or {})
        settings = {k: RESUMABLE[k] if v is None else v for k, v in given.items()}
        seed = 0 if seed is None else seed
        hyper = {"plugin": plugin, **settings, "seed": seed, "steps": steps, "minutes": minutes, "threads": threads,
                 "loss": "L1 waveform", "optimizer": "Adam", "augment": True, "remix_prob": 0.5,
                 "allocator": active_allocator()}
        coherent = 0.0 if coherent is None else float(coherent)
        if coherent > 0:  # absent means 0, as in every run from before the option
            hyper["coherent"] = coherent
        if loss_weights:
            hyper["loss"] = "weighted L1 waveform"
            hyper["loss_weights"] = loss_weights
        if ema is not None:
            hyper["ema"] = float(ema)
        run_cfg = {"model": model_cfg, "data": data_card(data), "hyperparameters": hyper,
                   "commands": [command_line()]}
    batch, seconds, lr, precision = (settings[k] for k in ("batch", "seconds", "lr", "precision"))
    sources = list(model_cfg["sources"])
    weights = source_weights(sources, loss_weights)
    rate = int(model_cfg["sample_rate"])
    torch.manual_seed(seed)
    model = archs.build(model_cfg)
    train_set = StemDataset(data, "train", sources, seconds=seconds, sample_rate=rate, augment=True,
                            remix_prob=0.5, seed=seed, channels=int(model_cfg["channels"]),
                            coherent_prob=coherent)
    val_split = "valid" if (data / "valid").is_dir() else "test"
    val_set = StemDataset(data, val_split, sources, seconds=val_seconds, sample_rate=rate, augment=False,
                          seed=seed, channels=int(model_cfg["channels"]))
    excerpts = val_set.fixed_excerpts(val_excerpts, seed=seed)
    # the weights, the model config and the data are checked: only now is the run folder written
    out.mkdir(parents=True, exist_ok=True)
    _write_json(run_cfg, cfg_path)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    average = WeightAverage(model, ema) if ema is not None else None
    rng = np.random.default_rng(seed)
    step, elapsed, best = 0, 0.0, -math.inf
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if average is not None:
            if "ema" not in ck:
                raise ValueError(f"{ckpt_path}: no weight average in the checkpoint of a run with --ema")
            average.load_state_dict(ck["ema"])
        step, elapsed, best = int(ck["step"]), float(ck["elapsed"]), float(ck["best"])
        rng.bit_generator.state = json.loads(ck["numpy_rng"])
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed {out} at step {step} ({elapsed / 60:.1f} min trained)")
        if ck.get("val_data", str(run_cfg.get("data_history", [run_cfg["data"]])[0].get("root"))) != str(run_cfg["data"].get("root")):
            # scores on another validation set are not comparable: the best so far starts again
            best = -math.inf
            log(f"validation data is now {data}: best validation SDR starts again")
    if changed:  # settings given anew on resume: applied from this step on, and recorded
        run_cfg.setdefault("changes", []).append({"step": step, **changed})
        _write_json(run_cfg, cfg_path)
        log(f"from step {step}: " + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))

    n_params = sum(p.numel() for p in model.parameters())
    log(f"{plugin}: {n_params / 1e6:.3f} M parameters, {len(train_set)} train tracks, "
        f"{len(excerpts)} {val_split} excerpts, batch {batch} x {seconds} s, threads {torch.get_num_threads()}, "
        f"allocator {active_allocator()}"
        + ("" if precision == "float32" else f", {precision} forward")
        + ("" if average is None else f", weight average {average.decay:g}")
        + ("" if not coherent else f", coherent examples {coherent:g}"))
    if precision == "bfloat16" and not bf16_native():
        log("note: this CPU has no native bfloat16 (AVX512-BF16 or AMX): it is emulated and slower than float32")

    stop_signal = []

    def _on_signal(signum: int, _frame: Any) -> None:
        stop_signal.append(signum)

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    budget = None if minutes is None else minutes * 60.0
    warmup = 20 if steps is None else max(1, min(20, steps // 10))
    logf = open(out / "log.jsonl", "a")

    def _emit(rec: dict[str, Any]) -> None:
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    def _save() -> None:
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "elapsed": elapsed, "best": best, "val_data": str(run_cfg["data"].get("root")),
                      "numpy_rng": json.dumps(rng.bit_generator.state),
                      "torch_rng": torch.get_rng_state(),
                      **({} if average is None else {"ema": average.state_dict()})}, ckpt_path)

    def _validate() -> None:
        nonlocal best
        t0 = time.time()
        scored = model if average is None else average.model
        sdr = validate(scored, excerpts, sources)
        rec = {"step": step, "elapsed": round(elapsed, 1), "val_sdr": sdr, "val_seconds": round(time.time() - t0, 1)}
        _emit(rec)
        log(f"step {step} val SDR " + " ".join(f"{k} {v:.2f}" for k, v in sdr.items()))
        if math.isfinite(sdr["mean"]) and sdr["mean"] > best:
            best = sdr["mean"]
            _atomic_save({"model": scored.state_dict(), "step": step, "val_sdr": best}, out / "best.pt")

    model.train()
    losses: list[float] = []
    validated_at = -1
    try:
        while True:
            done_steps = steps is not None and step >= steps
            done_time = budget is not None and elapsed >= budget
            if done_steps or done_time or stop_signal:
                break
            progress = max(step / steps if steps else 0.0, elapsed / budget if budget else 0.0)
            for g in opt.param_groups:
                g["lr"] = _lr_at(lr, progress, step, warmup)
            t_step = time.time()
            pairs = [train_set.sample(rng) for _ in range(batch)]
            mix = torch.from_numpy(np.stack([m for m, _ in pairs]))
            ref = torch.from_numpy(np.stack([s for _, s in pairs]))
            loss = training_loss(model, mix, ref, weights, precision)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            if average is not None:
                average.update(model)
            step += 1
            losses.append(loss.item())
            elapsed += time.time() - t_step
            if step % log_every == 0:
                rec = {"step": step, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
                       "elapsed": round(elapsed, 1)}
                _emit(rec)
                log(f"step {step} loss {rec['loss']:.5f} lr {rec['lr']:.2e} {elapsed / 60:.1f} min")
                losses = []
            if step % save_every == 0:
                _save()
            if val_every and step % val_every == 0:
                _validate()
                validated_at = step
        if losses:
            _emit({"step": step, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
                   "elapsed": round(elapsed, 1)})
        if validated_at != step and step > 0 and not stop_signal:
            _validate()
        _save()
        reason = "signal" if stop_signal else ("steps" if steps is not None and step >= steps else "time")
        _emit({"step": step, "elapsed": round(elapsed, 1), "stopped": reason})
        log(f"stopped at step {step} ({reason}), {elapsed / 60:.1f} min; best mean val SDR {best:.2f} dB")
    finally:
        logf.close()
        for s, h in old.items():
            signal.signal(s, h)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stemcli.train.loop", description=__doc__.split("\n")[0])
    p.add_argument("plugin")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int)
    p.add_argument("--minutes", type=float)
    p.add_argument("--batch", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seconds", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--config", type=Path, help="JSON file of architecture config overrides")
    p.add_argument("--loss-weight", action="append", default=[], metavar="SOURCE=W",
                   help="weight of one source in the L1 loss (repeatable)")
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--ema", type=float, default=None, help="weight averaging decay, e.g. 0.999")
    a = p.parse_args(argv)
    try:
        overrides = read_config_overrides(a.config) if a.config else None
        weights = parse_loss_weights(a.loss_weight) if a.loss_weight else None
        train(a.plugin, a.data, a.out, steps=a.steps, minutes=a.minutes, batch=a.batch, resume=a.resume,
              seconds=a.seconds, lr=a.lr, threads=a.threads, seed=a.seed, val_every=a.val_every,
              save_every=a.save_every, config=overrides, loss_weights=weights, precision=a.precision, ema=a.ema, log=lambda s: print(s, flush=True))
    except ValueError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
